"""DDP scaling of the training runner: throughput per GPU on 1 and N GPUs, and one writer.

    PYTHONPATH=. python benchmarks/bench_ddp.py --model MODEL_DIR --train-file train.csv \
        --validation-file validation.csv --out ddp.json

Runs ``torchrun --standalone --nproc_per_node K -m tlora_analysis train ...`` for K = 1 and K =
the number of visible GPUs (at least 2), with the same per-process batch, then reads each run's
metrics.jsonl (``examples_per_s`` is global: summed over processes). Scaling efficiency =
per-GPU throughput on K GPUs / throughput on 1 GPU, from the median of the logged windows after
the first two. "Rank 0 alone writes" is checked from the run directory: one metrics row per
(event, step) and exactly the scheduled snapshots.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def train_args(args: argparse.Namespace, run_dir: Path) -> list[str]:
    return ["-m", "tlora_analysis", "train", "--method", args.method, "--rank", str(args.rank),
            "--model", args.model, "--task", "local", "--train-file", args.train_file,
            "--validation-file", args.validation_file, "--max-steps", str(args.steps),
            "--batch-size", str(args.batch_size), "--log-every", "10", "--snapshots", f"every:{args.snapshot_every}",
            "--max-eval-examples", "256", "--run-dir", str(run_dir), "--overwrite", "--no-progress"]


def run_one(args: argparse.Namespace, nproc: int, run_dir: Path, log) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *train_args(args, run_dir)]
    t0 = time.perf_counter()
    done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"nproc": nproc, "returncode": done.returncode, "wall_s": wall}
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["event"] == "train"]
    rates = [r["examples_per_s"] for r in train[2:]] or [r["examples_per_s"] for r in train]
    keys = [(r["event"], r["step"], r.get("split")) for r in rows]
    snapshots = sorted(int(p.stem) for p in (run_dir / "snapshots").glob("*.safetensors"))
    expected = sorted({0, args.steps, *range(args.snapshot_every, args.steps + 1, args.snapshot_every)})
    return {"nproc": nproc, "returncode": 0, "wall_s": wall, "examples_per_s": statistics.median(rates),
            "examples_per_s_per_gpu": statistics.median(rates) / nproc, "windows": len(rates),
            "duplicate_metric_rows": len(keys) - len(set(keys)), "snapshots": snapshots,
            "snapshots_as_scheduled": snapshots == expected,
            "files": sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--train-file", required=True)
    parser.add_argument("--validation-file", required=True)
    parser.add_argument("--method", default="tlora")
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--snapshot-every", type=int, default=20)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    gpus = torch.cuda.device_count()
    if gpus < 2:
        raise SystemExit(f"DDP scaling needs at least 2 GPUs; {gpus} visible")
    report = {"gpus": gpus, "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, **vars(args)}
    report["out"] = str(args.out)
    with tempfile.TemporaryDirectory() as tmp, open(args.out.with_suffix(".log"), "w") as log:
        report["runs"] = [run_one(args, n, Path(tmp) / f"run{n}", log) for n in (1, gpus)]
    one, many = report["runs"]
    if one["returncode"] == 0 and many["returncode"] == 0:
        report["scaling_efficiency"] = many["examples_per_s_per_gpu"] / one["examples_per_s"]
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "runs"} | {
        "runs": [{k: v for k, v in r.items() if k != "files"} for r in report["runs"]]}, indent=1))


if __name__ == "__main__":
    main()
