"""Figures of a study (``tlora-analysis study``): methods compared over seeds.

Both draw tidy tables the study computed (tlora_analysis.study.results / dynamics): the task's
metric against trainable parameters with 95% intervals over seeds, and quantities over training
steps with a band over seeds. Nothing is computed here.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ._frames import require_columns
from .style import METHOD_COLORS, OKABE_ITO, figure_title, method_color, new_figure, styled

__all__ = ["metric_vs_parameters", "band_curves"]


def _arm_colors(arms: Sequence[str], methods: dict[str, str]) -> dict[str, str]:
    """One colour per arm: the method's colour for its first arm, then colours no method uses."""
    colors, used = {}, set()
    spare = iter(c for c in OKABE_ITO if c not in set(METHOD_COLORS.values()))
    for arm in arms:
        base = method_color(methods[arm])
        colors[arm] = base if base not in used else next(spare, "0.4")
        used.add(colors[arm])
    return colors


def _legend(fig: Figure, axes: np.ndarray) -> None:
    """One legend below the panels with every label of any panel (an arm may run on some tasks only)."""
    by_label: dict[str, object] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(label, handle)
    fig.legend(list(by_label.values()), list(by_label), loc="outside lower center", ncols=min(len(by_label), 6))


@styled
def metric_vs_parameters(summary: pd.DataFrame, value: str = "last_value") -> Figure:
    """Per task: mean ``value`` over seeds (with its 95% t interval) against trainable parameters (log).

    The default is the value at the end of training: ``best_value`` picks each run's best evaluation on the
    same validation data it reports, so it is biased upwards (by how much differs between methods).

    ``summary``: rows of ``study.results.summary_table`` (task, arm, method, rank, metric,
    trainable_params, ``{value}_mean``, ``{value}_ci_lo``, ``{value}_ci_hi``, majority_baseline).
    One colour per arm, points of one arm joined by rank and labelled with it where the arm has
    several ranks in the panel; an arm with one rank in the whole table names it in the legend.
    """
    cols = ("task", "arm", "method", "rank", "metric", "trainable_params", f"{value}_mean", f"{value}_ci_lo",
            f"{value}_ci_hi", "majority_baseline")
    require_columns(summary, cols, "study.results.summary_table")
    tasks = list(dict.fromkeys(summary["task"]))
    arms = list(dict.fromkeys(summary["arm"]))
    colors = _arm_colors(arms, dict(zip(summary["arm"], summary["method"])))
    arm_ranks = {arm: summary.loc[summary["arm"] == arm, "rank"].dropna().unique() for arm in arms}
    labels = {arm: f"{arm} r{int(r[0])}" if len(r) == 1 else arm for arm, r in arm_ranks.items()}
    fig, axes = new_figure("double", height=2.4, ncols=len(tasks))
    for ax, task in zip(axes[0], tasks):
        part = summary[summary["task"] == task]
        for arm in arms:
            rows = part[part["arm"] == arm].sort_values("trainable_params")
            if rows.empty:
                continue
            x = rows["trainable_params"].astype(float).to_numpy()
            y = rows[f"{value}_mean"].astype(float).to_numpy()
            err = np.vstack([y - rows[f"{value}_ci_lo"].astype(float), rows[f"{value}_ci_hi"].astype(float) - y])
            ax.errorbar(x, y, yerr=np.where(np.isfinite(err), err, 0.0), marker="o", ms=3.5, lw=0.9, capsize=2,
                        color=colors[arm], label=labels[arm])
            if rows["rank"].nunique() > 1:  # labels alternate above and below, so neighbouring ranks stay legible
                for i, (xi, yi, r) in enumerate(zip(x, y, rows["rank"])):
                    ax.annotate(f"r{int(r)}", (xi, yi), textcoords="offset points", xytext=(3, 3 if i % 2 == 0 else -3),
                                va="bottom" if i % 2 == 0 else "top", fontsize=5.5, color=colors[arm])
        base = part["majority_baseline"].astype(float).dropna()
        if len(base):
            ax.axhline(float(base.iloc[0]), color="0.35", ls=":", lw=1.0, label="majority class")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_title(task)
        ax.grid(True, axis="y")
    metric = str(summary["metric"].iloc[0])
    axes[0, 0].set_ylabel(f"{'best' if value == 'best_value' else 'final'} validation {metric}")
    _legend(fig, axes)
    figure_title(fig, f"Validation {metric} against trainable parameters: mean over seeds with 95% t intervals")
    return fig


_DASHES = ("-", "--", "-.", ":")


def _line_styles(frame: pd.DataFrame) -> tuple[dict[str, str], dict[str, str]]:
    """(colour, line style) per line: one colour per ``group`` (each line its own group when the column
    is absent), and within a group solid, dashed, dash-dot, dotted in the order lines appear."""
    groups = frame["group"] if "group" in frame else frame["line"]
    group_of = dict(zip(frame["line"], groups))
    colors = _arm_colors(list(dict.fromkeys(groups)), dict(zip(groups, frame["method"])))
    seen: dict[str, int] = {}
    styles = {}
    for line in dict.fromkeys(frame["line"]):
        k = seen.get(group_of[line], 0)
        styles[line] = _DASHES[k % len(_DASHES)]
        seen[group_of[line]] = k + 1
    return {line: colors[group_of[line]] for line in styles}, styles


@styled
def band_curves(frame: pd.DataFrame, ylabel: str, title: str, logy: bool = False) -> Figure:
    """Mean curves over steps with a band, one panel per ``panel``, one line per ``line``.

    ``frame`` columns: ``panel``, ``line``, ``method``, ``step``, ``mean``, ``lo``, ``hi`` (the band,
    e.g. the min and max or a 95% interval over seeds, as the caller states in ``title``), and
    optionally ``group``: lines of one group (e.g. an arm's ranks) share a colour and differ in dash.
    """
    require_columns(frame, ("panel", "line", "method", "step", "mean", "lo", "hi"), "a study dynamics table")
    panels = list(dict.fromkeys(frame["panel"]))
    lines = list(dict.fromkeys(frame["line"]))
    colors, dashes = _line_styles(frame)
    fig, axes = new_figure("double", height=2.3, ncols=len(panels), sharey=False)
    for ax, panel in zip(axes[0], panels):
        part = frame[frame["panel"] == panel]
        for line in lines:
            rows = part[part["line"] == line].sort_values("step")
            if rows.empty:
                continue
            x = rows["step"].to_numpy(float)
            ax.fill_between(x, rows["lo"].to_numpy(float), rows["hi"].to_numpy(float), color=colors[line], alpha=0.2,
                            lw=0)
            ax.plot(x, rows["mean"].to_numpy(float), color=colors[line], ls=dashes[line], lw=1.0, label=line)
        ax.set_title(str(panel))
        ax.set_xlabel("training step")
        if logy:
            ax.set_yscale("log")
        ax.grid(True, axis="y")
    axes[0, 0].set_ylabel(ylabel)
    _legend(fig, axes)
    figure_title(fig, title)
    return fig
