"""How alike are two runs' updates? Cosine, relative difference, subspace similarity, with nulls.

Per matched (layer, step): cos(ΔW_a, ΔW_b) and ‖ΔW_a − ΔW_b‖_F / ‖ΔW_b‖_F exact from the
factors; the LoRA paper's subspace similarity φ(i, j) (grid and its value at i = j = r);
and the paper-faithful cosine of merged weights (near 1 for any two small updates that share
W0: docs/paper.md; reported only to put the paper's figure next to the right quantity).

Every statistic comes with its null law under "ΔW_b is unrelated to ΔW_a": ``n_null`` partners
R = U diag(σ_b) Vᵀ with ΔW_b's singular values and Haar-random singular vectors, drawn exactly
in law (:mod:`.nulls`). The table gives the null's mean and 95% band (2.5 / 97.5 percentiles)
and, for the cosines and φ, the upper-tail Monte-Carlo p-value and its z-score (docs/statistics.md).
For TLoRA, whose update is confined to a fixed subspace, :func:`.reachable.reachable` gives the
method-aware null beside this unconstrained one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import FactoredUpdate
from .merged import inner_with_dense, paper_faithful_update
from ..stats import haar_cosine_variance, mc_pvalue, z_from_p
from .nulls import MergedRandomNull, RandomNull, summarize
from .select import (
    PAIR_COLUMNS, LayerSelection, StepSelection, TableBuilder, common_steps, match_layers, pair_identity, pick_steps,
)
from .spectra import numerical_rank
from .updates import BaseWeight, UpdateSource

__all__ = ["SimilarityTables", "similarity", "STATISTICS", "TESTED"]

STATISTICS = ("cosine_dW", "cosine_merged_paper", "rel_diff_dW", "phi_rr")
TESTED = ("cosine_dW", "cosine_merged_paper", "phi_rr")  # upper-tail p-values: "more alike than unrelated updates"
PER_LAYER_COLUMNS = PAIR_COLUMNS + STATISTICS + ("phi_side", "n_null", "null_sd_cosine_dW") + tuple(
    f"null_{kind}_{stat}" for stat in STATISTICS for kind in ("mean", "lo", "hi")) + tuple(
    f"{kind}_{stat}" for stat in TESTED for kind in ("p", "z"))


@dataclass
class SimilarityTables:
    """``per_layer`` (one row per matched (layer, step)), ``phi`` (grid rows), and the layer matching."""

    per_layer: pd.DataFrame
    phi: pd.DataFrame
    common_layers: list[str] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)


def _nonzero_svd(update: FactoredUpdate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, v = update.svd()
    k = numerical_rank(s, update.shape)
    return u[:, :k], s[:k], v[:, :k]


class _Side:
    """One run's view for the comparison: updates, W0 and paper-faithful updates."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.source = UpdateSource(run)

    def base(self, layer: str) -> BaseWeight | None:
        return self.source.base(layer) if self.run.has_base_weights else None

    def paper_update(self, update: FactoredUpdate) -> FactoredUpdate | None:
        out, inn = update.shape
        if self.run.spec.weight_key is None and out != inn:
            return None  # the transposed construction only fits square layers
        return paper_faithful_update(update, self.run.spec)


def _merged_cosine(pa: FactoredUpdate, pb: FactoredUpdate, w0a: BaseWeight, w0b: BaseWeight) -> dict[str, float]:
    """cos(W0a + P_a, W0b + P_b) and the pieces the random null reuses."""
    pa_w0a, pa_w0b = inner_with_dense(pa, w0a.weight), inner_with_dense(pa, w0b.weight)
    pb_w0a, pb_w0b = inner_with_dense(pb, w0a.weight), inner_with_dense(pb, w0b.weight)
    w0_ab = float(np.sum(w0a.weight * w0b.weight))
    norm_a = math.sqrt(max(w0a.fro_norm**2 + 2.0 * pa_w0a + pa.fro_norm() ** 2, 0.0))
    norm_b = math.sqrt(max(w0b.fro_norm**2 + 2.0 * pb_w0b + pb.fro_norm() ** 2, 0.0))
    num = w0_ab + pa_w0b + pb_w0a + pa.inner(pb)
    cos = num / (norm_a * norm_b) if norm_a * norm_b > 0 else math.nan
    return {"cosine": cos, "pa_w0b": pa_w0b, "norm_a": norm_a}


def _cross(qa: np.ndarray | None, qb: np.ndarray | None) -> np.ndarray | None:
    """Q_aᵀ Q_b with None meaning the identity (None when both are)."""
    if qa is None:
        return qb
    return qa.T if qb is None else qa.T @ qb


