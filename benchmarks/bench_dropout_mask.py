"""The adapters' CPU dropout against nn.Dropout's kernel, per call, on activation-sized tensors.

Run: .venv/bin/python benchmarks/bench_dropout_mask.py [--threads 1] [--rounds 41] [--out FILE]

For float32 tensors of the bundled MiniLM's adapter outputs at batch 16 × 128 (2048 × 384 and
2048 × 1536), times in interleaved rounds: ``torch.native_dropout`` (what ``nn.Dropout`` and PEFT's
LoRA dropout run), the package's :func:`~tlora_analysis.adapters.dropout.dropout` (the mask drawn
as uniform float32 draws ≥ p, then applied in one kernel), its two parts alone, and the product
that makes such an output (2048 × 384 times a 384-wide weight). Reported:
median process CPU ms per call (quartiles; one intra-op thread by default) and the package's
median over nn.Dropout's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn import functional as F

from tlora_analysis.adapters.dropout import apply_keep, draw_keep, dropout


def _quartiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[1], q[0], q[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--p", type=float, default=0.5)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    report = {"threads": args.threads, "rounds": args.rounds, "p": args.p, "torch": torch.__version__, "shapes": {}}
    print("| shape | nn.Dropout's kernel ms | package ms | × nn.Dropout | mask draw ms | apply ms | x Wᵀ ms |")
    print("|---|---|---|---|---|---|---|")
    for shape in ((2048, 384), (2048, 1536)):
        t = torch.randn(shape)
        x, w = torch.randn(shape[0], 384), torch.randn(shape[1], 384)  # the layer producing t (MiniLM's width)
        keep = draw_keep(shape, args.p, cpu)
        arms = {"native_dropout": lambda: torch.native_dropout(t, args.p, True),
                "linear": lambda: F.linear(x, w),
                "package": lambda: dropout(t, args.p),
                "draw": lambda: draw_keep(shape, args.p, cpu),
                "apply": lambda: apply_keep(t, keep, args.p)}
        times: dict[str, list[float]] = {k: [] for k in arms}
        for i in range(args.rounds + 1):
            for name, fn in arms.items():
                start = time.process_time()
                fn()
                if i:  # round 0 warms up
                    times[name].append((time.process_time() - start) * 1e3)
        q = {k: _quartiles(v) for k, v in times.items()}
        report["shapes"][f"{shape[0]}x{shape[1]}"] = {k: {"median_ms": m, "q25": lo, "q75": hi}
                                                     for k, (m, lo, hi) in q.items()}
        fmt = lambda k: f"{q[k][0]:.2f} ({q[k][1]:.2f}–{q[k][2]:.2f})"  # noqa: E731
        print(f"| {shape[0]} × {shape[1]} | {fmt('native_dropout')} | {fmt('package')} | "
              f"{q['package'][0] / q['native_dropout'][0]:.3f} | {fmt('draw')} | {fmt('apply')} | {fmt('linear')} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
