"""Where the fused TLoRA layer's time goes, kernel by kernel, and the alternatives measured against it.

For each layer shape of the LLaMA-shaped benchmark model (tokens × in → out, bf16, r = 32),
with CUDA events around CUDA-graph replays (median of ``--repeats`` replays of 20 calls each):

- **ops**: every kernel the fused layer's cuBLAS path (``fused.set_backend("cublas")``) launches,
  timed alone on ready inputs: forward α·B, M = (αB) C, u = x A, u M, the base GEMM
  accumulating onto it (β = 1); backward g Cᵀ, G = uᵀ (g Cᵀ), ∂B = α G, ∂α = ⟨B, G⟩,
  ∂u = (g Cᵀ)(αB)ᵀ, ∂u Aᵀ, the base ∂x GEMM with β = 1; and the floor's own GEMMs (β = 0).
- **alt**: the four rank-r products with the small operand stored in the other layout
  (cuBLAS picks different kernels for skinny products by layout).
- **epilogue**: x W0ᵀ + u M and g W0 + ∂u Aᵀ each as one Triton GEMM with the rank-r term in its
  accumulator (tlora_analysis/adapters/fused/lowrank_gemm.py), alone and as the whole layer;
  checked against the cuBLAS path's numbers.
- **epilogue+core** (the layer's default path): the same GEMMs with α and B applied inside
  the kernel, x W0ᵀ + α (u B) C and g W0 + α (g Cᵀ Bᵀ) Aᵀ, so that α B, M = (αB) C and
  ∂u = (g Cᵀ)(αB)ᵀ are no longer separate kernels.
- **core grads**: ∂B = α G and ∂α = ⟨B, G⟩ with G = uᵀ (g Cᵀ) in one Triton launch
  (tlora_analysis/adapters/fused/core_grads.py), against the three torch operations (cuBLAS's
  split-K G and its reduction, α G, the dot), and inside the ∂x GEMM (the layer's default); and
  the whole backward with each.
- **stacked** (measured, not kept): read x once by stacking the frozen factors around W0 in one
  (out + r) × (in + r) buffer, [[W0, Cᵀ], [Aᵀ, ·]]: x [W0; Aᵀ]ᵀ gives the base output and
  u = x A side by side, and g [W0 | Cᵀ] the base input-gradient and g Cᵀ side by side, at the
  price of GEMMs r columns wider. Checked to give the fused path's numbers.

    PYTHONPATH=. python benchmarks/bench_layer_kernels.py --out layer_kernels.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

from tlora_analysis.adapters import fused
from tlora_analysis.adapters.fused.core_grads import core_grads
from tlora_analysis.adapters.fused.lowrank_gemm import lowrank_matmul, lowrank_matmul_with_core_grads, supported

SHAPES = {"q/k/v/o": (2048, 2048), "gate/up": (5632, 2048), "down": (2048, 5632)}  # (out, in)
LAYERS_PER_STEP = {"q/k/v/o": 4 * 16, "gate/up": 2 * 16, "down": 16}  # the benchmark model's 16 blocks


def time_us(fn: Callable[[], object], device: str, repeats: int, inner: int = 20) -> float:
    """Median GPU time of one call of ``fn`` in µs (CPU: perf_counter).

    On a GPU, ``inner`` calls are captured in a CUDA graph and the replay is timed with CUDA
    events: a lone small kernel timed between two events measures the launch latency (≈ 25 µs
    from Python), not the few µs it occupies the GPU inside a training step, where the host
    runs ahead and kernels follow each other back to back.
    """
    if device != "cuda":
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(1e6 * (time.perf_counter() - t0))
        return statistics.median(out)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(inner):
            fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return 1000 * statistics.median(s.elapsed_time(e) for s, e in events) / inner


def kernel_parser(doc: str, out_required: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the kernel benchmarks' common options, described by ``doc``'s first
    paragraph: ``--out`` (the JSON report), ``--tokens`` and ``--rank`` (the benchmark model's)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=out_required)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=32)
    return parser


def gpu_report(args: argparse.Namespace, **fields: object) -> dict:
    """A GPU kernel report's header: the GPU, torch's and Triton's versions, tokens and rank, then ``fields``."""
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "tokens": args.tokens, "rank": args.rank, **fields}


def print_ms_table(rows: dict[str, dict[str, float | None]], baseline: str, title: str) -> None:
    """A markdown table of ms per call, one row per arm and one column per shape, each cell also
    × that shape's ``baseline`` arm (None: "–"); entries named "…deviation" left out."""
    shapes = list(rows)
    print(f"| {title} | " + " | ".join(shapes) + " |")
    print("|---" * (len(shapes) + 1) + "|")
    for arm in next(iter(rows.values())):
        if not arm.endswith("deviation"):
            cells = [rows[s].get(arm) for s in shapes]
            print(f"| {arm} | " + " | ".join("–" if t is None else f"{t:.3f} ({t / rows[s][baseline]:.2f})"
                                            for t, s in zip(cells, shapes)) + " |")


