"""Combining per-layer evidence, and per-layer calls with a multiplicity correction.

- Stouffer: Z = Σ z_l / √L against N(0, 1), one-sided: a *directional* claim ("aligned").
- Σ z_l² against χ²_L: *any* departure from the null, in either direction, layer by layer.
- Fisher: −2 Σ log p_l against χ²_{2L}: any departure, from p-values (goodness of fit).
All three need the per-layer statistics to be independent under the null (layers with their
own frozen factors and their own null draws are); docs/statistics.md says where each is used.
- Random effects over replicates: each replicate's Stouffer Z (N(0, 1) under the null) is one
  unit, and their mean is tested with Hartung and Knapp's t, its variance never below the null's
  1, so a conclusion holds for the method across seeds rather than for one lucky run.
- Holm (family-wise error) and Benjamini–Hochberg (false discovery rate) adjust per-layer
  p-values so that per-layer calls can be made at the report's single level α.
NaN entries (an undefined statistic, e.g. a zero update) are left out of every rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

__all__ = ["CombinedTest", "z_from_p", "stouffer", "chi2_sum", "fisher", "random_effects", "holm",
           "benjamini_hochberg"]


@dataclass(frozen=True)
class CombinedTest:
    """A combined statistic, its p-value, the rule's name and how many units entered it."""

    statistic: float
    pvalue: float
    rule: str
    n: int


def _finite(x: np.ndarray | list[float]) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def z_from_p(p_upper: np.ndarray | float) -> np.ndarray | float:
    """z = Φ⁻¹(1 − p) for an upper-tail p-value: exactly N(0, 1) when p is exactly uniform."""
    return sps.norm.isf(p_upper)


def stouffer(z: np.ndarray | list[float]) -> CombinedTest:
    """Z = Σ z / √L with its upper-tail p-value."""
    zs = _finite(z)
    if zs.size == 0:
        return CombinedTest(math.nan, math.nan, "Stouffer", 0)
    big_z = float(zs.sum() / math.sqrt(zs.size))
    return CombinedTest(big_z, float(sps.norm.sf(big_z)), "Stouffer", int(zs.size))


def chi2_sum(z: np.ndarray | list[float]) -> CombinedTest:
    """Q = Σ z² with its χ²_L upper-tail p-value."""
    zs = _finite(z)
    if zs.size == 0:
        return CombinedTest(math.nan, math.nan, "Σz² vs χ²", 0)
    q = float(np.sum(zs**2))
    return CombinedTest(q, float(sps.chi2.sf(q, zs.size)), "Σz² vs χ²", int(zs.size))


def fisher(p: np.ndarray | list[float]) -> CombinedTest:
    """X = −2 Σ log p with its χ²_{2L} upper-tail p-value."""
    ps = _finite(p)
    if ps.size == 0:
        return CombinedTest(math.nan, math.nan, "Fisher", 0)
    x = float(-2.0 * np.sum(np.log(np.clip(ps, 1e-300, 1.0))))
    return CombinedTest(x, float(sps.chi2.sf(x, 2 * ps.size)), "Fisher", int(ps.size))


def random_effects(unit_z: np.ndarray | list[float]) -> CombinedTest:
    """T = mean(Z_u) √U / max(1, sd(Z_u)) against Student's t on U − 1 df, upper tail.

    ``unit_z``: one Stouffer Z per replicate (U ≥ 2), each N(0, 1) under the sharp null. The null tested
    is that the replicates' mean effect is 0, however much replicates differ (their spread enters
    through sd(Z_u)): the Hartung–Knapp test of a random-effects mean with equal within-replicate
    variances, with the variance floored at the null's 1 (Knapp and Hartung's correction) so it is
    never more liberal than the fixed-effect Stouffer test referred to the same t law."""
    zs = _finite(unit_z)
    if zs.size < 2:
        return CombinedTest(math.nan, math.nan, "random effects (Hartung–Knapp)", int(zs.size))
    t = float(zs.mean() * math.sqrt(zs.size) / max(1.0, float(np.std(zs, ddof=1))))
    return CombinedTest(t, float(sps.t.sf(t, zs.size - 1)), "random effects (Hartung–Knapp)", int(zs.size))


def holm(p: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as ``p``; NaN stays NaN)."""
    a = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(a.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(a))
    if idx.size:
        order = idx[np.argsort(a[idx], kind="stable")]
        m = order.size
        adjusted = np.maximum.accumulate((m - np.arange(m)) * a[order])
        out[order] = np.minimum(adjusted, 1.0)
    return out


def benjamini_hochberg(p: np.ndarray | list[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (same order as ``p``; NaN stays NaN)."""
    a = np.asarray(p, dtype=np.float64).ravel()
    out = np.full(a.shape, math.nan)
    ok = np.isfinite(a)
    if ok.any():
        out[ok] = sps.false_discovery_control(a[ok], method="bh")
    return out
