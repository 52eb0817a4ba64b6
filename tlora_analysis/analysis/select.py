"""Layer and step selection, identity columns, and a columnar table builder shared by analyzers.

Every analyzer takes ``layers=`` (None = all, or a name selection by the package's one rule,
:mod:`tlora_analysis.names`: a full name, a dotted suffix such as ``"value"``, ``"re:REGEX"``
matching the whole name, or a list of these) and ``steps=`` ("all", "last", an int k = every k-th recorded step, or a
list of steps). Selections that match nothing, and named steps a run lacks, raise
:class:`SelectionError` naming what exists.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any, Union

import numpy as np
import pandas as pd

from ..names import as_patterns, looks_like_regex, select_names, unmatched

__all__ = [
    "SelectionError", "LayerSelection", "StepSelection", "select_layers", "select_steps",
    "pick_steps", "layer_index", "module_name", "Identity", "sweep", "TableBuilder", "IDENTITY_COLUMNS",
    "NoCommonLayersError", "common_steps", "match_layers", "pair_identity", "PAIR_COLUMNS", "check_same_setting",
]

LayerSelection = Union[None, str, Sequence[str]]
StepSelection = Union[str, int, Sequence[int]]

IDENTITY_COLUMNS = ("run", "method", "layer", "layer_index", "module", "step", "epoch")
PAIR_COLUMNS = ("run_a", "run_b", "method_a", "method_b", "layer", "layer_index", "module", "step")

_INT_RE = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


class SelectionError(ValueError):
    """A layer or step selection that matches nothing, or names something a run lacks."""


def _shorten(items: Sequence[Any], n: int = 8) -> str:
    shown = ", ".join(map(str, items[:n]))
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def select_layers(available: Sequence[str], layers: LayerSelection, what: str = "the run") -> list[str]:
    """The layers of ``available`` (kept in their order) that ``layers`` selects; each pattern must select one."""
    available = list(available)
    if layers is None:
        return available
    try:
        patterns = as_patterns(layers, "layers")
    except ValueError as exc:
        raise SelectionError(str(exc)) from exc
    missing = unmatched(available, patterns)
    if missing:
        hint = f" To use {missing[0]!r} as a regular expression, write 're:{missing[0]}'." \
            if looks_like_regex(missing[0]) else ""
        raise SelectionError(f"layers entry {missing[0]!r} matches no layer of {what}; it has: "
                             f"{_shorten(available)}.{hint}")
    return select_names(available, patterns)


def pick_steps(available: Sequence[int], steps: StepSelection, what: str = "the run") -> list[int]:
    """The steps of the sorted ``available`` that ``steps`` selects (see module docstring)."""
    available = sorted(int(s) for s in available)
    if not available:
        raise SelectionError(f"{what} has no recorded steps")
    if isinstance(steps, str):
        if steps == "all":
            return available
        if steps == "last":
            return [available[-1]]
        raise SelectionError(f"steps={steps!r} is not understood; use 'all', 'last', an int k or a list of steps")
    if isinstance(steps, bool):
        raise TypeError("steps must be 'all', 'last', an int k (every k-th step) or a list of steps, not a bool")
    if isinstance(steps, (int, np.integer)):
        if steps < 1:
            raise SelectionError(f"steps={steps} must be ≥ 1 (every k-th recorded step)")
        return available[:: int(steps)]
    if isinstance(steps, Iterable):
        wanted = [int(s) for s in steps]
        have = set(available)
        missing = [s for s in wanted if s not in have]
        if missing:
            raise SelectionError(f"step(s) {missing} not recorded in {what}; recorded steps: {_shorten(available)}")
        if not wanted:
            raise SelectionError("steps=[] selects nothing; pass 'all', 'last', an int k or some steps")
        return sorted(set(wanted))
    raise TypeError(f"steps must be 'all', 'last', an int or a list of ints, got {type(steps).__name__}")


def select_steps(run: Any, steps: StepSelection) -> list[int]:
    """The recorded steps of ``run`` that ``steps`` selects."""
    return pick_steps(run.steps, steps, what=f"run {run.name!r}")


def layer_index(name: str) -> int:
    """The first integer component of a dotted module name (-1 if none)."""
    m = _INT_RE.search(name)
    return int(m.group(1)) if m else -1


def module_name(name: str) -> str:
    """The last component of a dotted module name ("query" for "...self.query")."""
    return name.rsplit(".", 1)[-1]


class Identity:
    """Identity columns for one run; reads each step's epoch once (NaN when unknown)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._epochs: dict[int, float] = {}

    def epoch(self, step: int) -> float:
        if step not in self._epochs:
            epoch = (self.run.snapshot_info(step) or {}).get("epoch")
            self._epochs[step] = float(epoch) if epoch is not None else math.nan
        return self._epochs[step]

    def __call__(self, layer: str, step: int) -> dict[str, Any]:
        """The identity columns of one (layer, step) of this run."""
        return {
            "run": self.run.name, "method": self.run.method, "layer": layer,
            "layer_index": layer_index(layer), "module": module_name(layer),
            "step": int(step), "epoch": self.epoch(step),
        }


