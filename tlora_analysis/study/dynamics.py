"""Quantities over training steps, summarised over a study's seeds (tidy frames for figures.study).

Each frame has one row per (panel, line, step): the mean over seeds and a band from the
smallest to the largest seed (with three to five seeds an interval would mostly show its own
width). Panels are tasks; lines are arms at a rank.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import analysis
from ..store import Run

__all__ = ["validation_curves", "tlora_dynamics", "reachable_dynamics", "line_label"]


def line_label(arm: str, rank) -> str:
    return arm if rank is None or pd.isna(rank) else f"{arm} r{int(rank)}"


def _band(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean and min–max over seeds per (panel, line, group, method, step)."""
    grouped = frame.groupby(["panel", "line", "group", "method", "step"], sort=True)[value]
    out = grouped.agg(mean="mean", lo="min", hi="max", seeds="count").reset_index()
    return out


def _merge_identical_lines(banded: pd.DataFrame) -> pd.DataFrame:
    """One curve for lines of a panel that are equal at every point, labelled with all their names
    joined by " = " (drawn apart, the later would hide the earlier). LoRA's reachable fraction
    depends on TLoRA's frozen A and C alone, so TLoRA arms that share them draw the same curve."""
    if banded.empty:
        return banded
    curves = []
    for _, part in banded.groupby("panel", sort=False):
        names: dict[tuple, list[str]] = {}
        first: dict[tuple, pd.DataFrame] = {}
        for line, curve in part.groupby("line", sort=False):
            key = tuple(curve[["step", "mean", "lo", "hi"]].itertuples(index=False, name=None))
            names.setdefault(key, []).append(str(line))
            first.setdefault(key, curve)
        curves += [first[key].assign(line=" = ".join(labels)) for key, labels in names.items()]
    return pd.concat(curves, ignore_index=True)


def validation_curves(final: pd.DataFrame, runs_dir) -> pd.DataFrame:
    """The task's validation metric at every evaluation of every final run, banded over seeds."""
    rows = []
    for _, r in final.iterrows():
        run = Run(runs_dir / r["run"])
        ev = run.validation_evals()
        for step, value in zip(ev["step"], ev[r["metric"]]):
            rows.append({"panel": r["task"], "line": line_label(r["arm"], r["rank"]), "group": r["arm"],
                         "method": r["method"], "step": int(step), "value": float(value)})
    return _band(pd.DataFrame(rows), "value") if rows else pd.DataFrame()


def tlora_dynamics(final: pd.DataFrame, runs_dir) -> dict[str, pd.DataFrame]:
    """TLoRA's α and ‖B‖_F (each the mean over adapted matrices) over steps, banded over seeds."""
    rows = []
    for _, r in final[final["method"] == "tlora"].iterrows():
        norms = analysis.norms(Run(runs_dir / r["run"]))
        per_step = norms.groupby("step")[["alpha", "fro_norm_B"]].mean()
        for step, values in per_step.iterrows():
            rows.append({"panel": r["task"], "line": line_label(r["arm"], r["rank"]), "group": r["arm"],
                         "method": "tlora", "step": int(step), **values.to_dict()})
    frame = pd.DataFrame(rows)
    return {name: _band(frame, name) for name in ("alpha", "fro_norm_B")} if rows else {}


def reachable_dynamics(final: pd.DataFrame, runs_dir, n_null: int = 200) -> dict[str, pd.DataFrame]:
    """Per TLoRA / LoRA pair of one seed, task and rank: LoRA's reachable fraction relative to chance
    (f / E f) and TLoRA's cosine inside its reachable set, each the mean over adapted matrices."""
    rows = []
    lora = final[final["method"] == "lora"]
    for _, t in final[final["method"] == "tlora"].iterrows():
        partners = lora[(lora["task"] == t["task"]) & (lora["rank"] == t["rank"]) & (lora["seed"] == t["seed"])]
        for _, lo in partners.iterrows():
            table = analysis.reachable(Run(runs_dir / t["run"]), Run(runs_dir / lo["run"]), n_null=n_null)
            table = table.assign(enrichment=table["reachable_fraction"] / table["null_mean_reachable_fraction"])
            per_step = table.groupby("step")[["enrichment", "cosine_reachable"]].mean()
            for step, values in per_step.iterrows():
                rows.append({"panel": t["task"], "line": f"{line_label(t['arm'], t['rank'])} vs {lo['arm']}",
                             "group": f"{t['arm']} vs {lo['arm']}", "method": "tlora", "step": int(step),
                             **values.to_dict()})
    frame = pd.DataFrame(rows)
    if not rows:
        return {}
    frame = frame[np.isfinite(frame["cosine_reachable"].astype(float))]
    return {name: _merge_identical_lines(_band(frame, name)) for name in ("enrichment", "cosine_reachable")}
