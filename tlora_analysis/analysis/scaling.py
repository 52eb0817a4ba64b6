"""TLoRA's trainable scale α: per layer and step, and its variation across layers.

α and B are not separately identifiable (only α·B enters ΔW; their split depends on weight
decay, docs/paper.md), so ‖B‖_F and α·‖B‖_F come next to α.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import as_float64
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, sweep
from .updates import UpdateSource

__all__ = ["ScalingTables", "scaling", "across_layers"]

ACROSS_COLUMNS = ("run", "method", "module", "step", "n_layers", "alpha_min", "alpha_max", "alpha_range",
                  "alpha_mean", "alpha_std", "alpha_cv", "corr_alpha_fro_norm_B")


@dataclass
class ScalingTables:
    """``per_layer``: α, ‖B‖_F, |α|·‖B‖_F per (layer, step); ``across_layers``: their spread per step."""

    per_layer: pd.DataFrame
    across_layers: pd.DataFrame


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN with fewer than 3 points or a constant input."""
    if x.size < 3 or np.ptp(x) == 0.0 or np.ptp(y) == 0.0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _spread(alpha: np.ndarray, fro_b: np.ndarray) -> dict[str, float]:
    mean = float(alpha.mean())
    std = float(alpha.std(ddof=1)) if alpha.size > 1 else math.nan
    return {
        "n_layers": alpha.size, "alpha_min": float(alpha.min()), "alpha_max": float(alpha.max()),
        "alpha_range": float(np.ptp(alpha)), "alpha_mean": mean, "alpha_std": std,
        "alpha_cv": std / abs(mean) if mean != 0.0 else math.nan, "corr_alpha_fro_norm_B": _pearson(alpha, fro_b),
    }


def across_layers(per_layer: pd.DataFrame) -> pd.DataFrame:
    """Spread of α across layers per (run, method, step), for each module kind and for "all".

    alpha_std uses ddof = 1; alpha_cv = alpha_std / |alpha_mean|; corr_alpha_fro_norm_B is
    Pearson's r over layers (NaN with fewer than 3 layers).
    """
    table = TableBuilder(ACROSS_COLUMNS)
    for (run, method, step), group in per_layer.groupby(["run", "method", "step"], sort=True):
        parts = [(module, g) for module, g in group.groupby("module", sort=True)] + [("all", group)]
        for module, g in parts:
            table.add(run=run, method=method, module=module, step=step,
                      **_spread(g["alpha"].to_numpy(float), g["fro_norm_B"].to_numpy(float)))
    df = table.frame()
    df["n_layers"] = df["n_layers"].astype("int64")
    return df


def scaling(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> ScalingTables:
    """α per (layer, step) and its variation across layers at each step (TLoRA runs only)."""
    if "alpha" not in run.spec.roles:
        raise ValueError(
            f"scaling() analyses a trained scale α (TLoRA's); run {run.name!r} is {run.method!r}, which trains none "
            "(LoRA's scale lora_alpha/r is a fixed constant, full fine-tuning has none)")
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + ("alpha", "fro_norm_B", "alpha_fro_norm_B"))
    for layer, step, ident in sweep(run, layers, steps):
        f = source.factors(layer, step)
        fro_b = float(np.linalg.norm(as_float64(f["B"])))
        table.add(**ident, alpha=f["alpha"], fro_norm_B=fro_b, alpha_fro_norm_B=abs(f["alpha"]) * fro_b)
    per_layer = table.frame()
    return ScalingTables(per_layer, across_layers(per_layer))
