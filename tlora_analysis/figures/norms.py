"""Norm and α figures: paper figures 5 (‖B‖_F heatmaps), 6 (α heatmaps), 7 (spectral norms of
A, B, C), and the corrected companions (α and ‖B‖_F trajectories as lines coloured by layer).

All draw ``analysis.norms`` (or ``analysis.scaling(...).per_layer``) tables; norms are named
explicitly (Frobenius vs spectral), which the paper's "L2 norm" left ambiguous.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

from ._frames import finite, module_order, module_title, pick_step, require_columns, short_module
from ._heatmap import draw_heatmap
from .style import (DIVERGING_CMAP, SEQUENTIAL_CMAP, diverging_norm, figure_title, method_label, new_figure,
                    sequential_norm, styled)

__all__ = ["VALUE_LABELS", "layer_step_heatmaps", "fro_norm_B_heatmaps", "alpha_heatmaps",
           "spectral_norm_heatmap", "layer_trajectories"]

_IDENTITY = ("layer", "layer_index", "module", "step")

VALUE_LABELS = {
    "fro_norm_B": r"$\|B\|_F$ (Frobenius)",
    "alpha": r"$\alpha$",
    "alpha_fro_norm_B": r"$|\alpha|\,\|B\|_F$ (Frobenius)",
    "fro_norm_dW": r"$\|\Delta W\|_F$ (Frobenius)",
    "spectral_norm_dW": r"$\|\Delta W\|_2$ (spectral)",
    "rel_fro_norm_dW": r"$\|\Delta W\|_F / \|W_0\|_F$",
}


def _title_prefix(frame: pd.DataFrame) -> str:
    methods = frame["method"].dropna().unique() if "method" in frame else []
    return f"{method_label(methods[0])}: " if len(methods) == 1 else ""


def _modules(frame: pd.DataFrame, modules: Sequence[str] | None) -> list[str]:
    present = module_order(frame["module"].astype(str))
    if modules is None:
        return present
    missing = [m for m in modules if m not in present]
    if missing:
        raise ValueError(f"module(s) {missing} are not in the table; modules present: {present}")
    return list(modules)


def _color_norm(values: np.ndarray, log: bool) -> tuple[mcolors.Normalize, str]:
    vals = finite(values)
    if vals.size and vals.min() < 0 < vals.max():
        return diverging_norm(vals), DIVERGING_CMAP
    return sequential_norm(vals, log=log and bool((vals > 0).any())), SEQUENTIAL_CMAP


def _layer_by_step(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    rows = frame.sort_values(["layer_index", "layer", "step"])
    labels = rows["layer_index"].astype(int).astype(str)
    if labels.groupby(rows["layer"]).first().duplicated().any() or (rows["layer_index"] < 0).any():
        labels = rows["layer"]
    table = rows.assign(_row=labels.to_numpy()).pivot_table(index="_row", columns="step", values=value,
                                                           aggfunc="first", dropna=False, sort=False)
    return table.rename_axis(index=None, columns=None)


@styled
def layer_step_heatmaps(
    frame: pd.DataFrame,
    value: str,
    modules: Sequence[str] | None = None,
    label: str | None = None,
    log: bool = False,
    source: str = "analysis.norms",
    title: str | None = None,
) -> Figure:
    """Heatmaps layer × step of ``value``, one panel per module, one shared colour bar.

    Signed values get a diverging map centred at 0; ``log=True`` uses a log colour scale for
    positive values. NaN cells are grey. Columns are the recorded snapshots, equally wide and
    labelled by their step (a log-spaced schedule is not drawn to scale; the axis says so).
    """
    require_columns(frame, (*_IDENTITY, value), source)
    mods = _modules(frame, modules)
    label = label or VALUE_LABELS.get(value, value)
    sub = frame[frame["module"].isin(mods)]
    norm, cmap = _color_norm(sub[value].to_numpy(dtype=float), log)
    n_layers = sub.groupby("module")["layer"].nunique().max()
    fig, axes = new_figure("double" if len(mods) > 1 else "single",
                           height=min(8.0, max(1.8, 1.0 + 0.17 * n_layers)), ncols=len(mods))
    mappable = None
    for ax, module in zip(axes[0], mods):
        mappable = draw_heatmap(ax, _layer_by_step(sub[sub["module"] == module], value), norm, cmap)
        ax.set_title(module_title(module))
        ax.set_xlabel("recorded snapshot (labelled by step, not to scale)")
        ax.set_ylabel("layer")
    fig.colorbar(ScalarMappable(norm=mappable.norm, cmap=mappable.cmap), ax=list(axes[0]), label=label,
                 shrink=0.9, pad=0.02)
    figure_title(fig, title or f"{_title_prefix(sub)}{label} per layer and step")
    return fig


def fro_norm_B_heatmaps(norms: pd.DataFrame, modules: Sequence[str] | None = ("query", "value")) -> Figure:
    """Paper figure 5: ‖B‖_F (Frobenius) layer × step, one heatmap for q and one for v."""
    return layer_step_heatmaps(norms, "fro_norm_B", modules=modules,
                               title=f"{_title_prefix(norms)}Frobenius norm of B per layer and step (paper Fig. 5)")


def alpha_heatmaps(frame: pd.DataFrame, modules: Sequence[str] | None = ("query", "value")) -> Figure:
    """Paper figure 6: α layer × step for q and v (from ``norms`` or ``scaling(...).per_layer``)."""
    return layer_step_heatmaps(frame, "alpha", modules=modules,
                               title=f"{_title_prefix(frame)}scale α per layer and step (paper Fig. 6)")


@styled
def spectral_norm_heatmap(norms: pd.DataFrame, step: int | str | None = "last", annotate: bool | None = None) -> Figure:
    """Paper figure 7: spectral norm ‖·‖₂ of A, B and C for each adapted layer at one step.

    The three matrices differ by orders of magnitude, so the colour scale is logarithmic and
    each cell carries its value (when there are at most 32 rows, or ``annotate=True``).
    The paper captioned this "layer normalization values"; it is the spectral norm.
    """
    cols = {"A": "spectral_norm_A", "B": "spectral_norm_B", "C": "spectral_norm_C"}
    require_columns(norms, (*_IDENTITY, *cols.values()), "analysis.norms")
    at, chosen = pick_step(norms, step)
    at = at.sort_values(["layer_index", "layer"])
    mods = module_order(at["module"].astype(str))
    at = at.assign(_mod=pd.Categorical(at["module"], categories=mods, ordered=True)).sort_values(["layer_index", "_mod"])
    labels = [f"{i} {short_module(m)}" if i >= 0 else name
              for i, m, name in zip(at["layer_index"], at["module"], at["layer"])]
    if len(set(labels)) != len(labels):
        labels = list(at["layer"])
    matrix = pd.DataFrame({k: at[c].to_numpy(dtype=float) for k, c in cols.items()}, index=labels)
    vals = finite(matrix.to_numpy())
    log = vals.size > 0 and bool((vals > 0).all())
    norm = sequential_norm(vals, log=log) if vals.size else mcolors.Normalize(0, 1)
    annotate = len(matrix) <= 32 if annotate is None else annotate
    fig, axes = new_figure("single", height=min(8.5, 1.1 + 0.16 * len(matrix)))
    ax = axes[0, 0]
    mesh = draw_heatmap(ax, matrix, norm, SEQUENTIAL_CMAP, annotate=".2g" if annotate else None, max_yticks=48)
    ax.set_xlabel("matrix")
    ax.set_ylabel("layer and module")
    cbar = fig.colorbar(mesh, ax=ax, label=r"spectral norm $\|\cdot\|_2$" + (" (log scale)" if log else ""), pad=0.02)
    if log:  # plain numbers, more per decade when the range is narrow ("4×10⁰"-style single labels otherwise)
        decades = np.log10(norm.vmax / norm.vmin)
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) if decades < 1.5 else (1.0, 2.0, 5.0) if decades < 3 else (1.0,)
        cbar.ax.yaxis.set_major_locator(LogLocator(subs=subs))
        cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
        cbar.ax.yaxis.set_minor_locator(NullLocator())
    ax.set_title(f"{_title_prefix(at)}spectral norms at step {chosen} (paper Fig. 7)")
    return fig


@styled
def layer_trajectories(
    frame: pd.DataFrame,
    value: str,
    modules: Sequence[str] | None = None,
    label: str | None = None,
    logy: bool = False,
    source: str = "analysis.norms",
) -> Figure:
    """``value`` against training step, one line per layer coloured by depth, one panel per module.

    The corrected companion of the heatmaps: trajectories show when a quantity moves, and
    the colour bar maps colour to layer index.
    """
    require_columns(frame, (*_IDENTITY, value), source)
    mods = _modules(frame, modules)
    label = label or VALUE_LABELS.get(value, value)
    sub = frame[frame["module"].isin(mods)]
    depth = sub["layer_index"].astype(int)
    # one discrete colour per layer index, from viridis without its palest yellow
    bounds = np.arange(depth.min() - 0.5, depth.max() + 1.0)
    cmap = mcolors.ListedColormap(matplotlib.colormaps[SEQUENTIAL_CMAP](np.linspace(0.0, 0.9, len(bounds) - 1)))
    norm = mcolors.BoundaryNorm(bounds, cmap.N)
    fig, axes = new_figure("double" if len(mods) > 1 else "single", ncols=len(mods), sharey=True)
    for ax, module in zip(axes[0], mods):
        part = sub[sub["module"] == module]
        for layer, rows in part.sort_values("step").groupby("layer", sort=False):
            rows = rows[np.isfinite(rows[value].to_numpy(dtype=float))]
            if rows.empty:
                continue
            ax.plot(rows["step"], rows[value], color=cmap(norm(int(rows["layer_index"].iloc[0]))),
                    lw=0.9, marker="o" if len(rows) < 12 else None, ms=2)
        ax.set_title(module_title(module))
        ax.set_xlabel("training step")
        ax.grid(True)
        if logy:
            ax.set_yscale("log")
    axes[0, 0].set_ylabel(label)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[0]), label="layer index", pad=0.02)
    ticks = MaxNLocator(nbins=8, integer=True).tick_values(depth.min(), depth.max())
    cbar.set_ticks([t for t in ticks if depth.min() <= t <= depth.max()])
    cbar.minorticks_off()
    figure_title(fig, f"{_title_prefix(sub)}{label} over training, one line per layer")
    return fig
