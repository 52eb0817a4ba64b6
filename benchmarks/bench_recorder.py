"""Recorder overhead: training step time with and without a snapshot every step, on CPU.

Run: .venv/bin/python benchmarks/bench_recorder.py [--ranks 8 32] [--rounds 7] [--block 8]

For TLoRA at each rank (query and value of the bundled all-MiniLM-L6-v2, batch 16 × 64 random
tokens, AdamW), the same model alternates blocks of ``--block`` optimizer steps without a
recorder and with a SnapshotRecorder snapshotting every step (background writer, fsync per
file), for ``--rounds`` rounds; the first block of each kind is a warm-up and is dropped.
Reported: the median step time of each kind, their ratio (with / without), and the bytes of
one snapshot file for TLoRA and for LoRA at the same rank. Because step times on a shared
machine are noisy, the median time the training thread spends inside one ``snapshot`` call
(copying the adapter tensors and queueing the write) is timed directly as well. Interleaving makes both kinds see
the same machine load; the ratio is the number to read, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tlora_analysis import LoRAConfig, Run, SnapshotRecorder, TLoRAConfig, apply_adapters
from tlora_analysis.experiments.bundled import bundled_model_dir

TARGETS = ("query", "value")


def _model(config, architecture: Path | None = None):
    """The bundled MiniLM, or (``architecture``: a folder with its config.json) the same shape with random weights."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if architecture is None:
        model = AutoModelForSequenceClassification.from_pretrained(str(bundled_model_dir()), num_labels=2)
    else:
        model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(architecture), num_labels=2))
    return apply_adapters(model, config).train()


def _batch(step: int, batch: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {"input_ids": torch.randint(0, vocab, (batch, seq), generator=g), "labels": torch.randint(0, 2, (batch,), generator=g)}


def _timed_steps(model, opt, first: int, n: int, args) -> list[float]:
    vocab = model.config.vocab_size
    times = []
    for step in range(first, first + n):
        b = _batch(step, args.batch, args.seq, vocab)
        t0 = time.perf_counter()
        model(**b).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    return times


def overhead(rank: int, root: Path, args) -> dict[str, float]:
    model = _model(TLoRAConfig(rank=rank, target_modules=TARGETS, dropout=0.0), args.architecture)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    without, with_rec, step = [], [], 0
    for rnd in range(args.rounds):
        t = _timed_steps(model, opt, step, args.block, args)
        step += args.block
        rec = SnapshotRecorder(model, root / f"tlora-r{rank}-{rnd}", schedule=1, store_base_weights=False).attach(opt)
        w = _timed_steps(model, opt, step, args.block, args)
        step += args.block
        rec.close()
        if rnd:  # round 0 warms up both kinds
            without += t
            with_rec += w
    med_without, med_with = statistics.median(without), statistics.median(with_rec)
    return {"rank": rank, "median_step_s_without": med_without, "median_step_s_with": med_with,
            "ratio": med_with / med_without, "steps_each": len(without),
            "hot_path_s": hot_path(model, root / f"hot-{rank}", args.hot_repeats)}


def hot_path(model, run_dir: Path, repeats: int) -> float:
    """Median time the training thread spends in one snapshot call (copy + enqueue), writes excluded."""
    rec = SnapshotRecorder(model, run_dir, schedule=1, store_base_weights=False, max_pending=repeats + 1)
    times = []
    for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        rec.snapshot(step)
        times.append(time.perf_counter() - t0)
    rec.close()
    return statistics.median(times)


def snapshot_bytes(rank: int, root: Path, architecture: Path | None) -> dict[str, int]:
    out = {}
    for name, config in (("tlora", TLoRAConfig(rank=rank, target_modules=TARGETS)), ("lora", LoRAConfig(rank=rank, target_modules=TARGETS))):
        model = _model(config, architecture)
        SnapshotRecorder(model, root / f"bytes-{name}-{rank}", store_base_weights=False).close()
        out[name] = Run(root / f"bytes-{name}-{rank}").snapshot_path(0).stat().st_size
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 32])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--hot-repeats", type=int, default=200, help="snapshot calls timed for the hot-path cost")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: steadier on a shared machine)")
    p.add_argument("--architecture", type=Path, default=None,
                   help="folder with a config.json: random weights of that shape instead of the bundled model "
                        "(step time does not depend on weight values; for machines without the bundled wheel)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rank in args.ranks:
            row = overhead(rank, Path(tmp), args)
            row.update({f"snapshot_bytes_{k}": v for k, v in snapshot_bytes(rank, Path(tmp), args.architecture).items()})
            rows.append(row)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {args.threads} thread(s), batch {args.batch} × {args.seq}, "
          f"{args.rounds - 1} rounds × {args.block} steps of each kind\n")
    print("| rank | median step, no recorder (ms) | median step, snapshot every step (ms) | ratio | snapshot call in the training thread (µs) | its share of a step | TLoRA snapshot (bytes) | LoRA snapshot (bytes) | LoRA / TLoRA |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rank']} | {1e3 * r['median_step_s_without']:.1f} | {1e3 * r['median_step_s_with']:.1f} | {r['ratio']:.3f} "
              f"| {1e6 * r['hot_path_s']:.0f} | {r['hot_path_s'] / r['median_step_s_without']:.2%} "
              f"| {r['snapshot_bytes_tlora']:,} | {r['snapshot_bytes_lora']:,} | {r['snapshot_bytes_lora'] / r['snapshot_bytes_tlora']:.1f}× |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
