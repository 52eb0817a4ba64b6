"""The fused layer's output dropout as a function of (seed, element): regenerated in the kernels, never stored.

Why: a stored mask costs one byte per element of every adapted layer's output, and a mask drawn
by torch costs extra passes over (tokens × out) tensors in the forward and again in the
backward, where it is redrawn (docs/benchmarks.md, "TLoRA's options on a GPU"). Here the keep
decision of each output element is a hash of a seed and the element's position, computed where
it is used: in the forward GEMM's accumulator (lowrank_gemm.py) and in the backward's one pass
over the gradient, gc = (g ∘ keep) Cᵀ / (1 − p̂) (:func:`masked_projection`). The layer uses it
with ``dropout_mask="auto"`` (the default) wherever its Triton GEMM runs.

The mask, exactly. All arithmetic is on 32-bit unsigned words, modulo 2³². fmix32 is
MurmurHash3's finalizer: x ^= x >> 16; x *= 0x85EBCA6B; x ^= x >> 13; x *= 0xC2B2AE35;
x ^= x >> 16. The seed s (0 ≤ s < 2⁶²) is drawn per layer call from torch's default CPU
generator (:func:`draw_seed`), so it follows the run's seed and the order of calls (step, layer)
and is saved and restored with ``torch.get_rng_state()``; its halves are s_lo = s mod 2³¹ and
s_hi = ⌊s / 2³¹⌋. Row i ≥ 0 of the output (a 64-bit integer with 32-bit halves i_lo = i mod 2³²,
i_hi = ⌊i / 2³²⌋) has the state

    h_row(i) = fmix32(s_lo ^ fmix32(i_lo ^ fmix32(i_hi ^ s_hi)))

and T = p · 2¹⁶ rounded to the nearest integer (ties to even, p a float64; :func:`keep_below`)
must lie in [1, 2¹⁶ − 1]: p from about 2⁻¹⁷ to 1 − 2⁻¹⁷ (outside it the layer draws a torch
mask instead). Element (i, j) is decided by one of two masks, both hashes of h_row(i) and a
column group g through h(i, g) = fmix32(h_row(i) ^ (g · 0x9E3779B9 mod 2³²)):

- p = 1/2 (T = 2¹⁵), bits: g = 4 ⌊j / 128⌋ + ⌊j / 2⌋ mod 4, and (i, j) is kept iff bit
  b(j) = 2 ⌊(j mod 128) / 8⌋ + j mod 2 of h(i, g) is set. One hash decides 32 elements, each
  dropped with probability exactly 1/2.
- any other p, pairs: g = ⌊j / 2⌋, d(i, j) = h(i, g) mod 2¹⁶ for even j, ⌊h(i, g) / 2¹⁶⌋ for
  odd j, and (i, j) is kept iff d(i, j) ≥ T. One hash decides two elements, each dropped with
  probability p̂ = T / 2¹⁶ (:attr:`KernelDropout.p_hat`), within 2⁻¹⁷ of p.

fmix32 is a bijection, so the bits (and halves) of a uniform word are independent and uniform.
The groups are the elements that one thread of the tensor cores' accumulator holds (a pair of
adjacent columns; in each 128 columns of a row, the 32 columns 8t + 2c and 8t + 2c + 1, t < 16,
for one c < 4), so the kernels hash once per group without moving data between threads: the
hashing is most of the mask's cost. Kept elements are scaled by 1 / (1 − p̂) rounded to float32,
so that the kept term is unbiased for the mask actually drawn (p̂ = p exactly for p = k / 2¹⁶,
e.g. 0.5 or 0.25). h_row is computed once per row of a tile; the mask does not depend on the
output's width, so any N works. kernels.py's ``keep_tile`` is the one device-side definition, and
:func:`keep_mask` returns it as a bool tensor for tests.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from .launch import cdiv, next_power_of_2, tma_ok
from .state import backend

__all__ = ["KernelDropout", "SEED_BITS", "draw_seed", "keep_below", "keep_mask", "masked_projection"]

SEED_BITS = 62  # two 31-bit halves: kernel arguments that fit int32, so the cached launches serve them
_HALF = (1 << 31) - 1
# (BM, BN, pipeline stages, warps) of the two mask kernels. The masked projection is a skinny,
# memory-bound GEMM (one read of g, M × N): BM = 64 gives a program per 64 rows (128 programs
# for 8192 tokens, about one per multiprocessor of an H100). With the bit mask (p = 1/2) 256
# columns of g per step, three TMA loads in flight and four warps: the fastest of 34
# configurations on an H100, 0.92× the time of the eight-warp 128-column tile summed over the
# benchmark model's layers (benchmarks.md, "The masked projection's tile"). The pair mask keeps
# that 128-column tile (four loads in flight, eight warps): with 256 columns and four warps its
# per-element hashes spill registers. Compiled for sm_90a with Triton 3.6 and 3.9 neither spills
# for r ≤ 64 (at most 141 registers with the bit mask, 124 with the pair mask).
# The interpreter gets short tiles so that tests cover several; BN = 128, the bit mask's group.
_TILE = (64, 256, 3, 4)
_PAIR_TILE = (64, 128, 4, 8)
_INTERPRETER_TILE = (16, 128, 1, 4)
BITS_BELOW = 1 << 15  # T of p = 1/2: the bit mask


def keep_below(p: float) -> int | None:
    """T = p · 2¹⁶ rounded to the nearest integer (ties to even): an element is dropped iff its
    16-bit draw is below T. None unless 1 ≤ T ≤ 2¹⁶ − 1 (p from about 2⁻¹⁷ to 1 − 2⁻¹⁷), where
    the mask cannot resolve p."""
    if not 0 < p < 1:
        return None
    t = round(p * 2**16)  # p · 2¹⁶ is exact in float64
    return t if 1 <= t < 2**16 else None


def draw_seed() -> int:
    """A fresh seed in [0, 2⁶²) from torch's default CPU generator (the run's seed, the order of calls)."""
    return int(torch.randint(1 << SEED_BITS, (), generator=torch.default_generator))


@dataclass(frozen=True)
class KernelDropout:
    """One layer call's output dropout: its seed (0 ≤ seed < 2⁶²) and p (:func:`keep_below` not None)."""

    seed: int
    p: float

    def __post_init__(self) -> None:
        if keep_below(self.p) is None or not 0 <= self.seed < 1 << SEED_BITS:
            raise ValueError(f"need 0 ≤ seed < 2^{SEED_BITS} and 2^-17 < p < 1 − 2^-17 (16-bit thresholds), "
                             f"got seed {self.seed}, p {self.p}")

    @property
    def keep_below(self) -> int:
        """T (see :func:`keep_below`)."""
        return keep_below(self.p)

    @property
    def p_hat(self) -> float:
        """p̂ = T / 2¹⁶: the probability that the mask drops an element (within 2⁻¹⁷ of p)."""
        return self.keep_below / 2**16

    @property
    def bits(self) -> bool:
        """Whether the bit mask decides (p̂ = 1/2), else the pair mask."""
        return self.keep_below == BITS_BELOW

    @property
    def scale(self) -> float:
        """1 / (1 − p̂) rounded to float32: the factor of the kept elements."""
        return struct.unpack("<f", struct.pack("<f", 1 / (1 - self.p_hat)))[0]

    @property
    def args(self) -> tuple[int, int, int, int]:
        """The kernels' four int32 arguments: s_lo = s mod 2³¹, s_hi = ⌊s / 2³¹⌋, T and the bits
        of :attr:`scale`."""
        scale_bits = struct.unpack("<i", struct.pack("<f", self.scale))[0]
        return self.seed & _HALF, self.seed >> 31, self.keep_below, scale_bits


