"""Calibration of the claims report on synthetic runs with known truth.

For each claim, many replicate experiments are generated where the claim's null is true and
the decision it would wrongly make ("supported" for an effect, "not supported" for a
sameness) must occur at a rate near α; and experiments with a clear effect must be detected.
Rates are checked against binomial bounds (three standard errors), so a correct test fails
here with probability well under 1%. Every experiment goes through the real analysis and
claim code; docs/statistics.md reports these rates.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from synthetic_runs import STEPS, Design, lora_copy_of, lora_run, orthonormal, tlora_run
from tlora_analysis import analysis
from tlora_analysis.report.alignment import reachable_cosine, reachable_fraction, subspace_overlap, update_cosine
from tlora_analysis.report.replicates import Arms
from tlora_analysis.report.spectra import eigen_updates
from tlora_analysis.report.weights import alpha_varies, gaussian_b, stable_norms

ALPHA = 0.05
N_NULL = 200  # Monte-Carlo p-values (k + 1)/(N + 1) are valid for any N
END = STEPS[-1]


def _upper(rate: float, reps: int, alpha: float = ALPHA) -> bool:
    return rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / reps)


def _w0(design: Design, rng: np.random.Generator) -> dict:
    import torch
    return {n: torch.as_tensor(rng.standard_normal((design.dim, design.dim)) / math.sqrt(design.dim))
            for n in design.names}


def _gaussian_b(rng: np.random.Generator, design: Design):
    finals = {n: rng.standard_normal((design.rank, design.rank)) for n in design.names}
    return lambda step, name: finals[name] * step / END


def _rank_one_b(rng: np.random.Generator, design: Design):
    finals = {n: np.outer(rng.standard_normal(design.rank), rng.standard_normal(design.rank)) for n in design.names}
    return lambda step, name: finals[name] * step / END


def _independent_lora(rng: np.random.Generator, design: Design, rank_one: bool = False):
    r = 1 if rank_one else design.rank
    finals = {n: (rng.standard_normal((design.rank, design.dim)),
                  np.hstack([rng.standard_normal((design.dim, r)), np.zeros((design.dim, design.rank - r))]))
              for n in design.names}
    return lambda step, name: (finals[name][0], finals[name][1] * step / END)


def _alignment_tables(tl, lo) -> tuple:
    sim = analysis.similarity(tl, lo, steps=[END], n_null=N_NULL, seed=1).per_layer
    reach = analysis.reachable(tl, lo, steps=[END], n_null=N_NULL, seed=1)
    return sim, reach


def _alignment_decisions(sim, reach) -> dict[str, str]:
    return {"update_cosine": update_cosine(sim, reach, ALPHA, N_NULL).decision,
            "reachable_cosine": reachable_cosine(reach, ALPHA, N_NULL).decision,
            "reachable_fraction": reachable_fraction(reach, ALPHA, N_NULL).decision,
            "subspace_overlap": subspace_overlap(reach, ALPHA, N_NULL).decision}


@pytest.mark.parametrize("rank_one", [False, True], ids=["gaussian-updates", "rank-one-updates"])
def test_alignment_claims_hold_alpha_for_independent_updates(rank_one):
    """TLoRA and LoRA trained independently: no alignment claim is 'supported' more often than α.

    The rank-one case is where the Gaussian-core (Beta) law of the cosine inside TLoRA's reachable
    set is anti-conservative (test_stats); the spectrum-preserving null used here must hold α.
    (No W0 here, for speed: the merged cosine's null is checked layer by layer below.)"""
    design, reps = Design(), 120
    supported = {k: 0 for k in ("update_cosine", "reachable_cosine", "reachable_fraction", "subspace_overlap")}
    for rep in range(reps):
        rng = np.random.default_rng([rep, int(rank_one)])
        b_at = _rank_one_b(rng, design) if rank_one else _gaussian_b(rng, design)
        tl = tlora_run("t", 2 * rep, design, b_at, w0={})
        lo = lora_run("l", 2 * rep + 1, design, _independent_lora(rng, design, rank_one), w0={})
        for claim, decision in _alignment_decisions(*_alignment_tables(tl, lo)).items():
            assert decision in ("supported", "not supported")
            supported[claim] += decision == "supported"
    for claim, count in supported.items():
        assert _upper(count / reps, reps), f"{claim}: false-positive rate {count / reps:.3f} > α = {ALPHA}"


def test_per_layer_p_values_are_uniform_under_independence():
    """Within one pair of many-layer runs, each per-layer p-value is uniform when the updates are unrelated."""
    from scipy import stats

    design = Design(n_layers=120, dim=32, rank=4)
    rng = np.random.default_rng(7)
    w0 = _w0(design, rng)
    tl = tlora_run("t", 0, design, _rank_one_b(rng, design), w0=w0)
    lo = lora_run("l", 1, design, _independent_lora(rng, design, rank_one=True), w0=w0)
    sim, reach = _alignment_tables(tl, lo)
    for frame, col in ((sim, "z_cosine_dW"), (sim, "z_cosine_merged_paper"), (reach, "z_cosine_reachable"),
                       (reach, "z_reachable_fraction"),
                       (reach, "z_overlap_in"), (reach, "z_overlap_out")):
        z = frame[col].to_numpy(float)
        assert stats.kstest(stats.norm.cdf(z), "uniform").pvalue > 1e-3, col
        assert abs(z.mean()) < 4 / math.sqrt(z.size) and abs(z.std() - 1) < 0.2, col


@pytest.mark.parametrize("noise, expect", [(0.0, "identical"), (1.0, "partial")])
def test_alignment_claims_detect_related_updates(noise, expect):
    """LoRA's update equal to TLoRA's, or TLoRA's plus an independent update as large: detected every time."""
    design = Design()
    for rep in range(10):
        rng = np.random.default_rng([rep, 99])
        tl = tlora_run("t", 2 * rep, design, _gaussian_b(rng, design), w0={})
        lo = lora_copy_of(tl, "l", 2 * rep + 1, design, noise=noise, rng=rng)
        sim, reach = _alignment_tables(tl, lo)
        decisions = _alignment_decisions(sim, reach)
        assert decisions == dict.fromkeys(decisions, "supported"), (expect, decisions)
        if noise == 0.0:
            np.testing.assert_allclose(reach["reachable_fraction"], 1.0, atol=1e-10)
            np.testing.assert_allclose(sim["cosine_dW"], 1.0, atol=1e-10)


def _tlora_arms(design: Design, b_for_seed, alpha_for_seed=None, seeds: int = 1, w0=None) -> Arms:
    w0 = {} if w0 is None else w0
    runs = [tlora_run(f"t{s}", s, design, b_for_seed(s), alpha_for_seed(s) if alpha_for_seed else None, w0=w0)
            for s in range(seeds)]
    lo = lora_run("l", 100, design, lambda step, name: (np.ones((design.rank, design.dim)),
                                                       np.ones((design.dim, design.rank)) * step), w0=w0)
    return Arms.from_runs(runs, [lo])


@pytest.mark.parametrize("tails", ["normal", "t2"])
def test_gaussian_b(tails):
    """B with normal entries: 'not supported' at rate ≤ α; heavy-tailed (t, 2 df) entries: detected."""
    design, reps = Design(n_layers=3, dim=32, rank=8), 150 if tails == "normal" else 30
    rejected = 0
    for rep in range(reps):
        rng = np.random.default_rng([rep, 5])
        draw = (lambda size: rng.standard_normal(size)) if tails == "normal" else (lambda size: rng.standard_t(2, size))
        finals = {n: draw((design.rank, design.rank)) for n in design.names}
        arms = _tlora_arms(design, lambda s: (lambda step, name: finals[name] * step / END))
        rejected += gaussian_b(arms, ALPHA, seed=rep).decision == "not supported"
    if tails == "normal":
        assert _upper(rejected / reps, reps), f"false-positive rate {rejected / reps:.3f}"
    else:
        assert rejected / reps >= 0.9, f"power {rejected / reps:.2f} against t(2) entries"


@pytest.mark.parametrize("truth", ["stable", "drifting"])
def test_stable_norms(truth):
    """Norms that change less than runs differ: 'not supported' at rate ≤ α. Norms that double over the
    second half, against a 30% run-to-run spread: detected. One run alone: inconclusive."""
    design, reps, seeds = Design(n_layers=3, dim=32, rank=4), 80 if truth == "stable" else 20, 3
    rejected = 0
    for rep in range(reps):
        rng = np.random.default_rng([rep, 11])
        scale = {(s, n): math.exp(0.3 * rng.standard_normal()) for s in range(seeds) for n in design.names}
        shape = {(s, n): rng.standard_normal((design.rank, design.rank)) for s in range(seeds) for n in design.names}
        jitter = {(s, n): 1 + 0.01 * rng.standard_normal() for s in range(seeds) for n in design.names}
        mid_factor = (lambda s, n: jitter[(s, n)]) if truth == "stable" else (lambda s, n: 0.5)

        def b_for_seed(s):
            return lambda step, name: shape[(s, name)] * scale[(s, name)] * (1.0 if step == END else
                                                                             mid_factor(s, name))
        arms = _tlora_arms(design, b_for_seed, seeds=seeds)
        result = stable_norms(arms, ALPHA, N_NULL, np.random.default_rng(rep))
        assert result.decision in ("supported", "not supported")
        rejected += result.decision == "not supported"
    rate = rejected / reps
    assert _upper(rate, reps) if truth == "stable" else rate >= 0.9, f"{truth}: rate of 'not supported' {rate:.3f}"
    single = _tlora_arms(design, lambda s: _gaussian_b(np.random.default_rng(0), design))
    assert stable_norms(single, ALPHA, N_NULL, np.random.default_rng(0)).decision == "inconclusive"


@pytest.mark.parametrize("effect", [0.0, 0.2])
def test_alpha_varies(effect):
    """α with only run-to-run noise: 'supported' at rate ≤ α; a layer effect of 4× the noise: detected."""
    design, reps, seeds = Design(n_layers=3, dim=32, rank=4), 100 if effect == 0 else 20, 3
    supported = 0
    for rep in range(reps):
        rng = np.random.default_rng([rep, 13])
        offset = {n: effect * rng.standard_normal() for n in design.names}
        noise = {(s, n): 0.05 * rng.standard_normal() for s in range(seeds) for n in design.names}
        b_at = _gaussian_b(rng, design)
        arms = _tlora_arms(design, lambda s: b_at, lambda s: (lambda step, name: 1 + offset[name] + noise[(s, name)]),
                           seeds=seeds)
        supported += alpha_varies(arms, ALPHA, N_NULL, np.random.default_rng(rep)).decision == "supported"
    rate = supported / reps
    assert _upper(rate, reps) if effect == 0 else rate >= 0.9, f"effect {effect}: rate of 'supported' {rate:.3f}"


def _orthonormal_frozen(design: Design):
    def frozen(rng):
        return orthonormal(rng, design.dim, design.rank), orthonormal(rng, design.dim, design.rank).T
    return frozen


@pytest.mark.parametrize("same_law", [True, False])
def test_eigen_updates(same_law):
    """Both methods' updates Q₁ G Q₂ᵀ (G Gaussian, Q Haar): 'not supported' at rate ≤ α. LoRA's update
    symmetric positive semi-definite, TLoRA's not: detected."""
    design, reps = Design(n_layers=3, dim=24, rank=4), 40 if same_law else 15
    rejected = 0
    for rep in range(reps):
        rng = np.random.default_rng([rep, 17])
        tl_runs = [tlora_run(f"t{s}", s, design, _gaussian_b(rng, design), w0={},
                             frozen=_orthonormal_frozen(design)) for s in range(2)]

        def lora_factors(rng=rng):
            finals = {}
            for n in design.names:
                q1, q2 = orthonormal(rng, design.dim, design.rank), orthonormal(rng, design.dim, design.rank)
                g = rng.standard_normal((design.rank, design.rank))
                finals[n] = (q2.T, q1 @ g) if same_law else (g.T @ q1.T, q1 @ g)
            return lambda step, name: (finals[name][0], finals[name][1] * step / END)

        lo_runs = [lora_run(f"l{s}", 10 + s, design, lora_factors(), w0={}) for s in range(2)]
        result = eigen_updates(Arms.from_runs(tl_runs, lo_runs), ALPHA, N_NULL, np.random.default_rng(rep))
        rejected += result.decision == "not supported"
    rate = rejected / reps
    assert _upper(rate, reps) if same_law else rate >= 0.9, f"same law {same_law}: rate {rate:.3f}"


def test_report_on_written_run_directories_matches_in_memory(tmp_path):
    """The synthetic runs written as run directories give the same claims as in memory."""
    from tlora_analysis.report import evaluate_claims

    design = Design(n_layers=2, dim=24, rank=4)
    rng = np.random.default_rng(3)
    w0 = _w0(design, rng)
    tl = tlora_run("t", 0, design, _gaussian_b(rng, design), w0=w0)
    lo = lora_copy_of(tl, "l", 1, design, noise=1.0, rng=rng)
    in_memory = evaluate_claims(tl, lo, n_null=200).claims
    on_disk = evaluate_claims(tl.write(tmp_path / "t"), lo.write(tmp_path / "l"), n_null=200).claims
    cols = ["claim_id", "decision", "estimate", "p_value"]
    assert in_memory[cols].equals(on_disk[cols])
