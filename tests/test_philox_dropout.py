"""The fused layer's output dropout by a Philox keep-mask of (seed, element): the mask's definition,
its statistics, and the fused forward and gradients against the plain formula under that mask.

The mask is checked against a NumPy Philox4x32-10 written here (itself checked against Random123's
known-answer vectors), so the definition in philox_mask.py is tested independently of Triton.
The kernels run under Triton's interpreter in a subprocess (float16: the interpreter has no
bfloat16 products; see test_lowrank_gemm.py), on a Hopper GPU where there is one, and not at all
where Triton cannot run (the layer's torch mask then).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy import stats

from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, fused
from tlora_analysis.adapters.fused import backend, launch, lowrank_gemm, philox_mask
from tlora_analysis.adapters.fused.philox_mask import PhiloxDropout, draw_seed, drop_below

from test_lowrank_gemm import HOPPER, needs_interpreter, run_interpreted

_M32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al. 2011) on arrays of uint64 holding 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = (np.uint64(k) for k in key)
    for _ in range(10):
        p0, p2 = c0 * np.uint64(0xD2511F53), c2 * np.uint64(0xCD9E8D57)
        c0, c1, c2, c3 = (p2 >> np.uint64(32)) ^ c1 ^ k0, p2 & _M32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _M32
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & _M32, (k1 + np.uint64(0xBB67AE85)) & _M32
    return c0, c1, c2, c3


def reference_mask(seed: int, m: int, n: int, p: float, row_offset: int = 0) -> np.ndarray:
    """philox_mask.py's definition, written out: element e = i · N + j is kept iff byte e mod 16
    (little-endian) of Philox(counter (e >> 4 low, high, 0, 0), key (s mod 2³¹, s >> 31)) ≥ 256 p."""
    rows = np.arange(row_offset, row_offset + m, dtype=np.uint64)
    e = rows[:, None] * np.uint64(n) + np.arange(n, dtype=np.uint64)[None, :]
    group = e >> np.uint64(4)
    zero = np.zeros_like(group)
    words = philox4x32_10((group & _M32, group >> np.uint64(32), zero, zero), (seed % 2**31, seed >> 31))
    b = e & np.uint64(15)
    word = np.choose((b >> np.uint64(2)).astype(np.int64), words)
    byte = (word >> ((b & np.uint64(3)) * np.uint64(8))) & np.uint64(255)
    return byte >= int(p * 256)


def test_numpy_philox_matches_random123_known_answers():
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, want in cases:
        assert tuple(int(w[0]) for w in philox4x32_10([[c] for c in counter], key)) == want


def test_drop_below_takes_multiples_of_a_256th_only():
    assert [drop_below(p) for p in (0.5, 0.25, 1 / 256, 255 / 256)] == [128, 64, 1, 255]
    assert [drop_below(p) for p in (0.1, 0.3, 0.0, 1.0, 0.5 + 2**-20)] == [None] * 5
    assert PhiloxDropout(2**62 - 1, 0.5).keys == (2**31 - 1, 2**31 - 1)
    assert PhiloxDropout(5 * 2**31 + 7, 0.25).keys == (7, 5) and PhiloxDropout(3, 0.25).drop_below == 64
    for seed, p in ((2**62, 0.5), (-1, 0.5), (0, 0.1)):
        with pytest.raises(ValueError, match="multiple of 1/256"):
            PhiloxDropout(seed, p)


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


INTERPRETED = r"""
import json, sys
import torch
from safetensors.torch import save_file
from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused import functions, lowrank_gemm, philox_mask
from tlora_analysis.adapters.fused.philox_mask import PhiloxDropout, keep_mask
sys.path.insert(0, "tests")
from test_philox_dropout import layer_results, value_independence

SEED, OTHER = 0x2BADC0FFEE1234, 0x1234567
fused.set_backend("triton")
d, big = PhiloxDropout(SEED, 0.5), 2**36 + 3  # rows past 2³⁶: Philox counters past 2³²
masks = {"a": keep_mask(d, 40, 64), "a_again": keep_mask(d, 40, 64), "other_seed": keep_mask(PhiloxDropout(OTHER, 0.5), 40, 64),
         "shifted": keep_mask(d, 39, 64, row_offset=1), "big": keep_mask(d, 4, 48, row_offset=big),
         "p25": keep_mask(PhiloxDropout(SEED, 0.25), 128, 256), "p50": keep_mask(d, 128, 256),
         "p78": keep_mask(PhiloxDropout(OTHER, 200 / 256), 128, 256)}
