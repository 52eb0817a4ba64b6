"""Spectral figures: paper figure 8 (eigenvalue densities TLoRA vs LoRA, paper-faithful and
corrected) and singular-value spectra of ΔW over training.

The paper took eigenvalues of the merged, non-symmetric W0 + ΔWᵀ, split them by the sign of
the real part and drew a KDE for one layer. The corrected row shows what describes the update:
the nonzero eigenvalues of ΔW itself, which are complex, in the complex plane and by modulus.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ._frames import pick_layer, pick_step, require_columns, short_module
from .style import SEQUENTIAL_CMAP, figure_title, method_color, method_label, method_order, new_figure, styled

__all__ = ["eigenvalue_densities", "singular_value_spectra"]

_EIG = ("run", "method", "layer", "layer_index", "module", "step", "eig_real", "eig_imag", "eig_abs")
_CONSTRUCTION_TEXT = {
    "paper_faithful": r"paper-faithful merged $W_0 + \Delta W^\top$",
    "corrected": r"merged $W_0 + \Delta W$",
}


def _one_layer_step(frame: pd.DataFrame, layer: str | None, step: int | str | None) -> tuple[pd.DataFrame, str, int]:
    at, chosen_step = pick_step(frame, step)
    at, chosen_layer = pick_layer(at, layer)
    return at, chosen_layer, chosen_step


MIN_KDE_POINTS = 20  # below this a density estimate mostly shows its bandwidth: draw the points instead


def _distribution_panel(ax: Axes, values: dict[str, np.ndarray], log_x: bool = False) -> dict[str, int]:
    """One method's values per entry: KDE plus rug when every method has ≥ MIN_KDE_POINTS distinct
    values, else a strip of points (one row per method). Returns the counts drawn."""
    values = {m: v[np.isfinite(v)] for m, v in values.items()}
    if all(np.unique(v).size >= MIN_KDE_POINTS for v in values.values()):
        for method, v in values.items():
            sns.kdeplot(x=v, ax=ax, color=method_color(method), fill=True, alpha=0.25, linewidth=1.0,
                        warn_singular=False, log_scale=log_x, cut=0)
            sns.rugplot(x=v, ax=ax, color=method_color(method), height=0.05, alpha=0.6, linewidth=0.5)
        ax.set_ylabel("density (KDE)")
    else:
        for row, (method, v) in enumerate(values.items()):
            ax.scatter(v, np.full(v.size, row), s=10, color=method_color(method), alpha=0.8, linewidths=0)
        ax.set_yticks(range(len(values)), [method_label(m) for m in values])
        ax.set_ylim(-0.8, len(values) - 0.2)
        ax.set_ylabel(f"points (< {MIN_KDE_POINTS} values: no KDE)", fontsize=6)
        if log_x and all((v > 0).all() for v in values.values()):
            ax.set_xscale("log")
    return {m: int(v.size) for m, v in values.items()}


def _counts(ax: Axes, counts: dict[str, int]) -> None:
    text = "n: " + ", ".join(f"{method_label(m)} {n}" for m, n in counts.items())
    ax.text(0.02, 0.98, text, transform=ax.transAxes, ha="left", va="top", fontsize=5.5)


def _methods(frame: pd.DataFrame) -> list[str]:
    return method_order(frame["method"].astype(str))


@styled
def eigenvalue_densities(
    merged: pd.DataFrame | None = None,
    update: pd.DataFrame | None = None,
    layer: str | None = None,
    step: int | str | None = "last",
) -> Figure:
    """Paper figure 8 and its correction, TLoRA vs LoRA for one layer at one step.

    ``merged``: ``analysis.merged_eigenvalues(..., paper_faithful=True)`` rows of both runs
    (concatenated); drawn as the paper did, KDEs of the real parts, positive and negative panels.
    ``update``: ``analysis.eigenvalues(...)`` rows of both runs (eigenvalues of ΔW); drawn in the
    complex plane and as a density of |λ|. Give either or both.
    """
    if merged is None and update is None:
        raise ValueError("give merged= (analysis.merged_eigenvalues) and/or update= (analysis.eigenvalues) tables")
    rows = [f for f in (merged, update) if f is not None]
    fig, axes = new_figure("double", height=0.4 + 2.0 * len(rows), nrows=len(rows), ncols=2)
    titles = []
    if merged is not None:
        titles.append(_merged_row(axes[0], merged, layer, step))
    if update is not None:
        titles.append(_update_row(axes[len(rows) - 1], update, layer, step))
    methods = _methods(pd.concat(rows))
    handles = [Patch(color=method_color(m), alpha=0.5, label=method_label(m)) for m in methods]
    if merged is not None:
        handles.append(Patch(color="none", label="paper-faithful: LoRA added without its scale"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    figure_title(fig, "Eigenvalues, TLoRA vs LoRA (paper Fig. 8 and corrected): " + "; ".join(dict.fromkeys(titles)))
    return fig


def _merged_row(axes, merged: pd.DataFrame, layer: str | None, step: int | str | None) -> str:
    """The paper's panels: KDEs of the positive and negative real parts of the merged weights' eigenvalues."""
    require_columns(merged, (*_EIG, "construction"), "analysis.merged_eigenvalues")
    at, name, chosen = _one_layer_step(merged, layer, step)
    kind = str(at["construction"].iloc[0])
    for ax, sign in zip(axes, ("positive", "negative")):
        parts = {}
        for method in _methods(at):
            re = at.loc[at["method"] == method, "eig_real"].to_numpy(float)
            parts[method] = re[re > 0] if sign == "positive" else re[re < 0]
        _counts(ax, _distribution_panel(ax, parts))
        ax.set_title(("Re λ > 0, " if sign == "positive" else "Re λ < 0, ") + _CONSTRUCTION_TEXT.get(kind, kind))
        ax.set_xlabel(r"Re $\lambda$")
        ax.margins(y=0.15)
    return f"{name}, step {chosen}"


def _update_row(axes, update: pd.DataFrame, layer: str | None, step: int | str | None) -> str:
    """The corrected panels: ΔW's nonzero eigenvalues in the complex plane and the density of their modulus."""
    require_columns(update, _EIG, "analysis.eigenvalues")
    at, name, chosen = _one_layer_step(update, layer, step)
    plane, modulus = axes
    for method in _methods(at):
        part = at[at["method"] == method]
        plane.scatter(part["eig_real"], part["eig_imag"], s=8, color=method_color(method), alpha=0.8,
                      linewidths=0, label=method_label(method))
    _counts(modulus, _distribution_panel(modulus, {m: at.loc[at["method"] == m, "eig_abs"].to_numpy(float)
                                                   for m in _methods(at)}, log_x=bool((at["eig_abs"] > 0).all())))
    modulus.margins(y=0.15)
    plane.axhline(0, color="0.6", lw=0.5)
    plane.axvline(0, color="0.6", lw=0.5)
    plane.set_xlabel(r"Re $\lambda(\Delta W)$")
    plane.set_ylabel(r"Im $\lambda(\Delta W)$")
    plane.set_title(r"corrected: nonzero eigenvalues of $\Delta W$ (complex)")
    modulus.set_xlabel(r"$|\lambda(\Delta W)|$")
    modulus.set_title(r"corrected: $|\lambda|$ of $\Delta W$")
    plane.ticklabel_format(axis="both", style="sci", scilimits=(-2, 3))
    return f"{name}, step {chosen}"


