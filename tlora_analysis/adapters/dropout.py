"""The adapters' dropout: inverted dropout whose CPU mask is drawn from uniform floats.

Why: on the CPU, torch's Bernoulli sampler (what ``nn.Dropout`` runs) draws the mask one element
at a time: for one 2048 × 384 float32 activation it takes longer than the layer's own product.
Uniform float32 draws compared with p give the same distribution, Bernoulli(1 − p) keeps (p
resolved to about 2⁻²⁴): drawn and applied, 0.4–0.55× the time of ``nn.Dropout``'s kernel
(docs/benchmarks.md, "Dropout on the CPU: the mask's draw"). On CUDA the module runs
``nn.Dropout``'s kernel.

On the CPU an element is kept iff its draw u ~ U[0, 1) from torch's default CPU generator is
≥ p, and kept elements are multiplied by 1 / (1 − p), in the order of the tensor's elements, so
the mask depends only on the generator's state and the shape. Every path that computes an
adapter's output (the plain formula through :class:`Dropout`, TLoRA's fused paths through
:func:`draw_keep`) draws the same mask from the same state.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .config import check_dropout

__all__ = ["Dropout", "apply_keep", "draw_keep", "dropout", "dropout_with_mask"]


def draw_keep(shape: torch.Size | tuple[int, ...], p: float, device: torch.device,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """A Bernoulli(1 − p) keep-mask (bool, ``shape``): u ≥ p for uniform float32 draws u on the
    CPU, ``bernoulli_`` of a bool tensor on other devices."""
    if device.type == "cpu":
        return torch.rand(shape, generator=generator, device=device, dtype=torch.float32) >= p
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1.0 - p, generator=generator)


def apply_keep(t: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """t ∘ keep / (1 − p) in one kernel (differentiable in t)."""
    return torch.ops.aten.native_dropout_backward(t, keep, 1.0 / (1.0 - p))


def dropout_with_mask(t: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverted dropout of ``t`` (0 < p < 1, training) and its keep-mask (bool): :func:`draw_keep`'s
    on the CPU, ``torch.native_dropout``'s (``nn.Dropout``'s kernel) elsewhere."""
    if t.device.type != "cpu":
        return torch.native_dropout(t, p, True)
    keep = draw_keep(t.shape, p, t.device)
    return apply_keep(t, keep, p), keep


def dropout(t: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """Inverted dropout of ``t`` with probability p ∈ [0, 1): :func:`draw_keep`'s mask on the CPU,
    ``F.dropout`` elsewhere; the identity when not training or p = 0."""
    check_dropout(p, "dropout p")
    if not training or p == 0.0:
        return t
    if t.device.type != "cpu":
        return F.dropout(t, p, True)
    return dropout_with_mask(t, p)[0]


class Dropout(nn.Dropout):
    """``nn.Dropout`` with :func:`dropout`'s mask: the adapters' dropout module (p in [0, 1))."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(check_dropout(p, "dropout p"))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return dropout(t, self.p, self.training)
