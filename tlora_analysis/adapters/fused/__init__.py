"""The TLoRA layer's fused path: the plain layer's function (adapters/tlora.py), fewer passes over memory.

A TLoRA layer asks :func:`forward` (base layer and adapter in one autograd Function) or
:func:`adapter_output` (the adapter alone) for its output and gets None where the fused path does
not apply; it then computes its plain formula. Modules, from the layer down:

- ``route``: which Function applies to a layer and an input, read from the layer's registries.
- ``functions``: the autograd Functions (fused, adapter, merged) and their dropout masks.
- ``shared_projection``: sibling layers that read one input share one product x [A_1 | A_2 …],
  and sum their ∂x in their GEMMs rather than through autograd.
- ``lowrank_gemm``: ``lowrank_matmul`` (x W + α (u B) C in one Triton GEMM, else cuBLAS), the
  ∂x product with ∂B and ∂α in its epilogue, and ``dropout_lowrank_matmul`` (output dropout in
  the accumulator); ``core_grads``: ∂B and ∂α in one launch.
- ``kernel_mask``: the output dropout's keep-mask as a hash of (seed, element), regenerated
  in the kernels (forward GEMM, the backward's masked projection), never stored; what the
  layer's ``dropout_mask="auto"`` uses where the Triton GEMM runs.
- ``launch``: the cheap launch of compiled kernels; ``kernels``: the Triton device code,
  imported with Triton only when a kernel can run.
- ``state``: :data:`backend`, the one object holding the switches below and every cache.

Switches (process-wide): :func:`set_backend` ("auto", "triton", "cublas": where the Triton
kernels may run) and :func:`set_projection_sharing` (True, False). Importing this package
registers the custom operators ``tlora_analysis::lowrank_matmul``,
``tlora_analysis::lowrank_matmul_with_core_grads`` and ``tlora_analysis::core_grads`` that keep the
kernels whole under ``torch.compile``.
"""

from .lowrank_gemm import lowrank_matmul, lowrank_matmul_with_core_grads
from .route import adapter_output, forward
from .state import BACKENDS, FusedBackend, backend

__all__ = ["BACKENDS", "FusedBackend", "adapter_output", "backend", "forward", "get_backend",
           "get_projection_sharing", "lowrank_matmul", "lowrank_matmul_with_core_grads", "set_backend",
           "set_projection_sharing"]

set_backend = backend.set_backend
get_backend = backend.get_backend
set_projection_sharing = backend.set_projection_sharing
get_projection_sharing = backend.get_projection_sharing
