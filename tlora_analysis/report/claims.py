"""The paper's claims checked on a TLoRA run and a LoRA run, each against a null baseline.

One row per claim: the statistic, our value, the null baseline, a plain verdict, and the
paper's own number where it gave one (shared/PAPER.md). Every number is a summary across
layers (median, range, count) of a table that :mod:`tlora_analysis.analysis` produced; the
two-sample KS distances between eigenvalue sets are the only tests computed here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from .. import analysis
from ..analysis.distributions import entry_statistics

__all__ = ["Claim", "CLAIM_COLUMNS", "evaluate_claims", "STABLE_CHANGE", "ALPHA_CV_VARIES"]

CLAIM_COLUMNS = ("claim", "figure", "statistic", "value", "null_baseline", "verdict", "paper")
STABLE_CHANGE = 0.10  # relative change of ‖ΔW‖_F over the second half of training called "stable"
ALPHA_CV_VARIES = 0.01  # coefficient of variation of α across layers called "varies"
_GAUSSIAN_DRAWS = 200


@dataclass(frozen=True)
class Claim:
    """One row of the claims table."""

    claim: str
    figure: str
    statistic: str
    value: str
    null_baseline: str
    verdict: str
    paper: str


def _median(values: Any) -> float:
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    return float(np.median(arr)) if arr.size else math.nan


def _fmt(x: float, spec: str = ".3f") -> str:
    return "n/a" if x is None or not np.isfinite(x) else format(x, spec)


def _common_last_step(run_a: Any, run_b: Any) -> int:
    common = sorted(set(run_a.steps) & set(run_b.steps))
    if not common:
        raise ValueError(f"runs {run_a.name!r} and {run_b.name!r} share no recorded step; record them on one schedule")
    return common[-1]


# ------------------------------------------------------------------ claim 1: Gaussian-like B
def _gaussian_ks_bound(n: int, seed: int = 0) -> float:
    """95th percentile of the KS distance (to a fitted normal) of Gaussian samples of size ``n``."""
    rng = np.random.default_rng(seed)
    draws = [entry_statistics(rng.standard_normal(n), n, 5000, rng)["ks_stat"] for _ in range(_GAUSSIAN_DRAWS)]
    return float(np.nanpercentile(draws, 95))


def gaussian_b(run_tlora: Any, run_lora: Any, step: int) -> Claim:
    st = analysis.distributions(run_tlora, matrices=("B",), steps=[step]).stats
    sl = analysis.distributions(run_lora, matrices=("B",), steps=[step]).stats
    d_t, d_l = _median(st["ks_stat"]), _median(sl["ks_stat"])
    kurt = _median(np.abs(st["excess_kurtosis"]))
    n = int(np.median(st["n_sampled"]))
    bound = _gaussian_ks_bound(n) if n >= 3 else math.nan
    if not np.isfinite(d_t):
        verdict = "undetermined: B is constant (e.g. still zero) in every layer"
    elif d_t <= bound:
        verdict = (f"Gaussian-like: the typical KS distance is within what Gaussian samples of {n} entries give. "
                   f"Expected for any matrix trained from zero by many small steps; LoRA's B has D = {_fmt(d_l)}")
    else:
        verdict = (f"not Gaussian at this sample size: KS distance above the 95% level of Gaussian samples "
                   f"of {n} entries (LoRA's B: D = {_fmt(d_l)})")
    return Claim("B's entries look Gaussian", "4",
                 "median over layers of the KS distance of B's entries to a fitted normal (median |excess kurtosis|)",
                 f"D = {_fmt(d_t)} (|ex. kurt| {_fmt(kurt, '.2f')}), {len(st)} layers",
                 f"Gaussian samples of {n} entries: D ≤ {_fmt(bound)} (95%); LoRA B: D = {_fmt(d_l)}",
                 verdict, "visual only: histogram of layer 0 query 'looks Gaussian'")


# ------------------------------------------------------------------ claim 2: stable norms
def _second_half_change(run: Any, step: int) -> tuple[float, int, int]:
    # The recorded step nearest half-way through training (not the median snapshot: log-spaced
    # schedules put most snapshots early).
    earlier = [s for s in run.steps if s < step] or [step]
    mid = min(earlier, key=lambda s: (abs(s - step / 2), s))
    table = analysis.norms(run, steps=sorted({mid, step}))
    wide = table.pivot_table(index="layer", columns="step", values="fro_norm_dW", aggfunc="first")
    last = wide[step]
    change = (last - wide[mid]).abs() / last.where(last > 0)
    return _median(change), mid, len(wide)


def stable_norms(run_tlora: Any, run_lora: Any, step: int) -> Claim:
    c_t, mid, n_layers = _second_half_change(run_tlora, step)
    c_l, _, _ = _second_half_change(run_lora, step)
    if not np.isfinite(c_t):
        verdict = "undetermined: ΔW is zero at the last step"
    elif c_t <= STABLE_CHANGE:
        verdict = f"stable: ‖ΔW‖_F moved by less than {STABLE_CHANGE:.0%} over the second half of training"
    else:
        verdict = f"not yet stable: ‖ΔW‖_F still changed by {c_t:.0%} over the second half of training"
    return Claim("update norms are stable over training", "5, 7",
                 f"median over layers of |‖ΔW‖_F(step {step}) − ‖ΔW‖_F(step {mid})| / ‖ΔW‖_F(step {step})",
                 f"{_fmt(c_t)} ({n_layers} layers)", f"same for the LoRA run: {_fmt(c_l)}", verdict,
                 "visual only: heatmaps of ‖B‖ (Frobenius) and spectral norms")


# ------------------------------------------------------------------ claim 3: α varies
def alpha_varies(run_tlora: Any, step: int) -> Claim:
    across = analysis.scaling(run_tlora, steps=[step]).across_layers
    row = across[across["module"] == "all"].iloc[0]
    cv, rng_, corr = float(row["alpha_cv"]), float(row["alpha_range"]), float(row["corr_alpha_fro_norm_B"])
    if not np.isfinite(cv):
        verdict = "undetermined (fewer than two layers or α = 0)"
    elif cv > ALPHA_CV_VARIES:
        verdict = (f"varies across layers (CV {cv:.1%}); but only α·B is identifiable, so the split between α "
                   f"and B depends on weight decay (corr(α, ‖B‖_F) = {_fmt(corr, '.2f')})")
    else:
        verdict = f"barely varies: CV {cv:.2%} ≤ {ALPHA_CV_VARIES:.0%}"
    return Claim("α differs across layers", "6",
                 f"coefficient of variation of α across {int(row['n_layers'])} layers at step {step} (range)",
                 f"CV {_fmt(cv)} (range {_fmt(rng_, '.3g')}, {_fmt(float(row['alpha_min']), '.3g')}–"
                 f"{_fmt(float(row['alpha_max']), '.3g')})",
                 "initialisation: α = 1 in every layer (CV 0, range 0)", verdict,
                 "visual only: α heatmap per layer and epoch")


# ------------------------------------------------------------------ claim 4: eigenvalues resemble
def _square(run_a: Any, run_b: Any) -> list[str]:
    return [n for n in run_a.layers if n in set(run_b.layers) and run_a.layer_shapes[n][0] == run_a.layer_shapes[n][1]]


def _ks2(a: pd.Series, b: pd.Series) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(sps.ks_2samp(a, b).statistic) if a.size and b.size else math.nan


def eigen_merged(run_tlora: Any, run_lora: Any, step: int) -> Claim:
    name = "eigenvalue spectra resemble (paper-faithful, merged weights)"
    stat = "two-sample KS distance between the real parts of eig(W0 + ΔWᵀ), TLoRA vs LoRA, pooled over square layers"
    paper = "visual only: KDEs of positive and negative eigenvalues 'similar'"
    layers = _square(run_tlora, run_lora)
    if not (run_tlora.has_base_weights and run_lora.has_base_weights) or not layers:
        return Claim(name, "8", stat, "n/a", "n/a", "not computed: needs square layers and runs that stored W0 "
                     "(store_base_weights=True)", paper)
    first = min(set(run_tlora.steps) & set(run_lora.steps))

    def merged(run, at):
        return analysis.merged_eigenvalues(run, layers=layers, steps=[at], paper_faithful=True)["eig_real"]

    d = _ks2(merged(run_tlora, step), merged(run_lora, step))
    d_w0 = _ks2(merged(run_tlora, step), merged(run_tlora, first))
    verdict = (f"they resemble (D = {_fmt(d)}), but TLoRA's merged spectrum is as close to W0's own (D = {_fmt(d_w0)}): "
               f"the resemblance is W0's, not the updates'" if d <= max(d_w0, 1e-12) * 1.5 + 0.02 else
               f"they differ more (D = {_fmt(d)}) than TLoRA differs from W0 (D = {_fmt(d_w0)})")
    return Claim(name, "8", stat, f"D = {_fmt(d)} ({len(layers)} layers, step {step})",
                 f"TLoRA merged vs W0 alone (step {first}): D = {_fmt(d_w0)}", verdict, paper)


def eigen_updates(run_tlora: Any, run_lora: Any, step: int, null_runs: Sequence[Any]) -> Claim:
    name = "eigenvalue spectra resemble (corrected, the updates ΔW)"
    layers = _square(run_tlora, run_lora)
    stat = "two-sample KS distance between |λ(ΔW)|, TLoRA vs LoRA, pooled over square layers"
    if not layers:
        return Claim(name, "8", stat, "n/a", "n/a", "not computed: no square layer", "none (paper used merged weights)")

    def mods(run):
        return analysis.eigenvalues(run, layers=layers, steps=[step])["eig_abs"]

    d = _ks2(mods(run_tlora), mods(run_lora))
    if len(null_runs) >= 2 and all(step in r.steps for r in null_runs[:2]):
        d_null = _ks2(mods(null_runs[0]), mods(null_runs[1]))
        null = f"two null runs ({null_runs[0].name}, {null_runs[1].name}): D = {_fmt(d_null)}"
        verdict = ("no more alike than independent runs" if d >= d_null else
                   "more alike than two independent runs") + f" (D = {_fmt(d)} vs {_fmt(d_null)})"
    else:
        null = "none: pass two or more null runs (--null) for a run-to-run baseline"
        verdict = f"D = {_fmt(d)}; without null runs there is no baseline to judge it against"
    return Claim(name, "8 (corrected)", stat, f"D = {_fmt(d)} ({len(layers)} layers, step {step})", null, verdict,
                 "none (paper used merged weights)")


# ------------------------------------------------------------------ claims 5, 6: cosine and subspace overlap
def _against_null(per: pd.DataFrame, col: str) -> tuple[float, float, float, float, int, int]:
    obs = per[col].to_numpy(float)
    ok = np.isfinite(obs)
    above = int(np.sum(obs[ok] > per[f"null_hi_{col}"].to_numpy(float)[ok]))
    return (_median(obs), _median(per[f"null_mean_{col}"]), _median(per[f"null_lo_{col}"]),
            _median(per[f"null_hi_{col}"]), above, int(ok.sum()))


def _null_draws(per: pd.DataFrame) -> int:
    return int(per["n_null"].min()) if "n_null" in per and per["n_null"].notna().any() else 0


def _null_text(per: pd.DataFrame, mean: float, lo: float, hi: float) -> str:
    kind = {"runs": "independent-seed null runs", "random": "norm-matched random updates"}.get(
        str(per["null_kind"].iloc[0]), str(per["null_kind"].iloc[0]))
    return f"{kind} ({_null_draws(per)} draws per layer): median {_fmt(mean)} (95% band {_fmt(lo)} to {_fmt(hi)})"


def _caveat(per: pd.DataFrame) -> str:
    n = _null_draws(per)
    return f"; the null has only {n} draw(s) per layer, too few for a band: add null runs" if n < 5 else ""


def cosine_claims(sim: Any) -> list[Claim]:
    per = sim.per_layer
    step = int(per["step"].max())
    per = per[per["step"] == step]
    out = []
    med, n_mean, n_lo, n_hi, above, n = _against_null(per, "cosine_merged_paper")
    paper = "0.91–0.99 per layer (merged weights)"
    stat = "median over layers of the paper-faithful cosine of merged weights W0 + ΔWᵀ (min–max)"
    if n == 0:
        out.append(Claim("TLoRA and LoRA weights are similar (paper-faithful cosine)", "10", stat, "n/a", "n/a",
                         "not computed: needs runs that stored W0 (store_base_weights=True)", paper))
    else:
        rng_ = f"{_fmt(float(per['cosine_merged_paper'].min()), '.3f')}–{_fmt(float(per['cosine_merged_paper'].max()), '.3f')}"
        verdict = (f"high as in the paper, but the null is just as high ({above}/{n} layers above its band): the "
                   f"shared W0 makes merged weights alike for any small updates; this says nothing about the updates"
                   if above < n / 2 else f"above the null in {above}/{n} layers") + _caveat(per)
        out.append(Claim("TLoRA and LoRA weights are similar (paper-faithful cosine)", "10", stat,
                         f"{_fmt(med)} ({rng_}), {n} layers", _null_text(per, n_mean, n_lo, n_hi), verdict, paper))
    med, n_mean, n_lo, n_hi, above, n = _against_null(per, "cosine_dW")
    verdict = (f"the updates point in similar directions: {above}/{n} layers above the null band"
               if above > n / 2 else f"the updates are no more aligned than the null in most layers "
                                     f"({above}/{n} above its band)")
    verdict += _caveat(per)
    out.append(Claim("TLoRA and LoRA learn similar updates (corrected cosine)", "10 (corrected)",
                     "median over layers of cos(ΔW_TLoRA, ΔW_LoRA)", f"{_fmt(med)}, {n} layers",
                     _null_text(per, n_mean, n_lo, n_hi), verdict, "none (paper measured merged weights)"))
    med, n_mean, n_lo, n_hi, above, n = _against_null(per, "phi_rr")
    verdict = (f"the updates share a subspace beyond chance in {above}/{n} layers" if above > n / 2 else
               f"subspace overlap at chance level in most layers ({above}/{n} above the null band)")
    verdict += _caveat(per)
    out.append(Claim("TLoRA and LoRA updates span overlapping subspaces", "new",
                     "median over layers of φ(r, r) = ‖U_TLoRAᵀ U_LoRA‖²_F / r (top singular directions)",
                     f"{_fmt(med)}, {n} layers", _null_text(per, n_mean, n_lo, n_hi), verdict, "none"))
    return out


def evaluate_claims(run_tlora: Any, run_lora: Any, null_runs: Sequence[Any] = (), n_null: int = 100,
                    seed: int = 0) -> pd.DataFrame:
    """The claims table (columns :data:`CLAIM_COLUMNS`) at the last step both runs recorded."""
    if run_tlora.method != "tlora":
        raise ValueError(f"the first run must be a TLoRA run; {run_tlora.name!r} is {run_tlora.method!r}")
    if run_lora.method != "lora":
        raise ValueError(f"the second run must be a LoRA run; {run_lora.name!r} is {run_lora.method!r}")
    null_runs = list(null_runs)
    if len(null_runs) == 1:
        raise ValueError("give at least two null runs (the null compares pairs of them), or none for random nulls")
    step = _common_last_step(run_tlora, run_lora)
    sim = analysis.similarity(run_tlora, run_lora, steps=[step], null_runs=null_runs or None, n_null=n_null,
                              seed=seed)
    claims = [gaussian_b(run_tlora, run_lora, step), stable_norms(run_tlora, run_lora, step),
              alpha_varies(run_tlora, step), eigen_merged(run_tlora, run_lora, step),
              eigen_updates(run_tlora, run_lora, step, null_runs), *cosine_claims(sim)]
    return pd.DataFrame([asdict(c) for c in claims], columns=list(CLAIM_COLUMNS))
