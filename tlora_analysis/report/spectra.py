"""Claims that TLoRA's and LoRA's eigenvalue spectra resemble (Fig. 8): of the merged weights, as
the paper computed them, and of the updates, scale-free.

Eigenvalues within a matrix are not independent draws, so no two-sample test applies to the
pooled eigenvalues directly. The test here keeps each matrix's spectrum whole: under "the
methods' spectra are alike", which run is TLoRA and which is LoRA is exchangeable within each
adapted matrix, so the pooled two-sample KS distance is compared with its value under every
(or 2,000+ random) within-matrix relabelling. The interval is a basic bootstrap over matrices
(distances are biased upward, so it may lie below the estimate), clipped to [0, 1].
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from .. import analysis
from ..stats import bootstrap_interval, ks_by_labels, permutation_test
from .replicates import Arms
from .verdict import ClaimResult, decide_sameness, fmt, inconclusive

__all__ = ["eigen_updates", "eigen_merged_faithful"]

ValuesOf = Callable[[Any], pd.DataFrame]  # run → rows with "layer" and "value"


class _Spectra:
    """One value array per (run, matrix): the items the permutation test relabels."""

    def __init__(self, arms: Arms, values_of: ValuesOf) -> None:
        layers = arms.square_layers()
        self.block_of = {name: i for i, name in enumerate(layers)}
        self.items: list[np.ndarray] = []
        labels, blocks = [], []
        for label, runs in ((1, arms.tlora), (0, arms.lora)):
            for run in runs:
                frame = values_of(run)
                for name in layers:
                    self.items.append(frame.loc[frame["layer"] == name, "value"].to_numpy(float))
                    labels.append(label)
                    blocks.append(self.block_of[name])
        self.labels, self.blocks = np.array(labels), np.array(blocks)
        self.values = np.concatenate(self.items) if self.items else np.array([])
        self.owners = np.repeat(np.arange(len(self.items)), [v.size for v in self.items])

    def distance(self, labels: np.ndarray) -> np.ndarray:
        return ks_by_labels(self.values, self.owners, labels)

    def test(self, rng: np.random.Generator, n_resamples: int):
        return permutation_test(self.labels, self.blocks, self.distance, rng, n_resamples)

    def interval(self, rng: np.random.Generator, n_resamples: int) -> tuple[float, float]:
        """Basic bootstrap interval of the distance over matrices (blocks resampled with replacement)."""
        n_blocks = len(self.block_of)
        members = [np.flatnonzero(self.blocks == b) for b in range(n_blocks)]

        def resampled(chosen: np.ndarray) -> float:
            items = np.concatenate([members[b] for b in chosen])
            values = np.concatenate([self.items[i] for i in items])
            owners = np.repeat(np.arange(items.size), [self.items[i].size for i in items])
            return float(ks_by_labels(values, owners, self.labels[items][None, :])[0])

        lo, hi = bootstrap_interval(resampled, n_blocks, rng, n_resamples, method="basic")
        return max(lo, 0.0), min(hi, 1.0)


def _fill(result: ClaimResult, spectra: _Spectra, alpha: float, n_resamples: int,
          rng: np.random.Generator) -> ClaimResult:
    test = spectra.test(rng, n_resamples)
    result.estimate, result.p_value, result.n_units = test.statistic, test.pvalue, len(spectra.block_of)
    result.ci_lo, result.ci_hi = spectra.interval(rng, n_resamples)
    result.decision = decide_sameness(test.pvalue, alpha, test.min_pvalue)
    arrangements = "all" if test.exact else str(test.n_arrangements)
    result.test += f"; {arrangements} within-matrix relabellings; interval: basic bootstrap over matrices"
    if not test.min_pvalue <= alpha:
        result.detail += (f" With {len(spectra.block_of)} square matrices and these runs the test cannot reach "
                          f"α = {alpha:g} (smallest possible p {fmt(test.min_pvalue)}): add layers or replicates.")
    return result


def _update_eigenvalues(step: int, layers: list[str], normalised: bool) -> ValuesOf:
    def values_of(run: Any) -> pd.DataFrame:
        eig = analysis.eigenvalues(run, layers=layers, steps=[step])
        if normalised:
            norms = analysis.spectral_summary(run, layers=layers, steps=[step]).set_index("layer")["fro_norm_dW"]
            return eig.assign(value=eig["eig_real"] / eig["layer"].map(norms))
        return eig.assign(value=eig["eig_real"])
    return values_of


def eigen_updates(arms: Arms, alpha: float, n_resamples: int, rng: np.random.Generator) -> ClaimResult:
    result = ClaimResult(
        "eigen_updates", "TLoRA's and LoRA's update spectra resemble (eigenvalues of ΔW, scale-free)",
        "8 (corrected)", "two-sample KS distance between the pooled real parts of λ(ΔW)/‖ΔW‖_F, TLoRA vs LoRA, "
        "over square matrices; estimate: that distance",
        "within each matrix, the TLoRA and LoRA runs' spectra are exchangeable", "none (the paper used merged "
        "weights)", test="permutation test")
    layers = arms.square_layers()
    if not layers:
        return inconclusive(result, "No square adapted matrix: eigenvalues need out = in (e.g. attention q, v).")
    scaled = _Spectra(arms, _update_eigenvalues(arms.step, layers, normalised=True))
    if scaled.values.size == 0:
        return inconclusive(result, "The updates are zero at this step.")
    raw = _Spectra(arms, _update_eigenvalues(arms.step, layers, normalised=False)).test(rng, n_resamples)
    norms = {method: float(np.median([analysis.norms(r, layers=layers, steps=[arms.step])["fro_norm_dW"].median()
                                      for r in runs])) for method, runs in (("TLoRA", arms.tlora), ("LoRA", arms.lora))}
    result.detail = (f"Raw eigenvalues, not normalised (scale-dependent: median ‖ΔW‖_F is {fmt(norms['TLoRA'])} for "
                     f"TLoRA and {fmt(norms['LoRA'])} for LoRA, set largely by the learning rates): D = "
                     f"{fmt(raw.statistic)}, p = {fmt(raw.pvalue)}.")
    return _fill(result, scaled, alpha, n_resamples, rng)


def _merged_eigenvalues(step: int, layers: list[str]) -> ValuesOf:
    def values_of(run: Any) -> pd.DataFrame:
        eig = analysis.merged_eigenvalues(run, layers=layers, steps=[step], paper_faithful=True)
        return eig.assign(value=eig["eig_real"])
    return values_of


def eigen_merged_faithful(arms: Arms, alpha: float, n_resamples: int, rng: np.random.Generator) -> ClaimResult:
    result = ClaimResult(
        "eigen_merged_faithful", "TLoRA's and LoRA's weight spectra resemble (paper-faithful: merged weights)", "8",
        "two-sample KS distance between the pooled real parts of eig(W0 + ΔWᵀ) (the paper's construction), "
        "TLoRA vs LoRA, over square matrices; estimate: that distance",
        "within each matrix, the TLoRA and LoRA runs' merged spectra are exchangeable",
        "visual only: KDEs of positive and negative eigenvalues 'similar'", test="permutation test")
    runs = [*arms.tlora, *arms.lora]
    if not all(r.has_base_weights for r in runs):
        return inconclusive(result, "Needs W0: record the runs with store_base_weights=True, or "
                                   "give the base model they reference (--base-model / base_model=).")
    layers = arms.square_layers()
    if not layers:
        return inconclusive(result, "No square adapted matrix: eigenvalues need out = in (e.g. attention q, v).")
    spectra = _Spectra(arms, _merged_eigenvalues(arms.step, layers))
    if 0 in arms.tlora[0].steps:
        w0 = _merged_eigenvalues(0, layers)(arms.tlora[0])["value"].to_numpy(float)
        merged = np.concatenate(spectra.items[: len(layers)])  # the first TLoRA run's items, in layer order
        from_w0 = float(ks_by_labels(np.concatenate([merged, w0]), np.repeat([0, 1], [merged.size, w0.size]),
                                     np.array([[1, 0]]))[0])
        result.detail = (f"TLoRA's merged spectrum against W0's own (no update): D = {fmt(from_w0)}. Both merged "
                         "spectra are W0's up to the updates, so their resemblance is mostly W0's; eigen_updates "
                         "compares the updates themselves.")
    return _fill(result, spectra, alpha, n_resamples, rng)
