"""Replicate experiments with known truth for each claim of the report, one call per replicate.

Each ``scenario`` function builds synthetic TLoRA/LoRA runs (:mod:`synthetic_runs`) for replicate
``rep`` and returns the decision(s) the report's claim code makes on them; ``arm_contrast`` draws two
arms' validation outputs and returns the p-values a study's contrasts give them. tests/test_calibration.py
checks the rates over a modest number of replicates; ``python tests/calibration_scenarios.py --reps
1000`` measures them more precisely (the table in docs/statistics.md).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))

from synthetic_runs import STEPS, Design, lora_copy_of, lora_run, orthonormal, tlora_run  # noqa: E402
from tlora_analysis import analysis  # noqa: E402
from tlora_analysis.experiments.metrics import compute_metrics, leave_one_out  # noqa: E402
from tlora_analysis.report.alignment import (  # noqa: E402
    cosine_merged_faithful, reachable_cosine, reachable_fraction, subspace_overlap, update_cosine,
)
from tlora_analysis.report.replicates import Arms  # noqa: E402
from tlora_analysis.report.spectra import eigen_updates  # noqa: E402
from tlora_analysis.report.weights import alpha_varies, gaussian_b, stable_norms  # noqa: E402
from tlora_analysis.stats import crossed_t, pseudo_values  # noqa: E402

ALPHA = 0.05
N_NULL = 200  # Monte-Carlo p-values (k + 1)/(N + 1) are valid for any N
END = STEPS[-1]
ALIGNMENT = ("update_cosine", "reachable_cosine", "reachable_fraction", "subspace_overlap")


def w0_for(design: Design, rng: np.random.Generator) -> dict:
    return {n: torch.as_tensor(rng.standard_normal((design.dim, design.dim)) / math.sqrt(design.dim))
            for n in design.names}


def gaussian_b_growth(rng: np.random.Generator, design: Design):
    finals = {n: rng.standard_normal((design.rank, design.rank)) for n in design.names}
    return lambda step, name: finals[name] * step / END


def rank_one_b_growth(rng: np.random.Generator, design: Design):
    finals = {n: np.outer(rng.standard_normal(design.rank), rng.standard_normal(design.rank)) for n in design.names}
    return lambda step, name: finals[name] * step / END


def independent_lora(rng: np.random.Generator, design: Design, rank_one: bool = False):
    r = 1 if rank_one else design.rank
    finals = {n: (rng.standard_normal((design.rank, design.dim)),
                  np.hstack([rng.standard_normal((design.dim, r)), np.zeros((design.dim, design.rank - r))]))
              for n in design.names}
    return lambda step, name: (finals[name][0], finals[name][1] * step / END)


def alignment_tables(tl, lo, seed: int, n_null: int = N_NULL) -> tuple:
    """Similarity and reachable tables at the last step; each replicate gets its own null draws (a fixed
    seed would measure the error rate given one set of draws, not the test's)."""
    sim = analysis.similarity(tl, lo, steps=[END], n_null=n_null, seed=seed).per_layer
    reach = analysis.reachable(tl, lo, steps=[END], n_null=n_null, seed=seed)
    return sim, reach


def alignment_decisions(sim, reach, with_merged: bool = False) -> dict[str, str]:
    out = {"update_cosine": update_cosine(sim, reach, ALPHA, N_NULL).decision,
           "reachable_cosine": reachable_cosine(reach, ALPHA, N_NULL).decision,
           "reachable_fraction": reachable_fraction(reach, ALPHA, N_NULL).decision,
           "subspace_overlap": subspace_overlap(reach, ALPHA, N_NULL).decision}
    if with_merged:
        out["cosine_merged_faithful"] = cosine_merged_faithful(sim, ALPHA, N_NULL, True).decision
    return out


# ---------------------------------------------------------------- one replicate per call
def independent_updates(rep: int, rank_one: bool = False, with_merged: bool = False) -> dict[str, str]:
    """TLoRA and LoRA trained independently (rank-one updates: the Beta law's failure case)."""
    design = Design()
    rng = np.random.default_rng([rep, int(rank_one)])
    w0 = w0_for(design, rng) if with_merged else {}
    b_at = rank_one_b_growth(rng, design) if rank_one else gaussian_b_growth(rng, design)
    tl = tlora_run("t", 2 * rep, design, b_at, w0=w0)
    lo = lora_run("l", 2 * rep + 1, design, independent_lora(rng, design, rank_one), w0=w0)
    return alignment_decisions(*alignment_tables(tl, lo, seed=rep), with_merged=with_merged)


def related_updates(rep: int, noise: float) -> dict[str, str]:
    """LoRA's update = TLoRA's (noise 0), or TLoRA's plus an independent update ``noise`` times as large."""
    design = Design()
    rng = np.random.default_rng([rep, 99])
    tl = tlora_run("t", 2 * rep, design, gaussian_b_growth(rng, design), w0={})
    lo = lora_copy_of(tl, "l", 2 * rep + 1, design, noise=noise, rng=rng)
    return alignment_decisions(*alignment_tables(tl, lo, seed=rep))


def seed_dependent_alignment(rep: int, spread: float, common: float = 0.0, pairs: int = 3) -> dict[str, str]:
    """``pairs`` seed pairs; in pair s LoRA's update is w_s times TLoRA's plus an independent one as large as TLoRA's,
    w_s = ``common`` + N(0, ``spread``²). With ``common`` 0 the seeds' alignments average 0 (some pairs aligned,
    others opposed): the null of the signed alignment claims, which a test pooling the pairs' layers rejects."""
    design = Design()
    rng = np.random.default_rng([rep, 17])
    sims, reaches = [], []
    for s in range(pairs):
        tl = tlora_run(f"t{s}", 2 * (pairs * rep + s), design, gaussian_b_growth(rng, design), w0={})
        lo = lora_copy_of(tl, f"l{s}", 2 * (pairs * rep + s) + 1, design, noise=1.0, rng=rng,
                          weight=common + spread * rng.standard_normal())
        sim, reach = alignment_tables(tl, lo, seed=pairs * rep + s)
        sims.append(sim)
        reaches.append(reach)
    sim, reach = pd.concat(sims, ignore_index=True), pd.concat(reaches, ignore_index=True)
    return {"update_cosine": update_cosine(sim, reach, ALPHA, N_NULL).decision,
            "reachable_cosine": reachable_cosine(reach, ALPHA, N_NULL).decision}


def tlora_arms(design: Design, b_for_seed, alpha_for_seed=None, seeds: int = 1) -> Arms:
    runs = [tlora_run(f"t{s}", s, design, b_for_seed(s), alpha_for_seed(s) if alpha_for_seed else None, w0={})
            for s in range(seeds)]
    lo = lora_run("l", 100, design, lambda step, name: (np.ones((design.rank, design.dim)),
                                                       np.ones((design.dim, design.rank)) * step), w0={})
    return Arms.from_runs(runs, [lo])


def b_entries(rep: int, tails: str) -> str:
    """B with normal entries, or Student-t entries with 2 degrees of freedom (heavy tails)."""
    design = Design(n_layers=3, dim=32, rank=8)
    rng = np.random.default_rng([rep, 5])
    finals = {n: rng.standard_normal((design.rank, design.rank)) if tails == "normal"
              else rng.standard_t(2, (design.rank, design.rank)) for n in design.names}
    arms = tlora_arms(design, lambda s: (lambda step, name: finals[name] * step / END))
    return gaussian_b(arms, ALPHA, seed=rep).decision


def norm_trajectories(rep: int, truth: str, seeds: int = 3) -> str:
    """Per seed and matrix a final norm with a 30% run-to-run spread; the mid-training norm equal to it
    up to 1% noise ("stable": no change in expectation, the claim's null), or 10% below it up to the
    same noise ("drifting": every run's norms grow by a tenth, less than the runs differ)."""
    design = Design(n_layers=3, dim=32, rank=4)
    rng = np.random.default_rng([rep, 11])
    scale = {(s, n): math.exp(0.3 * rng.standard_normal()) for s in range(seeds) for n in design.names}
    shape = {(s, n): rng.standard_normal((design.rank, design.rank)) for s in range(seeds) for n in design.names}
    jitter = {(s, n): 1 + 0.01 * rng.standard_normal() for s in range(seeds) for n in design.names}

    def mid_factor(s: int, name: str) -> float:
        return jitter[(s, name)] / (1.0 if truth == "stable" else 1.1)

    def b_for_seed(s: int):
        return lambda step, name: shape[(s, name)] * scale[(s, name)] * (1.0 if step == END else mid_factor(s, name))

    arms = tlora_arms(design, b_for_seed, seeds=seeds)
    return stable_norms(arms, ALPHA).decision


def alpha_layer_effect(rep: int, effect: float, seeds: int = 3) -> str:
    """α = 1 + (layer offset with SD ``effect``) + run-to-run noise with SD 0.05."""
    design = Design(n_layers=3, dim=32, rank=4)
    rng = np.random.default_rng([rep, 13])
    offset = {n: effect * rng.standard_normal() for n in design.names}
    noise = {(s, n): 0.05 * rng.standard_normal() for s in range(seeds) for n in design.names}
    b_at = gaussian_b_growth(rng, design)
    arms = tlora_arms(design, lambda s: b_at, lambda s: (lambda step, name: 1 + offset[name] + noise[(s, name)]),
                      seeds=seeds)
    return alpha_varies(arms, ALPHA, N_NULL, np.random.default_rng(rep)).decision


def update_spectra(rep: int, same_law: bool) -> str:
    """Both methods' updates Q₁ G Q₂ᵀ (G Gaussian, Q Haar), or LoRA's symmetric positive semi-definite."""
    design = Design(n_layers=3, dim=24, rank=4)
    rng = np.random.default_rng([rep, 17])

    def frozen(gen):
        return orthonormal(gen, design.dim, design.rank), orthonormal(gen, design.dim, design.rank).T

    tl_runs = [tlora_run(f"t{s}", s, design, gaussian_b_growth(rng, design), w0={}, frozen=frozen) for s in range(2)]

    def lora_factors():
        finals = {}
        for n in design.names:
            q1, q2 = orthonormal(rng, design.dim, design.rank), orthonormal(rng, design.dim, design.rank)
            g = rng.standard_normal((design.rank, design.rank))
            finals[n] = (q2.T, q1 @ g) if same_law else (g.T @ q1.T, q1 @ g)
        return lambda step, name: (finals[name][0], finals[name][1] * step / END)

    lo_runs = [lora_run(f"l{s}", 10 + s, design, lora_factors(), w0={}) for s in range(2)]
    return eigen_updates(Arms.from_runs(tl_runs, lo_runs), ALPHA, N_NULL, np.random.default_rng(rep)).decision


def arm_contrast(rep: int, example_sd: float, seed_sd: float, shift: float = 0.0, metric: str = "accuracy",
                 seeds: int = 3, examples: int = 400) -> tuple[float, float]:
    """Two arms scored on one validation split drawn afresh from a task's examples; (p over seeds × examples,
    p of the paired t over seeds) for the difference of their final ``metric``.

    Example i of a binary task is answered right by arm m, seed s iff 0.8 + z_i + u_mi + g_s + h_ms + e_msi > 0
    (+ ``shift`` for the first arm): z the example's difficulty, u_mi ~ N(0, ``example_sd``) which examples suit
    which arm, g_s ~ N(0, 0.3) a seed's effect on both arms (the head, the batch order), h_ms ~ N(0, ``seed_sd``)
    on one arm, e ~ N(0, 1). With shift 0 the arms are exchangeable, so their expected difference on the task is 0.
    """
    rng = np.random.default_rng(rep)
    difficulty, labels = rng.standard_normal(examples), rng.integers(0, 2, examples)
    suits, both = rng.normal(0, example_sd, (2, examples)), rng.normal(0, 0.3, seeds)
    own = rng.normal(0, seed_sd, (2, seeds))
    finals, values = np.zeros((2, seeds)), np.zeros((2, seeds, examples))
    for m in range(2):
        for s in range(seeds):
            right = 0.8 + (shift if m == 0 else 0) + difficulty + suits[m] + both[s] + own[m, s] \
                + rng.standard_normal(examples) > 0
            predicted = np.where(right, labels, 1 - labels)
            logits = np.stack([1.0 - predicted, predicted.astype(float)], axis=1)
            finals[m, s] = compute_metrics(labels, logits, False, 2)[metric]
            values[m, s] = pseudo_values(finals[m, s], leave_one_out(labels, logits, False, metric, 2))
    differences = finals[0] - finals[1]
    paired = float(stats.ttest_1samp(differences, 0.0).pvalue) if np.ptp(differences) > 0 else math.nan  # as contrasts
    return crossed_t(differences, values[0] - values[1]).p_value, paired


# ---------------------------------------------------------------- the rates table
SCENARIOS = ("alignment", "related", "seed_alignment", "gaussian_B", "stable_norms", "alpha_varies", "eigen_updates",
             "arm_contrast")
CONTRAST_SETTINGS = ((0.0, 0.3, "seeds only"), (0.5, 0.1, "seeds and examples"), (1.5, 0.0, "mostly examples"))


def _rates(reps: int, only: tuple[str, ...] = SCENARIOS) -> None:
    def rate(label: str, truth: str, outcomes: list[bool]) -> None:
        print(f"{label:<24} {truth:<48} {np.mean(outcomes):.3f}  (n = {len(outcomes)})", flush=True)

    if "alignment" in only:
        for rank_one in (False, True):
            runs = [independent_updates(rep, rank_one, with_merged=not rank_one) for rep in range(reps)]
            for claim in (*ALIGNMENT, *(() if rank_one else ("cosine_merged_faithful",))):
                rate(claim, f"independent, {'rank-one' if rank_one else 'Gaussian'} updates: supported",
                     [r[claim] == "supported" for r in runs])
    if "related" in only:
        for noise in (0.0, 1.0):
            runs = [related_updates(rep, noise) for rep in range(max(reps // 10, 10))]
            for claim in ALIGNMENT:
                rate(claim, f"LoRA = TLoRA + {noise:g}× independent: supported", [r[claim] == "supported" for r in runs])
    if "seed_alignment" in only:
        for spread, common, truth in ((0.03, 0.0, "mean 0, SD 0.03"), (0.0, 0.03, "0.03 in every pair")):
            runs = [seed_dependent_alignment(rep, spread, common) for rep in range(reps)]
            for claim in ("update_cosine", "reachable_cosine"):
                rate(claim, f"3 pairs, alignment weight {truth}: supported", [r[claim] == "supported" for r in runs])
    if "gaussian_B" in only:
        for tails in ("normal", "t2"):
            rate("gaussian_B", f"{tails} entries: not supported",
                 [b_entries(rep, tails) == "not supported" for rep in range(reps)])
    if "stable_norms" in only:
        for truth in ("stable", "drifting"):
            rate("stable_norms", f"{truth}, 3 seeds: not supported",
                 [norm_trajectories(rep, truth) == "not supported" for rep in range(reps)])
    if "alpha_varies" in only:
        for effect in (0.0, 0.2):
            rate("alpha_varies", f"layer effect SD {effect:g}, noise SD 0.05: supported",
                 [alpha_layer_effect(rep, effect) == "supported" for rep in range(reps)])
    if "arm_contrast" in only:
        for metric in ("accuracy", "mcc"):
            for example_sd, seed_sd, what in CONTRAST_SETTINGS:
                runs = np.array([arm_contrast(rep, example_sd, seed_sd, metric=metric) for rep in range(reps)])
                for label, column in (("contrast, seeds × ex.", 0), ("contrast, paired t", 1)):
                    rate(label, f"{metric}, {what}, no difference: p < α", list(runs[:, column] < ALPHA))
        for example_sd, seed_sd, what in CONTRAST_SETTINGS[1:]:
            runs = np.array([arm_contrast(rep, example_sd, seed_sd, shift=0.3) for rep in range(reps)])
            for label, column in (("contrast, seeds × ex.", 0), ("contrast, paired t", 1)):
                rate(label, f"accuracy, {what}, first arm +0.3: p < α", list(runs[:, column] < ALPHA))
    if "eigen_updates" in only:
        for same in (True, False):
            rate("eigen_updates", f"{'same' if same else 'different'} spectral law: not supported",
                 [update_spectra(rep, same) == "not supported" for rep in range(reps)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Rates of each claim's decisions over replicate synthetic runs.")
    parser.add_argument("--reps", type=int, default=1000, help="replicates per scenario (default 1000)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), help="scenarios to run")
    args = parser.parse_args()
    start = time.time()
    print(f"{'claim':<24} {'truth: decision counted':<48} rate")
    _rates(args.reps, tuple(args.only))
    print(f"α = {ALPHA}, {N_NULL} null draws or permutations per test; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
