"""Training figures: paper figures 2 (trainable-parameter bars) and 3 (train and validation
loss), and the comparison of methods (curves, parameters vs the task's metric).

They draw the runs' own records: ``run.json``'s ``parameters`` and ``run.metrics`` events (see
:mod:`tlora_analysis.figures.runs` for the frames built from runs). Metric plots take the
majority-class baseline (``figures.runs.majority_baseline``) and draw it as a line: a curve on
that line is a model that learned nothing about its inputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ._frames import require_columns
from .style import figure_title, method_color, method_label, method_order, new_figure, styled

__all__ = ["parameter_bars", "loss_curves", "method_curves", "params_vs_accuracy", "methods_title"]

_BASELINE_STYLE = dict(color="0.35", ls=":", lw=1.0, zorder=1)


def methods_title(methods) -> str:
    """"TLoRA vs LoRA vs full fine-tuning" for the methods present (in that order), one name for one method."""
    return " vs ".join(method_label(m) for m in method_order(methods))


def _baseline_line(ax: Axes, baseline: float | None) -> list[Line2D]:
    """The majority-class line on a metric axis, and its legend handle (none without a baseline)."""
    if baseline is None or not np.isfinite(baseline):
        return []
    ax.axhline(baseline, **_BASELINE_STYLE)
    return [Line2D([], [], label=f"majority class ({baseline:.3f})", **_BASELINE_STYLE)]


def _run_label(row: pd.Series) -> str:
    rank = row.get("rank")
    r = f", r={int(rank)}" if rank is not None and pd.notna(rank) else ""
    return f"{method_label(row['method'])}{r}"


@styled
def parameter_bars(parameters: pd.DataFrame) -> Figure:
    """Paper figure 2: trainable parameters per method on a log scale, counts printed on the bars.

    ``parameters``: one row per run/method with ``method`` and ``trainable`` (optionally
    ``rank`` and ``run``). Bars run from the most trainable parameters to the fewest; the other
    bars print how many times the fewest they train (the paper's ratios to TLoRA).
    """
    require_columns(parameters, ("method", "trainable"), "figures.runs.parameter_table")
    rows = parameters.sort_values("trainable", ascending=False, kind="stable")
    labels = [_run_label(r) for _, r in rows.iterrows()]
    if len(set(labels)) < len(labels) and "run" in rows:
        labels = [f"{lab}\n{r}" for lab, r in zip(labels, rows["run"])]
    counts = rows["trainable"].to_numpy(dtype=float)
    fig, axes = new_figure("single", height=2.3)
    ax = axes[0, 0]
    x = np.arange(len(rows))
    ax.bar(x, counts, color=[method_color(m) for m in rows["method"]], width=0.6)
    ax.set_yscale("log")
    ax.set_xticks(x, labels)
    ax.set_ylabel("trainable parameters (log scale)")
    fewest = int(np.argmin(counts)) if np.isfinite(counts).any() and counts.min() > 0 else None
    for i, (xi, c) in enumerate(zip(x, counts)):
        text = f"{int(c):,}"
        if fewest is not None and i != fewest:
            text += f"\n({c / counts[fewest]:,.0f}× {method_label(rows['method'].iloc[fewest])})"
        ax.text(xi, c * 1.3, text, ha="center", va="bottom", fontsize=5.5)
    top = np.nanmax(counts) if np.isfinite(counts).any() else 10
    ax.set_ylim(top=top * 60)
    ax.set_title("Trainable parameters (paper Fig. 2)")
    return fig


def _x_column(metrics: pd.DataFrame, x: str) -> str:
    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}")
    if x == "epoch" and metrics["epoch"].isna().all():
        raise ValueError("the metrics have no epoch values; use x='step'")
    return x


def _curve(ax: Axes, rows: pd.DataFrame, x: str, y: str, **kw) -> bool:
    rows = rows[np.isfinite(rows[y].to_numpy(dtype=float)) & rows[x].notna()].sort_values(x)
    if rows.empty:
        return False
    ax.plot(rows[x].to_numpy(float), rows[y].to_numpy(float), **kw)
    return True


def _eval_rows(metrics: pd.DataFrame, split: str) -> pd.DataFrame:
    ev = metrics[metrics["event"] == "eval"]
    return ev[ev["split"] == split] if "split" in ev else ev


@styled
def loss_curves(metrics: pd.DataFrame, x: str = "step", split: str = "validation", loss: str = "loss") -> Figure:
    """Paper figure 3: training loss (solid) and ``split`` loss (dashed, markers) against ``x``.

    ``metrics``: ``run.metrics`` events, with ``run`` and ``method`` columns when several runs
    are concatenated (one colour per method). ``loss``: the axis label, naming the loss the runs
    optimised (``figures.runs.loss_name``: cross-entropy for classification, MSE for regression).
    """
    require_columns(metrics, ("step", "epoch", "event"), "run.metrics")
    x = _x_column(metrics, x)
    frame = metrics if "run" in metrics else metrics.assign(run="run")
    if "method" not in frame:
        frame = frame.assign(method="run")
    fig, axes = new_figure("single", height=2.3)
    ax = axes[0, 0]
    drawn = False
    for (run, method), rows in frame.groupby(["run", "method"], sort=False):
        color = method_color(method)
        if "loss" in rows:
            drawn |= _curve(ax, rows[rows["event"] == "train"], x, "loss", color=color, lw=0.9, alpha=0.9)
        if "eval_loss" in rows:
            drawn |= _curve(ax, _eval_rows(rows, split), x, "eval_loss", color=color, ls="--", marker="o")
    if not drawn:
        raise ValueError("the metrics hold no finite train 'loss' or eval 'eval_loss' values to draw")
    methods = list(dict.fromkeys(frame["method"]))
    handles = [Line2D([], [], color=method_color(m), label=method_label(m)) for m in methods if len(methods) > 1]
    handles += [Line2D([], [], color="0.3", label="train"),
                Line2D([], [], color="0.3", ls="--", marker="o", label=split)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 5))
    ax.set_xlabel("training step" if x == "step" else "epoch")
    ax.set_ylabel(loss)
    ax.grid(True)
    single = method_label(methods[0]) + ": " if len(methods) == 1 else ""
    ax.set_title(f"{single}train and {split} loss (paper Fig. 3)")
    return fig


@styled
def method_curves(metrics: pd.DataFrame, metric: str = "accuracy", split: str = "validation", x: str = "step",
                  baseline: float | None = None, loss: str = "training loss") -> Figure:
    """The methods of the runs given, compared: training loss (left) and ``split`` ``metric`` (right).

    One line per run, coloured by method; several runs of one method (seeds) share its colour.
    ``baseline``: the majority class's ``metric``, drawn as a dotted line. The title names the
    methods present.
    """
    require_columns(metrics, ("run", "method", "step", "epoch", "event"), "run.metrics (with run and method columns)")
    x = _x_column(metrics, x)
    if metric not in metrics:
        raise ValueError(f"the metrics have no {metric!r} column; evaluated metrics present: "
                         f"{[c for c in ('accuracy', 'f1', 'mcc', 'pearson', 'spearman') if c in metrics]}")
    fig, axes = new_figure("double", height=2.3, ncols=2)
    loss_ax, metric_ax = axes[0]
    for (run, method), rows in metrics.groupby(["run", "method"], sort=False):
        color = method_color(method)
        if "loss" in rows:
            _curve(loss_ax, rows[rows["event"] == "train"], x, "loss", color=color, lw=0.9)
        _curve(metric_ax, _eval_rows(rows, split), x, metric, color=color, marker="o")
    handles = [Line2D([], [], color=method_color(m), label=method_label(m)) for m in dict.fromkeys(metrics["method"])]
    handles += _baseline_line(metric_ax, baseline)
    fig.legend(handles=handles, loc="outside right upper")
    for ax, label in ((loss_ax, loss), (metric_ax, f"{split} {metric}")):
        ax.set_xlabel("training step" if x == "step" else "epoch")
        ax.set_ylabel(label)
        ax.grid(True)
    figure_title(fig, f"{methods_title(metrics['method'])}: loss and {split} {metric}")
    return fig


@styled
def params_vs_accuracy(frame: pd.DataFrame, metric: str = "accuracy", baseline: float | None = None) -> Figure:
    """Trainable parameters (log x) against the best ``metric`` of each run, labelled by run.

    ``baseline``: the majority class's ``metric``, drawn as a dotted line.
    """
    require_columns(frame, ("run", "method", "trainable", metric), "figures.runs.outcome_table")
    fig, axes = new_figure("single", height=2.3)
    ax = axes[0, 0]
    ok = frame[np.isfinite(frame[metric].to_numpy(float)) & (frame["trainable"] > 0)]
    if ok.empty:
        raise ValueError(f"no run has both a positive trainable count and a finite {metric}")
    seen: dict[tuple[float, float], int] = {}
    for i, (_, row) in enumerate(ok.sort_values("trainable").iterrows()):
        point = (float(row["trainable"]), float(row[metric]))
        nth = seen.get(point, 0)  # runs on one spot get their labels stacked, not overprinted
        seen[point] = nth + 1
        ax.scatter(*point, color=method_color(row["method"]), s=22, zorder=3)
        # run names centred over their points, neighbours alternating below/above so they do not collide
        below = i % 2 == 1 and nth == 0
        ax.annotate(str(row["run"]), point, textcoords="offset points", ha="center", fontsize=5,
                    va="top" if below else "bottom", xytext=(0, -6 if below else 5 + 7 * nth))
    handles = [Line2D([], [], color=method_color(m), marker="o", ls="", label=method_label(m))
               for m in dict.fromkeys(ok["method"])]
    handles += _baseline_line(ax, baseline)
    ax.legend(handles=handles, loc="best")
    ax.set_xscale("log")
    lo, hi = ok["trainable"].min(), ok["trainable"].max()
    ax.set_xlim(lo / 4, hi * 4)
    ax.margins(y=0.25)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"best validation {metric}")
    ax.grid(True)
    ax.set_title(f"Trainable parameters vs {metric}")
    return fig
