"""Merged weights W0 + ΔW: the corrected construction and the paper's (docs/paper.md).

- corrected: W0 + ΔW, ΔW in the (out × in) orientation with its scale (LoRA's lora_alpha/r).
- paper_faithful: the construction behind the paper's figures 8 and 10: the update added
  *transposed* (possible only for square layers) and a fixed scale (LoRA's lora_alpha/r: the
  spec's ``fixed_scale``) left out. A trained scale (TLoRA's α) stays; a method whose trained
  tensor is the weight itself (full fine-tuning) has no adapter to mis-orient, so its
  paper-faithful merged weight is the fine-tuned weight itself.

Inner products with W0 are taken from the factors in O(out·in·r) without building ΔW;
only :func:`merged_eigenvalues` builds the dense merged matrix (an eigenproblem of W0 + ΔW
has no small-core shortcut).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import FactoredUpdate
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, select_layers, sweep
from .spectra import EIG_COLUMNS, eigen_rows, square_layers
from .updates import UpdateSource, require_base_weights

__all__ = ["paper_faithful_update", "inner_with_dense", "merged_eigenvalues", "CONSTRUCTIONS"]

CONSTRUCTIONS = ("corrected", "paper_faithful")


def paper_faithful_update(update: FactoredUpdate, spec: Any) -> FactoredUpdate:
    """The update as the paper added it to W0: transposed, and without a fixed scale (``spec``: the run's
    method spec, ``run.spec``)."""
    if spec.weight_key is not None:
        return update
    out, inn = update.shape
    if out != inn:
        raise ValueError(
            f"the paper-faithful construction adds the update transposed, which needs a square layer; "
            f"this one is {out} × {inn}")
    scale = 1.0 if spec.fixed_scale else update.scale
    core = None if update.core is None else update.core.T
    right = None if update.left is None else update.left.T
    left = None if update.right is None else update.right.T
    return FactoredUpdate(left, core, right, scale)


def inner_with_dense(update: FactoredUpdate, weight: np.ndarray) -> float:
    """⟨ΔW, W⟩_F = s · tr(Mᵀ Lᵀ W Rᵀ) for a dense W, without building ΔW (O(out·in·r))."""
    if update.is_dense:
        return float(np.sum(update.dense() * weight))
    t = weight
    if update.left is not None:
        t = update.left.T @ t
    if update.right is not None:
        t = t @ update.right.T
    core_term = np.trace(t) if update.core is None else np.sum(t * update.core)
    return float(update.scale * core_term)


def merged_dense(update: FactoredUpdate, w0: np.ndarray) -> np.ndarray:
    """W0 + ΔW as a dense float64 matrix (the explicit dense path)."""
    return w0 + update.dense()


def merged_eigenvalues(
    run: Any, layers: LayerSelection = None, steps: StepSelection = "last", paper_faithful: bool = False,
) -> pd.DataFrame:
    """Eigenvalues of the merged weight per (layer, step, eig_index), labelled by ``construction``.

    ``paper_faithful=False``: W0 + ΔW (corrected). ``True``: the paper's construction (module
    docstring), every row labelled ``construction="paper_faithful"``. Square layers only;
    dense O(n³) per (layer, step), hence ``steps="last"`` by default. Needs W0 (stored, or the
    base model attached: ``Run(path, base_model=...)``).
    """
    require_base_weights(run, "merged_eigenvalues")
    construction = CONSTRUCTIONS[1] if paper_faithful else CONSTRUCTIONS[0]
    chosen = square_layers(run, select_layers(run.layers, layers, what=f"run {run.name!r}"), "merged_eigenvalues")
    source = UpdateSource(run)
    table = TableBuilder(IDENTITY_COLUMNS + ("construction",) + EIG_COLUMNS)
    for layer, step, ident in sweep(run, chosen, steps):
        upd = source.update(layer, step)
        if paper_faithful:
            upd = paper_faithful_update(upd, run.spec)
        lam = np.linalg.eigvals(merged_dense(upd, source.base(layer).weight)).astype(np.complex128)
        lam = lam[np.lexsort((np.angle(lam), -np.abs(lam)))]
        table.add(lam.size, **ident, construction=construction, **eigen_rows(lam))
    return table.frame()
