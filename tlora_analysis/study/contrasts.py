"""Differences between arms of one task: mean over seeds of one arm minus another's, a t interval
and p-value, and Holm's adjustment over the task's comparisons.

Which pairs: arms of equal rank (e.g. TLoRA r8 against LoRA-XS r8 and LoRA r8: the same trainable
core shape, different projections or factors), and every arm against full fine-tuning. Seeds are
the replicates. A seed fixes more than one arm's run: the new head's initial weights and the order
of the minibatches (and, between two TLoRA arms, the frozen A and C), so the runs of one seed in
two arms are a matched pair. The test is therefore the paired t over the seeds both arms ran
(``test`` = "paired t"), with Welch's unequal-variance t only where fewer than two seeds are shared.
With 3 seeds its power is low: the interval says how small a difference could have been seen.

Those tests hold the validation examples fixed: they say how the arms differ on these examples. Where
the runs kept their validation outputs (predictions/), ``example_contrast_table`` tests the same pairs
over the seeds and the task's examples together, the split being one sample of them
(:func:`tlora_analysis.stats.crossed_t` on the per-example jackknife pseudo-values of the final
value's metric, paired by seed and by example).
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from ..experiments.metrics import compute_metrics, leave_one_out
from ..stats import crossed_t, pseudo_values
from ..stats.combine import holm
from ..store import Run
from .dynamics import line_label
from .spec import StudyError

__all__ = ["CONTRAST_COLUMNS", "EXAMPLE_CONTRAST_COLUMNS", "contrast_table", "example_contrast_table"]

CONTRAST_COLUMNS = ("task", "value", "first", "second", "test", "first_mean", "second_mean", "difference", "ci_lo",
                    "ci_hi", "p_value", "p_holm", "first_seeds", "second_seeds")
EXAMPLE_CONTRAST_COLUMNS = ("task", "first", "second", "metric", "seeds", "examples", "difference", "se", "ci_lo",
                            "ci_hi", "p_value", "p_holm", "example_share")


def _pairs(configs: list[tuple[str, float, str]]) -> list[tuple[int, int]]:
    """Index pairs (i, j): equal rank and different arms, or j is full fine-tuning."""
    out = []
    for i, j in combinations(range(len(configs)), 2):
        (arm_i, rank_i, method_i), (arm_j, rank_j, method_j) = configs[i], configs[j]
        if method_i == "full":
            out.append((j, i))
        elif method_j == "full" or (not pd.isna(rank_i) and rank_i == rank_j and arm_i != arm_j):
            out.append((i, j))
    return out


def _configs(part: pd.DataFrame) -> list[tuple[str, float, str]]:
    """The task's (arm, rank, method) settings, in the order of their first run."""
    return [(r.arm, r.rank, r.method) for r in part[["arm", "rank", "method"]].drop_duplicates().itertuples()]


def _side(part: pd.DataFrame, arm: str, rank: float) -> pd.DataFrame:
    """The task's runs of one (arm, rank), indexed by seed (no rank: a method without one)."""
    same = (part["arm"] == arm) & (part["rank"].isna() if pd.isna(rank) else part["rank"] == rank)
    return part.loc[same].set_index("seed")


def _compare(first: pd.Series, second: pd.Series) -> dict[str, object]:
    """Mean difference first − second (values indexed by seed) with its test, 95% interval and two-sided p.

    Paired over the shared seeds when there are two or more, else Welch's over all runs; NaN where a side
    has fewer than 2 runs or there is no spread to estimate a variance from."""
    shared = first.index.intersection(second.index)
    if len(shared) >= 2:
        first, second = first.loc[shared], second.loc[shared]
        differences = (first - second).to_numpy(float)
        test, result = "paired t", (stats.ttest_1samp(differences, 0.0) if np.ptp(differences) > 0 else None)
    else:
        a, b = first.to_numpy(float), second.to_numpy(float)
        usable = len(a) >= 2 and len(b) >= 2 and (np.ptp(a) > 0 or np.ptp(b) > 0)
        test, result = "Welch", (stats.ttest_ind(a, b, equal_var=False) if usable else None)
    ci = None if result is None else result.confidence_interval(0.95)
    return {"test": test, "first_mean": float(first.mean()), "second_mean": float(second.mean()),
            "difference": float(first.mean() - second.mean()), "ci_lo": math.nan if ci is None else float(ci.low),
            "ci_hi": math.nan if ci is None else float(ci.high),
            "p_value": math.nan if result is None else float(result.pvalue), "first_seeds": len(first),
            "second_seeds": len(second)}


