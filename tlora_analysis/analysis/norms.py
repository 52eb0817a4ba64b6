"""Norm trajectories: Frobenius and spectral norms of A, B, C, ΔW, and α·‖B‖_F, per layer and step.

Column names always say which norm (the paper's "L2 norm" is Frobenius in its figure 5 and
spectral in its figure 7: docs/paper.md). A and C are stored as trained (TLoRA:
A in × r, C r × out; LoRA: A r × in, B out × r); norms do not depend on orientation.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import as_float64
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, sweep
from .updates import UpdateSource

__all__ = ["norms", "matrix_norms", "NORM_COLUMNS"]

NORM_COLUMNS = (
    "fro_norm_A", "spectral_norm_A", "fro_norm_B", "spectral_norm_B", "fro_norm_C", "spectral_norm_C",
    "alpha", "alpha_fro_norm_B", "fro_norm_dW", "spectral_norm_dW", "fro_norm_W0", "rel_fro_norm_dW",
)


def matrix_norms(matrix: Any) -> tuple[float, float]:
    """(Frobenius, spectral) norm of a matrix, in float64; (NaN, NaN) for None."""
    if matrix is None:
        return math.nan, math.nan
    m = as_float64(matrix)
    if not m.size:
        return 0.0, 0.0
    return float(np.linalg.norm(m)), float(np.linalg.norm(m, 2))


def norms(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> pd.DataFrame:
    """One row per (layer, step) with the columns of :data:`NORM_COLUMNS`.

    C, alpha and alpha_fro_norm_B are NaN except for TLoRA; A and B are NaN for full
    fine-tuning; fro_norm_W0 and rel_fro_norm_dW (‖ΔW‖_F / ‖W0‖_F) are NaN unless the run
    stored W0. Frozen matrices (TLoRA's A and C) are measured once per layer.
    """
    source = UpdateSource(run)
    frozen_norms: dict[str, dict[str, tuple[float, float]]] = {}
    table = TableBuilder(IDENTITY_COLUMNS + NORM_COLUMNS)
    for layer, step, ident in sweep(run, layers, steps):
        factors, upd = source.factors_and_update(layer, step)
        if run.method == "tlora":
            if layer not in frozen_norms:
                frozen_norms.clear()  # layers are walked in the outer loop: keep one
                frozen_norms[layer] = {"A": matrix_norms(factors["A"]), "C": matrix_norms(factors["C"])}
            a_norms, c_norms = frozen_norms[layer]["A"], frozen_norms[layer]["C"]
        else:
            a_norms, c_norms = matrix_norms(factors.get("A")), (math.nan, math.nan)
        b_norms = matrix_norms(factors.get("B"))
        alpha = factors.get("alpha", math.nan)
        fro_dw, spec_dw = upd.fro_norm(), upd.spectral_norm()
        fro_w0 = source.base(layer).fro_norm if run.has_base_weights else math.nan
        table.add(
            **ident, fro_norm_A=a_norms[0], spectral_norm_A=a_norms[1], fro_norm_B=b_norms[0],
            spectral_norm_B=b_norms[1], fro_norm_C=c_norms[0], spectral_norm_C=c_norms[1], alpha=alpha,
            alpha_fro_norm_B=abs(alpha) * b_norms[0], fro_norm_dW=fro_dw, spectral_norm_dW=spec_dw,
            fro_norm_W0=fro_w0, rel_fro_norm_dW=fro_dw / fro_w0 if fro_w0 else math.nan)
    return table.frame()
