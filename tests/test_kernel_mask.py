"""The fused layer's in-kernel output dropout (kernel_mask.py): the mask's definition, its
statistics, and the fused forward and gradients against the plain formula under that mask.

The mask is checked against a NumPy implementation of its definition written here (its fmix32
against known answers of MurmurHash3's finalizer, the whole hash against values from plain
Python integers), so the definition in kernel_mask.py is tested independently of Triton. The
statistical tests run on fixed seeds (deterministic); each states its level α. The kernels run
under Triton's interpreter in a subprocess (float16: the interpreter has no bfloat16 products;
see test_lowrank_gemm.py), on a Hopper GPU where there is one, and not at all where Triton cannot
run (the layer's torch mask then).
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, fused
from tlora_analysis.adapters.fused import backend, kernel_mask, launch, lowrank_gemm
from tlora_analysis.adapters.fused.kernel_mask import KernelDropout, draw_seed, keep_below

from test_lowrank_gemm import HOPPER, needs_interpreter, run_interpreted

_M32 = np.uint64(0xFFFFFFFF)
SEED, OTHER = 0x2BADC0FFEE1234, 0x1234567
ALPHA = 1e-3  # the level of every statistical test here


def fmix32(x):
    """MurmurHash3's finalizer on arrays of uint64 holding 32-bit words."""
    x = np.asarray(x, dtype=np.uint64)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x85EBCA6B)) & _M32
    x = x ^ (x >> np.uint64(13))
    x = (x * np.uint64(0xC2B2AE35)) & _M32
    return x ^ (x >> np.uint64(16))


def reference_hash(seed: int, rows, groups) -> np.ndarray:
    """kernel_mask.py's h(i, g) for rows i (≥ 0, < 2⁶⁴) × column groups g, written out:
    fmix32(fmix32(s_lo ^ fmix32(i_lo ^ fmix32(i_hi ^ s_hi))) ^ g · 0x9E3779B9), s_lo = s mod 2³¹."""
    rows, groups = np.asarray(rows, dtype=np.uint64), np.asarray(groups, dtype=np.uint64)
    s_lo, s_hi = np.uint64(seed % 2**31), np.uint64(seed >> 31)
    h_row = fmix32(s_lo ^ fmix32((rows & _M32) ^ fmix32((rows >> np.uint64(32)) ^ s_hi)))
    return fmix32(h_row[:, None] ^ ((groups * np.uint64(0x9E3779B9)) & _M32)[None, :])


def reference_draws(seed: int, rows, cols) -> np.ndarray:
    """The 16-bit draws d(i, j): the low half of h(i, ⌊j / 2⌋) for even j, the high half for odd j."""
    cols = np.asarray(cols, dtype=np.uint64)
    h = reference_hash(seed, rows, cols >> np.uint64(1))
    return np.where((cols & np.uint64(1)) == 1, h >> np.uint64(16), h & np.uint64(0xFFFF))