def _apply_cross(g: np.ndarray | None, m: np.ndarray) -> np.ndarray:
    return m if g is None else g @ m


class _GramCache:
    """Q_aᵀ Q_b, recomputed only when a basis changes: frozen TLoRA bases are the same
    arrays at every step (UpdateSource caches them), so their Gram is taken once per layer."""

    def __init__(self) -> None:
        self._bases: tuple[Any, Any] | None = None
        self._gram: np.ndarray | None = None

    def __call__(self, qa: np.ndarray | None, qb: np.ndarray | None) -> np.ndarray | None:
        if self._bases is None or self._bases[0] is not qa or self._bases[1] is not qb:
            self._bases, self._gram = (qa, qb), _cross(qa, qb)
        return self._gram


class _PairAlgebra:
    """Pair statistics of two updates from their compressed forms ΔW = Q_L K Q_Rᵀ, sharing Grams."""

    def __init__(self) -> None:
        self.left, self.right = _GramCache(), _GramCache()

    def statistics(self, ua: FactoredUpdate, ub: FactoredUpdate, side: str, want_grid: bool) -> dict[str, Any]:
        if ua.shape != ub.shape:
            raise ValueError(f"updates have different shapes: {ua.shape} vs {ub.shape}")
        qla, ka, qra = ua.compressed()
        qlb, kb, qrb = ub.compressed()
        g_left, g_right = self.left(qla, qlb), self.right(qra, qrb)
        u_a, s_a, vt_a = np.linalg.svd(ka, full_matrices=False)
        u_b, s_b, vt_b = np.linalg.svd(kb, full_matrices=False)
        na, nb = float(np.linalg.norm(s_a)), float(np.linalg.norm(s_b))
        moved = _apply_cross(g_left, kb)  # Q_Laᵀ Q_Lb K_b Q_Rbᵀ Q_Ra
        moved = moved if g_right is None else moved @ g_right.T
        inner = float(np.sum(ka * moved))
        out: dict[str, Any] = {"sa": s_a[: numerical_rank(s_a, ua.shape)], "sb": s_b[: numerical_rank(s_b, ub.shape)]}
        out["cosine_dW"] = float(np.clip(inner / (na * nb), -1.0, 1.0)) if na * nb > 0 else math.nan
        d2 = na * na + nb * nb - 2.0 * inner
        if nb == 0.0:
            out["rel_diff_dW"] = math.nan
        elif d2 <= 1e-4 * (na * na + nb * nb):
            out["rel_diff_dW"] = ua.relative_difference(ub)  # exact when the Gram terms nearly cancel
        else:
            out["rel_diff_dW"] = math.sqrt(d2) / nb
        k_a, k_b = out["sa"].size, out["sb"].size
        out["phi_rr"], out["grid"] = math.nan, None
        if k_a and k_b:
            if side == "left":
                overlap = u_a[:, :k_a].T @ _apply_cross(g_left, u_b[:, :k_b])
            else:
                overlap = vt_a[:k_a] @ _apply_cross(g_right, vt_b[:k_b].T)
            cum = np.cumsum(np.cumsum(overlap**2, axis=0), axis=1)
            grid = cum / np.minimum(np.arange(1, k_a + 1)[:, None], np.arange(1, k_b + 1)[None, :])
            m = min(k_a, k_b)
            out["phi_rr"] = float(grid[m - 1, m - 1])
            out["grid"] = grid if want_grid else None
        return out


def _pair_statistics(a: _Side, b: _Side, algebra: _PairAlgebra, layer: str, step: int, side: str,
                     want_grid: bool) -> dict[str, Any]:
    """All statistics between two runs at one (layer, step); the pieces the nulls need too."""
    ua, ub = a.source.update(layer, step), b.source.update(layer, step)
    out = algebra.statistics(ua, ub, side, want_grid)
    out.update(ua=ua, ub=ub, cosine_merged_paper=math.nan)
    w0a, w0b = a.base(layer), b.base(layer)
    if w0a is not None and w0b is not None:
        pa, pb = a.paper_update(ua), b.paper_update(ub)
        if pa is not None and pb is not None:
            merged = _merged_cosine(pa, pb, w0a, w0b)
            out.update(cosine_merged_paper=merged["cosine"], pa=pa, pb=pb, merged=merged, w0a=w0a, w0b=w0b)
    return out


def _validate_n_null(n_null: int) -> None:
    if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)) or n_null < 2:
        raise ValueError(f"n_null must be an int ≥ 2 (null draws per layer; 2,000 or more for p-values), got {n_null!r}")


