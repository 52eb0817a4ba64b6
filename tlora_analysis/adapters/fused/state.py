"""The fused path's one piece of process state: :data:`backend`, a :class:`FusedBackend`.

Everything the fused path keeps between calls lives in it: where its Triton kernels may run
(``set_backend``), whether sibling layers share one projection (``set_projection_sharing``),
the Triton launcher with its compiled launches, kept buffers and layouts (launch.py), and the
siblings learned from the calls' order (shared_projection.py). Nothing else in the package
holds mutable state at module level.
"""

from __future__ import annotations

from .launch import TritonLauncher
from .shared_projection import ProjectionSharing

__all__ = ["BACKENDS", "FusedBackend", "backend"]

BACKENDS = ("auto", "triton", "cublas")


class FusedBackend:
    """Where the fused layer's kernels run and what they keep: the switches and the caches."""

    def __init__(self) -> None:
        self.mode = "auto"
        self.launcher = TritonLauncher()
        self.projections = ProjectionSharing()

    def set_backend(self, mode: str) -> None:
        """Where the fused layer's Triton kernels may run (process-wide).

        - ``"auto"`` (default): wherever they apply on a CUDA GPU, in eager mode and in
          ``torch.compile``d code; Triton's interpreter (CPU tensors) only inside compiled code.
        - ``"triton"``: wherever they apply, the interpreter in eager mode too (tests, debugging).
        - ``"cublas"``: never (A/B runs, debugging, bit-for-bit comparisons with cuBLAS results).
        """
        if mode not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {mode!r}")
        self.mode = mode

    def get_backend(self) -> str:
        """What :meth:`set_backend` chose."""
        return self.mode

    def triton_allowed(self, compiling: bool, device_type: str = "cuda") -> bool:
        """Whether the backend lets a Triton kernel run on tensors of ``device_type``, inside
        compiled code or in eager mode."""
        mode = self.mode
        if compiling:
            return mode != "cublas"
        return mode == "triton" or (mode == "auto" and device_type == "cuda")

    def set_projection_sharing(self, enabled: bool) -> None:
        """Whether sibling layers share one projection of their common input (default True;
        process-wide). Off: every layer computes its own x A (A/B runs, bit-for-bit comparisons)."""
        self.projections.set_enabled(enabled)

    def get_projection_sharing(self) -> bool:
        """What :meth:`set_projection_sharing` chose."""
        return self.projections.enabled


backend = FusedBackend()
