"""Checks and selections on the analysis tables a figure draws (no statistics here)."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..names import as_patterns, select_names

__all__ = ["require_columns", "pick_step", "pick_layer", "one_layer", "module_order", "short_module", "finite"]

_MODULE_ORDER = ("query", "key", "value", "dense", "output")
_SHORT = {"query": "q", "key": "k", "value": "v"}


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: str) -> None:
    """Raise a clear error if ``frame`` is not a DataFrame with ``columns`` and at least one row.

    ``source`` names the analyzer that makes such a table, for the message.
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame from {source}, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the table lacks column(s) {missing}; pass the DataFrame that {source} returns "
                         f"(it has {list(frame.columns)})")
    if frame.empty:
        raise ValueError(f"the table from {source} has no rows; check the layers=/steps= selection")


def pick_step(frame: pd.DataFrame, step: int | str | None) -> tuple[pd.DataFrame, int]:
    """Rows of one step: ``"last"``/None = the largest step present, an int = that step."""
    steps = sorted(int(s) for s in frame["step"].dropna().unique())
    if not steps:
        raise ValueError("the table has no step values")
    if step is None or step == "last":
        chosen = steps[-1]
    elif step == "first":
        chosen = steps[0]
    else:
        chosen = int(step)
        if chosen not in steps:
            raise ValueError(f"step {chosen} is not in the table; steps present: {steps}")
    return frame[frame["step"] == chosen], chosen


def pick_layer(frame: pd.DataFrame, layer: str | None) -> tuple[pd.DataFrame, str]:
    """Rows of one layer: a name pattern (tlora_analysis.names) that selects exactly one layer, or None = the
    first layer in model order."""
    names = list(dict.fromkeys(frame.sort_values(["layer_index"], kind="stable")["layer"]))
    return frame[frame["layer"] == (chosen := one_layer(names, layer))], chosen


def one_layer(names: Sequence[str], layer: str | None) -> str:
    """The one name of ``names`` a pattern selects (None: the first); anything else is a ValueError listing them."""
    if layer is None:
        return names[0]
    hits = select_names(names, as_patterns(layer, "layer"))
    if len(hits) != 1:
        raise ValueError(f"layer {layer!r} matches {len(hits)} layers; give one of {list(names)}")
    return hits[0]


def module_order(modules: Sequence[str]) -> list[str]:
    """Modules in a stable, readable order: query, key, value first, then the rest alphabetically."""
    unique = list(dict.fromkeys(modules))
    known = [m for m in _MODULE_ORDER if m in unique]
    return known + sorted(m for m in unique if m not in known)


def panel_modules(frame: pd.DataFrame) -> pd.Series:
    """Each row's ``module``, or where layers of one index share it (BERT's three "dense" layers
    per block) the layer name after its index ("attention.output.dense"), or failing that the
    whole name: figures that put one layer per (index, module) cell never merge two layers."""
    candidates = (frame["module"].astype(str),
                  frame["layer"].astype(str).str.replace(r"^(?:.*?\.)?\d+\.", "", n=1, regex=True),
                  frame["layer"].astype(str))
    for names in candidates:
        per_layer = pd.DataFrame({"layer": frame["layer"], "index": frame["layer_index"], "name": names})
        if not per_layer.drop_duplicates("layer").duplicated(["index", "name"]).any():
            return names
    return candidates[-1]


def short_module(module: str) -> str:
    """q, k, v for attention projections, else the module name."""
    return _SHORT.get(module, module)


def module_title(module: str) -> str:
    """"query (q)" for a module with a short name, else the name once."""
    short = short_module(module)
    return module if short == module else f"{module} ({short})"


def finite(values) -> np.ndarray:
    """The finite entries of an array-like, as float."""
    arr = np.asarray(values, dtype=float)
    return arr[np.isfinite(arr)]
