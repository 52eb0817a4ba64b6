"""Differences between arms of one task: mean over seeds of one arm minus another's, Welch's t
interval and p-value, and Holm's adjustment over the task's comparisons.

Which pairs: arms of equal rank (e.g. TLoRA r8 against LoRA-XS r8 and LoRA r8: the same trainable
core shape, different projections or factors), and every arm against full fine-tuning. Seeds are
the replicates; each arm's seeds are independent runs, so Welch's test (unequal variances) is the
stated test. With 3 seeds per arm its power is low: the interval says how small a difference could
have been seen.
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

CONTRAST_COLUMNS = ("task", "value", "first", "second", "first_mean", "second_mean", "difference", "ci_lo", "ci_hi",
                    "p_value", "p_holm", "first_seeds", "second_seeds")


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


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(p, lo, hi) of mean(a) − mean(b); NaN where either side has fewer than 2 seeds or no spread at all."""
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan, math.nan, math.nan
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(0.95)
    return float(result.pvalue), float(ci.low), float(ci.high)


def contrast_table(final: pd.DataFrame, values: tuple[str, ...] = ("best_value", "last_value")) -> pd.DataFrame:
    """One row per (task, value, pair): ``final`` holds the replicate runs (task, arm, method, rank, seed and the
    value columns); ``first`` minus ``second`` is the difference."""
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
                    sides.append(part.loc[same, value].astype(float).dropna().to_numpy())
                p, lo, hi = _welch(*sides)
                task_rows.append({"task": task, "value": value.removesuffix("_value"),
                                  "first": line_label(*configs[i][:2]), "second": line_label(*configs[j][:2]),
                                  "first_mean": float(np.mean(sides[0])), "second_mean": float(np.mean(sides[1])),
                                  "difference": float(np.mean(sides[0]) - np.mean(sides[1])), "ci_lo": lo,
                                  "ci_hi": hi, "p_value": p, "first_seeds": len(sides[0]),
                                  "second_seeds": len(sides[1])})
            for row, adjusted in zip(task_rows, holm([r["p_value"] for r in task_rows])):
                row["p_holm"] = float(adjusted)
            rows += task_rows
    return pd.DataFrame(rows, columns=list(CONTRAST_COLUMNS))