def _tile(device: torch.device, bits: bool = True) -> tuple[int, int, int, int]:
    """(BM, BN, stages, warps) of the mask kernels on ``device``, for the bit mask or the pair mask."""
    if device.type == "cpu":
        return _INTERPRETER_TILE
    return _TILE if bits else _PAIR_TILE


def _launch_ready(device: torch.device) -> None:
    if not backend.launcher.ready(device.type):
        raise RuntimeError(f"the in-kernel dropout mask needs Triton's kernels on {device.type} tensors "
                           "(a Hopper GPU, or TRITON_INTERPRET=1 for CPU tensors)")


def keep_mask(dropout: KernelDropout, m: int, n: int, *, row_offset: int = 0,
              device: torch.device | str = "cpu") -> torch.Tensor:
    """The keep-mask (m × n, bool) of rows row_offset … row_offset + m − 1 (row_offset + m ≤ 2⁶³)
    and columns 0 … n − 1, as the kernels compute it: for tests and debugging."""
    if m < 1 or n < 1 or not 0 <= row_offset <= 2**63 - m:
        raise ValueError(f"need m ≥ 1, n ≥ 1 and 0 ≤ row_offset ≤ 2^63 − m, got {m}, {n}, {row_offset}")
    device = torch.device(device)
    _launch_ready(device)
    bm, bn, _, warps = _tile(device, dropout.bits)
    out = torch.empty(m, n, dtype=torch.bool, device=device)
    launcher = backend.launcher
    constexprs = launcher.config(("keep_mask", bm, bn, dropout.bits),
                                 lambda *key: dict(zip(("BM", "BN", "BITS"), key)))
    launcher.run(launcher.kernels.keep_mask_kernel, cdiv(m, bm) * cdiv(n, bn), (out,),
                 (m, n, row_offset, *dropout.args[:3]), constexprs, 1, warps)
    return out


def masked_projection(g: torch.Tensor, c: torch.Tensor, dropout: KernelDropout) -> torch.Tensor:
    """(g ∘ keep) cᵀ / (1 − p̂) (M × r, g's dtype) for g (M × N) and c (r × N) of one dtype
    and device: the fused layer's gc under output dropout, the mask regenerated, float32 sums
    scaled and rounded once. One kernel that reads g once where g and c are row-major with
    16-byte aligned rows (TMA loads; the fused layer's are), else :func:`keep_mask` and a
    float32 product in torch. Triton only: the mask exists nowhere else."""
    (m, n), r = g.shape, c.shape[0]
    if c.dim() != 2 or c.shape[1] != n or c.dtype != g.dtype or c.device != g.device or r < 1:
        raise ValueError(f"need g (M × N), c (r × N) of one dtype and device, "
                         f"got g {tuple(g.shape)} {g.dtype}, c {tuple(c.shape)} {c.dtype}")
    _launch_ready(g.device)
    if m == 0 or n == 0:
        return g.new_zeros(m, r)
    if not (tma_ok(g) and tma_ok(c)):
        keep = keep_mask(dropout, m, n, device=g.device)
        return ((torch.where(keep, g, 0).float() @ c.float().T) * dropout.scale).to(g.dtype)
    bm, bn, stages, warps = _tile(g.device, dropout.bits)
    out = g.new_empty(m, r)
    launcher = backend.launcher
    constexprs = launcher.config(("masked_projection", max(16, next_power_of_2(r)), bm, bn, dropout.bits),
                                 lambda *key: dict(zip(("RP", "BM", "BN", "BITS"), key)))
    launcher.run(launcher.kernels.masked_projection_kernel, cdiv(m, bm), (g, c, out),
                 (m, n, r, g.stride(0), c.stride(0), out.stride(0), *dropout.args), constexprs, stages, warps)
    return out
