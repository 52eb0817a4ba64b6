"""The inference building blocks: each closed-form null law against a Monte-Carlo estimate made
with explicit dense random matrices, each rule against an independent computation or a case
worked by hand."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from tlora_analysis.analysis.nulls import RandomNull, haar_frames
from tlora_analysis.stats import (
    benjamini_hochberg, bootstrap_interval, chi2_sum, crossed_t, fisher, haar_cosine_variance, holm, icc_from_f,
    ks_by_labels, mc_pvalue, permutation_test, pseudo_values, random_effects, reachable_fraction_mean, stouffer,
    subspace_overlap_mean, t_interval, z_from_p,
)


def _haar(rng, n, k):
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------- closed forms against Monte Carlo
def test_haar_cosine_variance_is_one_over_out_times_in_for_any_spectra():
    """Dense: R = U diag(σ) Vᵀ with explicit Haar U, V; X fixed, rank 2; σ very uneven."""
    rng = np.random.default_rng(0)
    out, inn, k = 12, 9, 3
    x = rng.standard_normal((out, 2)) @ rng.standard_normal((2, inn))
    sigma = np.array([5.0, 1.0, 0.1])
    draws = []
    for _ in range(40000):
        r = _haar(rng, out, k) @ np.diag(sigma) @ _haar(rng, inn, k).T
        draws.append(np.sum(r * x) / (np.linalg.norm(r) * np.linalg.norm(x)))
    draws = np.array(draws)
    se = draws.var() * math.sqrt(2 / draws.size) * 2  # generous: the law has heavy-ish tails
    assert draws.var() == pytest.approx(haar_cosine_variance(out, inn), abs=3 * se)
    assert abs(draws.mean()) < 4 * draws.std() / math.sqrt(draws.size)


def test_random_null_draws_match_explicit_haar_rotations():
    """nulls.RandomNull draws U_aᵀU_R from its O(k³) law; compare with explicit dense rotations."""
    rng = np.random.default_rng(1)
    out, inn = 20, 15
    sa, sb = np.array([3.0, 1.0]), np.array([2.0, 2.0, 0.5])
    fast = RandomNull(20000, 0, "layer", (out, inn), 2, 3).statistics(sa, sb, "left")["cosine_dW"]
    ua, va = _haar(rng, out, 2), _haar(rng, inn, 2)
    a = ua @ np.diag(sa) @ va.T
    slow = []
    for _ in range(20000):
        r = _haar(rng, out, 3) @ np.diag(sb) @ _haar(rng, inn, 3).T
        slow.append(np.sum(a * r) / (np.linalg.norm(a) * np.linalg.norm(r)))
    assert stats.ks_2samp(fast, slow).pvalue > 1e-3
    assert fast.var() == pytest.approx(1 / (out * inn), rel=0.05)


def test_reachable_fraction_mean_is_r_squared_over_out_in():
    """f = ‖P_C X P_A‖²/‖X‖² with explicit Gaussian A (in × r) and C (r × out), X fixed and low-rank."""
    rng = np.random.default_rng(2)
    out, inn, r = 14, 10, 3
    x = rng.standard_normal((out, 2)) @ rng.standard_normal((2, inn))
    draws = []
    for _ in range(30000):
        qa = np.linalg.qr(rng.standard_normal((inn, r)))[0]
        qc = np.linalg.qr(rng.standard_normal((out, r)))[0]
        draws.append(np.linalg.norm(qc.T @ x @ qa) ** 2 / np.linalg.norm(x) ** 2)
    draws = np.array(draws)
    assert draws.mean() == pytest.approx(reachable_fraction_mean(r, r, out, inn), abs=4 * draws.std() / math.sqrt(draws.size))


def test_subspace_overlap_mean_is_max_over_d():
    rng = np.random.default_rng(3)
    d = 16
    for i, j in ((2, 5), (4, 4), (6, 1)):
        draws = [np.linalg.norm(_haar(rng, d, i).T @ _haar(rng, d, j)) ** 2 / min(i, j) for _ in range(20000)]
        assert np.mean(draws) == pytest.approx(subspace_overlap_mean(i, j, d), abs=4 * np.std(draws) / math.sqrt(20000))


def test_cosine_inside_the_reachable_set_variance_and_why_not_the_beta_law():
    """Inside S (p × q coordinates) a spectrum-preserving random direction has Var c = 1/(pq), like an
    isotropic one, but for rank-one updates its tails are heavier than the isotropic Beta law: that law
    would reject a true null several times too often at small α."""
    p = q = 4
    draws = RandomNull(200000, 0, "layer", (p, q), 1, 1).statistics(np.array([1.0]), np.array([1.0]), "left")["cosine_dW"]
    assert draws.var() == pytest.approx(1 / (p * q), rel=0.02)
    beta = stats.beta((p * q - 1) / 2, (p * q - 1) / 2)
    beta_p = beta.sf((draws + 1) / 2)
    assert np.mean(beta_p <= 0.001) > 4 * 0.001  # anti-conservative
    isotropic = np.random.default_rng(4).standard_normal((20000, p * q))
    c = isotropic[:, 0] / np.linalg.norm(isotropic, axis=1)
    assert stats.kstest((c + 1) / 2, beta.cdf).pvalue > 1e-3  # the Beta law is right for isotropic directions


def test_haar_frames_are_uniform():
    """First coordinate of a Haar unit vector in R^d: (x + 1)/2 ~ Beta((d−1)/2, (d−1)/2)."""
    d = 7
    u = haar_frames(np.random.default_rng(5), 20000, d, 1)[:, 0, 0]
    assert stats.kstest((u + 1) / 2, stats.beta((d - 1) / 2, (d - 1) / 2).cdf).pvalue > 1e-3


# ---------------------------------------------------------------- combination rules and corrections
def test_combination_rules_match_scipy_and_hand_values():
    p = np.array([0.01, 0.2, 0.5, np.nan, 0.04])
    z = z_from_p(p)
    st = stouffer(z)
    assert st.n == 4 and st.pvalue == pytest.approx(stats.combine_pvalues(p[np.isfinite(p)], method="stouffer").pvalue)
    fi = fisher(p)
    assert fi.pvalue == pytest.approx(stats.combine_pvalues(p[np.isfinite(p)], method="fisher").pvalue)
    ch = chi2_sum([1.0, 2.0, -2.0])
    assert ch.statistic == 9.0 and ch.pvalue == pytest.approx(stats.chi2.sf(9.0, 3))
    assert math.isnan(stouffer([np.nan]).pvalue) and fisher([]).n == 0


def test_random_effects_by_hand():
    z = np.array([2.0, 5.0, 3.5, np.nan])  # sd 1.5 > 1: the replicates' own spread
    t = 3.5 * math.sqrt(3) / 1.5
    re = random_effects(z)
    assert (re.n, re.statistic) == (3, pytest.approx(t)) and re.pvalue == pytest.approx(stats.t.sf(t, 2))
    tight = random_effects([3.0, 3.1, 2.9])  # spread below the null's 1: the floor, never more liberal
    assert tight.statistic == pytest.approx(3 * math.sqrt(3))
    assert tight.pvalue == pytest.approx(stats.t.sf(3 * math.sqrt(3), 2))
    assert math.isnan(random_effects([1.0]).pvalue)


@pytest.mark.parametrize("tau", [0.0, 3.0], ids=["sharp-null", "replicates-differ"])
def test_random_effects_holds_alpha_where_pooling_does_not(tau):
    """Replicates' Z ~ N(0, 1 + τ²): the mean effect is 0 either way. At α = 0.05 over 20,000 sets of 3
    replicates the random-effects test rejects at most 5% (3 standard errors); pooling the replicates as one
    Stouffer Z rejects 5% under the sharp null but about 28% once replicates differ (τ = 3)."""
    rng = np.random.default_rng(11)
    z = rng.normal(0.0, math.sqrt(1 + tau ** 2), (20_000, 3))
    rejected = stats.t.sf(z.mean(1) * math.sqrt(3) / np.maximum(1.0, z.std(1, ddof=1)), 2) < 0.05
    assert all(random_effects(row).pvalue == pytest.approx(stats.t.sf(row.mean() * math.sqrt(3) / max(
        1.0, row.std(ddof=1)), 2)) for row in z[:50])
    assert rejected.mean() <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / z.shape[0])
    pooled = stats.norm.sf(z.sum(1) / math.sqrt(3)) < 0.05
    expected = stats.norm.sf(stats.norm.isf(0.05) / math.sqrt(1 + tau**2))  # 0.05 at τ = 0
    assert pooled.mean() == pytest.approx(expected, abs=0.01)


def test_holm_and_bh_by_hand():
    # Holm, sorted 0.01, 0.02, 0.03, 0.5 with m = 4: 0.04, 0.06, 0.06 (monotone), 0.5
    np.testing.assert_allclose(holm([0.03, 0.01, 0.5, 0.02]), [0.06, 0.04, 0.5, 0.06])
    # BH: 0.01·4/1, 0.02·4/2, 0.03·4/3, 0.5·4/4, then running minimum from the top
    np.testing.assert_allclose(benjamini_hochberg([0.03, 0.01, 0.5, 0.02]), [0.04, 0.04, 0.5, 0.04])
    assert np.isnan(holm([0.1, np.nan])[1]) and holm([0.1, np.nan])[0] == pytest.approx(0.1)


def test_mc_pvalue_counts_ties_and_the_observation():
    draws = np.array([0.1, 0.2, 0.3, 0.3, 0.9])
    res = mc_pvalue(draws, 0.3)
    # one draw beyond 0.3, two tied with it: p counts the ties and the observation, the mid-rank
    # takes the mean of the observation's three possible ranks among its ties, (1 + 3/2)/6
    assert res.pvalue == pytest.approx(4 / 6) and res.mid == pytest.approx(2.5 / 6)
    assert mc_pvalue(np.ones(200), 1.0).mid == 0.5 and mc_pvalue(np.ones(200), 1.0).pvalue == 1.0
    assert mc_pvalue(draws, 0.2, "less").pvalue == pytest.approx(3 / 6)
    assert mc_pvalue(-draws, 0.3, "two-sided").pvalue == pytest.approx(4 / 6)
    assert math.isnan(mc_pvalue(draws, math.nan).pvalue)
    with pytest.raises(ValueError, match="alternative"):
        mc_pvalue(draws, 0.1, "up")


def test_mc_p_values_are_valid_for_small_n():
    """Observation and N draws from one law: P(p ≤ u) ≤ u, and z from the mid-rank is symmetric."""
    rng = np.random.default_rng(6)
    ps, mids = [], []
    for _ in range(4000):
        x = rng.standard_normal(20)
        res = mc_pvalue(x[1:], x[0])
        ps.append(res.pvalue), mids.append(res.mid)
    ps = np.array(ps)
    for u in (0.05, 0.1, 0.5):
        assert np.mean(ps <= u) <= u + 3 * math.sqrt(u * (1 - u) / ps.size)
    assert abs(np.mean(z_from_p(np.array(mids)))) < 0.06


def test_mc_mid_rank_is_centred_for_a_statistic_with_ties():
    """A statistic with three values (binomial, 2 trials): the mid-rank's mean is ½ under the null, so
    the z-scores that Stouffer sums are centred; counting ties as more extreme would push them down."""
    rng = np.random.default_rng(8)
    mids = np.array([mc_pvalue(x[1:], x[0]).mid for x in rng.binomial(2, 0.5, size=(4000, 201)).astype(float)])
    assert abs(mids.mean() - 0.5) < 3 * mids.std() / math.sqrt(mids.size)
    assert abs(np.mean(z_from_p(mids))) < 0.05


# ---------------------------------------------------------------- permutation tests and distances
def test_permutation_test_enumerates_exactly_when_small():
    values = np.array([1.0, 5.0, 2.0, 7.0, 3.0, 4.0])
    labels = np.array([0, 1, 0, 1, 0, 1])
    blocks = np.array([0, 0, 1, 1, 2, 2])

    def diff(lab):
        return (lab @ values) / 3 - ((1 - lab) @ values) / 3

    res = permutation_test(labels, blocks, diff, np.random.default_rng(0), n_resamples=100)
    brute = [diff(np.array([[a, 1 - a, b, 1 - b, c, 1 - c]]))[0] for a, b, c in itertools.product((0, 1), repeat=3)]
    assert res.exact and res.n_arrangements == 8
    assert res.pvalue == pytest.approx(np.mean(np.array(brute) >= diff(labels[None])[0] - 1e-12))
    assert res.min_pvalue == pytest.approx(1 / 8)


def test_permutation_test_is_valid_under_exchangeability():
    rng = np.random.default_rng(1)
    blocks = np.repeat(np.arange(6), 4)
    labels = np.tile([0, 0, 1, 1], 6)
    ps = []
    for _ in range(300):
        values = rng.standard_normal(24) + np.repeat(rng.standard_normal(6) * 3, 4)  # block effects
        ps.append(permutation_test(labels, blocks, lambda lab: np.abs((2 * lab - 1) @ values), rng, 199).pvalue)
    assert np.mean(np.array(ps) <= 0.05) <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)


def test_permutation_of_multi_valued_labels_and_bad_input():
    res = permutation_test(np.array([0, 1, 2, 0, 1, 2]), np.array([0, 0, 0, 1, 1, 1]),
                           lambda lab: lab[:, 0].astype(float), np.random.default_rng(0), n_resamples=100)
    assert res.exact and res.n_arrangements == 36
    with pytest.raises(ValueError, match="same length"):
        permutation_test(np.array([0, 1]), np.array([0]), lambda lab: lab[:, 0], np.random.default_rng(0))


def test_ks_by_labels_equals_scipy_with_ties():
    rng = np.random.default_rng(2)
    values = np.round(rng.normal(size=80), 1)
    owners = np.repeat(np.arange(8), 10)
    labels = rng.integers(0, 2, (40, 8))
    got = ks_by_labels(values, owners, labels)
    for row, d in zip(labels, got):
        one, zero = values[np.isin(owners, np.flatnonzero(row == 1))], values[np.isin(owners, np.flatnonzero(row == 0))]
        if one.size and zero.size:
            assert d == pytest.approx(stats.ks_2samp(one, zero).statistic)
        else:
            assert np.isnan(d)


# ---------------------------------------------------------------- intervals
def test_t_interval_matches_scipy():
    x = np.array([1.0, 2.5, 0.5, 4.0, np.nan])
    mean, lo, hi = t_interval(x)
    ref = stats.t.interval(0.95, 3, loc=np.nanmean(x), scale=stats.sem(x[:4]))
    assert (mean, lo, hi) == pytest.approx((np.nanmean(x), *ref))
    assert math.isnan(t_interval([1.0])[1])


def test_icc_interval_covers_the_true_share():
    """Layer effects σ²_g = 0.5, noise σ²_e = 1, 3 replicates, seed effects: the F interval covers ICC 1/3."""
    rng = np.random.default_rng(3)
    covered, reps = 0, 400
    for _ in range(reps):
        a = rng.normal(0, math.sqrt(0.5), (12, 1)) + rng.normal(0, 1, (1, 3)) + rng.standard_normal((12, 3))
        resid = a - a.mean(1, keepdims=True) - a.mean(0, keepdims=True) + a.mean()
        f = 3 * np.var(a.mean(1), ddof=1) / (np.sum(resid**2) / (11 * 2))
        _, lo, hi = icc_from_f(f, 11, 22, 3)
        covered += lo <= 1 / 3 <= hi
    assert abs(covered / reps - 0.95) < 3 * math.sqrt(0.95 * 0.05 / reps)


def test_bootstrap_interval_methods():
    x = np.random.default_rng(4).normal(size=50)
    lo, hi = bootstrap_interval(lambda idx: x[idx].mean(), 50, np.random.default_rng(0), 1000)
    assert lo < x.mean() < hi
    blo, bhi = bootstrap_interval(lambda idx: x[idx].mean(), 50, np.random.default_rng(0), 1000, method="basic")
    assert (blo + bhi) / 2 == pytest.approx(2 * x.mean() - (lo + hi) / 2)
    with pytest.raises(ValueError, match="method"):
        bootstrap_interval(lambda idx: 0.0, 5, np.random.default_rng(0), method="bca")


# ---------------------------------------------------------------- seeds × examples
def _generalized_p(estimate: float, seed_variance: float, example_variance: float, seeds: int) -> float:
    """E_W 2 Φ(−|estimate| / √(seed_variance (S − 1) / W + example_variance)), W ~ χ²(S − 1), by adaptive quadrature."""
    law = stats.chi2(seeds - 1)
    integrand = lambda w: 2 * stats.norm.sf(abs(estimate) / math.sqrt(seed_variance * (seeds - 1) / w
                                                                      + example_variance)) * law.pdf(w)
    return integrate.quad(integrand, 0, np.inf, limit=200, epsabs=1e-12)[0]


def test_crossed_t_by_hand():
    """Seeds × examples [[1, 0, 1], [0, 0, 1]]: MS_s = 1/6, MS_e = 1/2, MS_r = 1/6, so V = (1/6 + 1/2 − 1/6) / 6."""
    result = crossed_t(np.array([2 / 3, 1 / 3]), np.array([[1.0, 0, 1], [0, 0, 1]]))
    assert result.estimate == pytest.approx(0.5)
    assert result.seed_variance == pytest.approx(1 / 36) and result.example_variance == pytest.approx(1 / 18)
    assert result.se == pytest.approx(math.sqrt(1 / 12)) and result.example_share == pytest.approx(2 / 3)
    assert result.p_value == pytest.approx(_generalized_p(0.5, 1 / 36, 1 / 18, 2), abs=2e-5)
    # the interval is the set of means the test does not reject at 5%
    for bound in (result.ci_lo, result.ci_hi):
        assert _generalized_p(0.5 - bound, 1 / 36, 1 / 18, 2) == pytest.approx(0.05, abs=2e-5)


def test_crossed_t_components_match_the_jackknife_decomposition_on_random_values():
    """Independently: the seed term is the variance of the seeds' means over S; the examples' term is
    (S v̄ − mean_s v_s) / (S − 1) from the jackknife variances of the mean over seeds (v̄) and of each seed (v_s)."""
    rng = np.random.default_rng(3)
    seeds, examples = 4, 50
    values = rng.normal(size=(seeds, 1)) * 0.3 + rng.normal(size=(1, examples)) + rng.normal(size=(seeds, examples))
    result = crossed_t(values.mean(axis=1), values)

    def jackknife(column_values):
        left = (column_values.sum() - column_values) / (examples - 1)
        return (examples - 1) / examples * np.sum((left - left.mean()) ** 2)

    seed_term = values.mean(axis=1).var(ddof=1) / seeds
    example_term = (seeds * jackknife(values.mean(axis=0)) - np.mean([jackknife(v) for v in values])) / (seeds - 1)
    assert result.seed_variance == pytest.approx(seed_term, rel=1e-12)
    assert result.example_variance == pytest.approx(example_term, rel=1e-10) and example_term > 0
    expected = _generalized_p(result.estimate, seed_term, example_term, seeds)
    assert result.p_value == pytest.approx(expected, abs=2e-5)


def test_crossed_t_is_the_t_over_seeds_where_examples_add_nothing():
    """Every example's mean over seeds equal: MS_e = 0, the examples' term is 0 and the test is the one-sample t."""
    rng = np.random.default_rng(5)
    noise = rng.normal(size=(3, 30))
    values = 0.4 + rng.normal(size=(3, 1)) + noise - noise.mean(axis=0)
    result = crossed_t(values.mean(axis=1), values)
    t = stats.ttest_1samp(values.mean(axis=1), 0.0)
    ci = t.confidence_interval(0.95)
    assert result.example_variance == 0 and result.example_share == 0
    assert result.p_value == pytest.approx(t.pvalue, abs=2e-5)
    assert (result.ci_lo, result.ci_hi) == pytest.approx((ci.low, ci.high), abs=1e-3)


def test_crossed_t_degenerate_inputs():
    assert math.isnan(crossed_t(np.array([0.5]), np.ones((1, 4))).p_value)  # one seed: no seed variance
    assert math.isnan(crossed_t(np.array([0.5, 0.5]), np.full((2, 4), 0.5)).p_value)  # no spread at all
    assert math.isnan(crossed_t(np.array([0.5, np.nan]), np.ones((2, 4))).p_value)
    with pytest.raises(ValueError, match="seeds × examples with one estimate per seed"):
        crossed_t(np.zeros(3), np.zeros((2, 4)))
    np.testing.assert_allclose(pseudo_values(0.75, np.array([2 / 3, 1, 2 / 3, 2 / 3])), [1, 0, 1, 1])
