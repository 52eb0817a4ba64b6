"""From per-layer tests to one claim: estimates with intervals over independent units, combined
p-values, and per-layer calls at the report's α with Holm's correction."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..stats import holm, t_interval
from .verdict import fmt

__all__ = ["mean_with_interval", "layer_calls", "holm_count", "value_range"]


def mean_with_interval(frame: pd.DataFrame, value: str, unit: str = "run_a") -> tuple[float, float, float, str]:
    """(mean, lo, hi, what the interval is over) of ``value``.

    With two or more replicates (distinct ``unit`` values: disjoint pairs or runs) the
    interval is Student's t over the per-replicate means, the units that are independent;
    with one, it is over layers, which describes the spread across layers of this one run.
    """
    finite = frame[np.isfinite(frame[value].to_numpy(float))]
    if finite.empty:
        return np.nan, np.nan, np.nan, "no finite value"
    per_unit = finite.groupby(unit, sort=False)[value].mean()
    if len(per_unit) >= 2:
        mean, lo, hi = t_interval(per_unit.to_numpy(float))
        return mean, lo, hi, f"t interval over {len(per_unit)} replicates"
    mean, lo, hi = t_interval(finite[value].to_numpy(float))
    return mean, lo, hi, f"t interval over {len(finite)} layers of one replicate"


def layer_calls(frame: pd.DataFrame, claim_id: str, value: str, p_col: str, alpha: float) -> list[dict[str, Any]]:
    """Per-layer rows (:data:`~.verdict.LAYER_COLUMNS`) with Holm-adjusted p-values within this set: one
    family for every row, so a claim tested on several sides of a layer (a ``side`` column) makes its
    calls at the claim's one α."""
    p = frame[p_col].to_numpy(float)
    adjusted = holm(p)
    rows = []
    for (_, r), p_raw, p_adj in zip(frame.iterrows(), p, adjusted):
        rows.append({"claim_id": claim_id, "run_tlora": r.get("run_a", r.get("run")), "run_lora": r.get("run_b", ""),
                     "layer": r["layer"], "layer_index": int(r["layer_index"]), "module": r["module"],
                     "side": r.get("side", ""), "step": int(r["step"]), "value": float(r[value]),
                     "p_value": float(p_raw), "p_holm": float(p_adj),
                     "significant": bool(np.isfinite(p_adj) and p_adj <= alpha)})
    return rows


def holm_count(rows: list[dict[str, Any]]) -> str:
    """"k of n layers" significant after Holm's correction."""
    finite = [r for r in rows if np.isfinite(r["p_holm"])]
    return f"{sum(r['significant'] for r in finite)} of {len(finite)}"


def value_range(frame: pd.DataFrame, value: str, spec: str = ".3g") -> str:
    x = frame[value].to_numpy(float)
    x = x[np.isfinite(x)]
    return f"{fmt(float(x.min()), spec)} to {fmt(float(x.max()), spec)}" if x.size else "n/a"