save_file({k: v.contiguous() for k, v in masks.items()}, "OUT_PATH")
calls = {"gemm_dropout": 0, "gemm": 0, "projection": 0}
gemm = lowrank_gemm._triton_lowrank_matmul
def counted_gemm(*a):
    calls["gemm_dropout" if len(a) > 16 and a[16] is not None else "gemm"] += 1
    return gemm(*a)
lowrank_gemm._triton_lowrank_matmul = counted_gemm
projection = functions.masked_projection
functions.masked_projection = lambda *a: calls.__setitem__("projection", calls["projection"] + 1) or projection(*a)
report = {"big": big, "layer": layer_results(0.5), "layer_calls": dict(calls)}
calls.update(gemm_dropout=0, gemm=0, projection=0)
report["layer_p03"] = layer_results(0.3)
report["layer_p03_calls"] = dict(calls)
calls.update(gemm_dropout=0, gemm=0, projection=0)
report["layer_auto"] = layer_results(0.5, mask="auto")
report["layer_auto_calls"] = dict(calls)
report["values"] = value_independence()
def refused(n, p):
    x, w, u, v = torch.randn(64, 32).half(), torch.randn(32, n).half(), torch.randn(64, 8).half(), torch.randn(8, n).half()
    return lowrank_gemm.dropout_lowrank_matmul(x, w, u, v, p=p) is None
report["refused"] = {"p 0.3": refused(64, 0.3), "40 columns": refused(40, 0.5), "control (runs)": not refused(64, 0.5)}
fused.set_backend("cublas")
report["refused"]["cublas backend"] = refused(64, 0.5)
print(json.dumps(report))
"""

P_OUT = 0.5


def make_layers(p: float, dtype: torch.dtype, mask: str = "kernel"):
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


def masked_formula(layer: TLoRALinear, x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """x W0ᵀ + b + α ((x A) B C) ∘ keep / (1 − p): the plain formula with the mask applied by hand."""
    adapter = layer.tlora_alpha * (((x @ layer.tlora_A) @ layer.tlora_B) @ layer.tlora_C)
    return torch.nn.functional.linear(x, layer.base_layer.weight, layer.base_layer.bias) + adapter * keep / (1 - p)


def _grads(fn, layer, x, saved=None):
    """y = fn(x) and the gradients of a loss that weighs each element differently; the numel of
    every tensor fn's autograd graph saves appended to ``saved``."""
    x = x.clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t if saved is None else saved.append(t.numel()) or t,
                                                  lambda t: t):
        y = fn(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype, device=y.device).reshape(y.shape)).sum().backward()
    return {"y": y.detach(), "x": x.grad, "B": layer.tlora_B.grad, "alpha": layer.tlora_alpha.grad.reshape(1)}


def _rel(got, want):
    return ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()


def layer_results(p: float, device: str = "cpu", dtype: torch.dtype = torch.float16,
                  mask: str = "kernel") -> dict:
    """The fused layer (``dropout_mask`` ``mask``) against the float64 formula under the Philox
    mask of the seed the layer draws (with "kernel" and p a multiple of 1/256): relative errors of
    y, ∂x, ∂B and ∂α; the largest tensor the autograd graph saved; whether the generator's state
    restored gives the same output, and whether the next call draws another mask."""
    ref, layer = make_layers(p, dtype, mask)
    layer.to(device)
    x = torch.randn(2, 32, 32, dtype=torch.float64)
    torch.manual_seed(5)
    seed = draw_seed()
    keep = philox_mask.keep_mask(PhiloxDropout(seed, p), 64, 64, device=device).cpu().double().view(2, 32, 64) \
        if drop_below(p) and mask == "kernel" else None
    saved = []
    torch.manual_seed(5)
    fast = _grads(layer, layer, x.to(device, dtype), saved)
    state_after = torch.get_rng_state()
    out = {"largest_saved": max(saved)}
    if keep is not None:
        want = _grads(lambda t: masked_formula(ref, t, keep, p), ref, x)
        out["errors"] = {k: _rel(fast[k], want[k]) for k in want}
    torch.manual_seed(5)
    out["same_again"] = bool(torch.equal(layer(x.to(device, dtype)), fast["y"]))
    torch.set_rng_state(state_after)
    out["next_call_differs"] = not torch.equal(layer(x.to(device, dtype)), fast["y"])
    return out


