"""Tables drawn straight from runs (records, not statistics) and the run-level roles.

- :func:`parameter_table`, :func:`metrics_table`, :func:`outcome_table`: run.json's
  ``parameters`` and ``run.metrics``, with ``run`` and ``method`` columns.
- :func:`difference_table`: the entries of ΔW_LoRA − ΔW_TLoRA for one layer, in the corrected
  construction and the paper-faithful one (transposed, LoRA scale dropped), for paper figure 9.
- :class:`RunRoles`: which run is the TLoRA run, the LoRA run, the full fine-tuning run (or any
  registered method's run), read from each run's ``run.json``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..analysis.merged import paper_faithful_update
from ..analysis.select import check_same_setting
from ..store import Run
from ._frames import one_layer

__all__ = ["as_run", "RunRoles", "parameter_table", "metrics_table", "outcome_table", "difference_table",
           "selection_metric", "majority_baseline", "loss_name", "headline_table"]

RunLike = Run | str | os.PathLike


def as_run(run: RunLike, base_model: str | os.PathLike | None = None) -> Run:
    """A :class:`Run` from a Run or a path (a clear error for anything else); ``base_model`` supplies W0 of a
    run that references it (attached to a given Run too)."""
    if isinstance(run, Run):
        return run if base_model is None else run.attach_base_model(base_model)
    if isinstance(run, (str, os.PathLike)):
        return Run(run, base_model=base_model)
    raise TypeError(f"expected a Run or a run directory path, got {type(run).__name__}")


@dataclass
class RunRoles:
    """The runs of one figure set, sorted into roles by their recorded method.

    The first run of each method is its main run; ``extra`` holds further runs (e.g. more
    seeds), drawn in curves and scatter plots.
    """

    runs: list[Run]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError("give at least one run directory")
        seen: dict[str, Run] = {}
        for run in self.runs:
            key = run.run_id or str(run.path.resolve())
            if key in seen:
                raise ValueError(f"{run.path} is given twice (it is the same run as {seen[key].path}); comparing a run "
                                 "with itself says nothing: give each run once")
            seen[key] = run
            if not run.steps:
                raise ValueError(f"{run.path} has no readable snapshot (snapshots/ is missing, empty or unreadable); "
                                 f"run `tlora-analysis verify {run.path}` to see what is wrong")
        check_same_setting(self.runs)
        self.by_method: dict[str, Run] = {}
        self.extra: list[Run] = []
        for run in self.runs:
            if run.method in self.by_method:
                self.extra.append(run)
            else:
                self.by_method[run.method] = run

    @classmethod
    def from_paths(cls, runs: Iterable[RunLike], base_model: str | os.PathLike | None = None) -> "RunRoles":
        """The roles of runs given as paths or Runs; ``base_model`` supplies W0 of runs that reference it."""
        return cls([as_run(r, base_model) for r in runs])

    def of(self, method: str) -> Run | None:
        """The main run of a method (None when no run has it)."""
        return self.by_method.get(method)

    @property
    def tlora(self) -> Run | None:
        return self.by_method.get("tlora")

    @property
    def lora(self) -> Run | None:
        return self.by_method.get("lora")

    @property
    def full(self) -> Run | None:
        return self.by_method.get("full")

    @property
    def all_runs(self) -> list[Run]:
        return list(self.runs)

    def describe(self) -> str:
        """One line per run and its role, for the CLI and the index."""
        lines = [f"{run.method:>5}  {run.name}  ({run.path})" + ("" if self.by_method[run.method] is run else "  [extra]")
                 for run in self.runs]
        return "\n".join(lines)


def parameter_table(runs: Sequence[RunLike]) -> pd.DataFrame:
    """One row per run: ``run``, ``method``, ``rank``, ``trainable``, ``frozen``, ``total``.

    From run.json's ``parameters``; for PEFT folders, counted from the adapter file's tensors
    (which hold exactly what trained), with frozen and total unknown.
    """
    rows = []
    for run in map(as_run, runs):
        params = run.config.get("parameters")
        if not params or "trainable" not in params:
            raise ValueError(f"{run.name}: run.json has no 'parameters' record (a run.json written by hand?); "
                             f"re-record the run, or pass SnapshotRecorder(run_info={{'parameters': ...}})")
        rows.append({"run": run.name, "method": run.method, "rank": run.rank, "trainable": int(params["trainable"]),
                     "frozen": params.get("frozen"), "total": params.get("total")})
    return pd.DataFrame(rows)


def metrics_table(runs: Sequence[RunLike]) -> pd.DataFrame:
    """All runs' ``run.metrics`` events stacked, with ``run`` and ``method`` columns in front."""
    frames = []
    for run in map(as_run, runs):
        m = run.metrics
        frames.append(m.assign(run=run.name, method=run.method)[["run", "method", *m.columns]])
    frames = [f for f in frames if not f.empty]
    if not frames:
        raise ValueError("none of the runs has logged metrics (metrics.jsonl is empty)")
    return pd.concat(frames, ignore_index=True)