def reference_bits(seed: int, rows, cols) -> np.ndarray:
    """The bit mask (p = 1/2): (i, j) kept iff bit 2 ⌊(j mod 128) / 8⌋ + j mod 2 of h(i, g) is set,
    g = 4 ⌊j / 128⌋ + ⌊j / 2⌋ mod 4."""
    cols = np.asarray(cols, dtype=np.uint64)
    h = reference_hash(seed, rows, np.uint64(4) * (cols // np.uint64(128)) + (cols // np.uint64(2)) % np.uint64(4))
    bit = np.uint64(2) * ((cols % np.uint64(128)) // np.uint64(8)) + cols % np.uint64(2)
    return ((h >> bit[None, :]) & np.uint64(1)) == 1


def reference_mask(seed: int, m: int, n: int, p: float, row_offset: int = 0) -> np.ndarray:
    """Rows row_offset … row_offset + m − 1, columns 0 … n − 1: for p = 1/2 the bit mask, else
    kept iff d ≥ T = round(p · 2¹⁶)."""
    t = round(p * 2**16)
    assert 1 <= t < 2**16
    rows = np.arange(m, dtype=np.uint64) + np.uint64(row_offset)
    return reference_bits(seed, rows, np.arange(n)) if t == 2**15 else reference_draws(seed, rows, np.arange(n)) >= t


def _fmix32_int(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = x * 0x85EBCA6B & m
    x ^= x >> 13
    x = x * 0xC2B2AE35 & m
    return x ^ x >> 16


def test_fmix32_known_answers():
    """MurmurHash3's fmix32: 0 is its fixed point; fmix32(1) = 0x514E28B7 (the published value);
    the others from plain Python integers."""
    words = [0, 1, 2, 0xFFFFFFFF, 0x80000000, 0xDEADBEEF]
    want = [0, 0x514E28B7, 0x30F4C306, 0x81F16F39, 0x6D3C65A0, 0x0DE5C6A9]
    assert [int(v) for v in fmix32(words)] == want == [_fmix32_int(w) for w in words]


def test_reference_hash_known_answers():
    """h(seed, i, k), each from plain Python integers, including rows with both 32-bit halves in
    use and the largest seed."""
    cases = {(0, 0, 0): 0x0, (0, 0, 1): 0x92CA2F0E, (0, 1, 0): 0x5716F995, (SEED, 7, 100): 0x9BC43B0C,
             (2**62 - 1, 2**32 + 5, 4095): 0x576E0BDC, (5 * 2**31 + 7, 2**63 - 1, 1): 0x9DB8C988}
    for (seed, i, k), want in cases.items():
        assert int(reference_hash(seed, [i], [k])[0, 0]) == want, (seed, i, k)


def test_reference_draws_are_the_halves_of_one_hash_per_pair():
    """Columns 2k and 2k + 1 take the low and high 16 bits of h(i, k), from the known answers above."""
    assert reference_draws(0, [0], [2, 3]).tolist() == [[0x2F0E, 0x92CA]]
    assert reference_draws(SEED, [7], [200, 201]).tolist() == [[0x3B0C, 0x9BC4]]
    assert reference_draws(2**62 - 1, [2**32 + 5], [8190, 8191]).tolist() == [[0x0BDC, 0x576E]]


def test_reference_bits_are_one_hash_per_thread_group():
    """Columns 8t + 2c + e (t < 16, e < 2) of each 128 take bit 2t + e of h(i, 4 ⌊j / 128⌋ + c),
    from the known answers above: h(SEED, 7, 100) in block 25, c = 0; h(0, 0, 1) in block 0, c = 1."""
    block25 = [3200 + 8 * t + e for t in range(16) for e in (0, 1)]
    assert reference_bits(SEED, [7], block25)[0].tolist() == [bool(0x9BC43B0C >> b & 1) for b in range(32)]
    block0_c1 = [8 * t + 2 + e for t in range(16) for e in (0, 1)]
    assert reference_bits(0, [0], block0_c1)[0].tolist() == [bool(0x92CA2F0E >> b & 1) for b in range(32)]
    assert np.array_equal(reference_mask(SEED, 3, 300, 0.5), reference_bits(SEED, np.arange(3), np.arange(300)))


def test_keep_below_rounds_p_times_two_to_the_16():
    assert keep_below(0.5) == 2**15 and keep_below(0.25) == 2**14
    assert [keep_below(p) for p in (0.1, 0.3, 0.9)] == [6554, 19661, 58982]
    assert keep_below(2.5 * 2**-16) == 2 and keep_below(3.5 * 2**-16) == 4  # ties to even
    assert keep_below(1.5 * 2**-17) == 1 and keep_below(1 - 2**-16) == 2**16 - 1
    # p the 16-bit threshold cannot resolve: the layer takes a torch mask there
    assert [keep_below(p) for p in (2**-17, 1e-6, 1 - 2**-17, 0.0, 1.0, -0.1, 1.5)] == [None] * 7


def test_kernel_arguments():
    assert KernelDropout(2**62 - 1, 0.5).args[:3] == (2**31 - 1, 2**31 - 1, 2**15)
    assert KernelDropout(5 * 2**31 + 7, 0.25).args[:3] == (7, 5, 2**14)
    d = KernelDropout(3, 0.5)
    assert d.p_hat == 0.5 and d.scale == 2.0 and d.args[3] == 0x40000000 and d.bits  # float32 2.0
    d = KernelDropout(3, 0.1)  # p̂ = 6554 / 2¹⁶, within 2⁻¹⁷ of p; the scale unbiased for p̂
    assert not d.bits and not KernelDropout(3, 0.5 + 2**-16).bits
    assert d.p_hat == 6554 / 2**16 and abs(d.p_hat - 0.1) <= 2**-17 and d.scale == np.float32(2**16 / (2**16 - 6554))
    for seed, p in ((2**62, 0.5), (-1, 0.5), (0, 0.0), (0, 1.0), (0, 1e-6)):
        with pytest.raises(ValueError, match="2\\^-17 < p < 1 − 2\\^-17"):
            KernelDropout(seed, p)


def test_seed_follows_torchs_default_generator():
    torch.manual_seed(3)
    first, second = draw_seed(), draw_seed()
    torch.manual_seed(3)
    assert draw_seed() == first and first != second  # the run's seed, then the order of calls
    assert all(0 <= s < 2**62 for s in (first, second))
    state = torch.get_rng_state()
    again = draw_seed()
    torch.set_rng_state(state)  # a resumed run's generator state
    assert draw_seed() == again


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_reference_keep_fraction_is_one_minus_p(p):
    """Two-sided exact binomial test at level ALPHA on 2²⁰ elements, against 1 − p̂."""
    mask = reference_mask(SEED, 512, 2048, p)
    assert stats.binomtest(int(mask.sum()), mask.size, 1 - KernelDropout(SEED, p).p_hat).pvalue > ALPHA


def _independent(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson's chi-square test of independence (no continuity correction) on the 2 × 2 table of
    paired keep decisions a[k], b[k]: its p-value."""
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    return stats.chi2_contingency(table, correction=False).pvalue


@pytest.mark.parametrize("p", [0.1, 0.5])
@pytest.mark.parametrize("offset", [0, 1])
def test_neighbours_are_independent(p, offset):
    """Horizontally and vertically adjacent elements, in disjoint pairs (2k + offset, 2k + offset + 1)
    so that the pairs are independent under the null: chi-square at level ALPHA each, on 2¹⁹ pairs.
    Offset 0 pairs the two halves of one hash (p = 0.1) or its adjacent bits (p = 0.5), offset 1
    neighbouring hashes (p = 0.1) or bits of two hashes (p = 0.5)."""
    mask = reference_mask(SEED, 1024, 1026, p)[:, offset:offset + 1024]
    assert _independent(mask[:, 0::2], mask[:, 1::2]) > ALPHA  # (i, j), (i, j + 1)
    mask = reference_mask(SEED, 1026, 1024, p)[offset:offset + 1024]
    assert _independent(mask[0::2], mask[1::2]) > ALPHA  # (i, j), (i + 1, j)


@pytest.mark.parametrize("gap", [2, 8, 64])
def test_bits_of_one_hash_are_independent(gap):
    """The bit mask's elements (i, j) and (i, j + gap) for ⌊j / gap⌋ even (disjoint pairs): gap 8
    pairs adjacent bits of one hash (columns 8t + 2c + e and 8(t + 1) + 2c + e), 64 its low and high
    halves, 2 the bits of two hashes. Chi-square at level ALPHA each, on 2¹⁹ pairs."""
    mask = reference_mask(SEED, 1024, 1024, 0.5)
    first = (np.arange(1024) // gap) % 2 == 0
    assert _independent(mask[:, first], mask[:, np.roll(first, gap)]) > ALPHA


@pytest.mark.parametrize("name, seed_b, offset_b", [("seed + 1", SEED + 1, 0), ("seed + 2³¹ (s_hi)", SEED + 2**31, 0),
                                                      ("row + 2³² (i_hi)", SEED, 2**32)])
def test_nearby_seeds_and_rows_are_independent(name, seed_b, offset_b):
    """The same elements under seeds one bit apart, and rows 2³² apart (the same low halves): chi-square
    at level ALPHA on 2¹⁸ element pairs, p = 0.5."""
    a, b = reference_mask(SEED, 512, 512, 0.5), reference_mask(seed_b, 512, 512, 0.5, row_offset=offset_b)
    assert not np.array_equal(a, b)
    assert _independent(a, b) > ALPHA, name


INTERPRETED = r"""
import json, sys
import torch
from safetensors.torch import save_file
from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused import functions, kernel_mask, lowrank_gemm
from tlora_analysis.adapters.fused.kernel_mask import KernelDropout, keep_mask, masked_projection
sys.path.insert(0, "tests")
from test_kernel_mask import layer_results, reference_mask, value_independence

SEED, OTHER = 0x2BADC0FFEE1234, 0x1234567
fused.set_backend("triton")
d, big = KernelDropout(SEED, 0.5), 2**36 + 3  # rows past 2³²: both halves of the row index in use
masks = {"a": keep_mask(d, 40, 64), "a_again": keep_mask(d, 40, 64),
         "other_seed": keep_mask(KernelDropout(OTHER, 0.5), 40, 64), "shifted": keep_mask(d, 39, 64, row_offset=1),
         "narrow": keep_mask(d, 40, 16), "big": keep_mask(d, 4, 48, row_offset=big),
         "wrap": keep_mask(d, 6, 20, row_offset=2**32 - 3), "odd": keep_mask(KernelDropout(OTHER, 0.3), 7, 37),
         "p10": keep_mask(KernelDropout(SEED, 0.1), 128, 256), "p30": keep_mask(KernelDropout(OTHER, 0.3), 128, 256),
         "p50": keep_mask(d, 128, 256), "p90": keep_mask(KernelDropout(OTHER, 0.9), 128, 256),
         "odd50": keep_mask(KernelDropout(OTHER, 0.5), 7, 300)}
save_file({k: v.contiguous() for k, v in masks.items()}, "OUT_PATH")
calls = {"gemm_dropout": 0, "gemm": 0, "projection": 0}
gemm = lowrank_gemm._triton_lowrank_matmul
def counted_gemm(*a):
    calls["gemm_dropout" if len(a) > 16 and a[16] is not None else "gemm"] += 1
    return gemm(*a)
lowrank_gemm._triton_lowrank_matmul = counted_gemm
projection = functions.masked_projection
functions.masked_projection = lambda *a: calls.__setitem__("projection", calls["projection"] + 1) or projection(*a)
report = {"big": big}
for name, p, mask in (("layer", 0.5, "auto"), ("layer_p01", 0.1, "auto"), ("layer_redraw", 0.5, "redraw")):
    calls.update(gemm_dropout=0, gemm=0, projection=0)
    report[name] = layer_results(p, mask=mask)
    report[name + "_calls"] = dict(calls)
report["values"] = {"p50": value_independence(), "p10": value_independence(p=0.1)}
def projection_error(g, c, dropout):
    keep = torch.from_numpy(reference_mask(dropout.seed, *g.shape, dropout.p))
    want = (g.double() * keep / (1 - dropout.p_hat)) @ c.double().T
    return ((masked_projection(g, c, dropout).double() - want).abs().max() / want.abs().max()).item()
gen = torch.Generator().manual_seed(0)
g, c = torch.randn(50, 40, generator=gen).half(), torch.randn(8, 40, generator=gen).half()
wide_g, wide_c = torch.randn(50, 296, generator=gen).half(), torch.randn(8, 296, generator=gen).half()
report["projection"] = {
    "TMA, partial tiles": projection_error(g, c, KernelDropout(SEED, 0.3)),
    "TMA, 296 columns, p 0.5 (bits)": projection_error(wide_g, wide_c, KernelDropout(SEED, 0.5)),
    "TMA, 296 columns, p 0.3": projection_error(wide_g, wide_c, KernelDropout(OTHER, 0.3)),
    "strided g (torch)": projection_error(torch.randn(40, 50, generator=gen).half().T, c, KernelDropout(SEED, 0.3)),
    "37 of 40 columns (TMA)": projection_error(g[:, :37], c[:, :37], KernelDropout(OTHER, 0.1)),
    "37 columns (torch)": projection_error(g[:, :37], c[:, :37].contiguous(), KernelDropout(OTHER, 0.1))}
def refused(n, p):
    x, w, u, v = torch.randn(64, 32).half(), torch.randn(32, n).half(), torch.randn(64, 8).half(), torch.randn(8, n).half()
    return lowrank_gemm.dropout_lowrank_matmul(x, w, u, v, p=p) is None
report["refused"] = {"p 0": refused(64, 0.0), "p 1": refused(64, 1.0), "p 1e-6 (below 16 bits)": refused(64, 1e-6),
                     "36 columns (TMA rows)": refused(36, 0.5),
                     "control: 40 columns, p 0.3 (runs)": not refused(40, 0.3)}
fused.set_backend("cublas")
report["refused"]["cublas backend"] = refused(64, 0.5)
print(json.dumps(report))
"""

P_OUT = 0.5


def make_layers(p: float, dtype: torch.dtype, mask: str = "auto"):
    """A float64 reference layer and a copy in ``dtype`` with output dropout p and ``dropout_mask``
    ``mask``: 64 → 64, rank 8, a random B."""
    torch.manual_seed(0)
    config = TLoRAConfig(rank=8, alpha_init=0.7, dropout=p, dropout_position="output", seed=1)
    ref = TLoRALinear(torch.nn.Linear(32, 64).double(), "layer", config)
    with torch.no_grad():
        ref.tlora_B.normal_()
    layer = TLoRALinear(torch.nn.Linear(32, 64), "layer", config).to(dtype)
    layer.load_state_dict(ref.state_dict())
    layer.dropout_mask = mask
    return ref, layer


def masked_term(layer: TLoRALinear, x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """((x A) B C) ∘ keep / (1 − p̂): the rank-r term without α under a mask applied by hand, p̂
    the mask's drop probability (p to 16 bits)."""
    return ((x @ layer.tlora_A) @ layer.tlora_B) @ layer.tlora_C * keep / (1 - KernelDropout(0, p).p_hat)


def masked_formula(layer: TLoRALinear, x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """x W0ᵀ + b + α · masked_term: the plain formula with the mask applied by hand."""
    return (torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias)
            + layer.tlora_alpha * masked_term(layer, x, keep, p))


def _grads(fn, layer, x, saved=None):
    """y = fn(x) and the gradients of a loss that weighs each element differently; the numel of
    every tensor fn's autograd graph saves appended to ``saved``."""
    x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t if saved is None else saved.append(t.numel()) or t,
                                                  lambda t: t):
        y = fn(x)
    (y * loss_weights(y)).sum().backward()
    return {"y": y.detach(), "x": x.grad, "B": layer.tlora_B.grad, "alpha": layer.tlora_alpha.grad.reshape(1)}


def loss_weights(y: torch.Tensor) -> torch.Tensor:
    """∂L/∂y of the tests' loss: a different weight for each element, from −1 to 1."""
    return torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)


def _rel(got, want):
    return ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()


def layer_results(p: float, device: str = "cpu", dtype: torch.dtype = torch.float16,
                  mask: str = "auto") -> dict:
    """The fused layer (``dropout_mask`` ``mask``) against the float64 formula under the in-kernel
    mask of the seed the layer draws (with "auto"): relative errors of y, ∂x, ∂B and ∂α; the
    largest tensor the autograd graph saved; whether the generator's state restored gives the
    same output, and whether the next call draws another mask.

    ∂α is a sum of 4,096 terms of both signs, and a mask under which they nearly cancel would make
    its error relative to ∂α meaningless; it is taken relative to the larger of |∂α| and the terms'
    2-norm, the size of such a sum when the signs are random."""
    ref, layer = make_layers(p, dtype, mask)
    layer.to(device)
    x = torch.randn(2, 32, 32, dtype=torch.float64)
    torch.manual_seed(5)
    seed = draw_seed()
    keep = kernel_mask.keep_mask(KernelDropout(seed, p), 64, 64, device=device).cpu().double().view(2, 32, 64) \
        if mask == "auto" else None
    saved = []
    torch.manual_seed(5)
    fast = _grads(layer, layer, x.to(device, dtype), saved)
    state_after = torch.get_rng_state()
    out = {"largest_saved": max(saved)}
    if keep is not None:
        want = _grads(lambda t: masked_formula(ref, t, keep, p), ref, x)
        out["errors"] = {k: _rel(fast[k], want[k]) for k in want}
        with torch.no_grad():
            terms = loss_weights(want["y"]) * masked_term(ref, x, keep, p)
        scale = max(want["alpha"].abs().item(), terms.norm().item())
        out["errors"]["alpha"] = ((fast["alpha"].double().cpu() - want["alpha"]).abs() / scale).item()
    torch.manual_seed(5)
    out["same_again"] = bool(torch.equal(layer(x.to(device, dtype)), fast["y"]))
    torch.set_rng_state(state_after)
    out["next_call_differs"] = not torch.equal(layer(x.to(device, dtype)), fast["y"])
    return out


def value_independence(device: str = "cpu", dtype: torch.dtype = torch.float16, p: float = P_OUT) -> dict:
    """The dropped elements of the rank-r term (w = 0) for two unrelated operands and one seed,
    against keep_mask: the mask depends on (seed, element) only. 296 columns: several of the
    GEMM's column tiles, the last one partial."""
    d, n = KernelDropout(0x5EED, p), 296
    keep = kernel_mask.keep_mask(d, 64, n, device=device)
    same = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        u, v = (torch.randn(*s, generator=g).to(device, dtype) for s in ((64, 8), (8, n)))
        x, w = torch.randn(64, 32, generator=g).to(device, dtype), torch.zeros(32, n, dtype=dtype, device=device)
        out, _ = lowrank_gemm.dropout_lowrank_matmul(x, w, u, v, p=p, seed=d.seed)
        same.append(bool(torch.equal(out != 0, keep)))
    return {"same": same, "kept": keep.float().mean().item()}


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    path = tmp_path_factory.mktemp("kernel_mask") / "masks.safetensors"
    report = run_interpreted(INTERPRETED.replace("OUT_PATH", str(path)))
    return report, load_file(path)


@needs_interpreter
class TestInterpreted:
    def test_mask_is_the_definition(self, interpreted):
        _, masks = interpreted
        for name, seed, shape, p in (("a", SEED, (40, 64), 0.5), ("odd", OTHER, (7, 37), 0.3),
                                     ("p50", SEED, (128, 256), 0.5), ("odd50", OTHER, (7, 300), 0.5),
                                     ("p10", SEED, (128, 256), 0.1), ("p30", OTHER, (128, 256), 0.3),
                                     ("p90", OTHER, (128, 256), 0.9)):
            assert np.array_equal(masks[name].numpy(), reference_mask(seed, *shape, p)), name

    def test_rows_past_two_to_the_32(self, interpreted):
        report, masks = interpreted
        assert report["big"] >> 32 > 0  # the row's high half in use
        assert np.array_equal(masks["big"].numpy(), reference_mask(SEED, 4, 48, 0.5, row_offset=report["big"]))
        assert np.array_equal(masks["wrap"].numpy(), reference_mask(SEED, 6, 20, 0.5, row_offset=2**32 - 3))

    def test_mask_is_a_function_of_seed_and_element(self, interpreted):
        _, masks = interpreted
        assert torch.equal(masks["a"], masks["a_again"])
        assert torch.equal(masks["shifted"], masks["a"][1:])  # the same elements, asked from another row
        assert torch.equal(masks["narrow"], masks["a"][:, :16])  # nor does the output's width matter
        assert not torch.equal(masks["other_seed"], masks["a"])
        assert not torch.equal(masks["shifted"], masks["a"][:-1])  # other elements, another mask

    @pytest.mark.parametrize("name, p", [("p10", 0.1), ("p30", 0.3), ("p50", 0.5), ("p90", 0.9)])
    def test_keep_fraction_is_one_minus_p(self, interpreted, name, p):
        """Two-sided exact binomial test at level ALPHA on the kernel's 32768 elements, against 1 − p̂."""
        mask = interpreted[1][name]
        assert stats.binomtest(int(mask.sum()), mask.numel(), 1 - KernelDropout(SEED, p).p_hat).pvalue > ALPHA

    @pytest.mark.parametrize("name", ["layer", "layer_p01"])
    def test_fused_layer_matches_the_masked_formula(self, interpreted, name):
        report, _ = interpreted
        layer = report[name]
        assert max(layer["errors"].values()) < 5e-3, layer["errors"]  # as test_lowrank_gemm's float16 layer
        # three forwards (one with a backward: gc, then ∂x with ∂B and ∂α)
        assert report[name + "_calls"] == {"gemm_dropout": 3, "gemm": 1, "projection": 1}

    def test_nothing_mask_sized_is_saved(self, interpreted):
        assert interpreted[0]["layer"]["largest_saved"] < 64 * 64  # W0 (64 × 32) is the largest

    def test_mask_follows_the_generator(self, interpreted):
        for name in ("layer", "layer_p01"):
            layer = interpreted[0][name]
            assert layer["same_again"] and layer["next_call_differs"]

    def test_mask_does_not_depend_on_values(self, interpreted):
        for p, values in interpreted[0]["values"].items():
            assert values["same"] == [True, True], p

    def test_masked_projection_matches_float64(self, interpreted):
        errors = interpreted[0]["projection"]
        assert max(errors.values()) < 2e-3, errors  # float16 output rounding: 2⁻¹¹ ≈ 4.9e-4 relative

    def test_redraw_keeps_the_torch_mask(self, interpreted):
        """dropout_mask "redraw" never takes the in-kernel mask: no dropout GEMM, no masked
        projection; the torch mask is drawn again in the backward, the plain ∂x GEMM runs."""
        report, _ = interpreted
        assert report["layer_redraw_calls"] == {"gemm_dropout": 0, "gemm": 1, "projection": 0}
        assert report["layer_redraw"]["same_again"] and report["layer_redraw"]["next_call_differs"]

    def test_where_the_kernel_does_not_run(self, interpreted):
        report, _ = interpreted
        assert all(report["refused"].values()), report["refused"]


@pytest.fixture
def triton_backend():
    fused.set_backend("triton")
    yield
    fused.set_backend("auto")


def test_without_triton_the_layer_keeps_the_torch_mask(monkeypatch, triton_backend):
    """No Triton: the fused layer at p = 0.5 ("auto") stores the Dropout module's mask, the plain formula's."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name, *a: None if name == "triton" else
                        find_spec(name, *a))
    monkeypatch.setattr(backend, "launcher", launch.TritonLauncher())
    # float32: the float16 loss's sum over 4,096 elements alone moves ∂α by several percent across torch builds
    _, layer = make_layers(P_OUT, torch.float32)
    _, plain = make_layers(P_OUT, torch.float32)
    plain.impl = "plain"
    x = torch.randn(2, 32, 32)
    outs = []
    for mod in (layer, plain):
        torch.manual_seed(4)
        outs.append(_grads(mod, mod, x))
    assert (outs[0]["y"] != 0).any()
    for k in outs[1]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-5)
    assert lowrank_gemm.dropout_lowrank_matmul(torch.zeros(4, 16).half(), torch.zeros(16, 16).half(),
                                               torch.zeros(4, 2).half(), torch.zeros(2, 16).half(), p=0.5) is None
    with pytest.raises(RuntimeError, match="needs Triton"):
        kernel_mask.keep_mask(KernelDropout(1, 0.5), 4, 16)


def test_keep_mask_checks_its_arguments():
    for m, n, offset in ((0, 4, 0), (4, 0, 0), (4, 4, -1), (4, 4, 2**63 - 3)):
        with pytest.raises(ValueError, match="need m ≥ 1"):
            kernel_mask.keep_mask(KernelDropout(1, 0.5), m, n, row_offset=offset)


needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")


@needs_hopper
def test_cuda_mask_is_the_definition():
    d = KernelDropout(SEED, 0.5)
    assert np.array_equal(kernel_mask.keep_mask(d, 300, 256, device="cuda").cpu().numpy(),
                          reference_mask(SEED, 300, 256, 0.5))
    assert np.array_equal(kernel_mask.keep_mask(KernelDropout(OTHER, 0.1), 300, 37, device="cuda").cpu().numpy(),
                          reference_mask(OTHER, 300, 37, 0.1))
    big = 2**34 + 3
    assert np.array_equal(kernel_mask.keep_mask(d, 4, 48, row_offset=big, device="cuda").cpu().numpy(),
                          reference_mask(SEED, 4, 48, 0.5, row_offset=big))


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.5, 0.1])
def test_cuda_fused_layer_matches_the_masked_formula(dtype, p, triton_backend):
    out = layer_results(p, "cuda", dtype)
    assert max(out["errors"].values()) < (3e-2 if dtype == torch.bfloat16 else 5e-3), out["errors"]
    assert out["largest_saved"] < 64 * 64 and out["same_again"] and out["next_call_differs"]
    assert value_independence("cuda", dtype, p)["same"] == [True, True]


@needs_hopper
@pytest.mark.parametrize("m, n, r", [(300, 256, 8), (1000, 712, 32), (64, 4096, 64)])
@pytest.mark.parametrize("p", [0.3, 0.5])
def test_cuda_masked_projection_matches_float64(m, n, r, p):
    g, c = torch.randn(m, n, device="cuda").bfloat16(), torch.randn(r, n, device="cuda").bfloat16()
    d = KernelDropout(SEED, p)
    keep = torch.from_numpy(reference_mask(SEED, m, n, p)).cuda()
    want = (g.double() * keep / (1 - d.p_hat)) @ c.double().T
    got = kernel_mask.masked_projection(g, c, d)
    assert ((got.double() - want).abs().max() / want.abs().max()).item() < 1e-2  # bfloat16 output rounding


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_mask_kernels_qualify_for_the_cached_launch():
    """Their integers are all unspecialized (test_lowrank_gemm.py says why that matters)."""
    from tlora_analysis.adapters.fused import kernels

    assert backend.launcher.ints_unspecialized(kernels.keep_mask_kernel, 1, 6)
    assert backend.launcher.ints_unspecialized(kernels.masked_projection_kernel, 3, 10)


def compiled_for_sm90a(fn, constexprs: dict, stages: int, warps: int, tmp_path) -> tuple[str, str]:
    """``fn`` compiled by Triton for an H100 (sm_90a; no GPU needed) with bf16 pointers (float32
    for scales and shares, int32 for the counter) and int32 integers: its PTX and ptxas's report."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    names = [p.name for p in fn.params]
    signature = {p.name: "constexpr" if p.is_constexpr else
                 "*fp32" if p.name in ("scale_ptr", "grad_scale_ptr", "share_ptr") else
                 "*i32" if p.name == "count_ptr" else "*bf16" if p.name.endswith("_ptr") else "i32"
                 for p in fn.params}
    source = ASTSource(fn=fn, signature=signature, constexprs={(names.index(k),): v for k, v in constexprs.items()})
    ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": warps, "num_stages": stages}).asm["ptx"]
    (tmp_path / "kernel.ptx").write_text(ptx)
    report = subprocess.run([get_ptxas(90).path, "-arch=sm_90a", "-v", str(tmp_path / "kernel.ptx"),
                             "-o", str(tmp_path / "kernel.cubin")], capture_output=True, text=True, check=True)
    return ptx, report.stdout + report.stderr


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("bits", [True, False])
@pytest.mark.parametrize("rank", [8, 32, 64])
def test_masked_projection_compiles_without_spills(bits, rank, tmp_path):
    """The masked projection with the package's tile for each mask, compiled for an H100: no
    register spills (the bit mask's 256-column, four-warp tile would spill with the pair mask)."""
    from tlora_analysis.adapters.fused import kernels

    bm, bn, stages, warps = kernel_mask._tile(torch.device("cuda"), bits)
    constexprs = {"RP": max(16, 1 << (rank - 1).bit_length()), "BM": bm, "BN": bn, "BITS": bits}
    _, report = compiled_for_sm90a(kernels.masked_projection_kernel, constexprs, stages, warps, tmp_path)
    assert "0 bytes spill stores, 0 bytes spill loads" in report


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
@pytest.mark.parametrize("dropout, bits, backward", [(False, False, False), (True, False, False), (True, True, False),
                                                     (False, False, True)])
@pytest.mark.parametrize("w_t, v_t, bias", [(True, False, False), (False, True, True)])
def test_gemm_keeps_its_tensor_core_products_in_flight(dropout, bits, backward, w_t, v_t, bias, monkeypatch,
                                                       tmp_path):
    """Compiled for an H100 (sm_90a; no GPU needed), the GEMM's K loop issues each tensor-core
    product before the previous one has finished (``wgmma.wait_group 1`` in the PTX), with and
    without the mask, and its registers do not spill (Triton's ptxas). With the mask the tile
    loop is not flattened: flattened, every product is waited for, which doubles the kernel's
    time (docs/benchmarks.md, "Designs measured and not kept"). Both masks: pairs and bits; and
    the backward's ∂x GEMM, with the core gradients and the sum onto a sibling's ∂x."""
    from tlora_analysis.adapters.fused import kernels

    fn = kernels.lowrank_matmul_kernel
    # the package's own configuration for GPU 0, an H100's 132 multiprocessors
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(multi_processor_count=132))
    constexprs, _, _, stages, warps = lowrank_gemm._config(0, w_t, v_t, 32, True, True, bias, backward, dropout,
                                                           bits, backward)
    ptx, report = compiled_for_sm90a(fn, constexprs, stages, warps, tmp_path)
    assert "wgmma.wait_group.sync.aligned 1;" in ptx
    assert "0 bytes spill stores, 0 bytes spill loads" in report
