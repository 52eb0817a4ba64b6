"""lowrank_matmul = x w + scale · (u core) v (+ bias): the Triton kernel and the cuBLAS fallback against float64.

The kernel runs three ways here: under Triton's interpreter on the CPU (float16: the interpreter
has no bfloat16 products), in a subprocess because the interpreter is chosen when the kernel
is defined; compiled on a Hopper GPU (skipped elsewhere); and not at all (the fallback) for
float32/float64 and CPUs without the interpreter.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, fused
from tlora_analysis.adapters.fused import backend, lowrank_gemm
from tlora_analysis.adapters.fused import core_grads as core_grads_module
from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul, lowrank_matmul_with_core_grads, supported

ROOT = Path(__file__).resolve().parents[1]
HAS_TRITON = importlib.util.find_spec("triton") is not None
# Triton's interpreter reads loop bounds with int(array), which NumPy ≥ 2.4 refuses before Triton 3.7
INTERPRETER_OK = HAS_TRITON and tuple(int(p) for p in importlib.metadata.version("triton").split(".")[:2]) >= (3, 7)
HOPPER = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9 and HAS_TRITON

# (tokens, in, out, rank, w stored transposed, v stored transposed, bias): edges of the tiles,
# a padded rank (24 → 32), both layouts of both weight operands.
CASES = [(70, 48, 40, 8, True, False, False), (64, 64, 96, 32, False, True, True),
         (33, 40, 24, 24, True, True, True), (5, 16, 8, 8, False, False, True), (100, 80, 72, 64, True, False, True)]


def operands(case, dtype, device="cpu", seed=0):
    """x (m × k), w (k × n), u (m × r), v (r × n), bias, in the layouts the case names."""
    m, k, n, r, w_t, v_t, has_bias = case
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device, dtype)  # noqa: E731
    w = rnd(n, k).T if w_t else rnd(k, n)
    v = rnd(n, r).T if v_t else rnd(r, n)
    return rnd(m, k), w, rnd(m, r), v, (rnd(n) if has_bias else None)


def dense64(x, w, u, v, bias, core=None, scale=None):
    u = u.double() if core is None else u.double() @ core.double()
    out = x.double() @ w.double() + (1.0 if scale is None else scale.double()) * (u @ v.double())
    return out if bias is None else out + bias.double()


def core_operands(case, dtype, device="cpu", transposed=False, seed=1):
    """An r × r core (row-major, or a transposed view) and a one-element scale for ``case``."""
    g = torch.Generator().manual_seed(seed)
    core = torch.randn(case[3], case[3], generator=g, dtype=torch.float64).to(device, dtype)
    return (core.T if transposed else core), torch.tensor(-0.7, dtype=dtype, device=device)


def rel_err(got, want):
    return ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()


# besides CASES, for the core gradients in the GEMM's epilogue: several row blocks per program
# (the interpreter's 4 programs and 32-row tiles) and, on a GPU, the benchmark model's tile counts
GRAD_CASES = [(300, 32, 32, 16, False, False, False), (130, 48, 64, 40, True, True, False)]


def with_grads_operands(case, dtype, device="cpu"):
    """x, w, u, v (no bias), a transposed core and a scale (the fused layer's ∂x call: core = Bᵀ),
    and y of u's shape."""
    x, w, u, v, _ = operands(case, dtype, device)
    core, scale = core_operands(case, dtype, device, transposed=True)
    y = torch.randn(u.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(device, dtype)
    return x, w, u, v, core, scale, y


def with_grads_errors(got, ops):
    """Relative errors of (out, scale · yᵀ u, ⟨core, uᵀ y⟩) against float64 from the same operands;
    the last against Σ |core ∘ uᵀ y|, the scale of its summation error (it may cancel)."""
    x, w, u, v, core, scale, y = ops
    h = u.double().cpu().T @ y.double().cpu()  # r × r
    terms = core.double().cpu() * h
    out, grad_core, grad_scale = got
    return [rel_err(out, dense64(x, w, u, v, None, core, scale)), rel_err(grad_core, scale.double().cpu() * h.T),
            abs(grad_scale.double().cpu().item() - terms.sum().item()) / terms.abs().sum().item()]


def composition_with_grads(ops):
    """The same three results from cuBLAS and torch's core gradients (G rounded to the dtype first)."""
    x, w, u, v, core, scale, y = ops
    return (lowrank_gemm._cublas_lowrank_matmul(x, w, u, v, None, core, scale),
            *core_grads_module._torch_core_grads(y, u, core.T, scale))


INTERPRETED = r"""
import json, sys
import torch
from torch import nn
from tlora_analysis.adapters import TLoRAConfig, TLoRALinear, fused
from tlora_analysis.adapters.fused import lowrank_gemm
from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul, supported
sys.path.insert(0, "tests")
from test_lowrank_gemm import (CASES, GRAD_CASES, composition_with_grads, core_operands, dense64, layer_errors, operands,
                               rel_err, unsupported_cases, with_grads_errors, with_grads_operands)
from tlora_analysis.adapters.fused import core_grads as core_grads_module
from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul_with_core_grads

calls, grads_calls = [], []
kernel = lowrank_gemm._triton_lowrank_matmul
lowrank_gemm._triton_lowrank_matmul = lambda *a: calls.append(1) or kernel(*a)
grads_kernel = core_grads_module._triton_core_grads
core_grads_module._triton_core_grads = lambda *a: grads_calls.append(1) or grads_kernel(*a)
report = {"cases": []}
# the default backend ("auto"): the interpreter only in compiled code (on a GPU the kernel runs in eager mode too)
ops = operands(CASES[1], torch.float16)
lowrank_matmul(*ops)
report["auto_eager_calls"] = len(calls)
compiled = torch.compile(lambda *a: lowrank_matmul(*a).relu(), backend="aot_eager", fullgraph=True)
report["auto_compiled_err"] = rel_err(compiled(*ops), dense64(*ops).relu())
report["auto_compiled_calls"] = len(calls)
fused.set_backend("cublas")
compiled(*ops)
report["cublas_compiled_calls"] = len(calls) - report["auto_compiled_calls"]
fused.set_backend("triton")
calls.clear()
for case in CASES:
    ops = operands(case, torch.float16)
    report["cases"].append({"supported": supported(*ops[:4]), "err": rel_err(lowrank_matmul(*ops), dense64(*ops))})
    core, scale = core_operands(case, torch.float16, transposed=case[4])
    report["core_cases"] = report.get("core_cases", []) + [
        rel_err(lowrank_matmul(*ops, core=core, scale=scale), dense64(*ops, core, scale)),
        rel_err(lowrank_matmul(*ops, core=core), dense64(*ops, core)),
        rel_err(lowrank_matmul(*ops, scale=scale), dense64(*ops, None, scale))]
report["core_calls"] = len(calls)
report["flags"] = []
for case in CASES:  # w, v and core passed as stored with transpose flags: the other layout of each
    x, w, u, v, bias = operands(case, torch.float16)
    core, scale = core_operands(case, torch.float16)
    stored = [t.T.contiguous() for t in (w, v, core)]
    got = lowrank_matmul(x, stored[0], u, stored[1], bias, core=stored[2], scale=scale, transpose_w=True,
                         transpose_v=True, transpose_core=True)
    report["flags"].append({"supported": supported(x, stored[0], u, stored[1], core=stored[2], scale=scale, bias=bias,
                                                   transpose_w=True, transpose_v=True),
                            "err": rel_err(got, dense64(x, w, u, v, bias, core, scale))})
report["flags_calls"] = len(calls) - report["core_calls"]
report["with_grads"] = []
for case in CASES + GRAD_CASES:  # ∂x, ∂B and ∂α in one launch
    ops = with_grads_operands(case, torch.float16)
    first, again = (lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6]) for _ in range(2))
    report["with_grads"].append({"errors": with_grads_errors(first, ops),
                                 "composition_errors": with_grads_errors(composition_with_grads(ops), ops),
                                 "repeatable": all(torch.equal(a, b) for a, b in zip(first, again)),
                                 "dtypes": [str(t.dtype) for t in first]})
report["with_grads_calls"] = len(calls) - report["core_calls"] - report["flags_calls"]
report["with_grads_core_grads_calls"] = len(grads_calls)
before = len(calls)
report["add_to"] = []
for case in CASES:  # the result added onto the output's contents in the epilogue
    ops = operands(case, torch.float16)
    core, scale = core_operands(case, torch.float16, transposed=case[4])
    want = dense64(*ops, core, scale)
    into = torch.randn(want.shape).half()
    start = into.double()
    got = lowrank_matmul(*ops, core=core, scale=scale, add_to=into)
    report["add_to"].append({"in_place": got is into, "err": rel_err(got, want + start)})
for case in CASES + GRAD_CASES:
    ops = with_grads_operands(case, torch.float16)
    plain = lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])
    into = torch.randn(plain[0].shape).half()
    start = into.double()
    got = lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6], add_to=into)
    report["add_to"].append({"in_place": got[0] is into, "err": rel_err(got[0], plain[0].double() + start),
                             "same_core_grads": torch.equal(got[1], plain[1]) and torch.equal(got[2], plain[2])})
report["add_to_calls"] = len(calls) - before
# by hand: x = I, w = (0, 1/8, ..., 63/8), u = 1, v = 2 I, bias = (0, 1, ..., 7): out = w + 2 + bias, exactly
x, w = torch.eye(8, dtype=torch.float16), (torch.arange(64.0) / 8).reshape(8, 8).half()
u, v, bias = torch.ones(8, 8, dtype=torch.float16), 2 * torch.eye(8, dtype=torch.float16), torch.arange(8.0).half()
report["unsupported"] = unsupported_cases("cpu")
bf16 = operands(CASES[1], torch.bfloat16)
before = len(calls)
report["bf16_err"] = rel_err(lowrank_matmul(*bf16), dense64(*bf16))  # cuBLAS's, not the interpreter's
report["bf16_calls"] = len(calls) - before
report["hand_exact"] = bool(torch.equal(lowrank_matmul(x, w, u, v, bias), w + 2 + bias))
calls.clear(); grads_calls.clear()
report["layer"] = layer_errors(torch.float16, "cpu", dropout=0.0)
report["layer_kernel_calls"] = [len(calls), len(grads_calls)]  # forward and ∂x (with ∂B and ∂α); none
calls.clear(); grads_calls.clear()
report["layer_input_dropout"] = layer_errors(torch.float16, "cpu", dropout=0.3)
report["layer_input_dropout_kernel_calls"] = [len(calls), len(grads_calls)]  # forward only: ∂x needs the mask
# Triton's allocator is the caller's again after the package's JIT launches (kernel and core gradients)
import triton
from triton.runtime import _allocation
mine = lambda size, alignment, stream: torch.empty(size, dtype=torch.int8)  # noqa: E731
triton.set_allocator(mine)
calls.clear()
ops = with_grads_operands(CASES[0], torch.float16)
lowrank_matmul(*ops[:4])
lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])
report["allocator_kept"] = [len(calls), _allocation._allocator.get() is mine]
print(json.dumps(report))
"""


def layer_errors(dtype, device, dropout):
    """Relative errors of a fused TLoRA layer in ``dtype`` against float64 (output, ∂x, ∂B, ∂α).

    Dropout goes on the input, so the same seed gives both precisions the same mask.
    """
    torch.manual_seed(0)
    config = TLoRAConfig(rank=8, alpha_init=0.7, dropout=dropout, dropout_position="input", seed=1)
    ref = TLoRALinear(torch.nn.Linear(64, 48).double(), "layer", config)
    with torch.no_grad():
        ref.tlora_B.normal_()
    ref.impl = "plain"
    layer = TLoRALinear(torch.nn.Linear(64, 48), "layer", config).to(device, dtype)
    layer.load_state_dict(ref.state_dict())
    layer.dropout_mask = "redraw"  # a bool mask: on a CPU the Dropout module's, in any precision
    x = torch.randn(3, 7, 64, dtype=torch.float64)
    out = {}
    for name, mod, xx in (("ref", ref, x), ("fast", layer, x.to(device, dtype))):
        xx = xx.clone().requires_grad_(True)
        torch.manual_seed(5)
        y = mod(xx)
        (y * torch.linspace(-1, 1, y.numel(), device=y.device, dtype=y.dtype).reshape(y.shape)).sum().backward()
        out[name] = {"y": y.detach(), "x": xx.grad, "B": mod.tlora_B.grad, "alpha": mod.tlora_alpha.grad.reshape(1)}
    return {k: rel_err(out["fast"][k], out["ref"][k]) for k in out["ref"]}


def run_interpreted(script: str) -> dict:
    """The JSON report ``script`` prints last, run under Triton's interpreter in a subprocess (the
    interpreter is chosen when a kernel is defined)."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_interpreter = pytest.mark.skipif(not INTERPRETER_OK,
                                       reason="needs triton ≥ 3.7 (the test extra installs it on Linux x86-64)")


@pytest.fixture(scope="module")
def interpreted():
    return run_interpreted(INTERPRETED)


@needs_interpreter
class TestInterpreted:
    @pytest.mark.parametrize("i", range(len(CASES)))
    def test_kernel_matches_float64(self, interpreted, i):
        case = interpreted["cases"][i]
        assert case["supported"]  # the kernel ran, not the fallback
        assert case["err"] < 2e-3  # float16 output rounding: 2⁻¹¹ ≈ 4.9e-4 relative

    def test_core_and_scale_match_float64(self, interpreted):
        assert interpreted["core_calls"] == 4 * len(CASES)  # every product ran the kernel
        assert max(interpreted["core_cases"]) < 4e-3  # one more float16 rounding, of scale · u core

    def test_default_backend_interprets_in_compiled_code_only(self, interpreted):
        assert interpreted["auto_eager_calls"] == 0
        assert interpreted["auto_compiled_calls"] == 1 and interpreted["auto_compiled_err"] < 2e-3
        assert interpreted["cublas_compiled_calls"] == 0

    def test_refuses_what_it_cannot_run(self, interpreted):
        assert not any(interpreted["unsupported"].values()), interpreted["unsupported"]
        assert interpreted["bf16_calls"] == 0 and interpreted["bf16_err"] < 2e-2  # one bfloat16 rounding

    def test_hand_computed_case_is_exact(self, interpreted):
        assert interpreted["hand_exact"]

    @pytest.mark.parametrize("i", range(len(CASES + GRAD_CASES)))
    def test_core_gradients_in_the_epilogue_match_float64(self, interpreted, i):
        case = interpreted["with_grads"][i]
        assert max(case["errors"]) < 4e-3, case  # as core_and_scale; the gradients: one float16 rounding
        # G summed in float32 and rounded once: no worse than cuBLAS and torch, which round G first
        assert all(e <= c + 1e-4 for e, c in zip(case["errors"][1:], case["composition_errors"][1:])), case
        assert case["repeatable"]  # a fixed order of summation
        assert case["dtypes"] == ["torch.float16"] * 3

    def test_transpose_flags_read_the_stored_layouts(self, interpreted):
        assert interpreted["flags_calls"] == len(CASES)
        for case in interpreted["flags"]:
            assert case["supported"] and case["err"] < 2e-3

    def test_add_to_adds_onto_the_output_in_the_epilogue(self, interpreted):
        assert interpreted["add_to_calls"] == len(CASES) + 2 * len(CASES + GRAD_CASES)  # all through the kernel
        for case in interpreted["add_to"]:
            assert case["in_place"] and case["err"] < 4e-3, case  # one float16 rounding of the sum
            assert case.get("same_core_grads", True), case

    def test_core_gradients_in_the_epilogue_need_no_launch_of_their_own(self, interpreted):
        assert interpreted["with_grads_calls"] == 2 * len(CASES + GRAD_CASES)
        assert interpreted["with_grads_core_grads_calls"] == 0

    def test_fused_tlora_layer_runs_it_and_matches_float64(self, interpreted):
        assert interpreted["layer_kernel_calls"] == [2, 0]
        assert max(interpreted["layer"].values()) < 5e-3, interpreted["layer"]

    def test_launches_leave_the_callers_triton_allocator_in_place(self, interpreted):
        assert interpreted["allocator_kept"] == [2, True]

    def test_input_dropout_keeps_the_cublas_input_gradient(self, interpreted):
        assert interpreted["layer_input_dropout_kernel_calls"] == [1, 1]  # and core_grads' own launch
        assert max(interpreted["layer_input_dropout"].values()) < 5e-3, interpreted["layer_input_dropout"]


@pytest.mark.parametrize("case", CASES)
def test_fallback_is_exact_in_float64(case):
    ops = operands(case, torch.float64)
    assert not supported(*ops[:4])  # float64 never takes the kernel
    torch.testing.assert_close(lowrank_matmul(*ops), dense64(*ops), rtol=1e-12, atol=1e-12)
    core, scale = core_operands(case, torch.float64, transposed=case[5])
    for c, s in ((core, scale), (core, None), (None, scale)):
        torch.testing.assert_close(lowrank_matmul(*ops, core=c, scale=s), dense64(*ops, c, s), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_transpose_flags_are_exact_in_float64(case):
    """op(t) = tᵀ where a flag says so: the same result as passing the transposed views."""
    x, w, u, v, bias = operands(case, torch.float64)
    core, scale = core_operands(case, torch.float64)
    want = dense64(x, w, u, v, bias, core, scale)
    got = lowrank_matmul(x, w.T, u, v.T, bias, core=core.T, scale=scale, transpose_w=True, transpose_v=True,
                         transpose_core=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    y = torch.randn(u.shape, dtype=torch.float64)
    plain = lowrank_matmul_with_core_grads(x, w, u, v, core=core, scale=scale, y=y)
    flagged = lowrank_matmul_with_core_grads(x, w.T.contiguous(), u, v, core=core.T.contiguous(), scale=scale, y=y,
                                             transpose_w=True, transpose_core=True)
    for a, b in zip(flagged, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_bias_that_broadcasts_takes_cublas_and_is_exact():
    x, w, u, v, _ = operands(CASES[1], torch.float64)
    bias = torch.randn(x.shape[0], w.shape[1], dtype=torch.float64)  # (M × N): addmm broadcasts it, the kernel cannot
    torch.testing.assert_close(lowrank_matmul(x, w, u, v, bias), x @ w + u @ v + bias, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CASES + GRAD_CASES)
def test_add_to_is_exact_in_float64_and_checked(case):
    ops = with_grads_operands(case, torch.float64)
    plain = lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])
    start = torch.randn(plain[0].shape, dtype=torch.float64)
    into = start.clone()
    got = lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6], add_to=into)
    assert got[0] is into
    torch.testing.assert_close(into, plain[0] + start, rtol=1e-12, atol=1e-12)
    for a, b in zip(got[1:], plain[1:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    x, w, u, v, bias = operands(case, torch.float64)
    into = torch.randn(x.shape[0], w.shape[1], dtype=torch.float64)
    want = dense64(x, w, u, v, bias) + into
    torch.testing.assert_close(lowrank_matmul(x, w, u, v, bias, add_to=into), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(into, want, rtol=1e-12, atol=1e-12)  # in place
    with pytest.raises(ValueError, match=r"add_to must be the result's shape"):
        lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6], add_to=start[:, :-1])
    with pytest.raises(ValueError, match=r"dtype torch.float64"):
        lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6], add_to=start.float())


def test_core_and_scale_by_hand():
    """x = 0, u = (1 2), core = [[0, 1], [1, 0]] (a swap), v = I, scale = 3: out = 3 (2 1)."""
    x, w = torch.zeros(1, 4, dtype=torch.float64), torch.ones(4, 2, dtype=torch.float64)
    u, core, v = torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0], [1.0, 0.0]],
                                                                                 dtype=torch.float64), torch.eye(2, dtype=torch.float64)
    out = lowrank_matmul(x, w, u, v, core=core, scale=torch.tensor(3.0, dtype=torch.float64))
    assert torch.equal(out, torch.tensor([[6.0, 3.0]], dtype=torch.float64))


@pytest.mark.parametrize("case", CASES + GRAD_CASES)
def test_with_core_grads_fallback_is_exact_in_float64(case):
    ops = with_grads_operands(case, torch.float64)
    got = lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])
    assert max(with_grads_errors(got, ops)) < 1e-12
    assert [t.dtype for t in got] == [torch.float64] * 3 and got[2].shape == ops[5].shape


def test_with_core_grads_by_hand():
    """x = 0, u = [[1, 2]], y = [[3, 1]], core = [[0, 1], [1, 0]], scale = 2: yᵀ u = [[3, 6], [1, 2]],
    so scale · yᵀ u = [[6, 12], [2, 4]] and ⟨core, uᵀ y⟩ = 6 + 1 = 7; out = 2 (2 1) v with v = I."""
    f64 = dict(dtype=torch.float64)
    out, grad_core, grad_scale = lowrank_matmul_with_core_grads(
        torch.zeros(1, 4, **f64), torch.ones(4, 2, **f64), torch.tensor([[1.0, 2.0]], **f64), torch.eye(2, **f64),
        core=torch.tensor([[0.0, 1.0], [1.0, 0.0]], **f64), scale=torch.tensor(2.0, **f64),
        y=torch.tensor([[3.0, 1.0]], **f64))
    assert out.tolist() == [[4.0, 2.0]] and grad_core.tolist() == [[6.0, 12.0], [2.0, 4.0]]
    assert grad_scale.item() == 7.0 and grad_scale.shape == ()


def test_with_core_grads_shape_mismatch_is_a_clear_error():
    x, w, u, v, core, scale, y = with_grads_operands(CASES[0], torch.float64)
    with pytest.raises(ValueError, match=r"u \(70, 8\).*y \(70, 7\)"):
        lowrank_matmul_with_core_grads(x, w, u, v, core=core, scale=scale, y=y[:, 1:])
    with pytest.raises(ValueError, match="shapes do not chain"):
        lowrank_matmul_with_core_grads(x, w, u, v, core=core[1:], scale=scale, y=y)


def test_torch_compile_keeps_the_operator_with_core_grads_whole():
    ops = with_grads_operands(CASES[1], torch.float64)
    fn = lambda x, w, u, v, core, scale, y: [t * 2 for t in lowrank_matmul_with_core_grads(  # noqa: E731
        x, w, u, v, core=core, scale=scale, y=y)]
    explanation = torch._dynamo.explain(fn)(*ops)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    for got, want in zip(torch.compile(fn, backend="aot_eager", fullgraph=True)(*ops), fn(*ops)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch._dynamo.reset()


def unsupported_cases(device):
    """supported() for operands the kernel must refuse (each should be False where the kernel runs)."""
    x, w, u, v, _ = operands(CASES[1], torch.float16, device)
    out = {"float32 (Triton would round to TF32)": supported(x.float(), w.float(), u.float(), v.float()),
           "24-byte rows of x": supported(*operands((8, 12, 16, 8, False, False, False), torch.float16, device)[:4]),
           "24-byte rows of the output": supported(*operands((8, 16, 12, 8, True, True, False), torch.float16,
                                                              device)[:4]),
           "u not row-major": supported(x, w, u.T.contiguous().T, v),
           "rank 72 (over 64)": supported(*operands((16, 16, 16, 72, False, False, False), torch.float16, device)[:4]),
           "overlapping rows of x": supported(x[:1].expand(x.shape), w, u, v),
           "a bias of the wrong length": supported(x, w, u, v, bias=torch.zeros(w.shape[1] + 1, dtype=x.dtype,
                                                                                   device=device)),
           "a bias not contiguous": supported(x, w, u, v, bias=torch.zeros(2 * w.shape[1], dtype=x.dtype,
                                                                             device=device)[::2])}
    if device == "cpu":  # the interpreter's tl.dot multiplies bfloat16 bit patterns as integers
        out["bfloat16 under the interpreter"] = supported(*operands(CASES[1], torch.bfloat16, device)[:4])
    return out


def test_backend_is_validated():
    assert fused.get_backend() == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        fused.set_backend("cutlass")
    assert fused.get_backend() == "auto"


@pytest.fixture
def triton_backend():
    fused.set_backend("triton")
    yield
    fused.set_backend("auto")


def test_cpu_without_interpreter_uses_cublas():
    x, w, u, v, _ = operands(CASES[1], torch.float16)
    assert not supported(x, w, u, v)


def test_shape_mismatch_is_a_clear_error():
    x, w, u, v, _ = operands(CASES[0], torch.float64)
    with pytest.raises(ValueError, match="shapes do not chain"):
        lowrank_matmul(x, w, u[:, :4], v)
    with pytest.raises(ValueError, match=r"core \(8, 4\).*core \(r × r\)"):
        lowrank_matmul(x, w, u, v, core=torch.zeros(8, 4, dtype=x.dtype))
    with pytest.raises(ValueError, match="one-element scale"):
        lowrank_matmul(x, w, u, v, scale=torch.ones(2, dtype=x.dtype))
    with pytest.raises(ValueError, match=r"w \(40, 48\).*transpose_w"):  # w (48 × 40) used as wᵀ
        lowrank_matmul(x, w, u, v, transpose_w=True)


def test_torch_compile_keeps_the_operator_whole():
    x, w, u, v, bias = operands(CASES[1], torch.float64)
    core, scale = core_operands(CASES[1], torch.float64)
    fn = lambda *a: lowrank_matmul(*a, core=core, scale=scale).relu()  # noqa: E731
    explanation = torch._dynamo.explain(fn)(x, w, u, v, bias)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(fn, backend="aot_eager", fullgraph=True)(x, w, u, v, bias),
                               fn(x, w, u, v, bias), rtol=0, atol=0)
    torch._dynamo.reset()


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES + [(1000, 256, 384, 16, True, False, True), (777, 384, 256, 32, False, True, False)])
def test_cuda_kernel_at_least_as_accurate_as_cublas(dtype, case, triton_backend):
    ops = operands(case, dtype, "cuda")
    assert supported(*ops[:4])
    want = dense64(*ops)
    err = rel_err(lowrank_matmul(*ops), want)
    err_cublas = rel_err(lowrank_gemm._cublas_lowrank_matmul(*ops), want)
    assert err < (8e-3 if dtype == torch.bfloat16 else 1e-3)
    assert err <= 1.5 * err_cublas + 1e-4  # one rounding instead of two
    core, scale = core_operands(case, dtype, "cuda", transposed=case[5])
    want = dense64(*ops, core, scale)
    err = rel_err(lowrank_matmul(*ops, core=core, scale=scale), want)
    err_cublas = rel_err(lowrank_gemm._cublas_lowrank_matmul(*ops, core, scale), want)
    assert err < (1.6e-2 if dtype == torch.bfloat16 else 2e-3)
    assert err <= 1.5 * err_cublas + 1e-4


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
def test_cuda_cached_launch_matches_the_jit_launch(triton_backend, monkeypatch):
    """The first call per layout goes through Triton's JIT and caches the compiled kernel; later
    calls (any shape: sizes are not specialized) launch it directly, with the same results."""
    from tlora_analysis.adapters.fused import kernels

    monkeypatch.setattr(backend.launcher, "compiled", {})
    jit_run = kernels.lowrank_matmul_kernel.run
    jit_calls = []
    monkeypatch.setattr(kernels.lowrank_matmul_kernel, "run", lambda *a, **k: jit_calls.append(1) or jit_run(*a, **k))
    results = []
    for case in [(1000, 256, 384, 16, True, False, True), (777, 384, 256, 16, True, False, True)] * 2:
        ops = operands(case, torch.bfloat16, "cuda")
        core, scale = core_operands(case, torch.bfloat16, "cuda")
        results.append(lowrank_matmul(*ops, core=core, scale=scale))
    assert len(jit_calls) == 1 and len(backend.launcher.compiled) == 1
    assert torch.equal(results[0], results[2]) and torch.equal(results[1], results[3])
    # a scale of another dtype is another compiled kernel, not the cached one reading the wrong bits
    ops = operands((1000, 256, 384, 16, True, False, True), torch.bfloat16, "cuda")
    core, scale = core_operands((1000, 256, 384, 16, True, False, True), torch.bfloat16, "cuda")
    out = lowrank_matmul(*ops, core=core, scale=scale.float())
    assert len(jit_calls) == 2 and len(backend.launcher.compiled) == 2
    assert rel_err(out, dense64(*ops, core, scale)) < 1.6e-2


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
def test_cuda_refuses_what_it_cannot_run():
    refused = unsupported_cases("cuda")
    assert not any(refused.values()), refused


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_fused_layer_matches_float64(dtype, monkeypatch, triton_backend):
    calls = []
    kernel = lowrank_gemm._triton_lowrank_matmul
    monkeypatch.setattr(lowrank_gemm, "_triton_lowrank_matmul", lambda *a: calls.append(1) or kernel(*a))
    errors = layer_errors(dtype, "cuda", dropout=0.0)
    assert len(calls) == 2
    assert max(errors.values()) < (3e-2 if dtype == torch.bfloat16 else 5e-3), errors


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_core_gradients_in_the_epilogue_match_float64(dtype, triton_backend, monkeypatch):
    """Against float64, no worse than cuBLAS and torch, repeatable bit for bit, and the counter back
    at zero; the benchmark model's ∂x shapes give 16 (q/k/v/o, gate/up: 512 tiles on 132
    programs) and 32 (down: 1408 tiles) programs for the gradients."""
    grads_calls = []
    grads_kernel = core_grads_module._triton_core_grads
    monkeypatch.setattr(core_grads_module, "_triton_core_grads", lambda *a: grads_calls.append(1) or grads_kernel(*a))
    cases = CASES + GRAD_CASES + [(8192, 256, 2048, 32, False, True, False), (8192, 384, 5632, 32, False, True, False),
                                  (4000, 512, 1024, 64, False, True, False)]
    for case in cases:
        ops = with_grads_operands(case, dtype, "cuda")
        first, again = (lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])
                        for _ in range(2))
        errors, composition = with_grads_errors(first, ops), with_grads_errors(composition_with_grads(ops), ops)
        tol = 1.6e-2 if dtype == torch.bfloat16 else 2e-3
        assert max(errors) < tol, (case, errors)
        assert all(e <= c + tol / 8 for e, c in zip(errors, composition)), (case, errors, composition)
        assert all(torch.equal(a, b) for a, b in zip(first, again)), case
    assert not grads_calls
    torch.cuda.synchronize()
    assert all(c.item() == 0 for (kind, *_), c in backend.launcher.buffers.items() if kind == "counter")


@pytest.mark.skipif(not HOPPER, reason="needs a Hopper (or newer) CUDA GPU and triton")
def test_cuda_core_gradients_in_the_epilogue_under_graph_replay(triton_backend):
    ops = with_grads_operands((8192, 256, 2048, 32, False, True, False), torch.bfloat16, "cuda")
    call = lambda: lowrank_matmul_with_core_grads(*ops[:4], core=ops[4], scale=ops[5], y=ops[6])  # noqa: E731
    eager = call()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        call()  # compiled and cached off the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = call()
    for _ in range(3):
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(a, b) for a, b in zip(captured, eager))


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_cached_launch_only_for_kernels_with_unspecialized_integers():
    """The launch cache's key has no integer values: a kernel qualifies only if Triton does not
    specialize it on them (the GEMM lists its thirteen integers in ``do_not_specialize``)."""
    import triton

    from tlora_analysis.adapters.fused import kernels

    assert backend.launcher.ints_unspecialized(kernels.lowrank_matmul_kernel, 13, 15)

    @triton.jit
    def specialized(p, n):
        pass

    assert not backend.launcher.ints_unspecialized(specialized, 1, 1)
