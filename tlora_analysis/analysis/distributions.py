"""Entry distributions of B (and on request A, C, W0, ΔW): histograms, moments, normality tests.

Effect sizes (skew, excess kurtosis, KS distance) come next to p-values: B starts at zero
and sums many small updates through random projections, so near-Gaussian entries are
expected and a p-value alone says little (docs/paper.md). With mean and variance fitted from
the same entries, the plain KS p-value is conservative; Shapiro–Wilk (Royston's law, valid
for 3 ≤ n ≤ 5000) is the test the claims report uses. Matrices with more than
``max_entries`` entries are subsampled uniformly without replacement (seeded); ΔW entries
are then computed from the factors at the sampled positions, never as a dense matrix.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..lowrank import FactoredUpdate, as_float64
from .select import IDENTITY_COLUMNS, LayerSelection, StepSelection, TableBuilder, sweep
from .updates import UpdateSource, require_base_weights

__all__ = ["DistributionTables", "distributions", "entry_statistics", "available_matrices", "MATRICES"]

MATRICES = ("A", "B", "C", "W0", "dW")  # the paper's; a method adds its own roles (LoRA-XS R, VeRA d, b)
STAT_COLUMNS = ("n_entries", "n_sampled", "mean", "std", "skew", "excess_kurtosis", "ks_stat",
                "k2_pvalue", "shapiro_stat", "shapiro_pvalue", "shapiro_n")
Bins = Union[int, str]
BIN_RULES = ("fd", "auto", "doane", "scott", "stone", "rice", "sturges", "sqrt")  # numpy.histogram_bin_edges


@dataclass
class DistributionTables:
    """``histogram`` (one row per bin), ``stats`` (one row per matrix), ``qq`` (None unless asked)."""

    histogram: pd.DataFrame
    stats: pd.DataFrame
    qq: pd.DataFrame | None


def available_matrices(run: Any) -> tuple[str, ...]:
    """The matrices a run's entries can be read from: its method's matrix roles, W0 and dW."""
    return (*run.spec.matrix_roles, "W0", "dW")


def _validate(run: Any, matrices: Sequence[str], bins: Bins, max_entries: int, shapiro_max: int, qq_points: int) -> tuple[str, ...]:
    if isinstance(matrices, str):
        matrices = (matrices,)
    matrices = tuple(matrices)
    available = available_matrices(run)
    if not matrices:
        raise ValueError(f"matrices is empty; choose from {available}")
    for m in matrices:
        if m not in available:
            raise ValueError(f"a {run.method} run has no matrix {m!r}; it has {available}")
    if "W0" in matrices:
        require_base_weights(run, "distributions(matrices=('W0', ...))")
    if isinstance(bins, bool) or not (bins in BIN_RULES or (isinstance(bins, (int, np.integer)) and bins >= 1)):
        raise ValueError(f"bins must be a positive int or one of numpy's rules {BIN_RULES}, got {bins!r}")
    for name, value, low in (("max_entries", max_entries, 1), ("shapiro_max", shapiro_max, 3), ("qq_points", qq_points, 2)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int ≥ {low}, got {value!r}")
    return matrices


def _rng(seed: int, layer: str, step: int, matrix: str) -> np.random.Generator:
    which = MATRICES.index(matrix) if matrix in MATRICES else zlib.crc32(matrix.encode())
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), step, which])


def _sample_matrix(matrix: np.ndarray, max_entries: int, rng: np.random.Generator) -> np.ndarray:
    flat = matrix.reshape(-1)
    if flat.size <= max_entries:
        return flat
    return flat[rng.choice(flat.size, size=max_entries, replace=False)]


def _sample_update(update: FactoredUpdate, max_entries: int, rng: np.random.Generator) -> np.ndarray:
    """Entries of ΔW: all (dense, size ≤ max_entries) or a uniform sample computed from the factors."""
    out, inn = update.shape
    if out * inn <= max_entries:
        return update.dense().reshape(-1)
    flat = rng.choice(out * inn, size=max_entries, replace=False)
    rows, cols = np.divmod(flat, inn)
    if update.is_dense:
        return update.scale * update.core[rows, cols]
    # entry (i, j) = s · (L M)[i, :] · R[:, j]; a missing factor is the identity
    lm = None
    if update.left is not None:
        lm = update.left[rows] if update.core is None else update.left[rows] @ update.core
    elif update.core is not None:
        lm = update.core[rows]
    if update.right is None:
        return update.scale * lm[np.arange(rows.size), cols]
    if lm is None:
        return update.scale * update.right[rows, cols]
    return update.scale * np.einsum("ij,ji->i", lm, update.right[:, cols])


def entry_statistics(x: np.ndarray, n_entries: int, shapiro_max: int, rng: np.random.Generator) -> dict[str, float]:
    """Moments and normality tests of a sample of entries (NaN where undefined, e.g. constant data)."""
    n = x.size
    out = dict.fromkeys(STAT_COLUMNS, math.nan)
    out.update(n_entries=n_entries, n_sampled=n, mean=float(np.mean(x)) if n else math.nan)
    out["shapiro_n"] = 0
    if n < 2:
        return out
    std = float(np.std(x, ddof=1))
    out["std"] = std
    if std == 0.0 or not np.isfinite(std):
        return out
    out["skew"] = float(sps.skew(x))
    out["excess_kurtosis"] = float(sps.kurtosis(x, fisher=True))
    # KS distance to the fitted normal, an effect size: with fitted mean and std the plain KS
    # law gives invalid (too large) p-values, so none is reported; Shapiro–Wilk is the test.
    out["ks_stat"] = float(sps.kstest(x, sps.norm(out["mean"], std).cdf).statistic)
    if n >= 20:
        out["k2_pvalue"] = float(sps.normaltest(x).pvalue)
    if n >= 3:
        sub = x if n <= shapiro_max else x[rng.choice(n, size=shapiro_max, replace=False)]
        sw = sps.shapiro(sub)
        out.update(shapiro_stat=float(sw.statistic), shapiro_pvalue=float(sw.pvalue), shapiro_n=sub.size)
    return out


def _summaries(x: np.ndarray, n_entries: int, bins: Bins, qq: bool, qq_points: int, shapiro_max: int,
               rng: np.random.Generator) -> dict[str, Any]:
    counts, edges = np.histogram(x, bins=bins)
    width = np.diff(edges)
    density = counts / (x.size * width) if x.size else np.full(counts.shape, math.nan)
    result = {"hist": {"bin_left": edges[:-1], "bin_right": edges[1:], "count": counts, "density": density},
              "stats": entry_statistics(x, n_entries, shapiro_max, rng)}
    if qq:  # at most one point per entry; Hazen's plotting positions on both axes, so that a normal
        # sample lies on the line to its ends (interpolating more points than entries bends the tails in)
        m = min(qq_points, x.size)
        levels = (np.arange(1, m + 1) - 0.5) / m
        result["qq"] = {"theoretical_quantile": sps.norm.ppf(levels),
                        "sample_quantile": np.quantile(x, levels, method="hazen")}
    return result


def distributions(
    run: Any,
    matrices: Sequence[str] = ("B",),
    bins: Bins = "fd",
    qq: bool = False,
    layers: LayerSelection = None,
    steps: StepSelection = "last",
    max_entries: int = 1_000_000,
    shapiro_max: int = 5000,
    qq_points: int = 200,
    seed: int = 0,
) -> DistributionTables:
    """Histograms, moments and normality tests of matrix entries per (layer, step, matrix).

    ``matrices``: the method's matrices (TLoRA A, B, C; LoRA A, B; VeRA A, B, d, b; LoRA-XS A, R, B;
    full fine-tuning none) and "W0", "dW" (:func:`available_matrices`); ``bins`` an
    int or a numpy rule (default "fd", Freedman–Diaconis: bin width 2·IQR/n^⅓); std uses
    ddof = 1; skew and excess kurtosis are the moment estimators; ks_stat is the KS distance to
    the normal with the sample's mean and std (an effect size, no p-value: fitted parameters
    invalidate the plain KS law); K² is D'Agostino–Pearson (n ≥ 20); Shapiro–Wilk runs on at
    most ``shapiro_max`` entries. Frozen matrices are computed once per layer and
    repeated at every selected step.
    """
    matrices = _validate(run, matrices, bins, max_entries, shapiro_max, qq_points)
    frozen = (*run.spec.frozen_roles, "W0")
    source = UpdateSource(run)
    extra = ("matrix",)
    hist_t = TableBuilder(IDENTITY_COLUMNS + extra + ("bin_left", "bin_right", "count", "density", "n_entries", "n_sampled"))
    stat_t = TableBuilder(IDENTITY_COLUMNS + extra + STAT_COLUMNS)
    qq_t = TableBuilder(IDENTITY_COLUMNS + extra + ("theoretical_quantile", "sample_quantile")) if qq else None
    frozen_cache: dict[tuple[str, str], dict[str, Any]] = {}
    for layer, step, ident in sweep(run, layers, steps):
        factors = None
        for matrix in matrices:
            key = (layer, matrix)
            if key in frozen_cache:
                summary = frozen_cache[key]
            else:
                rng = _rng(seed, layer, step, matrix)
                if matrix == "dW":
                    x, n_entries = _sample_update(source.update(layer, step), max_entries, rng), int(np.prod(run.layer_shapes[layer]))
                else:
                    if matrix == "W0":
                        full = source.base(layer).weight
                    else:
                        factors = factors if factors is not None else source.factors(layer, step)
                        full = as_float64(factors[matrix])
                    x, n_entries = _sample_matrix(full, max_entries, rng), full.size
                summary = _summaries(x, n_entries, bins, qq, qq_points, shapiro_max, rng)
                if matrix in frozen:
                    frozen_cache = {k: v for k, v in frozen_cache.items() if k[0] == layer}
                    frozen_cache[key] = summary
            st = summary["stats"]
            h = summary["hist"]
            hist_t.add(h["count"].size, **ident, matrix=matrix, **h, n_entries=st["n_entries"], n_sampled=st["n_sampled"])
            stat_t.add(**ident, matrix=matrix, **st)
            if qq_t is not None:
                qq_t.add(summary["qq"]["sample_quantile"].size, **ident, matrix=matrix, **summary["qq"])
    return DistributionTables(hist_t.frame(), stat_t.frame(), qq_t.frame() if qq_t is not None else None)