def layer(tokens: int, out: int, inp: int, r: int, device: str,
          dtype: torch.dtype) -> tuple[dict[str, Callable], tuple[torch.Tensor, ...]]:
    """Ready inputs and one closure per kernel (or variant) of one layer; the epilogue GEMM's forward operands."""
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, inp, device=device, dtype=dtype, generator=g)
    gout = torch.randn(tokens, out, device=device, dtype=dtype, generator=g)
    big = torch.randn(out + r, inp + r, device=device, dtype=dtype, generator=g) * 0.02
    w0_view, a_t, c_t = big[:out, :inp], big[out:, :inp], big[:out, inp:]  # W0, Aᵀ (r × in), Cᵀ (out × r)
    w0 = w0_view.contiguous()
    a, c = a_t.T.contiguous(), c_t.T.contiguous()  # A in × r, C r × out: the fused layer's buffers
    b = torch.randn(r, r, device=device, dtype=dtype, generator=g) * 0.1
    alpha = torch.tensor(1.5, device=device, dtype=dtype)
    alpha_b = alpha * b
    m = alpha_b @ c
    u = x @ a
    gc = gout @ c.T
    g_core = u.T @ gc
    grad_u = gc @ alpha_b.T
    a_tc, c_tc, m_tc = a.T.contiguous(), c.T.contiguous(), m.T.contiguous()  # r × in, out × r, out × r
    scratch_out = torch.empty(tokens, out, device=device, dtype=dtype)
    scratch_in = torch.empty(tokens, inp, device=device, dtype=dtype)

    def fused_fwd():
        y = (x @ a) @ ((alpha * b) @ c)
        return y.addmm_(x, w0.T), u

    def fused_bwd():
        gc_ = gout @ c.T
        core = u.T @ gc_
        _ = alpha * core, torch.dot(b.reshape(-1), core.reshape(-1))
        gx = (gc_ @ (alpha * b).T) @ a.T
        return gx.addmm_(gout, w0), gc_

    def core_fwd():
        u_ = x @ a
        return lowrank_matmul(x, w0.T, u_, c, core=b, scale=alpha), u_

    def core_bwd():
        gc_ = gout @ c.T
        core = u.T @ gc_
        _ = alpha * core, torch.dot(b.reshape(-1), core.reshape(-1))
        return lowrank_matmul(gout, w0, gc_, a.T, core=b.T, scale=alpha), gc_

    def core_grads_bwd():
        gc_ = gout @ c.T
        core_grads(u, gc_, b, alpha)
        return lowrank_matmul(gout, w0, gc_, a.T, core=b.T, scale=alpha), gc_

    def core_grads_in_gemm_bwd():
        gc_ = gout @ c.T
        return lowrank_matmul_with_core_grads(gout, w0, gc_, a.T, core=b.T, scale=alpha, y=u)[0], gc_

    def torch_core_grads():
        core = u.T @ gc
        return alpha * core, torch.dot(b.reshape(-1), core.reshape(-1))

    def stacked_fwd():
        y2 = F.linear(x, big[:, :inp])  # tokens × (out + r): [x W0ᵀ | x A]
        u_ = y2[:, out:]
        y2[:, :out].addmm_(u_, (alpha * b) @ c)
        return y2[:, :out], u_

    def stacked_bwd():
        z = gout @ big[:out, :]  # tokens × (in + r): [g W0 | g Cᵀ]
        gc_ = z[:, inp:]
        core = u.T @ gc_
        _ = alpha * core, torch.dot(b.reshape(-1), core.reshape(-1))
        z[:, :inp].addmm_(gc_ @ (alpha * b).T, a_t)
        return z[:, :inp], gc_

    def epilogue_fwd():
        u_ = x @ a
        return lowrank_matmul(x, w0.T, u_, (alpha * b) @ c), u_

    def epilogue_bwd():
        gc_ = gout @ c.T
        core = u.T @ gc_
        _ = alpha * core, torch.dot(b.reshape(-1), core.reshape(-1))
        return lowrank_matmul(gout, w0, gc_ @ (alpha * b).T, a.T), gc_

    return {
        "floor fwd: x W0ᵀ": lambda: F.linear(x, w0),
        "fwd αB": lambda: alpha * b,
        "fwd M = (αB) C": lambda: alpha_b @ c,
        "fwd u = x A": lambda: x @ a,
        "fwd u M (writes tokens × out)": lambda: torch.mm(u, m, out=scratch_out),
        "fwd base GEMM, β = 1": lambda: scratch_out.addmm_(x, w0.T),
        "floor bwd: g W0": lambda: gout @ w0,
        "bwd g Cᵀ": lambda: gout @ c.T,
        "bwd G = uᵀ (g Cᵀ)": lambda: u.T @ gc,
        "bwd ∂B = α G": lambda: alpha * g_core,
        "bwd ∂α = ⟨B, G⟩": lambda: torch.dot(b.reshape(-1), g_core.reshape(-1)),
        "bwd ∂u = (g Cᵀ)(αB)ᵀ": lambda: gc @ alpha_b.T,
        "bwd ∂u Aᵀ (writes tokens × in)": lambda: torch.mm(grad_u, a.T, out=scratch_in),
        "bwd base ∂x GEMM, β = 1": lambda: scratch_in.addmm_(gout, w0),
        # the same rank-r products with the small operand in the other memory layout
        "alt fwd u = x A, A stored transposed": lambda: x @ a_tc.T,
        "alt fwd u M, M stored transposed": lambda: torch.mm(u, m_tc.T, out=scratch_out),
        "alt bwd g Cᵀ, C stored transposed": lambda: gout @ c_tc,
        "alt bwd ∂u Aᵀ, A stored transposed": lambda: torch.mm(grad_u, a_tc, out=scratch_in),
        "epilogue fwd: x W0ᵀ + u M in one GEMM": lambda: lowrank_matmul(x, w0.T, u, m),
        "epilogue bwd: g W0 + ∂u Aᵀ in one GEMM": lambda: lowrank_matmul(gout, w0, grad_u, a.T),
        "epilogue+core fwd: x W0ᵀ + α (u B) C in one GEMM": lambda: lowrank_matmul(x, w0.T, u, c, core=b, scale=alpha),
        "epilogue+core bwd: g W0 + α (g Cᵀ Bᵀ) Aᵀ in one GEMM": lambda: lowrank_matmul(gout, w0, gc, a.T, core=b.T,
                                                                                     scale=alpha),
        "core grads: G, ∂B = α G, ∂α = ⟨B, G⟩ as torch operations": torch_core_grads,
        "core grads: ∂B and ∂α in one Triton launch": lambda: core_grads(u, gc, b, alpha),
        "whole fused fwd": fused_fwd, "whole fused bwd": fused_bwd,
        "whole epilogue fwd": epilogue_fwd, "whole epilogue bwd": epilogue_bwd,
        "whole epilogue+core fwd": core_fwd, "whole epilogue+core bwd": core_bwd,
        "whole epilogue+core+core grads bwd": core_grads_bwd,
        "∂x GEMM with ∂B and ∂α in its epilogue": lambda: lowrank_matmul_with_core_grads(gout, w0, gc, a.T, core=b.T,
                                                                                     scale=alpha, y=u),
        "whole epilogue+core bwd, ∂B and ∂α in the GEMM": core_grads_in_gemm_bwd,
        "whole stacked fwd": stacked_fwd, "whole stacked bwd": stacked_bwd,
    }, (x, w0.T, u, m)