def similarity(
    run_a: Any,
    run_b: Any,
    layers: LayerSelection = None,
    steps: StepSelection = "all",
    n_null: int = 2000,
    seed: int = 0,
    side: str = "right",
    phi_steps: StepSelection = "last",
) -> SimilarityTables:
    """Similarity of two runs' updates per matched (layer, step), with exact-in-law null draws.

    Steps are matched by number (``steps`` selects among the steps both runs recorded; a
    listed step one run lacks is an error). ``side`` picks the singular vectors φ compares:
    "right" (input side, the row space: the LoRA paper compared A's right singular vectors)
    or "left" (output side). The φ grid is truncated to each update's numerical rank and
    kept for ``phi_steps`` (default the last selected step) to keep the table small.
    ``n_null`` null draws are made per layer (seeded by ``seed`` and the layer name) and
    shared by its steps.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    _validate_n_null(n_null)
    chosen, common, only_a, only_b = match_layers(run_a, run_b, layers)
    chosen_steps = common_steps([run_a, run_b], steps)
    grid_steps = set(pick_steps(chosen_steps, phi_steps, what="the selected steps"))
    a, b = _Side(run_a), _Side(run_b)
    per_layer = TableBuilder(PER_LAYER_COLUMNS)
    phi = TableBuilder(PAIR_COLUMNS + ("phi_side", "i", "j", "phi"))
    for layer in chosen:
        pair_id = pair_identity(run_a, run_b, layer)
        algebra = _PairAlgebra()
        random_null: dict[tuple[int, int], RandomNull] = {}
        merged_null: dict[int, MergedRandomNull] = {}
        for step in chosen_steps:
            stats = _pair_statistics(a, b, algebra, layer, step, side, want_grid=step in grid_steps)
            if stats["grid"] is not None:
                grid = stats["grid"]
                ii, jj = np.meshgrid(np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1), indexing="ij")
                phi.add(grid.size, **pair_id, step=step, phi_side=side, i=ii.ravel(), j=jj.ravel(), phi=grid.ravel())
            draws = _null_random(stats, layer, side, n_null, seed, random_null, merged_null)
            per_layer.add(**pair_id, step=step, **{s: stats[s] for s in STATISTICS}, phi_side=side, n_null=n_null,
                          null_sd_cosine_dW=math.sqrt(haar_cosine_variance(*run_a.layer_shapes[layer])),
                          **summarize(draws), **_tests(stats, draws, side))
    return SimilarityTables(per_layer.frame(), phi.frame(), common, only_a, only_b)


def _tests(stats: dict[str, Any], draws: dict[str, np.ndarray], side: str) -> dict[str, float]:
    """Upper-tail Monte-Carlo p-values and z-scores (from the mid-rank) of the tested statistics.

    φ(r, r) is 1 for any pair when the smaller subspace is the whole space of its side (an update of full
    rank there), so it gets no test: NaN p and z."""
    out: dict[str, float] = {}
    dim = stats["ua"].shape[0 if side == "left" else 1]
    whole_space = min(stats["sa"].size, stats["sb"].size) == dim
    for name in TESTED:
        if name == "phi_rr" and whole_space:
            out.update(p_phi_rr=math.nan, z_phi_rr=math.nan)
            continue
        mc = mc_pvalue(draws[name], stats[name], "greater")
        out[f"p_{name}"] = mc.pvalue
        out[f"z_{name}"] = float(z_from_p(mc.mid)) if np.isfinite(mc.mid) else math.nan
    return out


def _null_random(stats: dict[str, Any], layer: str, side: str, n_null: int, seed: int,
                 random_null: dict[tuple[int, int], RandomNull], merged_null: dict[int, MergedRandomNull],
                 ) -> dict[str, np.ndarray]:
    nan = np.full(n_null, math.nan)
    draws = {s: nan for s in STATISTICS}
    ua, ub = stats["ua"], stats["ub"]
    sa, sb = stats["sa"], stats["sb"]
    if sa.size and sb.size:
        key = (min(ua.compressed()[1].shape), min(ub.compressed()[1].shape))
        if key not in random_null:
            random_null[key] = RandomNull(n_null, seed, layer, ua.shape, *key)
        draws.update(random_null[key].statistics(sa, sb, side))
    if "pa" in stats:
        _, spb_all, _ = stats["pb"].svd()
        spb = spb_all[: numerical_rank(spb_all, ub.shape)]
        pa_svd = _nonzero_svd(stats["pa"])
        if spb.size:
            if spb_all.size not in merged_null:
                merged_null[spb_all.size] = MergedRandomNull(n_null, seed, layer, stats["w0a"], stats["w0b"],
                                                             spb_all.size)
            m = stats["merged"]
            draws["cosine_merged_paper"] = merged_null[spb_all.size].cosine(pa_svd, m["pa_w0b"], m["norm_a"], spb)
    return draws