def value_independence(device: str = "cpu", dtype: torch.dtype = torch.float16) -> dict:
    """The dropped elements of the rank-r term (w = 0) for two unrelated operands and one seed,
    against keep_mask: the mask depends on (seed, element) only."""
    d = PhiloxDropout(0x5EED, P_OUT)
    keep = philox_mask.keep_mask(d, 64, 96, device=device)
    same = []
    for seed in (1, 2):
        g = torch.Generator().manual_seed(seed)
        u, v = (torch.randn(*s, generator=g).to(device, dtype) for s in ((64, 8), (8, 96)))
        x, w = torch.randn(64, 32, generator=g).to(device, dtype), torch.zeros(32, 96, dtype=dtype, device=device)
        out, _ = lowrank_gemm.dropout_lowrank_matmul(x, w, u, v, p=P_OUT, seed=d.seed)
        same.append(bool(torch.equal(out != 0, keep)))
    return {"same": same, "kept": keep.float().mean().item()}


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    path = tmp_path_factory.mktemp("philox") / "masks.safetensors"
    report = run_interpreted(INTERPRETED.replace("OUT_PATH", str(path)))
    return report, load_file(path)


SEED, OTHER = 0x2BADC0FFEE1234, 0x1234567


@needs_interpreter
class TestInterpreted:
    def test_mask_is_the_definition(self, interpreted):
        report, masks = interpreted
        assert np.array_equal(masks["a"].numpy(), reference_mask(SEED, 40, 64, 0.5))
        assert np.array_equal(masks["p25"].numpy(), reference_mask(SEED, 128, 256, 0.25))
        assert np.array_equal(masks["p78"].numpy(), reference_mask(OTHER, 128, 256, 200 / 256))

    def test_offsets_past_two_to_the_31(self, interpreted):
        report, masks = interpreted
        assert report["big"] * 48 // 16 > 2**32  # the counter's high word in use
        assert np.array_equal(masks["big"].numpy(), reference_mask(SEED, 4, 48, 0.5, row_offset=report["big"]))

    def test_mask_is_a_function_of_seed_and_element(self, interpreted):
        _, masks = interpreted
        assert torch.equal(masks["a"], masks["a_again"])
        assert torch.equal(masks["shifted"], masks["a"][1:])  # the same elements, asked from another row
        assert not torch.equal(masks["other_seed"], masks["a"])
        assert not torch.equal(masks["shifted"], masks["a"][:-1])  # other elements, another mask

    @pytest.mark.parametrize("name, p", [("p25", 0.25), ("p50", 0.5), ("p78", 200 / 256)])
    def test_keep_fraction_is_one_minus_p(self, interpreted, name, p):
        """Two-sided exact binomial test at α = 10⁻³ on 32768 elements (a fixed seed: deterministic)."""
        mask = interpreted[1][name]
        assert stats.binomtest(int(mask.sum()), mask.numel(), 1 - p).pvalue > 1e-3

    def test_fused_layer_matches_the_masked_formula(self, interpreted):
        report, _ = interpreted
        layer = report["layer"]
        assert max(layer["errors"].values()) < 5e-3, layer["errors"]  # as test_lowrank_gemm's float16 layer
        # three forwards (one with a backward: gc, then ∂x with ∂B and ∂α)
        assert report["layer_calls"] == {"gemm_dropout": 3, "gemm": 1, "projection": 1}

    def test_nothing_mask_sized_is_saved(self, interpreted):
        assert interpreted[0]["layer"]["largest_saved"] < 64 * 64  # W0 (64 × 32) is the largest

    def test_mask_follows_the_generator(self, interpreted):
        layer = interpreted[0]["layer"]
        assert layer["same_again"] and layer["next_call_differs"]

    def test_mask_does_not_depend_on_values(self, interpreted):
        values = interpreted[0]["values"]
        assert values["same"] == [True, True]

    def test_auto_keeps_the_torch_mask(self, interpreted):
        """dropout_mask "auto" (the default) never takes the in-kernel mask: no dropout GEMM, no
        masked projection; the CPU stores nn.Dropout's mask, the plain ∂x GEMM runs."""
        report, _ = interpreted
        assert report["layer_auto_calls"] == {"gemm_dropout": 0, "gemm": 1, "projection": 0}
        assert report["layer_auto"]["same_again"] and report["layer_auto"]["next_call_differs"]

    def test_other_p_and_shapes_keep_the_torch_mask(self, interpreted):
        report, _ = interpreted
        assert all(report["refused"].values()), report["refused"]
        assert report["layer_p03_calls"] == {"gemm_dropout": 0, "gemm": 1, "projection": 0}  # ∂x only
        assert report["layer_p03"]["same_again"] and report["layer_p03"]["next_call_differs"]


