"""What a TLoRA layer asks the fused path: its output through a fused Function, or None.

The layer (adapters/tlora.py) holds the plain definition; these routes compute the same function
with fewer passes over memory wherever they apply, and answer None where they do not, so the
layer falls back to its plain formula: another ``impl`` than the fast ones, a device other than
the CPU or CUDA, autocast, mixed dtypes, A or C made trainable (the plain path gives them their
gradient), and for the fused Functions a base layer that is not a plain, frozen, hook-free
``nn.Linear`` in the adapter's dtype.

The layer's tensors are read from its module registries: ``nn.Module.__getattr__`` costs the
host about half a microsecond a name, which a large model's step, issued layer by layer from
Python, adds up (docs/benchmarks.md, "Host time per layer").
"""

from __future__ import annotations

import torch
from torch import nn

from .functions import TLoRAAdapterFunction, TLoRALinearFunction, TLoRAMergedFunction
from .state import backend

__all__ = ["adapter_output", "forward"]


def _factors(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    """(A, B, C, α) when a fast path applies to ``x`` (CPU or CUDA, no autocast, one dtype, A and
    C frozen buffers), else None. A or C made a parameter (to train them) is not in the buffers."""
    device = x.device.type
    if device not in ("cpu", "cuda") or torch.is_autocast_enabled(device):
        return None
    buffers, params = layer._buffers, layer._parameters
    a, b, c = buffers.get("tlora_A"), params.get("tlora_B"), buffers.get("tlora_C")
    alpha = params["tlora_alpha"] if "tlora_alpha" in params else buffers.get("tlora_alpha")
    if a is None or b is None or c is None or alpha is None or a.requires_grad or c.requires_grad:
        return None
    dtype = a.dtype
    return (a, b, c, alpha) if x.dtype == b.dtype == c.dtype == alpha.dtype == dtype else None


def _fusable_base(layer: nn.Module, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """(W0, bias) when the base layer can join the fused Function: a plain, frozen, hook-free
    nn.Linear in the adapter's dtype; else None."""
    base = layer._modules["base_layer"]
    if type(base) is not nn.Linear or base._forward_hooks or base._forward_pre_hooks:
        return None
    weight, bias = base._parameters["weight"], base._parameters["bias"]
    if weight.requires_grad or (bias is not None and bias.requires_grad) or weight.dtype != dtype:
        return None
    return weight, bias


def _dropout_probabilities(layer: nn.Module) -> tuple[float, float]:
    """(p on the input, p on the output) of the layer's dropout while training; zeros otherwise."""
    dropout = layer._modules["dropout"]
    p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
    return (p, 0.0) if layer.dropout_position == "input" else (0.0, p)


def _store_mask(layer: nn.Module, x: torch.Tensor) -> bool:
    """Whether a torch dropout mask is stored for the backward (else redrawn there): the layer's
    ``dropout_mask``; "auto", where the fused layer's kernel does not take the in-kernel mask,
    stores on the CPU and redraws on CUDA."""
    mode = layer._dropout_mask
    return mode == "store" or (mode == "auto" and x.device.type != "cuda")


def forward(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """W0 x + bias + the adapter in one fused Function: :class:`TLoRAMergedFunction` for
    ``impl="merged"`` without dropout, else :class:`TLoRALinearFunction` (with x A and x's
    gradient shared among sibling layers where there is no input dropout; with
    ``dropout_mask="auto"`` output dropout by the in-kernel mask in its Triton GEMM where that
    runs); None where it does not apply."""
    factors = _factors(layer, x)
    base = None if factors is None else _fusable_base(layer, factors[0].dtype)
    if base is None:
        return None
    p_in, p_out = _dropout_probabilities(layer)
    if layer._impl == "merged" and p_in == p_out == 0:
        return TLoRAMergedFunction.apply(x, *base, *factors)
    shared = backend.projections.project(layer, x, factors[0]) if p_in == 0 else None
    u, grad_share, token = (None, None, None) if shared is None else shared
    store = _store_mask(layer, x) if p_in or p_out else False
    out = TLoRALinearFunction.apply(x, *base, *factors, p_in, p_out, store, u, layer._dropout_mask == "auto",
                                    grad_share, token)
    if grad_share is not None and token is None:  # the owner: its siblings take its token
        out, token = out
        backend.projections.set_token(token)
    return out


def adapter_output(layer: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """α·((x A) B) C with the layer's dropout through :class:`TLoRAAdapterFunction` (x already in
    A's dtype); None where it does not apply."""
    factors = _factors(layer, x)
    if factors is None:
        return None
    p_in, p_out = _dropout_probabilities(layer)
    return TLoRAAdapterFunction.apply(x, *factors, p_in, p_out, _store_mask(layer, x))
