"""core_grads = (α uᵀ gc, ⟨B, uᵀ gc⟩): the Triton kernel and the torch composition against float64.

As for lowrank_gemm: the kernel runs under Triton's interpreter on the CPU (float16, in a
subprocess, since the interpreter is chosen when a kernel is defined), compiled on a Hopper GPU
(skipped elsewhere), and not at all for float32/float64 or without the interpreter. The
reference is float64 from the same (rounded) operands, so the kernel's only errors are float32
summation and the final rounding of each result.
"""

from __future__ import annotations

import pytest
import torch

from tlora_analysis.adapters.fused import backend
from tlora_analysis.adapters.fused import core_grads as core_grads_module
from tlora_analysis.adapters.fused.core_grads import core_grads, supported

from test_lowrank_gemm import HOPPER, needs_interpreter, run_interpreted

# (tokens, rank, layouts): fewer rows than a block, more blocks than programs (the interpreter's
# 16-row blocks and 4 shares), padded ranks (20 → 32, 40 → 64), the largest rank, u and gc as
# column slices of wider storage, b transposed.
CASES = [(70, 8, False), (200, 20, True), (5, 16, False), (33, 40, True), (130, 64, False)]


def operands(case, dtype, device="cpu", seed=0):
    """u, gc (m × r), b (r × r), alpha (one element), in the layouts the case names."""
    m, r, strided = case
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    if strided:
        u, gc, b = rnd(m, r + 8)[:, 3:3 + r], rnd(m, 2 * r)[:, r:], rnd(r, r).T
    else:
        u, gc, b = rnd(m, r), rnd(m, r), rnd(r, r)
    return u, gc, b, torch.tensor([-0.7], dtype=dtype, device=device)


def dense64(u, gc, b, alpha):
    """(∂B, ∂α) in float64 from float64 copies of the operands, and Σ |B ∘ G|: the scale of ∂α's
    summation error (∂α itself may cancel)."""
    g_core = u.double().cpu().T @ gc.double().cpu()
    terms = b.double().cpu() * g_core
    return alpha.double().cpu() * g_core, terms.sum().reshape(alpha.shape), terms.abs().sum().item()


def errors(got, want):
    """Relative error of ∂B (max-norm) and of ∂α (against Σ |B ∘ G|)."""
    grad_b, grad_alpha = got
    want_b, want_alpha, scale = want
    err_b = ((grad_b.double().cpu() - want_b).abs().max() / want_b.abs().max()).item()
    return err_b, abs(grad_alpha.double().cpu().item() - want_alpha.item()) / scale


def test_torch_composition_is_exact_in_float64():
    for case in CASES:
        ops = operands(case, torch.float64)
        assert not supported(*ops)  # float64 never takes the kernel
        (grad_b, grad_alpha), (want_b, want_alpha, _) = core_grads(*ops), dense64(*ops)
        torch.testing.assert_close(grad_b, want_b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad_alpha, want_alpha, rtol=1e-12, atol=1e-12)


def test_by_hand():
    """u = [[1], [2]], gc = [[3], [4]], B = [[2]], α = 0.5: G = 11, ∂B = 5.5, ∂α = 22."""
    u, gc = torch.tensor([[1.0], [2.0]], dtype=torch.float64), torch.tensor([[3.0], [4.0]], dtype=torch.float64)
    grad_b, grad_alpha = core_grads(u, gc, torch.tensor([[2.0]], dtype=torch.float64),
                                    torch.tensor([0.5], dtype=torch.float64))
    assert grad_b.tolist() == [[5.5]] and grad_alpha.tolist() == [22.0]


def test_gradients_not_needed_are_none():
    ops = operands(CASES[0], torch.float64)
    assert core_grads(*ops, need_b=False, need_alpha=False) == (None, None)
    assert core_grads(*ops, need_alpha=False)[1] is None and core_grads(*ops, need_b=False)[0] is None


def test_shapes_that_do_not_chain_are_refused():
    u, gc, b, alpha = operands(CASES[0], torch.float64)
    for bad in ((u, gc[:, :-1], b, alpha), (u, gc[:-1], b, alpha), (u, gc, b[:-1], alpha),
                (u, gc, b, torch.ones(2, dtype=torch.float64)), (u[None], gc[None], b, alpha),
                (u[0, 0], gc[0, 0], b, alpha)):
        with pytest.raises(ValueError, match="shapes do not chain"):
            core_grads(*bad)


def unsupported_cases(device):
    """supported() for operands the kernel must refuse (each should be False where it runs)."""
    u, gc, b, alpha = operands(CASES[0], torch.float16, device)
    big = operands((8, 72, False), torch.float16, device)
    return {"float32": supported(u.float(), gc.float(), b.float(), alpha),
            "mixed dtypes": supported(u, gc.float(), b, alpha),
            "rank 72 (over 64)": supported(*big),
            "no tokens": supported(u[:0], gc[:0], b, alpha),
            "u with a column stride": supported(u.T.contiguous().T, gc, b, alpha),
            "integer alpha": supported(u, gc, b, torch.tensor([1], device=device)),
            "two-element alpha": supported(u, gc, b, torch.ones(2, dtype=torch.float16, device=device)),
            **({"bfloat16 under the interpreter": supported(u.bfloat16(), gc.bfloat16(), b.bfloat16(), alpha)}
               if device == "cpu" else {})}


