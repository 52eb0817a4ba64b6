"""The runs a study makes: the learning-rate selection runs, then the replicate runs.

Selection (phase "select"): every (task, arm, rank, learning rate) once, with seed
``selection.seed``, trained on train minus a held-out part and evaluated on that part. An arm
with a single learning rate needs no selection. Replicates (phase "final"): every (task, arm,
rank) at its chosen learning rate, once per seed, trained on the whole training split and scored
on the validation split. Names are deterministic, so a study can be resumed, continued elsewhere
and split into shards (run i of n takes every n-th run of the sorted list).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .spec import Arm, Study, StudyError

__all__ = ["PlannedRun", "selection_runs", "final_runs", "shard", "check_configs", "parse_shard", "lr_text"]

PHASES = ("select", "final")


def lr_text(lr: float) -> str:
    """A learning rate as it appears in run names (2e-2, 1e-3, 5e-5)."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{float(mantissa):g}e{int(exponent)}"


@dataclass(frozen=True)
class PlannedRun:
    """One run: where it goes and the TrainConfig fields that make it."""

    phase: str
    task: str
    arm: str
    method: str
    rank: int | None
    lr: float
    seed: int
    name: str  # the run directory, relative to the study's runs folder
    fields: dict[str, Any]

    @property
    def group(self) -> tuple[str, str, int | None]:
        """(task, arm, rank): what a learning rate is chosen for, and what replicates share."""
        return self.task, self.arm, self.rank

    def config(self, runs_dir: Path, **extra: Any):
        from ..experiments.config import TrainConfig

        return TrainConfig(**{**self.fields, "run_dir": str(runs_dir / self.name), **extra})


def _fields(study: Study, task: str, arm: Arm, rank: int | None, lr: float, seed: int, holdout: float | None
            ) -> dict[str, Any]:
    # W0 is the same for every run of a study: referenced by its hash unless the study asks to store it
    out = {"store_base_weights": False, **study.train, **study.tasks[task], **arm.fields, "method": arm.method, "lr": lr, "seed": seed,
           "holdout": holdout, "progress": False, "verbose": False}
    if rank is not None:
        out["rank"] = rank
    return out


def _stem(arm: Arm, rank: int | None) -> str:
    return arm.name if rank is None else f"{arm.name}-r{rank}"


def selection_runs(study: Study) -> list[PlannedRun]:
    """Phase "select": one run per (task, arm, rank, lr) of arms with more than one learning rate."""
    runs = []
    for task in study.tasks:
        for arm in study.arms:
            if len(arm.lrs) < 2 or not arm.runs_on(task):
                continue
            for rank in arm.ranks:
                for lr in arm.lrs:
                    name = f"select/{task}/{_stem(arm, rank)}-lr{lr_text(lr)}"
                    runs.append(PlannedRun("select", task, arm.name, arm.method, rank, lr, study.selection_seed, name,
                                           _fields(study, task, arm, rank, lr, study.selection_seed, study.holdout)))
    return runs


def final_runs(study: Study, chosen: dict[tuple[str, str, int | None], float]) -> list[PlannedRun]:
    """Phase "final": each (task, arm, rank) at its chosen learning rate, once per seed."""
    runs = []
    for task in study.tasks:
        for arm in filter(lambda a: a.runs_on(task), study.arms):
            for rank in arm.ranks:
                lr = arm.lrs[0] if len(arm.lrs) == 1 else chosen.get((task, arm.name, rank))
                if lr is None:
                    continue
                for seed in study.seeds:
                    name = f"final/{task}/{_stem(arm, rank)}-s{seed}"
                    runs.append(PlannedRun("final", task, arm.name, arm.method, rank, lr, seed, name,
                                           _fields(study, task, arm, rank, lr, seed, None)))
    return runs


def parse_shard(text: str | None) -> tuple[int, int]:
    """"i/n" → (i, n) with 1 ≤ i ≤ n; None → (1, 1)."""
    if text is None:
        return 1, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise StudyError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise StudyError(f"--shard {text}: need 1 ≤ i ≤ n")
    return i, n


def shard(runs: Iterable[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Shard ``index`` of ``count`` (1-based): every count-th run of the runs sorted by name."""
    ordered = sorted(runs, key=lambda r: r.name)
    return ordered[index - 1::count]


def check_configs(study: Study) -> None:
    """Build every run's TrainConfig once, so a bad value is reported before anything trains."""
    placeholder = {(task, arm.name, rank): arm.lrs[0] for task in study.tasks for arm in study.arms for rank in arm.ranks
                   if arm.runs_on(task)}
    for run in [*selection_runs(study), *final_runs(study, placeholder)]:
        try:
            run.config(study.runs_dir)
        except (ValueError, TypeError) as exc:
            raise StudyError(f"{study.path}: run {run.name} would be invalid: {exc}") from None
