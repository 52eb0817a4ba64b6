"""Idea 8 of the training-step work, measured: read x once by stacking A onto W0 in one GEMM.

The fused TLoRA layer (tlora_analysis/adapters/fast.py) reads x twice in the forward (the
rank-r product x A, then the base GEMM x W0ᵀ) and g twice in the backward (g Cᵀ, then g W0).
Stacking the frozen factors onto W0 in one buffer, [[W0, Cᵀ], [Aᵀ, ·]] of (out + r) × (in + r),
turns each pair into one GEMM: x [W0; Aᵀ]ᵀ gives the base output and u = x A side by side, and
g [W0 | Cᵀ] gives the base input-gradient and g Cᵀ side by side. The price is a GEMM of width
out + r (2080 for 2048), which may not fill the GEMM's tiles as well as 2048 does.

This script times, per layer shape of the LLaMA-shaped benchmark model (tokens × in → out,
bf16, r = 32), the floor (the base GEMM alone), the fused layer's kernels and the stacked
variant, forward and input-gradient, with CUDA events; and checks that stacked and fused give
the same numbers. One command:

    PYTHONPATH=. python benchmarks/bench_stacked_gemm.py --out stacked.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.nn import functional as F

SHAPES = {"q/k/v/o": (2048, 2048), "gate/up": (5632, 2048), "down": (2048, 5632)}  # (out, in)


def time_ms(fn: Callable[[], object], device: str, repeats: int) -> list[float]:
    """Per-call times of ``fn`` (CUDA events on a GPU, else perf_counter)."""
    for _ in range(3):
        fn()
    if device != "cuda":
        import time

        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t0))
        return out
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in events]


def variants(tokens: int, out: int, inp: int, r: int, device: str, dtype: torch.dtype) -> dict[str, Callable]:
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, inp, device=device, dtype=dtype, generator=g)
    gout = torch.randn(tokens, out, device=device, dtype=dtype, generator=g)
    big = torch.randn(out + r, inp + r, device=device, dtype=dtype, generator=g) * 0.02
    w0, a_t, c_t = big[:out, :inp], big[out:, :inp], big[:out, inp:]  # W0, Aᵀ (r × in), Cᵀ (out × r)
    w0_dense = w0.contiguous()
    a, c = a_t.T.contiguous(), c_t.T.contiguous()  # A in × r, C r × out: the fused layer's buffers
    alpha_b = torch.randn(r, r, device=device, dtype=dtype, generator=g) * 0.1
    m = alpha_b @ c

    def floor_fwd():
        return F.linear(x, w0_dense)

    def fused_fwd():
        u = x @ a
        y = u @ m
        return y.addmm_(x, w0_dense.T), u

    def stacked_fwd():
        y2 = F.linear(x, big[:, :inp])  # tokens × (out + r): [x W0ᵀ | x A]
        u = y2[:, out:]
        y2[:, :out].addmm_(u, m)
        return y2[:, :out], u

    def floor_bwd():
        return gout @ w0_dense

    def fused_bwd():
        gc = gout @ c.T
        gx = (gc @ alpha_b.T) @ a.T
        return gx.addmm_(gout, w0_dense), gc

    def stacked_bwd():
        z = gout @ big[:out, :]  # tokens × (in + r): [g W0 | g Cᵀ]
        gc = z[:, inp:]
        z[:, :inp].addmm_(gc @ alpha_b.T, a_t)
        return z[:, :inp], gc

    return {"floor fwd": floor_fwd, "fused fwd": fused_fwd, "stacked fwd": stacked_fwd,
            "floor bwd": floor_bwd, "fused bwd": fused_bwd, "stacked bwd": stacked_bwd}


def agree(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest relative difference between the two variants' outputs (bf16 rounding expected)."""
    return max(((p.float() - q.float()).norm() / q.float().norm()).item() for p, q in zip(a, b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    report = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "tokens": args.tokens, "rank": args.rank, "dtype": str(dtype), "repeats": args.repeats, "shapes": []}
    for label, (out, inp) in SHAPES.items():
        fns = variants(args.tokens, out, inp, args.rank, args.device, dtype)
        row = {"shape": label, "out": out, "in": inp,
               "rel_diff_fwd": agree(fns["stacked fwd"](), fns["fused fwd"]()),
               "rel_diff_bwd": agree(fns["stacked bwd"](), fns["fused bwd"]())}
        for name, fn in fns.items():
            row[name] = statistics.median(time_ms(fn, args.device, args.repeats))
        report["shapes"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    print("| shape | floor fwd | fused fwd | stacked fwd | floor bwd (∂x) | fused bwd | stacked bwd | rel. diff |")
    print("|---|---|---|---|---|---|---|---|")
    for r in report["shapes"]:
        cells = [f"{r[k] * 1000:.1f} µs" for k in ("floor fwd", "fused fwd", "stacked fwd", "floor bwd", "fused bwd", "stacked bwd")]
        print(f"| {r['shape']} ({r['out']}×{r['in']}) | " + " | ".join(cells)
              + f" | {max(r['rel_diff_fwd'], r['rel_diff_bwd']):.1e} |")


if __name__ == "__main__":
    main()
