"""Entry distributions: paper figure 4 (histograms of W0, A, B, C for one layer) and the
corrected Q-Q panels, both with the effect sizes (skew, excess kurtosis, KS distance) printed
next to the picture rather than p-values alone (docs/paper.md).

They draw ``analysis.distributions(...)`` tables: ``.histogram``, ``.stats`` and ``.qq``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ._frames import pick_layer, pick_step, require_columns, short_module
from .style import MATRIX_COLORS, figure_title, method_label, new_figure, styled

__all__ = ["MATRIX_ORDER", "entry_histograms", "qq_panels", "stats_text"]

MATRIX_ORDER = ("W0", "A", "B", "C", "dW")
_MATRIX_TITLES = {"W0": r"$W_0$ (frozen base)", "A": r"$A$ (frozen)", "B": r"$B$ (trained)",
                  "C": r"$C$ (frozen)", "dW": r"$\Delta W$ (update)"}
_IDENTITY = ("layer", "layer_index", "module", "step", "matrix")
_STATS = ("skew", "excess_kurtosis", "ks_stat")


def stats_text(row: pd.Series | None) -> str:
    """The effect sizes of one (layer, step, matrix) row of ``.stats``, for printing in a panel."""
    if row is None:
        return ""
    lines = [f"skew {row['skew']:+.2f}, ex. kurt {row['excess_kurtosis']:+.2f}", f"KS D {row['ks_stat']:.3f}"]
    if "shapiro_pvalue" in row and np.isfinite(row["shapiro_pvalue"]):
        lines[-1] += f", Shapiro p {row['shapiro_pvalue']:.2g}"
        tested, drawn = row.get("shapiro_n"), row.get("n_sampled", row.get("n_entries"))
        if tested is not None and drawn is not None and np.isfinite(tested) and int(tested) < int(drawn):
            lines[-1] += f" (on {int(tested):,})"  # Shapiro–Wilk runs on a subsample: its p is for that n
    n, sampled = row.get("n_entries"), row.get("n_sampled")
    if n is not None and np.isfinite(n):
        lines.append(f"n {int(n):,}" + (f" ({int(sampled):,} sampled)" if sampled is not None and np.isfinite(sampled)
                                          and int(sampled) < int(n) else ""))
    return "\n".join(lines)


def _stats_row(stats: pd.DataFrame | None, layer: str, step: int, matrix: str) -> pd.Series | None:
    if stats is None:
        return None
    require_columns(stats, (*_IDENTITY, *_STATS), "analysis.distributions(...).stats")
    hit = stats[(stats["layer"] == layer) & (stats["step"] == step) & (stats["matrix"] == matrix)]
    return None if hit.empty else hit.iloc[0]


def _matrices(frame: pd.DataFrame, matrices: Sequence[str] | None) -> list[str]:
    present = [m for m in MATRIX_ORDER if m in set(frame["matrix"])]
    if matrices is None:
        return present
    missing = [m for m in matrices if m not in present]
    if missing:
        raise ValueError(f"matrix/matrices {missing} are not in the table (present: {present}); "
                         f"ask analysis.distributions(matrices=...) for them")
    return list(matrices)


def _annotate(ax: Axes, text: str) -> None:
    if text:
        ax.text(0.98, 0.98, text, transform=ax.transAxes, ha="right", va="top", fontsize=5,
                bbox=dict(boxstyle="round,pad=0.25", fc="white", ec="0.8", lw=0.4, alpha=0.85))


def _layer_title(layer: str, module: str, layer_index: int, step: int, prefix: str) -> str:
    where = f"layer {layer_index} {module}" if layer_index >= 0 else layer
    return f"{prefix}{where}, step {step}"


def _prefix(frame: pd.DataFrame) -> str:
    methods = frame["method"].dropna().unique() if "method" in frame else []
    return f"{method_label(methods[0])}: " if len(methods) == 1 else ""


@styled
def entry_histograms(
    histogram: pd.DataFrame,
    stats: pd.DataFrame | None = None,
    layer: str | None = None,
    step: int | str | None = "last",
    matrices: Sequence[str] | None = None,
) -> Figure:
    """Paper figure 4: density histograms of the entries of W0, A, B, C (and ΔW) for one layer.

    One panel per matrix, each on its own x range (the matrices differ in scale by orders of
    magnitude); the ``stats`` effect sizes are printed in each panel.
    """
    require_columns(histogram, (*_IDENTITY, "bin_left", "bin_right", "density"),
                    "analysis.distributions(...).histogram")
    at, chosen_step = pick_step(histogram, step)
    at, chosen_layer = pick_layer(at, layer)
    mats = _matrices(at, matrices)
    fig, axes = new_figure("double", height=1.9, ncols=len(mats))
    first = at.iloc[0]
    for ax, matrix in zip(axes[0], mats):
        bins = at[at["matrix"] == matrix].sort_values("bin_left")
        dens = bins["density"].to_numpy(dtype=float)
        ok = np.isfinite(dens)
        ax.bar(bins["bin_left"][ok], dens[ok], width=(bins["bin_right"] - bins["bin_left"])[ok], align="edge",
               color=MATRIX_COLORS.get(matrix, "#7F7F7F"), edgecolor="none")
        if ok.any():
            ax.set_ylim(0, float(dens[ok].max()) * 1.5)  # headroom for the printed statistics
        ax.set_title(_MATRIX_TITLES.get(matrix, matrix))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_xlabel("entry value")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        _annotate(ax, stats_text(_stats_row(stats, chosen_layer, chosen_step, matrix)))
    axes[0, 0].set_ylabel("density")
    figure_title(fig, _layer_title(chosen_layer, str(first["module"]), int(first["layer_index"]), chosen_step,
                              _prefix(at)) + " (paper Fig. 4)")
    return fig


@styled
def qq_panels(
    qq: pd.DataFrame,
    stats: pd.DataFrame | None = None,
    matrix: str = "B",
    step: int | str | None = "last",
    layers: Sequence[str] | None = None,
    max_panels: int = 8,
) -> Figure:
    """Normal Q-Q plots of one matrix's entries, one panel per layer, statistics printed.

    The dashed line is the normal with the sample's own mean and standard deviation (from
    ``stats``; the identity line when no stats are given): points on it mean Gaussian entries.
    """
    require_columns(qq, (*_IDENTITY, "theoretical_quantile", "sample_quantile"), "analysis.distributions(qq=True).qq")
    if matrix not in set(qq["matrix"]):
        raise ValueError(f"no Q-Q rows for matrix {matrix!r}; matrices present: {sorted(set(qq['matrix']))}")
    at, chosen_step = pick_step(qq[qq["matrix"] == matrix], step)
    order = at.drop_duplicates("layer").sort_values(["layer_index", "layer"])["layer"].tolist()
    if layers is not None:
        order = [pick_layer(at, name)[1] for name in layers]
    order = order[:max_panels]
    ncols = min(4, len(order))
    nrows = int(np.ceil(len(order) / ncols))
    fig, axes = new_figure("double", height=0.3 + 1.75 * nrows, nrows=nrows, ncols=ncols)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, order):
        pts = at[at["layer"] == name].sort_values("theoretical_quantile")
        x, y = pts["theoretical_quantile"].to_numpy(float), pts["sample_quantile"].to_numpy(float)
        ok = np.isfinite(x) & np.isfinite(y)
        ax.scatter(x[ok], y[ok], s=3, color=MATRIX_COLORS.get(matrix, "#0072B2"), linewidths=0)
        row = _stats_row(stats, name, chosen_step, matrix)
        mean, std = (float(row["mean"]), float(row["std"])) if row is not None and "mean" in row else (0.0, 1.0)
        if ok.any():
            ends = np.array([x[ok].min(), x[ok].max()])
            ax.plot(ends, mean + std * ends, ls="--", lw=0.8, color="0.3")
        ax.set_title(f"layer {int(pts['layer_index'].iloc[0])} {short_module(str(pts['module'].iloc[0]))}"
                     if int(pts["layer_index"].iloc[0]) >= 0 else name)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.text(0.03, 0.97, stats_text(row), transform=ax.transAxes, ha="left", va="top", fontsize=5.5)
        ax.grid(True)
    for ax in axes[-1]:
        ax.set_xlabel("normal quantile")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{matrix} entry quantile")
    figure_title(fig, f"{_prefix(at)}normal Q-Q plots of {matrix} entries at step {chosen_step}")
    return fig
