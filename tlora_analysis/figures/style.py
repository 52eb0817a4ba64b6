"""One look for every figure: paper column widths, colour-blind-safe colours, PDF + PNG output.

Every drawing function runs inside :func:`styled` (a matplotlib ``rc_context``), so the look
never leaks into the caller's own plots. Figures are made without pyplot, each on its own Agg
canvas: nothing pops up, nothing accumulates in pyplot's registry, the global backend (e.g. a
notebook's inline one) is left alone, and a notebook still shows a returned Figure. Widths follow two-column papers: a single column is
3.4 in, the full text width 7.0 in. Categorical colours are the Okabe-Ito palette; sequential
maps are ``viridis``; signed values use the diverging ``RdBu_r`` centred at 0.
"""

from __future__ import annotations

import functools
import os
import textwrap
from pathlib import Path
from typing import Callable, Iterable, Literal, TypeVar

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..adapters.methods import METHODS

__all__ = [
    "SINGLE_COLUMN", "DOUBLE_COLUMN", "OKABE_ITO", "METHOD_COLORS", "METHOD_LABELS", "MATRIX_COLORS",
    "SEQUENTIAL_CMAP", "DIVERGING_CMAP", "RC", "styled", "new_figure", "figure_title", "method_color", "method_label",
    "METHOD_ORDER", "method_order",
    "diverging_norm", "sequential_norm", "save",
]

SINGLE_COLUMN = 3.4  # inches: one column of a two-column paper
DOUBLE_COLUMN = 7.0  # inches: the full text width

# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
# Each registered method keeps one colour (the palette in registration order) and its spec's label.
METHOD_COLORS = {name: OKABE_ITO[i % len(OKABE_ITO)] for i, name in enumerate(METHODS)}
METHOD_LABELS = {name: spec.label for name, spec in METHODS.items()}
METHOD_ORDER = {name: i for i, name in enumerate(METHODS)}  # legends and titles list methods in this order
MATRIX_COLORS = {"W0": "#7F7F7F", "A": "#009E73", "B": "#0072B2", "C": "#CC79A7", "dW": "#D55E00"}
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
MISSING_COLOR = "#D9D9D9"  # cells with no value (NaN) in heatmaps

RC = {
    "font.size": 7.5,
    "axes.titlesize": 8,
    "axes.labelsize": 7.5,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "legend.title_fontsize": 7,
    "figure.titlesize": 9,
    "axes.prop_cycle": matplotlib.cycler(color=list(OKABE_ITO)),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "legend.frameon": False,
    "image.cmap": SEQUENTIAL_CMAP,
    "figure.dpi": 150,  # notebook display size; files use savefig.dpi
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # embed TrueType: text stays editable and searchable in the PDF
    "ps.fonttype": 42,
    "figure.constrained_layout.use": True,
}

F = TypeVar("F", bound=Callable[..., Figure])


def styled(func: F) -> F:
    """Run a drawing function inside the package's rc settings."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(RC):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(
    width: Literal["single", "double"] | float = "single",
    height: float | None = None,
    nrows: int = 1,
    ncols: int = 1,
    **subplot_kw,
) -> tuple[Figure, np.ndarray]:
    """A figure sized for the paper and a 2-D array of its axes (always 2-D, for uniform code).

    ``height`` defaults to a 0.75 aspect per row of the given width, capped at 9 in.
    """
    if isinstance(width, str):
        if width not in ("single", "double"):
            raise ValueError(f"width must be 'single', 'double' or inches, got {width!r}")
        width = SINGLE_COLUMN if width == "single" else DOUBLE_COLUMN
    if nrows < 1 or ncols < 1:
        raise ValueError(f"nrows and ncols must be >= 1, got {nrows} x {ncols}")
    if height is None:
        height = min(9.0, 0.75 * width / ncols * nrows + 0.3)
    fig = Figure(figsize=(float(width), float(height)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def figure_title(fig: Figure, text: str) -> None:
    """Set ``fig``'s title, wrapped onto more lines where one line would be wider than the figure."""
    title = fig.suptitle(text)
    renderer = fig.canvas.get_renderer()
    width = title.get_window_extent(renderer).width
    available = 0.96 * fig.get_figwidth() * fig.dpi
    if width > available and "$" not in text:  # mathtext must stay on one line
        chars = max(20, int(len(text) * available / width))
        title.set_text(textwrap.fill(text, chars, break_long_words=False))


def method_color(method: str) -> str:
    """The fixed colour of a registered method (tlora, lora, full, vera, lora-xs); other names get grey."""
    return METHOD_COLORS.get(str(method).lower(), "#7F7F7F")


def method_label(method: str) -> str:
    """Display name of a method: its spec's label (TLoRA, LoRA, Full FT, VeRA, LoRA-XS)."""
    return METHOD_LABELS.get(str(method).lower(), str(method))


def method_order(methods: Iterable[str]) -> list[str]:
    """The distinct methods given, registered ones in registration order, then the others as they came."""
    present = list(dict.fromkeys(map(str, methods)))
    return sorted(present, key=lambda m: METHOD_ORDER.get(m, len(METHOD_ORDER)))


def diverging_norm(values: Iterable[float] | np.ndarray, limit: float | None = None) -> mcolors.Normalize:
    """A colour normalisation symmetric around 0, so white always means zero.

    ``limit`` fixes ±limit (e.g. 1 for cosines); otherwise the largest finite |value| is used.
    """
    if limit is None:
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
        finite = np.abs(arr[np.isfinite(arr)])
        limit = float(finite.max()) if finite.size else 1.0
        if limit == 0.0:
            limit = 1.0
    return mcolors.Normalize(vmin=-limit, vmax=limit)


def sequential_norm(values: Iterable[float] | np.ndarray, log: bool = False) -> mcolors.Normalize:
    """A normalisation over the finite values; ``log`` gives a LogNorm over the positive ones."""
    arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
    finite = arr[np.isfinite(arr)]
    if log:
        positive = finite[finite > 0]
        if positive.size == 0:
            raise ValueError("a logarithmic colour scale needs at least one positive value")
        lo, hi = float(positive.min()), float(positive.max())
        return mcolors.LogNorm(vmin=lo, vmax=hi if hi > lo else lo * 10)
    if finite.size == 0:
        return mcolors.Normalize(vmin=0.0, vmax=1.0)
    lo, hi = float(finite.min()), float(finite.max())
    if hi == lo:
        pad = abs(lo) * 0.05 or 1.0
        lo, hi = lo - pad, hi + pad
    return mcolors.Normalize(vmin=lo, vmax=hi)


def save(fig: Figure, path_stem: str | os.PathLike) -> list[Path]:
    """Write ``<path_stem>.pdf`` (vector) and ``<path_stem>.png`` (300 dpi); return both paths.

    Any suffix on ``path_stem`` is replaced. Files are written to a temporary name and
    renamed, so a rerun replaces the old figure cleanly and a crash leaves no half file.
    """
    if not isinstance(fig, Figure):
        raise TypeError(f"save expects a matplotlib Figure, got {type(fig).__name__}")
    stem = Path(path_stem)
    if stem.suffix in (".pdf", ".png"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    with matplotlib.rc_context(RC):
        for ext in ("pdf", "png"):
            final = stem.parent / f"{stem.name}.{ext}"
            tmp = stem.parent / f".{stem.name}.{ext}.tmp"
            fig.savefig(tmp, format=ext)
            os.replace(tmp, final)
            paths.append(final)
    return paths
