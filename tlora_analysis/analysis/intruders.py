"""Intruder dimensions ("LoRA vs Full Fine-tuning: An Illusion of Equivalence", Shuttleworth et al.).

A top-k left singular vector y_j of the merged weight W0 + ΔW is an intruder when its best
cosine with W0's left singular vectors, max_i |x_iᵀ y_j|, is below ``threshold``. W0's SVD is
computed once per layer and cached; the merged top-k comes from a matrix-free Lanczos
solver (W0 x + ΔW x with ΔW factored) when k is small, or a dense SVD otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse.linalg import LinearOperator, svds

from ..lowrank import FactoredUpdate
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, sweep
from .updates import UpdateSource, require_base_weights

__all__ = ["intruders", "merged_top_left_vectors", "count_intruders"]


def _apply(update: FactoredUpdate, x: np.ndarray, transpose: bool) -> np.ndarray:
    """ΔW x (or ΔWᵀ x) from the factors."""
    parts = [update.left, update.core, update.right]
    if transpose:
        parts = [None if m is None else m.T for m in reversed(parts)]
    for m in reversed(parts):
        if m is not None:
            x = m @ x
    return update.scale * x


def merged_top_left_vectors(w0: np.ndarray, update: FactoredUpdate, k: int) -> np.ndarray:
    """The top-k left singular vectors (out × k, descending σ) of W0 + ΔW."""
    out, inn = w0.shape
    if update.is_dense or 2 * k >= min(out, inn) or min(out, inn) <= 64:
        u, _, _ = np.linalg.svd(w0 + update.dense(), full_matrices=False)
        return u[:, :k]
    op = LinearOperator(
        (out, inn), dtype=np.float64,
        matvec=lambda x: w0 @ x + _apply(update, x, transpose=False),
        rmatvec=lambda y: w0.T @ y + _apply(update, y, transpose=True),
        matmat=lambda x: w0 @ x + _apply(update, x, transpose=False),
        rmatmat=lambda y: w0.T @ y + _apply(update, y, transpose=True))
    v0 = np.random.default_rng(0).standard_normal(min(out, inn))
    u, s, _ = svds(op, k=k, tol=0, v0=v0, solver="arpack")
    return u[:, np.argsort(s)[::-1]]


def count_intruders(u0: np.ndarray, top: np.ndarray, threshold: float) -> int:
    """Number of columns of ``top`` whose largest |cosine| with any column of ``u0`` is < threshold."""
    best = np.max(np.abs(u0.T @ top), axis=0)
    return int(np.count_nonzero(best < threshold))


def intruders(
    run: Any, k: int = 10, threshold: float = 0.5, layers: LayerSelection = None, steps: StepSelection = "last",
) -> pd.DataFrame:
    """Intruder-dimension count of W0 + ΔW per (layer, step): columns ``k``, ``threshold``, ``n_intruders``.

    Needs the run's W0 (stored, or the base model attached). ``k`` ≤ min(out, in); ``threshold`` in (0, 1].
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if not (0.0 < float(threshold) <= 1.0):
        raise ValueError(f"threshold must be in (0, 1] (a cosine), got {threshold!r}")
    require_base_weights(run, "intruders")
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + ("k", "threshold", "n_intruders"))
    for layer, step, ident in sweep(run, layers, steps):
        w0 = source.base(layer)
        if k > min(w0.weight.shape):
            raise ValueError(f"k={k} exceeds min(out, in) = {min(w0.weight.shape)} of layer {layer!r}")
        top = merged_top_left_vectors(w0.weight, source.update(layer, step), int(k))
        table.add(**ident, k=int(k), threshold=float(threshold), n_intruders=count_intruders(w0.svd[0], top, threshold))
    return table.frame()