def contrast_table(final: pd.DataFrame, values: tuple[str, ...] = ("best_value", "last_value")) -> pd.DataFrame:
    """One row per (task, value, pair): ``final`` holds the replicate runs (task, arm, method, rank, seed and the
    value columns, one run per arm and seed); ``first`` minus ``second`` is the difference."""
    rows = []
    for task, part in final.groupby("task", sort=True):
        configs = _configs(part)
        for value in values:
            task_rows = []
            for i, j in _pairs(configs):
                sides = [_side(part, arm, rank)[value].astype(float).dropna()
                         for arm, rank, _ in (configs[i], configs[j])]
                task_rows.append({"task": task, "value": value.removesuffix("_value"),
                                  "first": line_label(*configs[i][:2]), "second": line_label(*configs[j][:2]),
                                  **_compare(*sides)})
            for row, adjusted in zip(task_rows, holm([r["p_value"] for r in task_rows])):
                row["p_holm"] = float(adjusted)
            rows += task_rows
    return pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))


def _final_outputs(run_dir: Path, metric: str) -> tuple[float, np.ndarray, np.ndarray] | None:
    """(the final validation value of ``metric``, its per-example pseudo-values, the labels) of one run, or None
    where the run kept no outputs of its last validation evaluation."""
    run = Run(run_dir)
    evals = run.validation_evals()
    if not len(evals) or int(evals["step"].iloc[-1]) not in run.prediction_steps:
        return None
    kept = run.predictions(int(evals["step"].iloc[-1]))
    logits, labels = kept["logits"].numpy().astype(np.float64), kept["labels"].numpy()
    regression, num_labels = bool(run.config.get("regression")), run.config.get("num_labels")
    value = compute_metrics(labels, logits, regression, num_labels)[metric]
    return value, pseudo_values(value, leave_one_out(labels, logits, regression, metric, num_labels)), labels


def example_contrast_table(final: pd.DataFrame, runs_dir: Path) -> pd.DataFrame:
    """Per (task, pair) whose runs of ≥ 2 shared seeds all kept their final validation outputs: the difference
    of the final value over seeds and examples (first − second), its standard error, 95% interval, two-sided
    p (Holm-adjusted within the task) and the examples' share of the variance. Empty without such pairs.

    Raises StudyError where two runs of a task were scored on different validation labels (another split)."""
    rows = []
    for task, part in final.dropna(subset=["last_value"]).groupby("task", sort=True):
        configs = _configs(part)
        outputs = {r.run: _final_outputs(runs_dir / r.run, r.metric) for r in part.itertuples()}
        reference = next((o[2] for o in outputs.values() if o is not None), None)
        for name, kept in outputs.items():
            if kept is not None and not np.array_equal(kept[2], reference):
                raise StudyError(f"{name} was scored on other validation labels than the task's other runs of "
                                 f"{task}: they were evaluated on different splits; train them on one split")
        task_rows = []
        for i, j in _pairs(configs):
            runs = [_side(part, arm, rank)["run"] for arm, rank, _ in (configs[i], configs[j])]
            shared = [s for s in runs[0].index.intersection(runs[1].index)
                      if outputs[runs[0][s]] is not None and outputs[runs[1][s]] is not None]
            if len(shared) < 2:
                continue
            first, second = ([outputs[side[s]] for s in shared] for side in runs)
            test = crossed_t(np.array([a[0] - b[0] for a, b in zip(first, second)]),
                             np.stack([a[1] - b[1] for a, b in zip(first, second)]))
            task_rows.append({"task": task, "first": line_label(*configs[i][:2]),
                              "second": line_label(*configs[j][:2]), "metric": part["metric"].iloc[0],
                              "seeds": len(shared), "examples": len(reference), "difference": test.estimate,
                              "se": test.se, "ci_lo": test.ci_lo, "ci_hi": test.ci_hi, "p_value": test.p_value,
                              "example_share": test.example_share})
        for row, adjusted in zip(task_rows, holm([r["p_value"] for r in task_rows])):
            row["p_holm"] = float(adjusted)
        rows += task_rows
    return pd.DataFrame(rows, columns=list(EXAMPLE_CONTRAST_COLUMNS))
