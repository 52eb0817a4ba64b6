"""TLoRA vs LoRA comparison figures: paper figures 9 (difference heatmap) and 10 (cosine
heatmap layer × {query, value}), with the corrected companions: the update cosine per layer
against its two nulls, TLoRA's reachable set, and the subspace overlap φ.

The paper's cosine was taken between merged weights W0 + ΔW, which share W0 and so sit near 1
for any two small updates (docs/paper.md); both are drawn, labelled, on the same colour scale.
Every band is the 2.5–97.5% range of the exact null draws the analysis table carries.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._frames import module_order, module_title, panel_modules, pick_layer, pick_step, require_columns, short_module
from ._heatmap import draw_heatmap
from .style import (DIVERGING_CMAP, OKABE_ITO, SEQUENTIAL_CMAP, diverging_norm, figure_title, method_label,
                    new_figure, sequential_norm, styled)

__all__ = ["SIMILARITY_LABELS", "difference_heatmap", "cosine_heatmap", "null_band", "cosine_against_nulls",
           "reachable_panels", "overlap_panels", "phi_heatmaps"]

SIMILARITY_LABELS = {
    "cosine_dW": r"cosine of updates cos($\Delta W_1, \Delta W_2$)",
    "cosine_merged_paper": r"paper-faithful cosine of merged weights $W_0 + \Delta W$",
    "rel_diff_dW": r"$\|\Delta W_1 - \Delta W_2\|_F / \|\Delta W_1\|_F$",
    "phi_rr": r"subspace overlap $\varphi(r, r)$",
    "reachable_fraction": r"reachable fraction $f = \|P_C \Delta W P_A\|_F^2 / \|\Delta W\|_F^2$",
    "cosine_reachable": r"cosine inside the reachable set $c_S$",
    "overlap_out": r"$\varphi$ with TLoRA's col($C^\top$) (output side)",
    "overlap_in": r"$\varphi$ with TLoRA's col($A$) (input side)",
}
_PER_LAYER = ("layer", "layer_index", "module", "step")
_HAAR_TEXT = "unconstrained null (Haar-random singular vectors)"
_REACH_TEXT = "method-aware null (inside TLoRA's reachable set)"
_DIFFERENCE_TEXT = {
    "paper_faithful": r"paper-faithful: $(\Delta W_{LoRA}/s)^\top - \Delta W_{TLoRA}^\top$ (merged, transposed, LoRA scale $s$ dropped)",
    "corrected": r"corrected: $\Delta W_{LoRA} - \Delta W_{TLoRA}$ ($W_0$ cancels)",
}


def _pair_title(frame: pd.DataFrame) -> str:
    if {"method_a", "method_b"} <= set(frame.columns):
        return f"{method_label(frame['method_a'].iloc[0])} vs {method_label(frame['method_b'].iloc[0])}"
    return "run A vs run B"


@styled
def difference_heatmap(difference: pd.DataFrame, max_cells: int = 512) -> Figure:
    """Paper figure 9: the entry-wise difference LoRA − TLoRA of one layer, one panel per construction.

    ``difference`` is tidy: ``construction``, ``out_index``, ``in_index``, ``difference`` (and
    ``layer``, ``step``); :func:`tlora_analysis.figures.runs.difference_table` builds it from runs.
    Each panel has its own colour bar, diverging and centred at 0. Matrices larger than
    ``max_cells`` on a side are shown as their top-left ``max_cells`` block (stated in the title).
    """
    require_columns(difference, ("construction", "out_index", "in_index", "difference"), "figures.runs.difference_table")
    kinds = [k for k in ("paper_faithful", "corrected") if k in set(difference["construction"])]
    kinds += sorted(set(difference["construction"]) - set(kinds))
    fig, axes = new_figure("double", height=3.3, ncols=len(kinds))
    for ax, kind in zip(axes[0], kinds):
        part = difference[difference["construction"] == kind]
        matrix = part.pivot_table(index="out_index", columns="in_index", values="difference", aggfunc="first",
                                  dropna=False)
        cropped = matrix.shape[0] > max_cells or matrix.shape[1] > max_cells
        matrix = matrix.iloc[:max_cells, :max_cells]
        mesh = draw_heatmap(ax, matrix, diverging_norm(matrix.to_numpy(float)), DIVERGING_CMAP, max_xticks=6,
                            max_yticks=6)
        ax.set_xlabel("input index")
        ax.set_ylabel("output index")
        ax.set_title(_DIFFERENCE_TEXT.get(kind, kind) + (f"\n(top-left {max_cells}×{max_cells} block)" if cropped else ""),
                     fontsize=6.5)
        cbar = fig.colorbar(mesh, ax=ax, shrink=0.85, pad=0.02, label="LoRA − TLoRA entry")
        cbar.formatter.set_powerlimits((-2, 3))
        cbar.update_ticks()
    where = ""
    if {"layer", "step"} <= set(difference.columns):
        where = f": {difference['layer'].iloc[0]}, step {int(difference['step'].iloc[0])}"
    figure_title(fig, f"Entry-wise difference LoRA − TLoRA (paper Fig. 9){where}")
    return fig


@styled
def cosine_heatmap(
    per_layer: pd.DataFrame,
    values: Sequence[str] = ("cosine_merged_paper", "cosine_dW"),
    step: int | str | None = "last",
    modules: Sequence[str] | None = None,
) -> Figure:
    """Paper figure 10 and its correction: cosine layer × module, one panel per quantity.

    Default panels: the paper-faithful cosine of merged weights and the cosine of the updates,
    both on one fixed diverging scale [−1, 1] so their difference is visible at a glance.
    Columns that are all NaN (no base weights recorded) are left out with a note in the title.
    """
    require_columns(per_layer, (*_PER_LAYER, *values), "analysis.similarity(...).per_layer")
    at, chosen = pick_step(per_layer, step)
    at = at.assign(module=panel_modules(at))
    drawn = [v for v in values if np.isfinite(at[v].to_numpy(float)).any()]
    if not drawn:
        raise ValueError(f"every value of {list(values)} is NaN at step {chosen}; cosine_merged_paper needs runs "
                         f"recorded with base weights (store_base_weights=True) or with their base model attached")
    mods = module_order(at["module"].astype(str)) if modules is None else list(modules)
    norm = diverging_norm([], limit=1.0)
    n_layers = at["layer_index"].nunique()
    fig, axes = new_figure("single" if len(drawn) == 1 else "double", height=min(8.0, 1.2 + 0.2 * n_layers),
                           ncols=len(drawn))
    mesh = None
    for ax, value in zip(axes[0], drawn):
        matrix = at[at["module"].isin(mods)].pivot_table(index="layer_index", columns="module", values=value,
                                                        aggfunc="first", dropna=False)
        matrix = matrix.reindex(columns=[m for m in mods if m in matrix.columns]).sort_index()
        matrix.columns = [module_title(m) for m in matrix.columns]
        mesh = draw_heatmap(ax, matrix, norm, DIVERGING_CMAP, annotate=".2f" if n_layers <= 32 else None,
                            max_yticks=48)
        ax.set_title(SIMILARITY_LABELS.get(value, value), fontsize=6.5)
        ax.set_xlabel("module")
        ax.set_ylabel("layer")
    fig.colorbar(mesh, ax=list(axes[0]), label="cosine similarity", pad=0.02, shrink=0.9)
    missing = [v for v in values if v not in drawn]
    note = f" ({', '.join(missing)}: no data)" if missing else ""
    figure_title(fig, f"{_pair_title(at)}: cosine per layer at step {chosen} (paper Fig. 10){note}")
    return fig


def _draw_band(ax, part: pd.DataFrame, value: str, color: str, label: str, with_mean: bool = True) -> None:
    """Shade the null band of ``value`` over layers (step-wise), optionally with its mean dashed."""
    x = part["layer_index"].to_numpy()
    ax.fill_between(x, part[f"null_lo_{value}"].to_numpy(float), part[f"null_hi_{value}"].to_numpy(float), color=color,
                    lw=0, step="mid", alpha=0.45, label=label)
    if with_mean and f"null_mean_{value}" in part:
        ax.plot(x, part[f"null_mean_{value}"].to_numpy(float), ls="--", lw=0.8, color="0.35", label="null mean")


def _observed(ax, part: pd.DataFrame, value: str, label: str = "observed") -> None:
    x = part["layer_index"].to_numpy()
    ax.plot(x, part[value].to_numpy(float), marker="o", ms=3, lw=0.9, color=OKABE_ITO[0], label=label)
    ax.set_xlabel("layer")
    ax.set_xticks(x)
    ax.grid(True, axis="y")


def _draws(frame: pd.DataFrame) -> str:
    return f", {int(frame['n_null'].iloc[0])} draws" if "n_null" in frame and pd.notna(frame["n_null"].iloc[0]) else ""


def _legend(fig: Figure, ax, ncols: int = 3) -> None:
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=ncols)


@styled
def null_band(
    per_layer: pd.DataFrame,
    value: str = "cosine_dW",
    step: int | str | None = "last",
    modules: Sequence[str] | None = None,
) -> Figure:
    """``value`` per layer (points) against its null (shaded 2.5–97.5 % band of the exact draws, dashed mean).

    One panel per module. Works on ``analysis.similarity(...).per_layer`` (the unconstrained
    null of cosine_dW, cosine_merged_paper, phi_rr) and on ``analysis.reachable(...)``
    (reachable_fraction, cosine_reachable, overlap_out, overlap_in).
    """
    cols = (f"null_lo_{value}", f"null_hi_{value}")
    require_columns(per_layer, (*_PER_LAYER, value, *cols), "analysis.similarity(...).per_layer or analysis.reachable")
    at, chosen = pick_step(per_layer, step)
    at = at.assign(module=panel_modules(at))
    mods = module_order(at["module"].astype(str)) if modules is None else list(modules)
    fig, axes = new_figure("double" if len(mods) > 1 else "single", height=2.1, ncols=len(mods), sharey=True)
    for ax, module in zip(axes[0], mods):
        part = at[at["module"] == module].sort_values("layer_index")
        _draw_band(ax, part, value, "0.8", f"null 2.5–97.5% band{_draws(at)}")
        _observed(ax, part, value)
        ax.set_title(module_title(module))
    axes[0, 0].set_ylabel(SIMILARITY_LABELS.get(value, value), fontsize=6.5)
    _legend(fig, axes[0, 0])
    figure_title(fig, f"{_pair_title(at)}: {SIMILARITY_LABELS.get(value, value)} per layer at step {chosen} "
                      "against the null")
    return fig


@styled
def cosine_against_nulls(
    per_layer: pd.DataFrame,
    reach: pd.DataFrame | None = None,
    step: int | str | None = "last",
    modules: Sequence[str] | None = None,
) -> Figure:
    """Corrected Fig. 10: cos(ΔW_TLoRA, ΔW_LoRA) per layer against both nulls.

    Grey: the unconstrained null (``similarity``'s draws). With ``reach``
    (``analysis.reachable``): the method-aware band (TLoRA's update with random singular vectors
    inside its reachable set, which keeps the run's A and C) and ±√f, the largest cosine any
    TLoRA update could reach with this LoRA update.
    """
    require_columns(per_layer, (*_PER_LAYER, "cosine_dW", "null_lo_cosine_dW", "null_hi_cosine_dW"),
                    "analysis.similarity(...).per_layer")
    at, chosen = pick_step(per_layer, step)
    at = at.assign(module=panel_modules(at))
    mods = module_order(at["module"].astype(str)) if modules is None else list(modules)
    fig, axes = new_figure("double" if len(mods) > 1 else "single", height=2.3, ncols=len(mods), sharey=True)
    reach_at = pick_step(reach, chosen)[0] if reach is not None else None
    reach_at = reach_at.assign(module=panel_modules(reach_at)) if reach_at is not None else None
    for ax, module in zip(axes[0], mods):
        part = at[at["module"] == module].sort_values("layer_index")
        _draw_band(ax, part, "cosine_dW", "0.8", f"{_HAAR_TEXT}{_draws(at)}", with_mean=False)
        if reach_at is not None:
            inside = reach_at[reach_at["module"] == module].sort_values("layer_index")
            _draw_band(ax, inside, "cosine_dW", OKABE_ITO[2], f"{_REACH_TEXT}{_draws(inside)}", with_mean=False)
            x, top = inside["layer_index"].to_numpy(), inside["max_cosine"].to_numpy(float)
            ax.plot(x, top, ls=":", lw=0.8, color=OKABE_ITO[4], label="±√f: the most any TLoRA update could reach")
            ax.plot(x, -top, ls=":", lw=0.8, color=OKABE_ITO[4])
        _observed(ax, part, "cosine_dW")
        ax.axhline(0, color="0.6", lw=0.4)
        ax.set_title(module_title(module))
    axes[0, 0].set_ylabel(SIMILARITY_LABELS["cosine_dW"], fontsize=6.5)
    _legend(fig, axes[0, 0], ncols=2)
    figure_title(fig, f"{_pair_title(at)}: cosine of the updates per layer at step {chosen}, against both nulls")
    return fig


def _rows_by_module(reach: pd.DataFrame, values: Sequence[str], step: int | str | None, title: str) -> Figure:
    require_columns(reach, (*_PER_LAYER, *values, *(f"null_{k}_{v}" for v in values for k in ("lo", "hi"))),
                    "analysis.reachable(run_tlora, run_other)")
    at, chosen = pick_step(reach, step)
    at = at.assign(module=panel_modules(at))
    mods = module_order(at["module"].astype(str))
    fig, axes = new_figure("double" if len(mods) > 1 else "single", height=1.2 + 1.6 * len(values), nrows=len(values),
                           ncols=len(mods), sharex="col", sharey="row")
    for row, value in enumerate(values):
        for ax, module in zip(axes[row], mods):
            part = at[at["module"] == module].sort_values("layer_index")
            _draw_band(ax, part, value, "0.8", f"null 2.5–97.5% band{_draws(at)}")
            _observed(ax, part, value)
            if row == 0:
                ax.set_title(module_title(module))
            if row < len(values) - 1:
                ax.set_xlabel("")
        axes[row, 0].set_ylabel(SIMILARITY_LABELS.get(value, value), fontsize=6)
    _legend(fig, axes[0, 0])
    other = method_label(at["method_b"].iloc[0]) if "method_b" in at else "the other run"
    confined = method_label(at["method_a"].iloc[0]) if "method_a" in at else "the first run"
    figure_title(fig, f"{_pair_title(at)}: {title.format(other=other, confined=confined)} at step {chosen}")
    return fig


@styled
def reachable_panels(reach: pd.DataFrame, step: int | str | None = "last") -> Figure:
    """The first run's reachable set S per layer (TLoRA's, or LoRA-XS's: W0's top-r singular subspaces): the
    share of the other update's energy inside S (top, null mean r²/(out·in)) and the first run's cosine with
    that part (bottom, null: random directions inside S)."""
    return _rows_by_module(reach, ("reachable_fraction", "cosine_reachable"), step,
                           "{other}'s update inside {confined}'s reachable set")


@styled
def overlap_panels(reach: pd.DataFrame, step: int | str | None = "last") -> Figure:
    """φ between the other update's top singular subspaces and TLoRA's frozen col(Cᵀ) (output side,
    top) and col(A) (input side, bottom): TLoRA's own singular subspaces, fixed at initialisation."""
    return _rows_by_module(reach, ("overlap_out", "overlap_in"), step,
                           "{other}'s top singular subspaces against {confined}'s frozen ones (null mean r/d)")


@styled
def phi_heatmaps(
    phi: pd.DataFrame,
    layers: Sequence[str] | None = None,
    step: int | str | None = "last",
    max_layers: int = 4,
) -> Figure:
    """Subspace overlap φ(i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j) for a few layers, on [0, 1].

    The side (left = output, right = input singular vectors) is the table's ``phi_side`` and
    named in the title; for TLoRA those subspaces are its frozen col(Cᵀ) and col(A).
    """
    require_columns(phi, ("layer", "layer_index", "module", "step", "i", "j", "phi"), "analysis.similarity(...).phi")
    at, chosen = pick_step(phi, step)
    at = at.assign(module=panel_modules(at))
    names = at.drop_duplicates("layer").sort_values(["layer_index", "layer"])["layer"].tolist()
    chosen_layers = [pick_layer(at, n)[1] for n in layers] if layers is not None else names[:max_layers]
    fig, axes = new_figure("double", height=2.2, ncols=len(chosen_layers))
    norm = sequential_norm([0.0, 1.0])
    mesh = None
    a_name, b_name = ("run A", "run B")
    if {"method_a", "method_b"} <= set(at.columns):
        a_name, b_name = method_label(at["method_a"].iloc[0]), method_label(at["method_b"].iloc[0])
    for ax, name in zip(axes[0], chosen_layers):
        part = at[at["layer"] == name]
        matrix = part.pivot_table(index="i", columns="j", values="phi", aggfunc="first", dropna=False).sort_index()
        mesh = draw_heatmap(ax, matrix, norm, SEQUENTIAL_CMAP, max_xticks=6, max_yticks=6)
        idx, mod = int(part["layer_index"].iloc[0]), str(part["module"].iloc[0])
        ax.set_title(f"layer {idx} {short_module(mod)}" if idx >= 0 else name)
        ax.set_xlabel(f"j (top-j of {b_name})")
        ax.set_ylabel(f"i (top-i of {a_name})")
    fig.colorbar(mesh, ax=list(axes[0]), label=r"$\varphi(i, j)$", pad=0.02)
    side = str(at["phi_side"].iloc[0]) if "phi_side" in at else ""
    side_text = {"left": "left (output-side)", "right": "right (input-side)"}.get(side, side)
    figure_title(fig, f"{_pair_title(at)}: overlap of the top {side_text} singular directions at step {chosen}")
    return fig