class TableBuilder:
    """Collects rows column-wise (scalars repeat, arrays extend) and makes one DataFrame.

    Much faster than a list of per-row dicts or concatenating many small frames, which
    matters when a sweep yields hundreds of thousands of rows.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._data: dict[str, list[np.ndarray]] = {c: [] for c in self.columns}

    def add(self, n: int = 1, **values: Any) -> None:
        """Append ``n`` rows; each value is a scalar (repeated) or an array of length n."""
        unknown = set(values) - set(self.columns)
        missing = set(self.columns) - set(values)
        if unknown or missing:
            raise KeyError(f"row columns differ from the table's: unknown {sorted(unknown)}, missing {sorted(missing)}")
        for col, val in values.items():
            arr = np.asarray(val)
            if arr.ndim == 0:
                arr = np.repeat(arr[None], n)
            elif arr.shape != (n,):
                raise ValueError(f"column {col!r} got {arr.shape[0]} values for {n} rows")
            self._data[col].append(arr)

    def frame(self) -> pd.DataFrame:
        """The collected rows as a DataFrame with exactly the declared columns, in order."""
        data = {c: (np.concatenate(parts) if parts else np.array([])) for c, parts in self._data.items()}
        df = pd.DataFrame(data, columns=self.columns)
        for col in ("layer_index", "step"):
            if col in df and len(df):
                df[col] = df[col].astype("int64")
        return df


def sweep(run: Any, layers: LayerSelection = None, steps: StepSelection = "all"):
    """Yield (layer, step, identity columns) over the selection, layers outer, steps inner.

    Layers outer keeps per-layer caches (frozen factors, W0) hot while steps stream by.
    """
    chosen_layers = select_layers(run.layers, layers, what=f"run {run.name!r}")
    chosen_steps = select_steps(run, steps)
    ident = Identity(run)
    for layer in chosen_layers:
        for step in chosen_steps:
            yield layer, step, ident(layer, step)


class NoCommonLayersError(ValueError):
    """Two runs adapted disjoint sets of layers, so nothing can be compared."""


def pair_identity(run_a: Any, run_b: Any, layer: str) -> dict[str, Any]:
    """The identity columns of a pair table (:data:`PAIR_COLUMNS` but ``step``)."""
    return {"run_a": run_a.name, "run_b": run_b.name, "method_a": run_a.method, "method_b": run_b.method,
            "layer": layer, "layer_index": layer_index(layer), "module": module_name(layer)}


def common_steps(runs: Sequence[Any], steps: StepSelection) -> list[int]:
    """Steps recorded by every run, selected by ``steps``; a named step one run lacks is an error."""
    if not isinstance(steps, (str, int, np.integer)) or isinstance(steps, bool):
        for run in runs:
            pick_steps(run.steps, steps, what=f"run {run.name!r}")
    common = sorted(set.intersection(*(set(run.steps) for run in runs)))
    if not common:
        names = ", ".join(f"{r.name!r}: {list(r.steps)[:6]}" for r in runs)
        raise SelectionError(f"the runs share no recorded step ({names}); record them on a common schedule")
    return pick_steps(common, steps, what="the steps the runs share")


def match_layers(run_a: Any, run_b: Any, layers: LayerSelection) -> tuple[list[str], list[str], list[str], list[str]]:
    """(chosen, common, only in a, only in b): the selected layers both runs adapted, same shape in both."""
    if run_a is run_b or (getattr(run_a, "run_id", None) is not None
                          and getattr(run_a, "run_id", None) == getattr(run_b, "run_id", None)):
        raise ValueError(f"run {run_a.name!r} is compared with itself ({run_a.path} and {run_b.path} are the same "
                         "run): a comparison needs two different runs")
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


def check_same_setting(runs: Sequence[Any]) -> None:
    """Refuse runs that a method comparison must not mix: trained on different tasks, or (adapting the same
    layers) from base models whose W0 hashes differ. What a run does not record is not checked.

    The analyzers themselves compare any two runs with the same layer shapes; the claims report and the
    figure set compare methods on one model and task, and a mix there gives numbers that mean nothing."""
    runs = list(runs)
    tasks = {r.config.get("task"): r for r in runs if r.config.get("task")}
    if len(tasks) > 1:
        (t1, r1), (t2, r2) = list(tasks.items())[:2]
        raise ValueError(f"runs {r1.name!r} and {r2.name!r} were trained on different tasks ({t1!r} and {t2!r}); "
                         "compare methods on one task")
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            ha = (a.config.get("base_weights") or {}).get("sha256")
            hb = (b.config.get("base_weights") or {}).get("sha256")
            if ha and hb and ha != hb and list(a.layers) == list(b.layers):
                raise ValueError(f"runs {a.name!r} and {b.name!r} adapted the same layers of different base models "
                                 f"(W0 hashes {ha[:12]}… and {hb[:12]}…, run.json's base_weights); compare runs "
                                 "trained from one model")
