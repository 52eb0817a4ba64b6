"""Norm trajectories: Frobenius and spectral norms of a method's matrices and of ΔW, per layer and step.

Column names always say which norm (the paper's "L2 norm" is Frobenius in its figure 5 and
spectral in its figure 7: docs/paper.md). Matrices are named by the method's roles (its spec):
TLoRA A (in × r), B (r × r), C (r × out) and α; LoRA A (r × in), B (out × r); VeRA A, B and the
vectors d, b; LoRA-XS A, R, B. Norms do not depend on orientation; a vector is read as the
diagonal matrix it scales by (Frobenius ‖v‖₂, spectral max |v_i|).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import as_float64
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, sweep
from .updates import UpdateSource

__all__ = ["norms", "matrix_norms", "NORM_COLUMNS", "norm_columns"]

NORM_COLUMNS = (
    "fro_norm_A", "spectral_norm_A", "fro_norm_B", "spectral_norm_B", "fro_norm_C", "spectral_norm_C",
    "alpha", "alpha_fro_norm_B", "fro_norm_dW", "spectral_norm_dW", "fro_norm_W0", "rel_fro_norm_dW",
)
_MATRIX_ROLES = ("A", "B", "C")  # the roles NORM_COLUMNS always has (NaN where a method lacks one)


def matrix_norms(matrix: Any) -> tuple[float, float]:
    """(Frobenius, spectral) norm of a matrix, in float64; (NaN, NaN) for None; a vector as its diagonal matrix."""
    if matrix is None:
        return math.nan, math.nan
    m = as_float64(matrix)
    if not m.size:
        return 0.0, 0.0
    if m.ndim == 1:
        return float(np.linalg.norm(m)), float(np.max(np.abs(m)))
    return float(np.linalg.norm(m)), float(np.linalg.norm(m, 2))


def _extra_roles(spec: Any) -> list[str]:
    """The method's matrix roles beyond A, B, C (LoRA-XS R, VeRA d and b); α is a column of its own."""
    return [r for r in spec.roles if r not in _MATRIX_ROLES and r != "alpha"]


def norm_columns(spec: Any) -> tuple[str, ...]:
    """The columns of :func:`norms` for a run of this method: :data:`NORM_COLUMNS`, then fro_norm_X and
    spectral_norm_X for each further matrix role X."""
    return NORM_COLUMNS + tuple(f"{kind}_norm_{r}" for r in _extra_roles(spec) for kind in ("fro", "spectral"))


def norms(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> pd.DataFrame:
    """One row per (layer, step) with the columns of :func:`norm_columns`.

    A, B, C columns are NaN for a method without that matrix (full fine-tuning has none); alpha and
    alpha_fro_norm_B (|α|·‖B‖_F) are NaN without a trained scale α; fro_norm_W0 and rel_fro_norm_dW
    (‖ΔW‖_F / ‖W0‖_F) are NaN unless the run has W0. Frozen matrices are measured once per layer.
    """
    spec = run.spec
    source = UpdateSource(run)
    measured_layer, frozen_norms = None, {}  # layers are walked in the outer loop: keep one layer's
    roles = (*_MATRIX_ROLES, *_extra_roles(spec))
    table = TableBuilder(IDENTITY_COLUMNS + norm_columns(spec))
    for layer, step, ident in sweep(run, layers, steps):
        factors, upd = source.factors_and_update(layer, step)
        if layer != measured_layer:
            measured_layer, frozen_norms = layer, {r: matrix_norms(factors[r]) for r in spec.frozen_roles}
        measured = {r: frozen_norms[r] if r in frozen_norms else matrix_norms(factors.get(r)) for r in roles}
        alpha = factors.get("alpha", math.nan)
        fro_dw, spec_dw = upd.fro_norm(), upd.spectral_norm()
        fro_w0 = source.base(layer).fro_norm if run.has_base_weights else math.nan
        table.add(
            **ident, **{f"{kind}_norm_{r}": measured[r][i] for r in measured for i, kind in enumerate(("fro", "spectral"))},
            alpha=alpha, alpha_fro_norm_B=abs(alpha) * measured["B"][0], fro_norm_dW=fro_dw, spectral_norm_dW=spec_dw,
            fro_norm_W0=fro_w0, rel_fro_norm_dW=fro_dw / fro_w0 if fro_w0 else math.nan)
    return table.frame()
