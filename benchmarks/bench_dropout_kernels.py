"""GPU time of the in-kernel dropout mask's two kernels against the same work without a mask.

For each layer shape of the LLaMA-shaped benchmark model (8192 tokens, bf16, r = 32), the median
ms per call (``triton.testing.do_bench``) of:

- ``plain``: ``F.linear(x, W0)``, the floor's forward GEMM;
- ``lowrank``: ``lowrank_matmul``, x W0ᵀ + α (u B) C without dropout (the fused forward);
- ``dropout``: ``dropout_lowrank_matmul`` at ``--p``, the same with the rank-r term dropped out
  by the mask computed in the accumulator;
- ``projection``: ``F.linear(g, C)``, the backward's g Cᵀ without dropout;
- ``masked_projection``: (g ∘ keep) Cᵀ / (1 − p) with the mask regenerated in one read of g.

    PYTHONPATH=. python benchmarks/bench_dropout_kernels.py --out dropout_kernels.json
"""

from __future__ import annotations

import json
import sys

import torch
from torch.nn import functional as F

from bench_layer_kernels import SHAPES, gpu_report, kernel_parser

from tlora_analysis.adapters.fused.kernel_mask import KernelDropout, masked_projection
from tlora_analysis.adapters.fused.lowrank_gemm import dropout_lowrank_matmul, lowrank_matmul


def main(argv: list[str] | None = None) -> None:
    parser = kernel_parser(__doc__)
    parser.add_argument("--p", type=float, default=0.5, help="dropout probability (default 0.5, the paper's)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU with Triton (the kernels run nowhere else)")
    import triton

    bench = lambda fn: triton.testing.do_bench(fn, warmup=10, rep=50)  # noqa: E731  (median ms)
    dtype, dev, r = torch.bfloat16, "cuda", args.rank
    report = gpu_report(args, p=args.p, ms_per_call={})
    for label, (out, inp) in SHAPES.items():
        x = torch.randn(args.tokens, inp, device=dev, dtype=dtype)
        w0 = torch.randn(out, inp, device=dev, dtype=dtype) / inp**0.5
        u = torch.randn(args.tokens, r, device=dev, dtype=dtype)
        b = torch.randn(r, r, device=dev, dtype=dtype)
        c = torch.randn(r, out, device=dev, dtype=dtype)
        alpha = torch.ones((), device=dev)
        g = torch.randn(args.tokens, out, device=dev, dtype=dtype)
        mask = KernelDropout(12345, args.p)
        row = {"plain": bench(lambda: F.linear(x, w0)),
               "lowrank": bench(lambda: lowrank_matmul(x, w0, u, c, core=b, scale=alpha, transpose_w=True)),
               "dropout": bench(lambda: dropout_lowrank_matmul(x, w0, u, c, p=args.p, core=b, scale=alpha,
                                                               transpose_w=True, seed=7)),
               "projection": bench(lambda: F.linear(g, c)),
               "masked_projection": bench(lambda: masked_projection(g, c, mask))}
        report["ms_per_call"][label] = row
        print(label, json.dumps(row), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps(report, indent=1))
    names = list(next(iter(report["ms_per_call"].values())))
    print("| shape | " + " | ".join(names) + " | dropout / lowrank | masked / plain projection |")
    print("|---" * (len(names) + 3) + "|")
    for label, row in report["ms_per_call"].items():
        print(f"| {label} | " + " | ".join(f"{row[k]:.3f}" for k in names)
              + f" | {row['dropout'] / row['lowrank']:.2f} | {row['masked_projection'] / row['projection']:.2f} |")


if __name__ == "__main__":
    main()
