"""Differences between arms of one task: mean over seeds of one arm minus another's, a t interval
and p-value, and Holm's adjustment over the task's comparisons.

Which pairs: arms of equal rank (e.g. TLoRA r8 against LoRA-XS r8 and LoRA r8: the same trainable
core shape, different projections or factors), and every arm against full fine-tuning. Seeds are
the replicates. A seed fixes more than one arm's run: the new head's initial weights and the order
of the minibatches (and, between two TLoRA arms, the frozen A and C), so the runs of one seed in
two arms are a matched pair. The test is therefore the paired t over the seeds both arms ran
(``test`` = "paired t"), with Welch's unequal-variance t only where fewer than two seeds are shared.
With 3 seeds its power is low: the interval says how small a difference could have been seen.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats

from ..stats.combine import holm
from .dynamics import line_label

__all__ = ["CONTRAST_COLUMNS", "contrast_table"]

CONTRAST_COLUMNS = ("task", "value", "first", "second", "test", "first_mean", "second_mean", "difference", "ci_lo",
                    "ci_hi", "p_value", "p_holm", "first_seeds", "second_seeds")


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
        keys = part[["arm", "rank", "method"]].drop_duplicates()
        configs = [(r.arm, r.rank, r.method) for r in keys.itertuples()]
        for value in values:
            task_rows = []
            for i, j in _pairs(configs):
                sides = []
                for arm, rank, _ in (configs[i], configs[j]):
                    same = (part["arm"] == arm) & (part["rank"].isna() if pd.isna(rank) else part["rank"] == rank)
                    sides.append(part.loc[same].set_index("seed")[value].astype(float).dropna())
                task_rows.append({"task": task, "value": value.removesuffix("_value"),
                                  "first": line_label(*configs[i][:2]), "second": line_label(*configs[j][:2]),
                                  **_compare(*sides)})
            for row, adjusted in zip(task_rows, holm([r["p_value"] for r in task_rows])):
                row["p_holm"] = float(adjusted)
            rows += task_rows
    return pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))
