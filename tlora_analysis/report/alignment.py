"""Claims that compare TLoRA's and LoRA's updates directly: cosines, TLoRA's reachable set, φ.

Each is a per-layer upper-tail test ("more alike than unrelated updates"). Within a replicate
pair the layers' z-scores are combined by Stouffer's rule, one-sided; with two or more pairs the
decision is the random-effects test over the pairs' Z (the claim is about the method, so a seed
is the unit), with the pooled fixed-effect Stouffer test of these runs beside it. Σz² against χ²
(departures in either direction) and Holm-corrected per-layer calls are reported too. The per-layer
statistics and p-values come from :func:`~tlora_analysis.analysis.similarity` (the Haar null)
and :func:`~tlora_analysis.analysis.reachable` (the method-aware null).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..stats import chi2_sum, random_effects, stouffer
from .layerwise import holm_count, layer_calls, mean_with_interval, value_range
from .verdict import ClaimResult, decide_effect, fmt, inconclusive

__all__ = ["update_cosine", "reachable_cosine", "reachable_fraction", "subspace_overlap", "cosine_merged_faithful"]


def _directional(result: ClaimResult, frame: pd.DataFrame, value: str, p_col: str, z_col: str, alpha: float,
                 estimate: str | None = None) -> ClaimResult:
    """Fill ``result`` from per-(pair, layer) rows: Stouffer p, decision, estimate and interval, calls."""
    ok = frame[np.isfinite(frame[z_col].to_numpy(float))]
    if ok.empty:
        return inconclusive(result, "No layer has a defined statistic (an update is still zero at this step); "
                                    "compare runs after training.")
    pooled, both_ways = stouffer(ok[z_col]), chi2_sum(ok[z_col])
    pairs = ok.groupby("run_a", sort=False)[z_col].apply(lambda z: stouffer(z).statistic)
    if len(pairs) >= 2:
        combined = random_effects(pairs)
        combined_text = (f"each pair's Stouffer Z over its layers ({', '.join(fmt(z) for z in pairs)}), random "
                         f"effects over the {combined.n} pairs: Hartung–Knapp t = {fmt(combined.statistic)} on "
                         f"{combined.n - 1} df (one-sided); these runs pooled (fixed effect): Stouffer Z = "
                         f"{fmt(pooled.statistic)} over {pooled.n} layer tests, p = {fmt(pooled.pvalue)}")
    else:
        combined = pooled
        combined_text = (f"Stouffer Z = {fmt(pooled.statistic)} over {pooled.n} layer tests (one-sided) of one pair "
                         "of runs: a statement about these runs; replicate pairs (seeds) make it one about the method")
    result.p_value, result.n_units = combined.pvalue, combined.n
    result.decision = decide_effect(combined.pvalue, alpha)
    result.estimate, result.ci_lo, result.ci_hi, over = mean_with_interval(ok, estimate or value)
    result.layers = layer_calls(ok, result.claim_id, value, p_col, alpha)
    result.test = f"{result.test}; {combined_text}; interval: {over}"
    result.detail = (f"Either direction: Σz² = {fmt(both_ways.statistic)} on {both_ways.n} df, p = "
                     f"{fmt(both_ways.pvalue)}. Per layer (Holm at α = {alpha:g}): {holm_count(result.layers)} "
                     f"above the null; values {value_range(ok, value)}. " + result.detail)
    return result


def update_cosine(sim: pd.DataFrame, reach: pd.DataFrame, alpha: float, n_null: int) -> ClaimResult:
    result = ClaimResult(
        "update_cosine", "TLoRA and LoRA learn similar updates (cosine of the updates ΔW)", "10 (corrected)",
        "cos(ΔW_TLoRA, ΔW_LoRA) per layer; estimate: its mean over layers",
        f"unconstrained (Haar): ΔW_TLoRA with its singular values and uniformly random singular vectors; "
        f"E cos = 0, Var cos = 1/(out·in); {n_null} exact draws per layer",
        "none (the paper measured merged weights)", test="upper-tail Monte-Carlo p per layer")
    if len(reach):
        result.detail = (f"TLoRA can only move inside its reachable set: the largest cosine any TLoRA update could "
                         f"have with LoRA's is √f = {value_range(reach, 'max_cosine')} (see reachable_fraction); "
                         f"within that set see reachable_cosine.")
    return _directional(result, sim, "cosine_dW", "p_cosine_dW", "z_cosine_dW", alpha)


def reachable_cosine(reach: pd.DataFrame, alpha: float, n_null: int) -> ClaimResult:
    dims = sorted(set((reach["reach_dim_out"] * reach["reach_dim_in"]).astype(int))) if len(reach) else []
    result = ClaimResult(
        "reachable_cosine", "Inside the subspace TLoRA can reach, its update aligns with LoRA's", "new",
        "c_S = cos(ΔW_TLoRA, P_S(ΔW_LoRA)) per layer, S = {Q_C M Q_Aᵀ} fixed by the run's frozen A, C; "
        "estimate: mean over layers",
        f"method-aware: the run's own A and C kept; inside S (dim {', '.join(map(str, dims)) or 'r²'}) ΔW_TLoRA keeps "
        f"its singular values and gets uniformly random singular vectors: E c_S = 0, Var c_S = 1/dim; {n_null} exact "
        "draws per layer", "none", test="upper-tail Monte-Carlo p per layer")
    result.detail = ("cos(ΔW_TLoRA, ΔW_LoRA) = c_S·√f exactly, so this is the cosine test conditioned on what "
                     "TLoRA's frozen factors allow.")
    return _directional(result, reach, "cosine_reachable", "p_cosine_reachable", "z_cosine_reachable", alpha)


def reachable_fraction(reach: pd.DataFrame, alpha: float, n_null: int) -> ClaimResult:
    frame = reach.assign(enrichment=reach["reachable_fraction"] / reach["null_mean_reachable_fraction"])
    result = ClaimResult(
        "reachable_fraction", "LoRA's update lies in TLoRA's reachable set more than chance", "new",
        "f = ‖P_C ΔW_LoRA P_A‖²_F / ‖ΔW_LoRA‖²_F per layer; estimate: mean of f / E f (1 = chance)",
        f"col(A) and col(Cᵀ) uniformly random and unrelated to LoRA's update: E f = r²/(out·in); {n_null} exact "
        "draws per layer", "none", test="upper-tail Monte-Carlo p per layer")
    if len(frame):
        result.detail = (f"f ranges {value_range(frame, 'reachable_fraction')} (null mean "
                         f"{value_range(frame, 'null_mean_reachable_fraction')}); the largest cosine TLoRA could "
                         f"reach, √f, {value_range(frame, 'max_cosine')}.")
    return _directional(result, frame, "reachable_fraction", "p_reachable_fraction", "z_reachable_fraction", alpha,
                        estimate="enrichment")


def subspace_overlap(reach: pd.DataFrame, alpha: float, n_null: int) -> ClaimResult:
    sides = []
    for side, name in (("out", "output side, col(Cᵀ)"), ("in", "input side, col(A)")):
        part = reach.assign(side=side, overlap=reach[f"overlap_{side}"],
                            enrichment=reach[f"overlap_{side}"] / reach[f"null_mean_overlap_{side}"],
                            p_overlap=reach[f"p_overlap_{side}"], z_overlap=reach[f"z_overlap_{side}"])
        sides.append((part, name))
    frame = pd.concat([p for p, _ in sides], ignore_index=True)
    result = ClaimResult(
        "subspace_overlap", "TLoRA's and LoRA's updates span overlapping subspaces", "new (the LoRA paper's φ)",
        "φ = ‖Q_Tᵀ U_LoRA‖²_F / min(r, k) between LoRA's top-k singular subspaces and TLoRA's fixed col(Cᵀ) "
        "(output) and col(A) (input), per layer and side; estimate: mean of φ / E φ (1 = chance)",
        f"uniformly random subspaces: E φ = max(r, k)/d; {n_null} exact draws per layer",
        "none", test="upper-tail Monte-Carlo p per layer and side")
    parts = [f"{name}: mean φ/Eφ {fmt(float(np.nanmean(p['enrichment'].to_numpy(float))))}" for p, name in sides]
    result.detail = ("By construction TLoRA's singular subspaces are col(Cᵀ) and col(A), fixed at initialisation "
                     "whatever B learns: φ between TLoRA and another method measures where that method's update "
                     "lies relative to TLoRA's frozen random projections, not what TLoRA learned. "
                     + "; ".join(parts) + ".")
    return _directional(result, frame, "overlap", "p_overlap", "z_overlap", alpha, estimate="enrichment")


def cosine_merged_faithful(sim: pd.DataFrame, alpha: float, n_null: int, has_base_weights: bool) -> ClaimResult:
    result = ClaimResult(
        "cosine_merged_faithful", "TLoRA and LoRA weights are similar (paper-faithful: cosine of merged weights)",
        "10", "cos(W0 + ΔW_TLoRAᵀ, W0 + (ΔW_LoRA / s)ᵀ) per layer, the paper's construction (update transposed, "
        "LoRA's scale s dropped); estimate: mean over layers",
        f"ΔW_LoRA replaced by an update with its singular values and uniformly random singular vectors; {n_null} "
        "exact draws per layer", "0.91–0.99 per layer (merged weights)", test="upper-tail Monte-Carlo p per layer")
    if not has_base_weights:
        return inconclusive(result, "Needs W0: record the runs with store_base_weights=True, or "
                                   "give the base model they reference (--base-model / base_model=).")
    finite = sim[np.isfinite(sim["null_mean_cosine_merged_paper"].to_numpy(float))]
    if len(finite):
        result.detail = (f"The null's mean is {value_range(finite, 'null_mean_cosine_merged_paper')}: the shared W0 "
                         "puts the merged cosine near 1 for any two small updates, so its size says nothing about "
                         "the updates; only its excess over the null does.")
    return _directional(result, sim, "cosine_merged_paper", "p_cosine_merged_paper", "z_cosine_merged_paper", alpha)
