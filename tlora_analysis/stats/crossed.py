"""A mean over two crossed random factors: seeds × evaluation examples.

A method's score on a task varies with the seed (a new head, batch order, frozen factors) and with
the examples it is scored on: the validation split is one sample of the task's examples. The t over
seeds alone treats the split as fixed, so it answers "on these examples"; a paper claims the task.
With every seed scored on the same examples, the per-(seed, example) values y_si form a crossed
two-way layout (seeds S, examples N) with y_si = μ + a_s + b_i + c_si, all random, and the plain
mean ȳ has variance σ²_a / S + σ²_b / N + σ²_c / (S N). The two-way ANOVA's mean squares
(seeds MS_s, examples MS_e, residual MS_r) estimate it without bias,
V = (MS_s + MS_e − MS_r) / (S N), the first term with S − 1 degrees of freedom, the rest with
N − 1 and (S − 1)(N − 1). With S = 3 the seeds' term is the uncertain one, and Satterthwaite's
degrees of freedom, themselves estimated from it, make the t liberal (up to 7% false positives at
5% in the simulations of docs/statistics.md). The test here is the generalized p-value of Tsui and
Weerahandi (1989): the seeds' term is given its fiducial law MS_s (S − 1) / W, W ~ χ²(S − 1), the
examples' term (MS_e − MS_r) / (S N) is taken as known, and p = E_W 2 Φ(−|ȳ| / √V(W)), the
interval inverting it; both by quadrature on 4,000 equal-probability points of W. Where the
examples add nothing it is the t over seeds (exactly so for accuracy); where they dominate it tends
to the z test. The quadrature understates p below 1e-3 (by about 17% at 1e-4). Its false-positive
rate was 0.6–6.2% at 5% (within sampling noise of 5% at most) over the simulated mixes of seed and
example variance:
valid, and conservative where the examples dominate.
Where MS_e < MS_r the examples' component is estimated at 0.

For a metric that is not a mean over examples (F1, MCC, a correlation) y_si are the jackknife
pseudo-values N θ_s − (N − 1) θ_s(−i) of seed s's metric θ_s (Tukey 1958), whose mean-square
structure is that of the per-example values to first order; for accuracy they are the examples'
own 0/1 values, so the test is exact in its variance. A difference between two methods on the
same seeds and examples is the same test on the differences of their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from scipy import stats as sps

__all__ = ["CrossedTest", "crossed_t", "pseudo_values"]


_QUADRATURE = 4000  # equal-probability points of W ~ χ²(S − 1)


@dataclass(frozen=True)
class CrossedTest:
    """The two-sided test of mean 0 over seeds × examples, with its interval and variance components."""

    estimate: float  # the mean over seeds of each seed's statistic on all examples
    se: float  # √V: the estimate's standard error over seeds and examples
    ci_lo: float
    ci_hi: float
    p_value: float
    seed_variance: float  # MS_s / (S N): the t over seeds' squared standard error
    example_variance: float  # (MS_e − MS_r) / (S N), floored at 0: what the examples add

    @property
    def example_share(self) -> float:
        """The examples' share of the estimate's variance."""
        total = self.seed_variance + self.example_variance
        return self.example_variance / total if total > 0 else math.nan


def pseudo_values(full: float, leave_one_out: np.ndarray) -> np.ndarray:
    """Jackknife pseudo-values N θ − (N − 1) θ(−i) of a statistic θ on N examples."""
    leave_one_out = np.asarray(leave_one_out, dtype=np.float64)
    n = leave_one_out.size
    return n * float(full) - (n - 1) * leave_one_out


def _mean_squares(values: np.ndarray) -> tuple[float, float, float]:
    """(MS_s, MS_e, MS_r) of the two-way layout without replication."""
    seeds, examples = values.shape
    grand = values.mean()
    by_seed, by_example = values.mean(axis=1), values.mean(axis=0)
    ms_seed = examples * float(np.sum((by_seed - grand) ** 2)) / (seeds - 1)
    ms_example = seeds * float(np.sum((by_example - grand) ** 2)) / (examples - 1)
    residual = values - by_seed[:, None] - by_example[None, :] + grand
    return ms_seed, ms_example, float(np.sum(residual ** 2)) / ((seeds - 1) * (examples - 1))


def crossed_t(estimates: np.ndarray, values: np.ndarray, level: float = 0.95) -> CrossedTest:
    """Test that the mean over seeds and examples is 0; ``values[s, i]`` seed s's value on example i
    (pseudo-values for a metric that is not a mean), ``estimates[s]`` seed s's statistic on all examples.

    NaN test for fewer than 2 seeds or 2 examples, non-finite values, or no spread at all.
    """
    values = np.asarray(values, dtype=np.float64)
    estimates = np.asarray(estimates, dtype=np.float64).ravel()
    if values.ndim != 2 or values.shape[0] != estimates.size:
        raise ValueError(f"values must be seeds × examples with one estimate per seed; got {values.shape} values "
                         f"and {estimates.size} estimates")
    seeds, examples = values.shape
    estimate = float(estimates.mean()) if estimates.size else math.nan
    if seeds < 2 or examples < 2 or not (np.isfinite(values).all() and np.isfinite(estimates).all()):
        return CrossedTest(estimate, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan)
    ms_seed, ms_example, ms_residual = _mean_squares(values)
    cells = seeds * examples
    seed_variance, example_variance = ms_seed / cells, max(ms_example - ms_residual, 0.0) / cells
    se = math.sqrt(seed_variance + example_variance)
    if not se > 0:
        return CrossedTest(estimate, se, math.nan, math.nan, math.nan, seed_variance, example_variance)
    w = sps.chi2.ppf((np.arange(_QUADRATURE) + 0.5) / _QUADRATURE, seeds - 1)
    scale = np.sqrt(seed_variance * (seeds - 1) / w + example_variance)  # √V(W) at each point

    def p_of(distance: float) -> float:
        return float(np.mean(2 * sps.norm.sf(distance / scale)))

    alpha, hi = 1 - level, se
    while p_of(hi) > alpha:
        hi *= 2
    half = float(optimize.brentq(lambda h: p_of(h) - alpha, 0.0, hi, xtol=1e-12 * se))
    return CrossedTest(estimate, se, estimate - half, estimate + half, p_of(abs(estimate)), seed_variance,
                       example_variance)
