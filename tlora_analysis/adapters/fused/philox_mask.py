"""The fused layer's output dropout as a function of (seed, element): regenerated in the kernels, never stored.

Why: a stored mask costs one byte per element of every adapted layer's output, and a mask drawn
by torch costs extra passes over (tokens × out) tensors in the forward and again in the
backward, where it is redrawn (docs/benchmarks.md, "TLoRA's options on a GPU"). Here the keep
decision of each output element is a function of a seed and the element's position, computed
where it is used: in the forward GEMM's accumulator (lowrank_gemm.py) and in the backward's one
pass over the gradient, gc = (g ∘ keep) Cᵀ / (1 − p) (:func:`masked_projection`).

The mask, exactly. The seed s (0 ≤ s < 2⁶²) is drawn per layer call from torch's default CPU
generator (:func:`draw_seed`), so it follows the run's seed and the order of calls (step, layer)
and is saved and restored with ``torch.get_rng_state()``. Element (i, j) of the M × N output
has the flat offset e = i · N + j (64-bit). Philox4x32-10 with key (s mod 2³¹, ⌊s / 2³¹⌋) and
counter (e >> 4 as its low and high 32-bit words, 0, 0) gives four 32-bit words, sixteen bytes
in little-endian order; the element is kept iff byte e mod 16 is ≥ T = 256 p. So p is
quantised to multiples of 1/256 and is exact there (0.5 is T = 128); any other p (or p of 0 or 1)
is refused: :func:`drop_below` gives None and the layer keeps its torch mask. One Philox call
gives sixteen elements, so N must be a multiple of 16 (sixteen consecutive elements in one row).
Triton's ``tl.randint4x`` is that Philox; kernels.py's ``keep_tile`` is the one device-side
definition, and :func:`keep_mask` returns it as a bool tensor for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .launch import cdiv, next_power_of_2
from .state import backend

__all__ = ["PhiloxDropout", "SEED_BITS", "draw_seed", "drop_below", "keep_mask", "masked_projection"]

SEED_BITS = 62  # two 31-bit halves: kernel arguments that fit int32, so the cached launches serve them
_HALF = (1 << 31) - 1
# (BM, BN, pipeline stages, warps) of the two mask kernels: the masked projection compiles for
# sm_90 without register spills (larger tiles spill); its speed is not measured yet. The
# interpreter gets small tiles so that tests cover several.
_TILE = (64, 64, 3, 8)
_INTERPRETER_TILE = (16, 32, 1, 4)


def drop_below(p: float) -> int | None:
    """T = 256 p, the bytes below which an element is dropped, where p is a multiple of 1/256
    in (0, 1); else None (the kernels cannot drop with that p exactly)."""
    t = p * 256  # exact: a power of two
    return int(t) if t == int(t) and 1 <= t <= 255 else None


def draw_seed() -> int:
    """A fresh seed in [0, 2⁶²) from torch's default CPU generator (the run's seed, the order of calls)."""
    return int(torch.randint(1 << SEED_BITS, (), generator=torch.default_generator))


@dataclass(frozen=True)
class PhiloxDropout:
    """One layer call's output dropout: its seed and p (a multiple of 1/256 in (0, 1))."""

    seed: int
    p: float

    def __post_init__(self) -> None:
        if drop_below(self.p) is None or not 0 <= self.seed < 1 << SEED_BITS:
            raise ValueError(f"need 0 ≤ seed < 2^{SEED_BITS} and p a multiple of 1/256 in (0, 1), "
                             f"got seed {self.seed}, p {self.p}")

    @property
    def drop_below(self) -> int:
        """T = 256 p (see :func:`drop_below`)."""
        return int(self.p * 256)

    @property
    def keys(self) -> tuple[int, int]:
        """The Philox key (s mod 2³¹, ⌊s / 2³¹⌋), as the kernels take it."""
        return self.seed & _HALF, self.seed >> 31


def _tile(device: torch.device) -> tuple[int, int, int, int]:
    return _INTERPRETER_TILE if device.type == "cpu" else _TILE


def _launch_ready(device: torch.device) -> None:
    if not backend.launcher.ready(device.type):
        raise RuntimeError(f"the Philox dropout mask needs Triton's kernels on {device.type} tensors "
                           "(a Hopper GPU, or TRITON_INTERPRET=1 for CPU tensors)")


def keep_mask(dropout: PhiloxDropout, m: int, n: int, *, row_offset: int = 0,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep-mask (m × n, bool) of rows row_offset … row_offset + m − 1 of an output with n
    columns (a multiple of 16), as the kernels compute it: for tests and debugging."""
    if n % 16 or m < 1 or row_offset < 0:
        raise ValueError(f"need m ≥ 1, n a multiple of 16 and row_offset ≥ 0, got {m}, {n}, {row_offset}")
    device = torch.device(device)
    _launch_ready(device)
    bm, bn, _, warps = _tile(device)
    out = torch.empty(m, n, dtype=torch.bool, device=device)
    launcher = backend.launcher
    constexprs = launcher.config(("keep_mask", bm, bn, dropout.drop_below),
                                 lambda *key: dict(zip(("BM", "BN", "DROP_BELOW"), key)))
    launcher.run(launcher.kernels.keep_mask_kernel, cdiv(m, bm) * cdiv(n, bn), (out,),
                 (m, n, row_offset, *dropout.keys), constexprs, 1, warps)
    return out


def masked_projection(g: torch.Tensor, c: torch.Tensor, dropout: PhiloxDropout) -> torch.Tensor:
    """(g ∘ keep) cᵀ / (1 − p) (M × r, g's dtype) for g (M × N, any strides) and c (r × N): the
    fused layer's gc under output dropout, one read of g, the mask regenerated (float32 sums,
    one rounding). Triton only: the mask exists nowhere else."""
    (m, n), r = g.shape, c.shape[0]
    if c.shape[1] != n or n % 16 or c.dtype != g.dtype or c.device != g.device:
        raise ValueError(f"need g (M × N), c (r × N) of one dtype and device and N a multiple of 16, "
                         f"got g {tuple(g.shape)} {g.dtype}, c {tuple(c.shape)} {c.dtype}")
    _launch_ready(g.device)
    bm, bn, stages, warps = _tile(g.device)
    out = g.new_empty(m, r)
    launcher = backend.launcher
    constexprs = launcher.config(("masked_projection", max(16, next_power_of_2(r)), bm, bn, dropout.drop_below),
                                 lambda *key: dict(zip(("RP", "BM", "BN", "DROP_BELOW"), key)))
    launcher.run(launcher.kernels.masked_projection_kernel, cdiv(m, bm), (g, c, out),
                 (m, n, r, *g.stride(), *c.stride(), out.stride(0), *dropout.keys), constexprs, stages, warps)
    return out