def selection_metric(runs: Sequence[RunLike]) -> str | None:
    """The metric the runs' task is judged by (run.json's ``selection_metric``: mcc for CoLA, pearson for
    STS-B, accuracy otherwise); None when no run records one or they disagree."""
    found = {as_run(r).config.get("selection_metric") for r in runs} - {None}
    return found.pop() if len(found) == 1 else None


def loss_name(runs: Sequence[RunLike]) -> str:
    """A readable name of the runs' training loss ("cross-entropy", "MSE", or "loss" when unknown or mixed)."""
    kinds = {as_run(r).config.get("loss") for r in runs}
    names = {"cross_entropy": "cross-entropy loss", "mse": "MSE loss"}
    return names.get(kinds.pop(), "loss") if len(kinds) == 1 else "loss"


def majority_baseline(runs: Sequence[RunLike], metric: str = "accuracy") -> float | None:
    """The validation score of always predicting the majority class (run.json's ``majority_baseline``).

    None when no run records it or the runs' validation sets differ (different baselines).
    """
    values = {round(float(b[metric]), 12) for r in runs
              if isinstance(b := as_run(r).config.get("majority_baseline"), dict) and b.get(metric) is not None}
    return values.pop() if len(values) == 1 else None


def headline_table(runs: Sequence[RunLike]) -> pd.DataFrame:
    """One row per run: method, trainable parameters, the selection metric's last (``final``) and best
    validation value with the best's step, and the majority baseline: the numbers an index page leads with.

    The final value is the one to compare: the best is picked on the validation data it reports."""
    rows = []
    for run in map(as_run, runs):
        metric = run.config.get("selection_metric") or "accuracy"
        ev = run.validation_evals()
        best = ev.loc[ev[metric].astype(float).idxmax()] if metric in ev and ev[metric].notna().any() else None
        base = (run.config.get("majority_baseline") or {}).get(metric)
        final = float(ev[metric].astype(float).iloc[-1]) if metric in ev and len(ev) else None
        rows.append({"run": run.name, "method": run.method, "trainable": (run.config.get("parameters") or {}).get("trainable"),
                     "metric": metric, "final": final, "best": None if best is None else float(best[metric]),
                     "best_step": None if best is None else int(best["step"]), "majority_baseline": base})
    return pd.DataFrame(rows)


def outcome_table(runs: Sequence[RunLike], metric: str = "accuracy", split: str = "validation") -> pd.DataFrame:
    """One row per run: trainable parameters and the best ``split`` ``metric`` (the paper's "best epoch")."""
    params = parameter_table(runs)
    metrics = metrics_table(runs)
    if metric not in metrics:
        raise ValueError(f"no run logged {metric!r}; logged columns: {sorted(metrics.columns)}")
    ev = metrics[(metrics["event"] == "eval")]
    if "split" in ev:
        ev = ev[ev["split"] == split]
    best = ev.groupby("run")[metric].max()
    return params.assign(**{metric: params["run"].map(best).astype(float)})


def _dense_pair(run: Run, layer: str, step: int, construction: str) -> np.ndarray:
    update = run.update(layer, step)
    if construction == "paper_faithful":
        update = paper_faithful_update(update, run.spec)
    return update.dense()


def difference_table(
    run_lora: RunLike,
    run_tlora: RunLike,
    layer: str | None = None,
    step: int | str = "last",
    constructions: Sequence[str] = ("paper_faithful", "corrected"),
) -> pd.DataFrame:
    """Entries of ΔW_LoRA − ΔW_TLoRA of one layer (W0 cancels in the merged difference).

    ``layer``: a name pattern (tlora_analysis.names) selecting one layer both runs have (default: the first common layer,
    the paper's layer 0 query). ``step``: "last" takes each run's last recorded step; an int
    must be recorded in both. "paper_faithful" needs a square layer and is left out otherwise.
    """
    lora, tlora = as_run(run_lora), as_run(run_tlora)
    common = [n for n in tlora.layers if n in set(lora.layers)]
    if not common:
        raise ValueError(f"{lora.name} and {tlora.name} share no adapted layer")
    chosen = one_layer(common, layer)
    steps = (lora.steps[-1], tlora.steps[-1]) if step == "last" else (int(step), int(step))
    unknown = [c for c in constructions if c not in ("paper_faithful", "corrected")]
    if unknown:
        raise ValueError(f"unknown construction(s) {unknown}; use 'paper_faithful' and/or 'corrected'")
    out, inn = tlora.layer_shapes[chosen]
    frames = []
    for kind in constructions:
        if kind == "paper_faithful" and out != inn:
            continue
        diff = _dense_pair(lora, chosen, steps[0], kind) - _dense_pair(tlora, chosen, steps[1], kind)
        o, i = np.indices(diff.shape)
        frames.append(pd.DataFrame({"construction": kind, "layer": chosen, "step": steps[1], "step_lora": steps[0],
                                    "out_index": o.ravel(), "in_index": i.ravel(), "difference": diff.ravel()}))
    if not frames:
        raise ValueError(f"layer {chosen} is {out} × {inn}: the paper-faithful construction needs a square layer")
    return pd.concat(frames, ignore_index=True)
