"""Confidence intervals: Student's t over independent units, the percentile bootstrap, and
the exact F-based interval of a variance ratio (an intraclass correlation)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy import stats as sps

__all__ = ["t_interval", "bootstrap_interval", "icc_from_f"]


def t_interval(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean of the finite values and its Student-t interval (NaN bounds for n < 2)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + level / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_units: int, rng: np.random.Generator,
                       n_resamples: int = 2000, level: float = 0.95, method: str = "percentile",
                       ) -> tuple[float, float]:
    """Bootstrap interval of ``statistic(indices)`` over units resampled with replacement.

    ``statistic`` receives an index array into the units (the observed value is
    ``statistic(np.arange(n_units))``); NaN resamples are dropped. ``method="percentile"`` gives
    the resamples' quantiles; ``"basic"`` reflects them about the observed value
    ([2θ̂ − q_hi, 2θ̂ − q_lo]), which corrects the upward bias of distance-like statistics (its
    interval can then lie below the estimate). NaN bounds for fewer than 2 units.
    """
    if method not in ("percentile", "basic"):
        raise ValueError(f"method must be 'percentile' or 'basic', got {method!r}")
    if n_units < 2:
        return math.nan, math.nan
    draws = np.array([statistic(rng.integers(0, n_units, n_units)) for _ in range(n_resamples)], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    if draws.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)])
    if method == "basic":
        observed = statistic(np.arange(n_units))
        lo, hi = 2 * observed - hi, 2 * observed - lo
    return float(lo), float(hi)


def icc_from_f(f_stat: float, df_between: int, df_within: int, replicates: int,
               level: float = 0.95) -> tuple[float, float, float]:
    """(ICC, lo, hi) of a between-group variance share from an ANOVA F ratio.

    With E[MS_between] = σ²_e + m·σ²_g and E[MS_within] = σ²_e (m replicates per group),
    F / (1 + m·θ) ~ F(df_between, df_within) for θ = σ²_g / σ²_e, which gives the exact
    interval (F/F_hi − 1)/m ≤ θ ≤ (F/F_lo − 1)/m under normal errors. ICC = θ / (1 + θ),
    the share of the variance that lies between groups; bounds are clipped at 0.
    """
    if not (np.isfinite(f_stat) and df_between >= 1 and df_within >= 1 and replicates >= 1):
        return math.nan, math.nan, math.nan
    f_hi = sps.f.ppf(0.5 + level / 2.0, df_between, df_within)
    f_lo = sps.f.ppf(0.5 - level / 2.0, df_between, df_within)

    def share(theta: float) -> float:
        theta = max(theta, 0.0)
        return theta / (1.0 + theta) if np.isfinite(theta) else 1.0

    return (share((f_stat - 1.0) / replicates), share((f_stat / f_hi - 1.0) / replicates),
            share((f_stat / f_lo - 1.0) / replicates))
