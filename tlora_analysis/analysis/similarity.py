"""How alike are two runs' updates? Cosine, relative difference, subspace similarity, with nulls.

Per matched (layer, step): cos(ΔW_a, ΔW_b) and ‖ΔW_a − ΔW_b‖_F / ‖ΔW_b‖_F exact from the
factors; the LoRA paper's subspace similarity φ(i, j) (grid and its value at i = j = r);
and the paper-faithful cosine of merged weights (shared/PAPER.md §5.1: near 1 for any two
small updates, reported only to put the paper's figure next to the right quantity).

Every statistic comes with a null band: with ``null_runs`` (runs that should be unrelated,
e.g. the same method with independent seeds) the same statistic over every pair of them
(``null_kind="runs"``); otherwise ``n_null`` norm-matched random partners of ΔW_b
(``null_kind="random"``, see :mod:`.nulls`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..lowrank import FactoredUpdate
from .merged import inner_with_dense, paper_faithful_update
from .nulls import MergedRandomNull, RandomNull, summarize
from .select import (
    LayerSelection, SelectionError, StepSelection, TableBuilder, layer_index, module_name, pick_steps, select_layers,
)
from .spectra import numerical_rank
from .updates import BaseWeight, UpdateSource, base_weight

__all__ = ["SimilarityTables", "similarity", "relative_difference", "STATISTICS", "NoCommonLayersError"]

STATISTICS = ("cosine_dW", "cosine_merged_paper", "rel_diff_dW", "phi_rr")
PAIR_COLUMNS = ("run_a", "run_b", "method_a", "method_b", "layer", "layer_index", "module", "step")
PER_LAYER_COLUMNS = PAIR_COLUMNS + STATISTICS + ("phi_side", "null_kind", "n_null") + tuple(
    f"null_{kind}_{stat}" for stat in STATISTICS for kind in ("mean", "lo", "hi"))


class NoCommonLayersError(ValueError):
    """Two runs adapted disjoint sets of layers, so nothing can be compared."""


@dataclass
class SimilarityTables:
    """``per_layer`` (one row per matched (layer, step)), ``phi`` (grid rows), and the layer matching."""

    per_layer: pd.DataFrame
    phi: pd.DataFrame
    common_layers: list[str] = field(default_factory=list)
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)


def relative_difference(a: FactoredUpdate, b: FactoredUpdate) -> float:
    """‖a − b‖_F / ‖b‖_F from Gram terms, falling back to the exact factored difference
    when the terms nearly cancel (‖a − b‖² < 1e-4 (‖a‖² + ‖b‖²)), so the result stays exact."""
    nb = b.fro_norm()
    if nb == 0.0:
        return math.nan
    na = a.fro_norm()
    d2 = na * na + nb * nb - 2.0 * a.inner(b)
    if d2 <= 1e-4 * (na * na + nb * nb):
        return a.relative_difference(b)
    return math.sqrt(d2) / nb


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
        return base_weight(self.run, layer) if self.run.has_base_weights else None

    def paper_update(self, update: FactoredUpdate) -> FactoredUpdate | None:
        out, inn = update.shape
        if self.run.method != "full" and out != inn:
            return None  # the transposed construction only fits square layers
        return paper_faithful_update(update, self.run.method)


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


def _pair_statistics(a: _Side, b: _Side, layer: str, step: int, side: str, want_grid: bool) -> dict[str, Any]:
    """All statistics between two runs at one (layer, step); the pieces the nulls need too."""
    ua, ub = a.source.update(layer, step), b.source.update(layer, step)
    out: dict[str, Any] = {"ua": ua, "ub": ub, "cosine_dW": ua.cosine(ub), "rel_diff_dW": relative_difference(ua, ub)}
    ka = numerical_rank(ua.singular_values(), ua.shape)
    kb = numerical_rank(ub.singular_values(), ub.shape)
    if ka and kb:
        grid = ua.subspace_similarity(ub, side=side)[:ka, :kb]
        out["phi_rr"] = float(grid[min(ka, kb) - 1, min(ka, kb) - 1])
        out["grid"] = grid if want_grid else None
    else:
        out["phi_rr"], out["grid"] = math.nan, None
    out["cosine_merged_paper"] = math.nan
    w0a, w0b = a.base(layer), b.base(layer)
    if w0a is not None and w0b is not None:
        pa, pb = a.paper_update(ua), b.paper_update(ub)
        if pa is not None and pb is not None:
            merged = _merged_cosine(pa, pb, w0a, w0b)
            out.update(cosine_merged_paper=merged["cosine"], pa=pa, pb=pb, merged=merged, w0a=w0a, w0b=w0b)
    return out


def _common_steps(runs: Sequence[Any], steps: StepSelection) -> list[int]:
    """Steps recorded by every run, selected by ``steps``; a named step one run lacks is an error."""
    if not isinstance(steps, (str, int, np.integer)) or isinstance(steps, bool):
        for run in runs:
            pick_steps(run.steps, steps, what=f"run {run.name!r}")
    common = sorted(set.intersection(*(set(run.steps) for run in runs)))
    if not common:
        names = ", ".join(f"{r.name!r}: {list(r.steps)[:6]}" for r in runs)
        raise SelectionError(f"the runs share no recorded step ({names}); record them on a common schedule")
    return pick_steps(common, steps, what="the steps the runs share")


def _match_layers(run_a: Any, run_b: Any, layers: LayerSelection) -> tuple[list[str], list[str], list[str], list[str]]:
    in_b = set(run_b.layers)
    common = [name for name in run_a.layers if name in in_b]
    only_a = [name for name in run_a.layers if name not in in_b]
    in_a = set(run_a.layers)
    only_b = [name for name in run_b.layers if name not in in_a]
    if not common:
        raise NoCommonLayersError(
            f"runs {run_a.name!r} and {run_b.name!r} have no layer in common ({run_a.name!r}: "
            f"{run_a.layers[:4]}, {run_b.name!r}: {run_b.layers[:4]}); compare runs that adapted the same modules")
    chosen = select_layers(common, layers, what=f"the layers runs {run_a.name!r} and {run_b.name!r} share")
    for name in chosen:
        if tuple(run_a.layer_shapes[name]) != tuple(run_b.layer_shapes[name]):
            raise ValueError(f"layer {name!r} is {run_a.layer_shapes[name]} in {run_a.name!r} but "
                             f"{run_b.layer_shapes[name]} in {run_b.name!r}: the runs use different models")
    return chosen, common, only_a, only_b


def _validate_nulls(null_runs: Sequence[Any] | None, layers: list[str], n_null: int) -> list[Any]:
    if null_runs is None or len(null_runs) == 0:
        if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)) or n_null < 2:
            raise ValueError(f"n_null must be an int ≥ 2 (random null draws), got {n_null!r}")
        return []
    null_runs = list(null_runs)
    if len(null_runs) < 2:
        raise ValueError("null_runs needs at least 2 runs (the null statistics are taken between pairs of them); "
                         "pass more runs or null_runs=None for random norm-matched nulls")
    for run in null_runs:
        missing = [name for name in layers if name not in set(run.layers)]
        if missing:
            raise SelectionError(f"null run {run.name!r} lacks compared layer(s) {missing[:4]}; "
                                 "null runs must adapt the same layers")
    return null_runs


def similarity(
    run_a: Any,
    run_b: Any,
    layers: LayerSelection = None,
    steps: StepSelection = "all",
    null_runs: Sequence[Any] | None = None,
    n_null: int = 100,
    seed: int = 0,
    side: str = "right",
    phi_steps: StepSelection = "last",
) -> SimilarityTables:
    """Similarity of two runs' updates per matched (layer, step), with null bands.

    Steps are matched by number (``steps`` selects among the steps both runs recorded; a
    listed step one run lacks is an error). ``side`` picks the singular vectors φ compares:
    "right" (input side, the row space: the LoRA paper compared A's right singular vectors)
    or "left" (output side). The φ grid is truncated to each update's numerical rank and
    kept for ``phi_steps`` (default the last selected step) to keep the table small.
    """
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    chosen, common, only_a, only_b = _match_layers(run_a, run_b, layers)
    null_runs = _validate_nulls(null_runs, chosen, n_null)
    chosen_steps = _common_steps([run_a, run_b, *null_runs], steps)
    grid_steps = set(pick_steps(chosen_steps, phi_steps, what="the selected steps"))
    a, b = _Side(run_a), _Side(run_b)
    null_sides = [_Side(run) for run in null_runs]
    per_layer = TableBuilder(PER_LAYER_COLUMNS)
    phi = TableBuilder(PAIR_COLUMNS + ("phi_side", "i", "j", "phi"))
    for layer in chosen:
        pair_id = {"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
                   "layer": layer, "layer_index": layer_index(layer), "module": module_name(layer)}
        random_null: dict[tuple[int, int], RandomNull] = {}
        merged_null: dict[int, MergedRandomNull] = {}
        for step in chosen_steps:
            stats = _pair_statistics(a, b, layer, step, side, want_grid=step in grid_steps)
            if stats["grid"] is not None:
                grid = stats["grid"]
                ii, jj = np.meshgrid(np.arange(1, grid.shape[0] + 1), np.arange(1, grid.shape[1] + 1), indexing="ij")
                phi.add(grid.size, **pair_id, step=step, phi_side=side, i=ii.ravel(), j=jj.ravel(), phi=grid.ravel())
            if null_sides:
                draws = _null_from_runs(null_sides, layer, step, side)
                kind, n_draws = "runs", len(null_sides) * (len(null_sides) - 1) // 2
            else:
                draws = _null_random(stats, layer, side, n_null, seed, random_null, merged_null)
                kind, n_draws = "random", n_null
            bands = {}
            for stat in STATISTICS:
                mean, lo, hi = summarize(draws[stat])
                bands.update({f"null_mean_{stat}": mean, f"null_lo_{stat}": lo, f"null_hi_{stat}": hi})
            per_layer.add(**pair_id, step=step, **{s: stats[s] for s in STATISTICS}, phi_side=side,
                          null_kind=kind, n_null=n_draws, **bands)
    return SimilarityTables(per_layer.frame(), phi.frame(), common, only_a, only_b)


def _null_from_runs(sides: list[_Side], layer: str, step: int, side: str) -> dict[str, np.ndarray]:
    values: dict[str, list[float]] = {s: [] for s in STATISTICS}
    for x, y in itertools.combinations(sides, 2):
        stats = _pair_statistics(x, y, layer, step, side, want_grid=False)
        for s in STATISTICS:
            values[s].append(stats[s])
    return {s: np.asarray(v, dtype=np.float64) for s, v in values.items()}


def _null_random(stats: dict[str, Any], layer: str, side: str, n_null: int, seed: int,
                 random_null: dict[tuple[int, int], RandomNull], merged_null: dict[int, MergedRandomNull],
                 ) -> dict[str, np.ndarray]:
    nan = np.full(n_null, math.nan)
    draws = {s: nan for s in STATISTICS}
    ua, ub = stats["ua"], stats["ub"]
    sa_all, sb_all = ua.singular_values(), ub.singular_values()
    sa, sb = sa_all[: numerical_rank(sa_all, ua.shape)], sb_all[: numerical_rank(sb_all, ub.shape)]
    if sa.size and sb.size:
        key = (sa_all.size, sb_all.size)
        if key not in random_null:
            random_null[key] = RandomNull(n_null, seed, layer, ua.shape, *key)
        draws.update(random_null[key].statistics(sa, sb, side))
    if "pa" in stats:
        _, spb_all, _ = stats["pb"].svd()
        spb = spb_all[: numerical_rank(spb_all, ub.shape)]
        pa_svd = _nonzero_svd(stats["pa"])
        if spb.size:
            if spb_all.size not in merged_null:
                merged_null[spb_all.size] = MergedRandomNull(
                    n_null, seed, layer, stats["w0a"].weight, stats["w0b"].weight, spb_all.size)
            m = stats["merged"]
            draws["cosine_merged_paper"] = merged_null[spb_all.size].cosine(pa_svd, m["pa_w0b"], m["norm_a"], spb)
    return draws
