"""The one heatmap routine every heatmap figure uses: NaN shown as grey, thinned tick labels."""

from __future__ import annotations

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Colormap

from .style import MISSING_COLOR

__all__ = ["draw_heatmap", "tick_positions"]


def tick_positions(n: int, max_ticks: int) -> np.ndarray:
    """At most ``max_ticks`` indices out of ``n``, at a constant stride starting from the first."""
    stride = max(1, -(-n // max_ticks))
    return np.arange(0, n, stride)


def draw_heatmap(
    ax: Axes,
    matrix: pd.DataFrame,
    norm: mcolors.Normalize,
    cmap: str | Colormap,
    annotate: str | None = None,
    max_xticks: int = 8,
    max_yticks: int = 16,
) -> ScalarMappable:
    """Draw ``matrix`` (rows = y, columns = x, labels from index/columns) on ``ax``.

    NaN cells are drawn in light grey. ``annotate`` is a format spec (e.g. ``".2f"``) to print
    each value in its cell; text colour flips to stay readable on dark cells.
    """
    values = matrix.to_numpy(dtype=float)
    cm = matplotlib_cmap(cmap)
    mesh = ax.imshow(np.ma.masked_invalid(values), aspect="auto", interpolation="nearest",
                     cmap=cm, norm=norm, origin="upper")
    xt = tick_positions(values.shape[1], max_xticks)
    yt = tick_positions(values.shape[0], max_yticks)
    xlabels = [str(matrix.columns[i]) for i in xt]
    long = max(map(len, xlabels), default=0) > 10  # long names (modules of a block) slant, so they don't overlap
    ax.set_xticks(xt, xlabels, rotation=30 if long else 0, ha="right" if long else "center")
    ax.set_yticks(yt, [str(matrix.index[i]) for i in yt])
    ax.tick_params(length=2)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if annotate:
        for (i, j), v in np.ndenumerate(values):
            if not np.isfinite(v):
                continue
            r, g, b, _ = cm(norm(v))
            dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
            ax.text(j, i, format(v, annotate), ha="center", va="center", fontsize=5.5,
                    color="white" if dark else "black")
    return mesh


def matplotlib_cmap(cmap: str | Colormap) -> Colormap:
    """The colour map with NaN ("bad") cells drawn in light grey."""
    base = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
    return base.with_extremes(bad=MISSING_COLOR)