@styled
def singular_value_spectra(
    spectra: pd.DataFrame,
    layers: Sequence[str] | None = None,
    max_layers: int = 4,
    logy: bool = True,
) -> Figure:
    """Singular values σ_k of ΔW against k, one line per recorded step coloured by step.

    One panel per (method, layer): rows are methods, columns are layers (the first
    ``max_layers`` in model order unless ``layers`` names them).
    """
    require_columns(spectra, ("run", "method", "layer", "layer_index", "module", "step", "rank_order", "sigma"),
                    "analysis.spectra")
    names = spectra.drop_duplicates("layer").sort_values(["layer_index", "layer"])["layer"].tolist()
    chosen = [pick_layer(spectra, n)[1] for n in layers] if layers is not None else names[:max_layers]
    methods = _methods(spectra)
    steps = np.array(sorted(spectra["step"].unique()), dtype=float)
    positive = steps[steps > 0]
    spread = positive.size >= 2 and positive.max() / positive.min() > 20  # log colours only for log-spaced steps
    norm = (mcolors.LogNorm(vmin=positive.min(), vmax=positive.max()) if spread
            else mcolors.Normalize(vmin=steps.min(), vmax=max(steps.max(), steps.min() + 1)))
    cmap = sns.color_palette(SEQUENTIAL_CMAP, as_cmap=True)
    fig, axes = new_figure("double", height=0.4 + 1.7 * len(methods), nrows=len(methods), ncols=len(chosen),
                           sharey="row")
    for i, method in enumerate(methods):
        for j, name in enumerate(chosen):
            ax = axes[i, j]
            part = spectra[(spectra["method"] == method) & (spectra["layer"] == name)]
            for step_value, rows in part.sort_values("rank_order").groupby("step"):
                sig = rows["sigma"].to_numpy(float)
                ok = np.isfinite(sig) & ((sig > 0) if logy else True)
                if ok.any():
                    color = cmap(norm(max(float(step_value), norm.vmin)))
                    ax.plot(rows["rank_order"].to_numpy()[ok], sig[ok], color=color, lw=0.9)
            idx = int(part["layer_index"].iloc[0]) if not part.empty else -1
            mod = str(part["module"].iloc[0]) if not part.empty else ""
            ax.set_title(f"{method_label(method)}: layer {idx} {short_module(mod)}" if idx >= 0 else name)
            if logy and not part.empty and (part["sigma"] > 0).any():
                ax.set_yscale("log")
            ax.grid(True)
            if i == len(methods) - 1:
                ax.set_xlabel("index k")
        axes[i, 0].set_ylabel(r"$\sigma_k(\Delta W)$")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes.ravel().tolist(), label="training step", pad=0.02)
    figure_title(fig, r"Singular values of $\Delta W$ over training")
    return fig