INTERPRETED = r"""
import json, sys
import torch
sys.path.insert(0, "tests")
from test_core_grads import CASES, dense64, errors, operands, unsupported_cases
from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused import core_grads as module
from tlora_analysis.adapters.fused.core_grads import core_grads, supported
fused.set_backend("triton")
calls = []
kernel = module._triton_core_grads
module._triton_core_grads = lambda *a: calls.append(1) or kernel(*a)
report = {"cases": []}
for case in CASES:
    ops = operands(case, torch.float16)
    first, again = core_grads(*ops), core_grads(*ops)
    report["cases"].append({"supported": supported(*ops), "errors": errors(first, dense64(*ops)),
                            "torch_errors": errors(module._torch_core_grads(*ops), dense64(*ops)),
                            "repeatable": all(torch.equal(a, b) for a, b in zip(first, again)),
                            "dtypes": [str(t.dtype) for t in first]})
report["calls"] = len(calls)
report["unsupported"] = unsupported_cases("cpu")
# by hand, exact in float16: u = [[1, 0], [0, 1], [1, 1]], gc = [[4, 2]] * 3, B = [[1, 2], [3, 4]],
# α = 2: G = [[8, 4], [8, 4]], ∂B = 2 G, ∂α = 8 + 8 + 24 + 16 = 56
u = torch.tensor([[1.0, 0], [0, 1], [1, 1]], dtype=torch.float16)
gc = torch.tensor([[4.0, 2]] * 3, dtype=torch.float16)
b, alpha = torch.tensor([[1.0, 2], [3, 4]], dtype=torch.float16), torch.tensor([2.0], dtype=torch.float16)
grad_b, grad_alpha = core_grads(u, gc, b, alpha)
report["hand"] = [grad_b.tolist(), grad_alpha.tolist()]
report["hand_calls"] = len(calls) - report["calls"]
# a float32, zero-dimensional α next to float16 factors keeps its own dtype and shape
grad_b, grad_alpha = core_grads(u, gc, b, torch.tensor(2.0))
report["alpha_float32"] = [str(grad_b.dtype), str(grad_alpha.dtype), list(grad_alpha.shape), grad_alpha.item()]
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRETED)


@needs_interpreter
class TestInterpreted:
    @pytest.mark.parametrize("i", range(len(CASES)))
    def test_kernel_matches_float64(self, interpreted, i):
        case = interpreted["cases"][i]
        assert case["supported"]
        err_b, err_alpha = case["errors"]
        # float16 rounding of each result (2⁻¹¹ ≈ 4.9e-4 relative) over an exact float32 sum
        assert err_b < 1e-3 and err_alpha < 1e-3, case
        # G kept in float32 until the end: no worse than torch, which rounds G to float16 first
        assert err_b <= case["torch_errors"][0] + 1e-4 and err_alpha <= case["torch_errors"][1] + 1e-4, case
        assert case["repeatable"]  # a fixed order of summation
        assert case["dtypes"] == ["torch.float16"] * 2

    def test_every_case_ran_the_kernel(self, interpreted):
        assert interpreted["calls"] == 2 * len(CASES)

    def test_by_hand(self, interpreted):
        assert interpreted["hand_calls"] == 1
        assert interpreted["hand"] == [[[16.0, 8.0], [16.0, 8.0]], [56.0]]
        assert interpreted["alpha_float32"] == ["torch.float16", "torch.float32", [], 56.0]

    def test_refuses_what_it_cannot_run(self, interpreted):
        assert not any(interpreted["unsupported"].values()), interpreted["unsupported"]


@pytest.fixture
def cuda_kernel_calls(monkeypatch):
    """The backend set to "triton" with an empty launch cache; the list of kernel calls."""
    monkeypatch.setattr(backend, "mode", "triton")
    monkeypatch.setattr(backend.launcher, "compiled", {})
    calls = []
    kernel = core_grads_module._triton_core_grads
    monkeypatch.setattr(core_grads_module, "_triton_core_grads", lambda *a: calls.append(1) or kernel(*a))
    return calls


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_kernel_matches_float64(dtype, cuda_kernel_calls):
    cases = CASES + [(8192, 32, False), (16384, 64, True), (100_000, 32, False)]
    for case in cases:
        ops = operands(case, dtype, "cuda")
        first, again = core_grads(*ops), core_grads(*ops)  # the JIT launch, then the cached one
        want = dense64(*ops)
        err_b, err_alpha = errors(first, want)
        torch_b, torch_alpha = errors(core_grads_module._torch_core_grads(*ops), want)
        tol = 8e-3 if dtype == torch.bfloat16 else 1e-3  # one rounding to the dtype
        assert err_b < tol and err_alpha < tol, (case, err_b, err_alpha)
        assert err_b <= torch_b + tol / 8 and err_alpha <= torch_alpha + tol / 8, (case, err_b, err_alpha)
        assert all(torch.equal(a, b) for a, b in zip(first, again)), case
    assert len(cuda_kernel_calls) == 2 * len(cases)
    torch.cuda.synchronize()
    counters = [c for (kind, *_), c in backend.launcher.buffers.items() if kind == "counter"]
    assert all(c.item() == 0 for c in counters)  # every launch reset its counter
    assert not any(unsupported_cases("cuda").values())


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
def test_cuda_graph_replay_matches_eager(cuda_kernel_calls):
    """Under capture the counter is a fresh zeroed buffer in the graph: replays give eager's result."""
    ops = operands((8192, 32, True), torch.bfloat16, "cuda")
    eager = core_grads(*ops)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        core_grads(*ops)  # compiled and cached off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = core_grads(*ops)
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(captured, eager))