def agree(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest relative difference between two variants' (output, side product)."""
    return max(((p.float() - q.float()).norm() / q.float().norm()).item() for p, q in zip(a, b))


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    fused.set_backend("triton")  # the epilogue GEMM in eager mode, where it applies
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "tokens": args.tokens, "rank": args.rank, "dtype": str(dtype), "repeats": args.repeats, "shapes": {}}
    for label, (out, inp) in SHAPES.items():
        fns, operands = layer(args.tokens, out, inp, args.rank, args.device, dtype)
        row = {"out": out, "in": inp, "layers_per_step": LAYERS_PER_STEP[label],
               "rel_diff_stacked_fwd": agree(fns["whole stacked fwd"](), fns["whole fused fwd"]()),
               "rel_diff_stacked_bwd": agree(fns["whole stacked bwd"](), fns["whole fused bwd"]()),
               "rel_diff_epilogue_fwd": agree(fns["whole epilogue fwd"](), fns["whole fused fwd"]()),
               "rel_diff_epilogue_bwd": agree(fns["whole epilogue bwd"](), fns["whole fused bwd"]()),
               "rel_diff_core_fwd": agree(fns["whole epilogue+core fwd"](), fns["whole fused fwd"]()),
               "rel_diff_core_bwd": agree(fns["whole epilogue+core bwd"](), fns["whole fused bwd"]()),
               "rel_diff_core_grads": agree(fns["core grads: ∂B and ∂α in one Triton launch"](),
                                            fns["core grads: G, ∂B = α G, ∂α = ⟨B, G⟩ as torch operations"]()),
               "epilogue_kernel_used": supported(*operands),
               "us": {name: time_us(fn, args.device, args.repeats) for name, fn in fns.items()}}
        report["shapes"][label] = row
        print(label, json.dumps(row), file=sys.stderr, flush=True)
    names = list(next(iter(report["shapes"].values()))["us"])
    per_step = {n: sum(r["us"][n] * r["layers_per_step"] for r in report["shapes"].values()) / 1000 for n in names}
    report["ms_per_step"] = per_step
    args.out.write_text(json.dumps(report, indent=1))
    print("| kernel | " + " | ".join(f"{k} µs" for k in SHAPES) + " | ms per step (×16 blocks) |")
    print("|---|" + "---|" * (len(SHAPES) + 1))
    for n in names:
        print(f"| {n} | " + " | ".join(f"{report['shapes'][k]['us'][n]:.1f}" for k in SHAPES) + f" | {per_step[n]:.2f} |")


if __name__ == "__main__":
    main()
