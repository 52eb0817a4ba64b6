"""Monte-Carlo p-values from draws of an exact null law.

With N draws and k of them at least as extreme as the observation, p = (k + 1)/(N + 1) is a
valid p-value (P(p ≤ u) ≤ u under the null, for any N): the observation is one more draw.
For combining layers the discrete p is turned into a z-score through the mid-rank: with g draws
more extreme than the observation and e equal to it, (g + (e + 1)/2)/(N + 1), the mean of the
observation's possible ranks among its ties. Under the null it is symmetric about ½ (ties
included, so a statistic that takes few values still gives centred z-scores) and never 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MonteCarloP", "mc_pvalue"]


@dataclass(frozen=True)
class MonteCarloP:
    """``pvalue`` (valid, (k+1)/(N+1)), ``mid`` ((g + (e+1)/2)/(N+1), for z-scores) and ``n_draws``."""

    pvalue: float
    mid: float
    n_draws: int


def mc_pvalue(draws: np.ndarray, observed: float, alternative: str = "greater") -> MonteCarloP:
    """Upper-tail ("greater"), lower-tail ("less") or two-sided (|·|) Monte-Carlo p-value.

    NaN draws are dropped; a NaN observation or no finite draw gives NaN.
    """
    if alternative not in ("greater", "less", "two-sided"):
        raise ValueError(f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    x = np.asarray(draws, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not np.isfinite(observed) or x.size == 0:
        return MonteCarloP(float("nan"), float("nan"), int(x.size))
    # Draws within a relative tolerance of the observation are ties (equal up to rounding).
    tol = 1e-12 * max(1.0, abs(observed))
    if alternative == "greater":
        beyond = x - observed
    elif alternative == "less":
        beyond = observed - x
    else:
        beyond = np.abs(x) - abs(observed)
    more, ties = int(np.count_nonzero(beyond > tol)), int(np.count_nonzero(np.abs(beyond) <= tol))
    n = x.size
    return MonteCarloP((more + ties + 1) / (n + 1), (more + (ties + 1) / 2) / (n + 1), n)
