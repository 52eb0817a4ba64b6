"""A study's tables: one row per run, the learning-rate selection, and the summary over seeds.

- ``results_table``: per run, its place in the grid, trainable parameters, the task's metric at
  the best and at the last evaluation, training time, median step time and peak GPU memory,
  all read from the run directory (run.json and metrics.jsonl).
- ``choose_learning_rates``: per (task, arm, rank) whose planned selection runs have all finished,
  the learning rate with the best held-out value of the task's metric (ties: the smaller rate),
  with every candidate kept in the table.
- ``check_recorded_lrs``: a finished replicate trained at another rate than the one now chosen is
  an error (its name carries no rate, so it would otherwise count as done).
- ``summary_table``: per (task, arm, rank) over the replicate seeds, mean, standard deviation
  and a 95% Student-t interval of the best and last validation values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..fileio import read_json
from ..stats import t_interval
from ..store import Run
from .execute import run_status
from .plan import PlannedRun
from .spec import StudyError

__all__ = ["results_table", "choose_learning_rates", "check_recorded_lrs", "summary_table", "RESULT_COLUMNS"]

RESULT_COLUMNS = ("phase", "task", "arm", "method", "rank", "lr", "seed", "run", "metric", "trainable_params",
                  "best_value", "best_step", "last_value", "majority_baseline", "steps", "wall_seconds",
                  "step_seconds", "peak_memory_gib")


def _recorded_lr(header: dict[str, Any]) -> float | None:
    """The learning rate a finished run trained at, from its run.json."""
    lr = (header.get("hyperparameters") or {}).get("lr")
    return None if lr is None else float(lr)


def check_recorded_lrs(runs_dir: Path, planned: list[PlannedRun]) -> None:
    """Raise StudyError naming every finished run of ``planned`` whose run.json records another learning rate."""
    stale = []
    for p in planned:
        if run_status(runs_dir / p.name) == "done":
            lr = _recorded_lr(read_json(runs_dir / p.name / "run.json"))
            if lr is not None and not math.isclose(lr, p.lr, rel_tol=1e-9):
                stale.append(f"{p.name} (trained at {lr:g}, chosen now {p.lr:g})")
    if stale:
        raise StudyError(f"finished run(s) trained at another learning rate than the one now chosen: "
                         f"{'; '.join(stale)}. Move or delete them so they are trained again at the chosen rate")


def _row(planned: PlannedRun, run_dir: Path) -> dict[str, Any]:
    run = Run(run_dir)
    lr = _recorded_lr(run.config)
    metric = run.config.get("selection_metric") or "accuracy"
    evals = run.validation_evals()
    values = evals[metric].astype(float) if metric in evals else pd.Series(dtype=float)
    best = evals.loc[values.idxmax()] if values.notna().any() else None
    summary = run.config.get("summary") or {}
    peak = summary.get("peak_memory_bytes")
    return {
        "phase": planned.phase, "task": planned.task, "arm": planned.arm, "method": planned.method,
        "rank": planned.rank, "lr": planned.lr if lr is None else lr, "seed": planned.seed, "run": planned.name,
        "metric": metric,
        "trainable_params": (run.config.get("parameters") or {}).get("trainable"),
        "best_value": None if best is None else float(best[metric]),
        "best_step": None if best is None else int(best["step"]),
        "last_value": float(values.iloc[-1]) if len(values) else None,
        "majority_baseline": (run.config.get("majority_baseline") or {}).get(metric),
        "steps": run.config.get("final_step"),
        "wall_seconds": float(run.metrics["wall_time"].max()) if len(run.metrics) else None,
        "step_seconds": summary.get("step_seconds"),
        "peak_memory_gib": None if peak is None else peak / 2**30,
    }


def results_table(runs_dir: Path, planned: list[PlannedRun]) -> pd.DataFrame:
    """One row per finished run among ``planned`` (unfinished ones are left out)."""
    rows = [_row(p, runs_dir / p.name) for p in planned if run_status(runs_dir / p.name) == "done"]
    frame = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    frame["rank"] = frame["rank"].astype("Int64")
    return frame


def choose_learning_rates(selection: pd.DataFrame, planned: list[PlannedRun]
                          ) -> tuple[dict[tuple[str, str, int | None], float], pd.DataFrame]:
    """(chosen lr per (task, arm, rank), the selection table with a ``chosen`` column).

    ``selection`` holds the finished selection runs, ``planned`` all of them: a (task, arm, rank) is chosen
    only once every one of its planned runs has finished, so a replicate never starts from a partial grid.
    """
    chosen: dict[tuple[str, str, int | None], float] = {}
    table = selection.assign(chosen=False)
    finished = set(table["run"])
    waiting = {(p.task, p.arm, p.rank) for p in planned if p.name not in finished}
    for (task, arm, rank), group in table.groupby(["task", "arm", "rank"], dropna=False, sort=True):
        key = (task, arm, None if pd.isna(rank) else int(rank))
        finite = group[np.isfinite(group["best_value"].astype(float))]
        if finite.empty or key in waiting:
            continue
        pick = finite.sort_values(["best_value", "lr"], ascending=[False, True]).index[0]
        table.loc[pick, "chosen"] = True
        chosen[key] = float(table.loc[pick, "lr"])
    return chosen, table


def summary_table(final: pd.DataFrame) -> pd.DataFrame:
    """Per (task, arm, rank): seeds, lr, trainable parameters, mean / sd / 95% t interval of best and last."""
    rows = []
    for (task, arm, rank), group in final.groupby(["task", "arm", "rank"], dropna=False, sort=True):
        row: dict[str, Any] = {"task": task, "arm": arm, "method": group["method"].iloc[0],
                               "rank": rank, "lr": group["lr"].iloc[0], "metric": group["metric"].iloc[0],
                               "seeds": len(group), "trainable_params": group["trainable_params"].iloc[0],
                               "majority_baseline": group["majority_baseline"].iloc[0]}
        for what in ("best_value", "last_value"):
            values = group[what].astype(float).to_numpy()
            mean, lo, hi = t_interval(values)
            row.update({f"{what}_mean": mean, f"{what}_sd": float(np.std(values, ddof=1)) if len(values) > 1
                        else math.nan, f"{what}_ci_lo": lo, f"{what}_ci_hi": hi})
        row["step_seconds_median"] = float(group["step_seconds"].astype(float).median())
        row["peak_memory_gib_max"] = float(group["peak_memory_gib"].astype(float).max())
        rows.append(row)
    return pd.DataFrame(rows)
