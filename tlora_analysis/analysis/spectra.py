"""Singular values, rank summaries and nonzero eigenvalues of ΔW, exact from the factors.

For TLoRA and LoRA these cost O(r³) per (layer, step) once the outer factors are
decomposed (docs/architecture.md); full fine-tuning goes through the dense path.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from .select import (
    IDENTITY_COLUMNS, LayerSelection, SelectionError, StepSelection, TableBuilder, select_layers, sweep,
)
from .updates import UpdateSource

__all__ = ["spectra", "spectral_summary", "eigenvalues", "numerical_rank", "eigen_rows", "square_layers"]

SUMMARY_COLUMNS = ("stable_rank", "effective_rank_sigma", "effective_rank_energy",
                   "fro_norm_dW", "spectral_norm_dW", "numerical_rank")
EIG_COLUMNS = ("eig_index", "eig_real", "eig_imag", "eig_abs")


def numerical_rank(sigma: np.ndarray, shape: tuple[int, int]) -> int:
    """Number of σ above max(out, in)·eps·σ₁ (0 for a zero update)."""
    if not sigma.size or sigma[0] == 0.0:
        return 0
    tol = max(shape) * np.finfo(np.float64).eps * sigma[0]
    return int(np.count_nonzero(sigma > tol))


def spectra(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> pd.DataFrame:
    """Singular values of ΔW: one row per (layer, step, rank_order), ``sigma`` descending.

    All min(a, b) values of the compressed core are listed (a, b ≤ r for TLoRA and LoRA;
    min(out, in) for full fine-tuning), exact zeros included for rank-deficient updates.
    """
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + ("rank_order", "sigma"))
    for layer, step, ident in sweep(run, layers, steps):
        sigma = source.update(layer, step).singular_values()
        table.add(sigma.size, **ident, rank_order=np.arange(1, sigma.size + 1), sigma=sigma)
    return table.frame()


def spectral_summary(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> pd.DataFrame:
    """Per (layer, step): stable rank Σσ²/σ₁², effective ranks, ‖ΔW‖_F, ‖ΔW‖₂, numerical rank.

    ``effective_rank_sigma`` is exp(entropy of σ/Σσ) (Roy & Vetterli); ``effective_rank_energy``
    uses σ²/Σσ². Ratios are NaN for a zero update (step 0 of TLoRA and LoRA).
    """
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + SUMMARY_COLUMNS)
    for layer, step, ident in sweep(run, layers, steps):
        upd = source.update(layer, step)
        sigma = upd.singular_values()
        table.add(
            **ident, stable_rank=upd.stable_rank(), effective_rank_sigma=upd.effective_rank("sigma"),
            effective_rank_energy=upd.effective_rank("energy"), fro_norm_dW=float(np.linalg.norm(sigma)),
            spectral_norm_dW=upd.spectral_norm(), numerical_rank=numerical_rank(sigma, upd.shape))
    return table.frame()


def eigen_rows(lam: np.ndarray) -> dict[str, np.ndarray]:
    """Columns for a vector of complex eigenvalues (already ordered)."""
    return {"eig_index": np.arange(1, lam.size + 1), "eig_real": lam.real, "eig_imag": lam.imag,
            "eig_abs": np.abs(lam)}


def square_layers(run: Any, chosen: list[str], analysis: str) -> list[str]:
    """The square layers of ``chosen``, warning about the others; error when none is square."""
    square = [name for name in chosen if run.layer_shapes[name][0] == run.layer_shapes[name][1]]
    skipped = [name for name in chosen if name not in square]
    if not square:
        raise SelectionError(
            f"{analysis} needs square layers (out = in); none of the selected layers of run "
            f"{run.name!r} is square: {skipped[:5]}; select square layers such as attention query/value")
    if skipped:
        warnings.warn(f"{analysis}: skipping {len(skipped)} non-square layer(s) of run {run.name!r}: {skipped[:5]}",
                      stacklevel=3)
    return square


def eigenvalues(run: Any, layers: LayerSelection = None, steps: StepSelection = "all") -> pd.DataFrame:
    """Nonzero eigenvalues of square ΔW (complex), per (layer, step, eig_index).

    Computed as the eigenvalues of a p × p matrix with the same nonzero spectrum; ordered
    by decreasing modulus. A zero update has no rows. Non-square layers are skipped with a
    warning.
    """
    chosen = square_layers(run, select_layers(run.layers, layers, what=f"run {run.name!r}"), "eigenvalues")
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + EIG_COLUMNS)
    for layer, step, ident in sweep(run, chosen, steps):
        lam = source.update(layer, step).eigenvalues()
        table.add(lam.size, **ident, **eigen_rows(lam))
    return table.frame()

