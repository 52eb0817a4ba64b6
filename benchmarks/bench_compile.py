"""``torch.compile`` (inductor) on the floor and on TLoRA, GPU.

The fused TLoRA layer is an autograd Function that dynamo traces without a graph break
(tests/test_tlora_fast.py), so a compiled model keeps it. Compiling can fuse the small
elementwise kernels around the GEMMs, in the floor as much as in TLoRA, so the fair comparison
is compiled floor against compiled TLoRA. Same model, batch and timing as
``bench_train_step.py`` (its builders are reused); the floor and TLoRA (all linear layers,
``--rank``) are each compiled once and then timed in alternating blocks of ``--block`` steps,
``--rounds`` times, so both see the same machine.

    PYTHONPATH=. python benchmarks/bench_compile.py --out compile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench_train_step import Arm, Trainer, build_arm, build_base, time_steps_cuda

from tlora_analysis.adapters import fused


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--block", type=int, default=10)
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--impls", nargs="+", default=["fused"], choices=["fused", "plain", "adapter", "merged", "cublas"],
                        help="TLoRA layer implementations to compile (layer.impl; cublas: fused with the "
                             "backend 'cublas', i.e. without the Triton low-rank-epilogue GEMM)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_compile.py times inductor on a CUDA GPU; none is visible")
    base, data, info = build_base("cuda")
    report = {"model": info, "torch": torch.__version__, "gpu": torch.cuda.get_device_name(), **vars(args)}
    report["out"] = str(args.out)
    arms = {"floor": Arm("floor"), **{f"tlora-{impl}": Arm(f"tlora-{impl}", args.rank, "all") for impl in args.impls}}
    trainers, compile_s = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, arm in arms.items():
            trainer = Trainer(arm, build_arm(arm, base, "cuda"), data, "cuda", Path(tmp))
            trainer.model = torch.compile(trainer.model, mode=args.mode)
            t0 = time.perf_counter()
            for _ in range(3):  # compiles forward and backward, then settles
                trainer.step()
            torch.cuda.synchronize()
            compile_s[name] = time.perf_counter() - t0
            trainers[name] = trainer
            print(f"{name}: compiled and warmed up in {compile_s[name]:.0f} s", file=sys.stderr, flush=True)
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                fused.set_backend("cublas" if name == "tlora-cublas" else "auto")  # read at run time
                times[name] += time_steps_cuda(trainer, args.block)
        peak = torch.cuda.max_memory_allocated()
    report.update(compile_s=compile_s, times_ms=times, peak_bytes_both=peak)
    med = {name: statistics.median(t) for name, t in times.items()}
    report["median_ms"] = med
    report["ratio"] = {name: med[name] / med["floor"] for name in med if name != "floor"}
    args.out.write_text(json.dumps(report, indent=1))
    for name, t in times.items():
        q = statistics.quantiles(t, n=4)
        print(f"{name}: {med[name]:.1f} ms ({q[0]:.1f}–{q[2]:.1f}), compile {compile_s[name]:.0f} s")
    for name, ratio in report["ratio"].items():
        print(f"compiled {name} r={args.rank} all / compiled floor: {ratio:.3f}")


if __name__ == "__main__":
    main()