@pytest.fixture
def triton_backend():
    fused.set_backend("triton")
    yield
    fused.set_backend("auto")


def test_without_triton_the_layer_keeps_the_torch_mask(monkeypatch, triton_backend):
    """No Triton: the fused layer at p = 0.5 ("kernel") stores nn.Dropout's mask, the plain formula's."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(launch.importlib.util, "find_spec", lambda name, *a: None if name == "triton" else
                        find_spec(name, *a))
    monkeypatch.setattr(backend, "launcher", launch.TritonLauncher())
    _, layer = make_layers(P_OUT, torch.float16)
    _, plain = make_layers(P_OUT, torch.float16)
    plain.impl = "plain"
    x = torch.randn(2, 32, 32, dtype=torch.float16)
    outs = []
    for mod in (layer, plain):
        torch.manual_seed(4)
        outs.append(_grads(mod, mod, x))
    assert (outs[0]["y"] != 0).any()
    for k in outs[1]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-2, atol=1e-2)
    assert lowrank_gemm.dropout_lowrank_matmul(torch.zeros(4, 16).half(), torch.zeros(16, 16).half(),
                                               torch.zeros(4, 2).half(), torch.zeros(2, 16).half(), p=0.5) is None
    with pytest.raises(RuntimeError, match="needs Triton"):
        philox_mask.keep_mask(PhiloxDropout(1, 0.5), 4, 16)


def test_keep_mask_refuses_rows_that_split_a_philox_group():
    with pytest.raises(ValueError, match="multiple of 16"):
        philox_mask.keep_mask(PhiloxDropout(1, 0.5), 4, 40)


needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")


@needs_hopper
def test_cuda_mask_is_the_definition():
    d = PhiloxDropout(SEED, 0.5)
    assert np.array_equal(philox_mask.keep_mask(d, 300, 256, device="cuda").cpu().numpy(),
                          reference_mask(SEED, 300, 256, 0.5))
    big = 2**34 + 3
    assert np.array_equal(philox_mask.keep_mask(d, 4, 48, row_offset=big, device="cuda").cpu().numpy(),
                          reference_mask(SEED, 4, 48, 0.5, row_offset=big))


@needs_hopper
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_fused_layer_matches_the_masked_formula(dtype, triton_backend):
    out = layer_results(P_OUT, "cuda", dtype)
    assert max(out["errors"].values()) < (3e-2 if dtype == torch.bfloat16 else 5e-3), out["errors"]
    assert out["largest_saved"] < 64 * 64 and out["same_again"] and out["next_call_differs"]
    assert value_independence("cuda", dtype)["same"] == [True, True]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_mask_kernels_qualify_for_the_cached_launch():
    """Their integers are all unspecialized (test_lowrank_gemm.py says why that matters)."""
    from tlora_analysis.adapters.fused import kernels

    assert backend.launcher.ints_unspecialized(kernels.keep_mask_kernel, 1, 5)
    assert backend.launcher.ints_unspecialized(kernels.masked_projection_kernel, 3, 10)
