"""Running a study's planned runs: skip the finished ones, resume the interrupted ones, report progress.

With ``jobs = 1`` runs train one after another in this process. With ``jobs > 1`` each run is
a worker process (``python -m tlora_analysis.study.worker``), ``jobs`` at a time, each with an
equal share of the CPU threads: training a small model is host-bound, so several runs share one
GPU well. A run that fails is reported with its log and the others go on. Unless the study keeps
weights, a finished run's resume point and final adapter are deleted: the analyses need neither.
A finished run's frozen.safetensors that is byte-identical to one of another finished run (same
method, seed, rank, targets and base model) is replaced by a hard link to it (:class:`FrozenFiles`).
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..fileio import read_json
from ..store.format import ADAPTER_DIR, FROZEN_FILE, MANIFEST_FILE, STATE_DIR
from ..store.writer import read_manifest
from .plan import PlannedRun
from .spec import Study

__all__ = ["RunOutcome", "run_status", "execute", "train_planned", "FrozenFiles"]

_LOGS = "logs"
_WEIGHT_DIRS = (STATE_DIR, ADAPTER_DIR)  # the per-evaluation predictions stay: small, and example-level


@dataclass
class RunOutcome:
    """What happened to one planned run: "done" (trained now), "skipped" (finished before), "failed",
    "postponed" (not started before the deadline)."""

    run: PlannedRun
    status: str
    seconds: float = 0.0
    message: str = ""


def run_status(run_dir: Path) -> str:
    """"done" (complete), "partial" (started, not complete) or "absent"."""
    header = run_dir / "run.json"
    if not header.is_file():
        return "partial" if run_dir.exists() else "absent"
    try:
        status = read_json(header).get("status")
    except (OSError, ValueError):
        return "partial"
    return "done" if status == "complete" else "partial"


class FrozenFiles:
    """The frozen.safetensors files of a study's finished runs by content, so identical ones share one inode.

    Runs with the same method, seed, rank, targets and base model draw the same frozen tensors, and a
    frozen file carries no run id, so their files are the same bytes: the selection runs of one arm and
    seed, and the runs of one seed across tasks and learning rates. Candidates are found by size and the
    checksum each run's manifest records, then compared byte by byte before linking. Files are only ever
    replaced by a rename, never written in place, so a link is never changed through another run.
    """

    def __init__(self, runs_dir: Path) -> None:
        self.first: dict[tuple[int, str], Path] = {}
        self.linked = 0
        self.saved_bytes = 0
        for path in sorted(runs_dir.glob(f"**/{FROZEN_FILE}")):
            if run_status(path.parent) == "done":
                self.share(path.parent)

    @staticmethod
    def _key(run_dir: Path) -> tuple[int, str] | None:
        """(size, the manifest's checksum) of the run's frozen file; None when either is missing."""
        path = run_dir / FROZEN_FILE
        try:
            entries, _ = read_manifest(run_dir / MANIFEST_FILE)
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        sums = [e.get("sha256") for e in entries if e.get("file") == FROZEN_FILE]
        return (size, str(sums[0])) if sums else None

    def share(self, run_dir: Path) -> None:
        """Replace the run's frozen file by a hard link to an identical earlier one (kept as it is where the file
        system has no hard links: a copy would save nothing)."""
        key = self._key(run_dir)
        if key is None:
            return
        path = run_dir / FROZEN_FILE
        first = self.first.setdefault(key, path)
        if first == path or os.path.samefile(first, path) or not filecmp.cmp(first, path, shallow=False):
            return
        tmp = run_dir / f".{FROZEN_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            os.link(first, tmp)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            return
        self.linked += 1
        self.saved_bytes += key[0]


def _fields_for(run: PlannedRun, study: Study) -> dict:
    """The TrainConfig fields of this attempt: resume an interrupted run when its resume point exists."""
    run_dir = study.runs_dir / run.name
    fields = {**run.fields, "run_dir": str(run_dir)}
    if run_dir.exists():
        resumable = (run_dir / STATE_DIR).is_dir() and (run_dir / "run.json").is_file()
        fields["resume" if resumable else "overwrite"] = True
    return fields


def train_planned(fields: dict, keep_weights: bool) -> None:
    """Train one run from its TrainConfig fields (the worker's job, also used in-process)."""
    from ..experiments.config import TrainConfig
    from ..experiments.train import train

    config = TrainConfig(**fields)
    train(config)
    if not keep_weights:
        for name in _WEIGHT_DIRS:
            shutil.rmtree(Path(config.run_dir) / name, ignore_errors=True)


def _worker(run: PlannedRun, study: Study, log: Path, threads: int) -> None:
    request = log.with_suffix(".json")
    request.write_text(json.dumps({"fields": _fields_for(run, study), "keep_weights": study.keep_weights}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w", encoding="utf-8") as out:
        code = subprocess.run([sys.executable, "-m", "tlora_analysis.study.worker", str(request)], stdout=out,
                              stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        raise RuntimeError(f"exit code {code}: " + " | ".join(tail))


def execute(study: Study, runs: list[PlannedRun], jobs: int = 1,
            report: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
            deadline: float | None = None) -> list[RunOutcome]:
    """Train every run of ``runs`` that is not finished; ``report`` receives one line per run with the ETA.

    No run starts after ``deadline`` (a ``time.time()`` value); those not started are "postponed",
    and the same command continues them later.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be ≥ 1, got {jobs}")
    logs = study.runs_dir.parent / _LOGS
    logs.mkdir(parents=True, exist_ok=True)
    todo = [r for r in runs if run_status(study.runs_dir / r.name) != "done"]
    outcomes = [RunOutcome(r, "skipped") for r in runs if r not in todo]
    if outcomes:
        report(f"{len(outcomes)} of {len(runs)} runs already finished; {len(todo)} to train")
    threads = max(1, (os.cpu_count() or 1) // jobs)
    frozen = FrozenFiles(study.runs_dir)
    start = time.time()

    def attempt(run: PlannedRun) -> RunOutcome:
        log = logs / (run.name.replace("/", "__") + ".log")
        began = time.time()
        if deadline is not None and began > deadline:
            return RunOutcome(run, "postponed")
        try:
            if jobs == 1:
                train_planned(_fields_for(run, study), study.keep_weights)
            else:
                _worker(run, study, log, threads)
        except Exception as exc:  # one failed run must not stop the others; it is reported below
            return RunOutcome(run, "failed", time.time() - began, f"{type(exc).__name__}: {exc} (log: {log})")
        return RunOutcome(run, "done", time.time() - began)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(attempt, r) for r in todo]
        for done, future in enumerate(as_completed(futures), start=1):
            outcome = future.result()
            outcomes.append(outcome)
            if outcome.status == "done":
                frozen.share(study.runs_dir / outcome.run.name)
            elapsed = time.time() - start
            eta = elapsed / done * (len(todo) - done)
            report(f"[{done}/{len(todo)}] {outcome.run.name}: {outcome.status} in {outcome.seconds:.0f} s; "
                   f"elapsed {elapsed / 60:.1f} min, about {eta / 60:.1f} min left" + (
                       f"\n    {outcome.message}" if outcome.message else ""))
    if frozen.linked:
        report(f"{frozen.linked} frozen.safetensors files identical to another run's are hard links now "
               f"({frozen.saved_bytes / 2**20:.1f} MiB saved)")
    return outcomes
