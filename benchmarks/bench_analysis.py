"""Analysis sweep benchmark: a 7B-shaped TLoRA run, factored analyzers against dense numpy.

Two synthetic TLoRA runs shaped like a 7B decoder (32 layers × q_proj, v_proj, 4096 × 4096,
r = 32, 100 snapshots) are written with the real recorder (W0 not stored; base weights are
stride-0 views, so nothing of size 4096² is allocated). Then:

- factored: ``spectra``, ``norms`` and ``similarity`` (random null, n_null = 100) over every
  (layer, step) of the whole run, timed end to end (file reading included);
- dense: the same quantities from the dense 4096 × 4096 ΔW (build, SVD, norms, cosine,
  relative difference, φ(r, r)) timed on a few (layer, step) pairs and scaled to the run,
  as the report says.

Usage: ``python benchmarks/bench_analysis.py [--root /tmp/bench_analysis] [--dense-samples 2]``.
Set OPENBLAS_NUM_THREADS / taskset to fix the core count; the script prints what it used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlora_analysis import analysis
from tlora_analysis.adapters import TLoRAConfig, adapted_layers, apply_adapters
from tlora_analysis.recording import Explicit, SnapshotRecorder
from tlora_analysis.store import Run

LAYERS, DIM, RANK, SNAPSHOTS = 32, 4096, 32, 100


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        for name in ("q_proj", "v_proj"):
            lin = nn.Linear(DIM, DIM, bias=False, device="meta")
            lin.weight = nn.Parameter(torch.zeros(1, 1).expand(DIM, DIM), requires_grad=False)  # no memory
            setattr(self, name, lin)


class Model7B(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block() for _ in range(LAYERS))


def write_run(path: Path, seed: int) -> Run:
    """Record SNAPSHOTS snapshots of a TLoRA run whose B and α follow a seeded random walk."""
    if (path / "run.json").exists():
        return Run(path)
    model = apply_adapters(Model7B(), TLoRAConfig(rank=RANK, target_modules=("q_proj", "v_proj"), seed=seed))
    layers = list(adapted_layers(model).values())
    g = torch.Generator().manual_seed(seed)
    steps = [10 * i for i in range(SNAPSHOTS)]
    with SnapshotRecorder(model, path, schedule=Explicit(steps), total_steps=steps[-1], store_base_weights=False,
                          run_info={"model": "synthetic-7b-shape", "task": "benchmark"}) as recorder:
        for step in steps[1:]:
            with torch.no_grad():
                for layer in layers:
                    layer.tlora_B.add_(1e-3 * torch.randn(RANK, RANK, generator=g))
                    layer.tlora_alpha.add_(1e-3 * torch.randn((), generator=g))
            recorder.snapshot(step, epoch=step / steps[-1])
    return Run(path)


def factored_sweep(run_a: Run, run_b: Run) -> tuple[float, float]:
    """(wall, CPU) seconds of spectra + norms + similarity over the whole run."""
    wall = cpu = 0.0
    for name, call in (("spectra", lambda: analysis.spectra(run_a)), ("norms", lambda: analysis.norms(run_a)),
                       ("similarity", lambda: analysis.similarity(run_a, run_b, n_null=100))):
        t0, c0 = time.perf_counter(), time.process_time()
        table = call()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        wall, cpu = wall + dt, cpu + dc
        n = len(table) if hasattr(table, "__len__") else len(table.per_layer)
        print(f"  factored {name:<10} wall {dt:7.2f} s  CPU {dc:7.2f} s  ({n} rows)")
    return wall, cpu


def dense_one(run_a: Run, run_b: Run, layer: str, step: int) -> tuple[float, float]:
    """(wall, CPU) seconds for the same quantities of one (layer, step) from dense 4096 × 4096 matrices."""
    t0, c0 = time.perf_counter(), time.process_time()
    da, db = run_a.update(layer, step).dense(), run_b.update(layer, step).dense()
    ua, sa, vta = np.linalg.svd(da)  # spectra
    _, _, vtb = np.linalg.svd(db)
    fro_a, spec_a = np.linalg.norm(da), sa[0]  # norms of ΔW (norms of A, B, C are the same either way)
    cos = np.sum(da * db) / (fro_a * np.linalg.norm(db))  # similarity
    rel = np.linalg.norm(da - db) / np.linalg.norm(db)
    phi = np.linalg.norm(vta[:RANK] @ vtb[:RANK].T) ** 2 / RANK
    assert np.isfinite([fro_a, spec_a, cos, rel, phi]).all()
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/bench_analysis"))
    parser.add_argument("--dense-samples", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
          f"load average before: {os.getloadavg()[0]:.1f}")
    t0 = time.perf_counter()
    run_a, run_b = write_run(args.root / "tlora-a", 0), write_run(args.root / "tlora-b", 1)
    print(f"runs ready in {time.perf_counter() - t0:.1f} s: {len(run_a.layers)} layers × {len(run_a.steps)} snapshots")
    pairs = len(run_a.layers) * len(run_a.steps)
    sweeps = []
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}:")
        sweeps.append(factored_sweep(run_a, run_b))
    dense = [dense_one(run_a, run_b, run_a.layers[i], run_a.steps[-1 - i]) for i in range(args.dense_samples)]
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    for k, clock in enumerate(("wall", "CPU")):
        factored_total = statistics.median(s[k] for s in sweeps)
        dense_each = statistics.median(d[k] for d in dense)
        factored_each = factored_total / pairs
        print(f"[{clock}] factored sweep (spectra + norms + similarity with 100 null draws), median of "
              f"{args.repeats}: {factored_total:.1f} s for {pairs} (layer, step) = {1e3 * factored_each:.2f} ms each; "
              f"dense, median of {args.dense_samples} sampled (layer, step): {dense_each:.1f} s each, scaled to the "
              f"run {dense_each * pairs / 3600:.0f} h; speed-up per (layer, step) {dense_each / factored_each:,.0f}x")

if __name__ == "__main__":
    main()
