"""Crash safety: training processes SIGKILLed at random moments leave runs that open and verify.

Each trial forks a child that records a tiny model (every step, or log-spaced) and logs every
step; once the child signals that it is about to create the run, it is killed after a random
delay that lands before, during or after the run's creation and in the middle of snapshot
writes. Trials run a few at a time so the whole test stays within about half a minute.
"""

import copy
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from helpers_runs import one_torch_thread, tiny_batch, tiny_config, tiny_model
from tlora_analysis import Run, SnapshotRecorder, apply_adapters
from tlora_analysis.recording import EveryN, LogSpaced

TRIALS = 12
PARALLEL = 3
TOTAL_STEPS = 100_000  # never reached: every child is killed
SCHEDULES = [EveryN(1), LogSpaced(400, TOTAL_STEPS)]


def _train_until_killed(model, run_dir: str, schedule, ready) -> None:
    """The child: record every step (and log every step) until SIGKILL arrives."""
    torch.set_num_threads(1)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    ready.set()
    rec = SnapshotRecorder(model, run_dir, schedule=schedule, total_steps=TOTAL_STEPS).attach(opt)
    for step in range(TOTAL_STEPS):
        model(**tiny_batch(step % 7)).loss.backward()
        opt.step()
        opt.zero_grad()
        rec.log(step + 1, loss=float(step))


def _start(tmp_path: Path, trial: int, rng: random.Random, models: dict):
    """Fork a child from this already-imported process (a fresh interpreter takes 5-15 s to start)."""
    method = ["tlora", "lora", "full"][trial % 3]
    schedule = SCHEDULES[trial % 2]
    run_dir = tmp_path / f"run{trial}"
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_train_until_killed, args=(copy.deepcopy(models[method]), str(run_dir), schedule, ready))
    proc.start()
    return proc, ready, run_dir, schedule, rng.uniform(0.0, 1.5)


def _check(run_dir: Path, schedule) -> int:
    if not run_dir.exists():  # killed before the creation's rename: nothing half-made
        assert not any(p.name.startswith(f".{run_dir.name}.") and not p.name.startswith(f".{run_dir.name}.creating")
                       for p in run_dir.parent.iterdir())
        return -1
    run = Run(run_dir)
    report = run.verify()
    assert report.ok, str(report)
    expected = schedule.steps_until(TOTAL_STEPS)
    assert run.steps == expected[: len(run.steps)], f"{run.steps[:10]} is not a prefix of the schedule"
    assert run.steps[0] == 0
    if run.steps[-1] > 0:
        run.update(run.layers[0], run.steps[-1]).fro_norm()
    metric_steps = run.metrics.step.tolist()
    assert metric_steps == list(range(1, len(metric_steps) + 1))
    return len(run.steps)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the trials fork children from the test process")
def test_sigkill_at_random_moments_leaves_a_valid_run(tmp_path):
    rng = random.Random(1234)
    with one_torch_thread():
        models = {m: apply_adapters(tiny_model(0), tiny_config(m)).train() for m in ("tlora", "lora", "full")}
    outcomes = []
    for first in range(0, TRIALS, PARALLEL):
        batch = [_start(tmp_path, t, rng, models) for t in range(first, min(first + PARALLEL, TRIALS))]
        for proc, ready, run_dir, schedule, delay in batch:
            assert ready.wait(timeout=60), "the child did not start"
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            assert proc.exitcode == -signal.SIGKILL
        outcomes.extend(_check(run_dir, schedule) for _, _, run_dir, schedule, _ in batch)
    assert len(outcomes) == TRIALS
    assert sum(n > 1 for n in outcomes) >= TRIALS // 2, f"too few kills landed mid-training: {outcomes}"
