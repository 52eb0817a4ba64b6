"""Claims about TLoRA's own trained weights: Gaussian B (Fig. 4), stable norms (Fig. 5), α varying
across layers (Fig. 6). The last two are descriptive claims whose only honest yardstick is
run-to-run variation, so they need replicate runs (independent seeds) and are inconclusive
without them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from .. import analysis
from ..stats import fisher, icc_from_f, permutation_test
from .layerwise import holm_count, layer_calls, mean_with_interval
from .replicates import Arms
from .verdict import ClaimResult, decide_effect, decide_sameness, fmt, inconclusive

__all__ = ["gaussian_b", "stable_norms", "alpha_varies"]

_NEED_SEEDS = ("Needs replicate TLoRA runs (≥ 2 independent seeds: --tlora RUN RUN …, or a study folder) to "
               "compare it with run-to-run variation.")


def _b_normality(runs: list[Any], step: int, max_entries: int | None, seed: int) -> pd.DataFrame:
    frames = []
    for run in runs:
        kwargs = {"max_entries": max_entries} if max_entries else {}
        stats = analysis.distributions(run, matrices=("B",), steps=[step], seed=seed, **kwargs).stats
        frames.append(stats)
    return pd.concat(frames, ignore_index=True)


def gaussian_b(arms: Arms, alpha: float, seed: int) -> ClaimResult:
    result = ClaimResult(
        "gaussian_B", "TLoRA's B has Gaussian entries", "4",
        "Shapiro–Wilk per adapted matrix on B's r² entries (mean and variance fitted); estimate: mean excess "
        "kurtosis of B's entries", "B's entries i.i.d. normal with unknown mean and variance (Shapiro–Wilk's "
        "law at n = r², Royston's approximation)", "visual only: the histogram of layer 0 query 'looks Gaussian'",
        test="Fisher's rule over the per-matrix p-values")
    stats = _b_normality(arms.tlora, arms.step, None, seed)
    ok = stats[np.isfinite(stats["shapiro_pvalue"].to_numpy(float))]
    if ok.empty:
        return inconclusive(result, "B is constant (still zero?) in every layer at this step.")
    combined = fisher(ok["shapiro_pvalue"])
    result.p_value, result.n_units = combined.pvalue, combined.n
    result.decision = decide_sameness(combined.pvalue, alpha)
    result.estimate, result.ci_lo, result.ci_hi, over = mean_with_interval(ok, "excess_kurtosis", unit="run")
    result.layers = layer_calls(ok, "gaussian_B", "shapiro_stat", "shapiro_pvalue", alpha)
    result.test += f" (χ² on {2 * combined.n} df, X = {fmt(combined.statistic)}); interval: {over}"
    n = int(ok["n_sampled"].iloc[0])
    lora = _b_normality(arms.lora, arms.step, n, seed)
    lora_ok = lora[np.isfinite(lora["shapiro_pvalue"].to_numpy(float))]
    lora_text = (f"LoRA's B at the same sample size ({n} entries drawn at random per matrix): Fisher p = "
                 f"{fmt(fisher(lora_ok['shapiro_pvalue']).pvalue)}, mean excess kurtosis "
                 f"{fmt(float(lora_ok['excess_kurtosis'].mean()))}." if len(lora_ok) else "")
    result.detail = (f"Per matrix (Holm at α = {alpha:g}): {holm_count(result.layers)} reject normality; mean |skew| "
                     f"{fmt(float(ok['skew'].abs().mean()))}. {lora_text} Entries of one matrix are treated as a "
                     "sample; a matrix trained from zero by many small steps is expected to look Gaussian.")
    return result


def _mid_step(runs: list[Any], step: int) -> int | None:
    """The recorded step (common to all runs) nearest half-way through training, before ``step``."""
    common = set.intersection(*(set(r.steps) for r in runs))
    earlier = sorted(s for s in common if s < step)
    return min(earlier, key=lambda s: (abs(s - step / 2), s)) if earlier else None


def stable_norms(arms: Arms, alpha: float) -> ClaimResult:
    runs, step = arms.tlora, arms.step
    mid = _mid_step(runs, step)
    result = ClaimResult(
        "stable_norms", "TLoRA's update norms are stable over the second half of training", "5",
        f"log(‖ΔW‖_F(step {step}) / ‖ΔW‖_F(step {mid})) per matrix and run; estimate: the relative change "
        "exp(mean) − 1", "no change over the second half: each run's mean log change over the matrices has "
        "expectation 0 and varies from run to run as a normal variable (runs are independent seeds; each run's "
        "mid and final norms are paired)", "visual only: heatmaps of ‖B‖_F per layer and epoch",
        test="Student's one-sample t over the runs' mean log changes, two-sided")
    if mid is None:
        return inconclusive(result, f"No step before {step} is recorded by every run; record more snapshots.")
    rows = []
    for run in runs:
        table = analysis.norms(run, layers=arms.layers, steps=[mid, step])
        wide = table.pivot_table(index="layer", columns="step", values="fro_norm_dW", aggfunc="first")
        with np.errstate(divide="ignore"):
            rows.append(pd.DataFrame({"run": run.name, "layer": wide.index, "log_mid": np.log(wide[mid].to_numpy()),
                                      "log_end": np.log(wide[step].to_numpy())}))
    frame = pd.concat(rows, ignore_index=True)
    frame = frame[np.isfinite(frame["log_mid"].to_numpy(float)) & np.isfinite(frame["log_end"].to_numpy(float))]
    frame = frame.assign(log_change=frame["log_end"] - frame["log_mid"])
    if len(runs) >= 2:  # the matrices with a change in every run, so that the runs' means compare like with like
        frame = frame.groupby("layer").filter(lambda g: len(g) == len(runs))
    if frame.empty:
        return inconclusive(result, f"ΔW is zero at step {mid} in every layer (in some run).")
    mean, lo, hi, over = mean_with_interval(frame, "log_change", unit="run")
    result.estimate, result.ci_lo, result.ci_hi = (math.expm1(v) if np.isfinite(v) else v for v in (mean, lo, hi))
    result.n_units = len(frame)
    if len(runs) < 2:
        result.test += f"; interval: {over}"
        return inconclusive(result, _NEED_SEEDS)
    per_run = frame.groupby("run", sort=False)["log_change"].mean()
    with np.errstate(divide="ignore", invalid="ignore"):  # identical changes in every run: t = ±∞ or undefined
        test = scipy_stats.ttest_1samp(per_run.to_numpy(float), 0.0)
    result.p_value = float(test.pvalue)
    result.decision = decide_sameness(result.p_value, alpha)
    result.test += f" (t = {fmt(float(test.statistic))} on {len(per_run) - 1} df); interval: {over}"
    result.detail = (f"Mean log change per run: {', '.join(fmt(float(v)) for v in per_run)} over "
                     f"{frame['layer'].nunique()} matrices; mean |log change| per matrix "
                     f"{fmt(float(frame['log_change'].abs().mean()))}. Each run is compared with itself: how much "
                     f"runs differ in norm (seed to seed) does not enter, only how much their changes differ.")
    return result


def alpha_varies(arms: Arms, alpha: float, n_resamples: int, rng: np.random.Generator) -> ClaimResult:
    runs, step = arms.tlora, arms.step
    tables = [analysis.scaling(run, layers=arms.layers, steps=[step]).per_layer for run in runs]
    wide = pd.concat([t.set_index("layer")["alpha"].rename(i) for i, t in enumerate(tables)], axis=1).dropna()
    result = ClaimResult(
        "alpha_varies", "TLoRA's α differs across layers", "6",
        "α per adapted matrix and run; estimate: share of α's variance between matrices (intraclass correlation "
        "from the two-way layout matrix × run)",
        "no matrix effect: within each run, α's are exchangeable across matrices (matrix labels permuted within run)",
        "visual only: α heatmap per layer and epoch", test="permutation test of the between-matrix sum of squares")
    a = wide.to_numpy(float)
    n_layers, m = a.shape
    mean_alpha = a.mean(axis=1)
    cv = float(np.std(mean_alpha, ddof=1) / abs(mean_alpha.mean())) if n_layers > 1 and mean_alpha.mean() else math.nan
    fro_b = np.concatenate([t.set_index("layer").loc[wide.index, "fro_norm_B"].to_numpy(float) for t in tables])
    corr = float(np.corrcoef(a.T.ravel(), fro_b)[0, 1]) if a.size > 2 and np.ptp(a) > 0 and np.ptp(fro_b) > 0 else math.nan
    result.detail = (f"α ranges {fmt(float(a.min()))} to {fmt(float(a.max()))} (CV of the per-matrix mean across "
                     f"matrices {fmt(cv)}; α = 1 everywhere at initialisation). Only α·B enters ΔW, so the split "
                     f"between α and B depends on weight decay: corr(α, ‖B‖_F) = {fmt(corr)}.")
    result.n_units = a.size
    if m < 2 or n_layers < 2:
        return inconclusive(result, _NEED_SEEDS if m < 2 else "Needs two or more adapted matrices.")
    resid = a - a.mean(axis=1, keepdims=True) - a.mean(axis=0, keepdims=True) + a.mean()
    ss_layer = m * float(np.sum((mean_alpha - a.mean()) ** 2))
    ss_resid = float(np.sum(resid**2))
    df_layer, df_resid = n_layers - 1, (n_layers - 1) * (m - 1)
    f_stat = (ss_layer / df_layer) / (ss_resid / df_resid) if ss_resid > 0 else math.nan
    result.estimate, result.ci_lo, result.ci_hi = icc_from_f(f_stat, df_layer, df_resid, m)
    values = a.T.ravel()  # run-major: item (run s, matrix l)
    layer_ids, run_ids = np.tile(np.arange(n_layers), m), np.repeat(np.arange(m), n_layers)
    onehot = np.arange(n_layers)

    def between(lab: np.ndarray) -> np.ndarray:
        sums = np.einsum("pml,m->pl", (lab[:, :, None] == onehot).astype(np.float64), values)
        return np.sum((sums / m - values.mean()) ** 2, axis=1)

    test = permutation_test(layer_ids, run_ids, between, rng, n_resamples)
    result.p_value = test.pvalue
    result.decision = decide_effect(test.pvalue, alpha, test.min_pvalue)
    result.test += f"; F = {fmt(f_stat)} on ({df_layer}, {df_resid}) df; interval: exact F-based (normal errors)"
    if not np.isfinite(f_stat):
        return inconclusive(result, "α is identical in every run (no run-to-run variation to compare with).")
    return result
