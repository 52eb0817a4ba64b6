"""Inference building blocks: exact null laws, Monte-Carlo and permutation p-values,
rules for combining layers, multiplicity corrections, confidence intervals, and the test of a
mean over seeds × evaluation examples.

Pure numpy / scipy, no knowledge of runs: :mod:`tlora_analysis.analysis` uses the null laws
for its bands and p-value columns, :mod:`tlora_analysis.report` turns analysis tables into
decisions with them. docs/statistics.md states every test, its null and its calibration.
"""

from .combine import CombinedTest, benjamini_hochberg, chi2_sum, fisher, holm, random_effects, stouffer, z_from_p
from .crossed import CrossedTest, crossed_t, pseudo_values
from .distances import ks_by_labels
from .intervals import bootstrap_interval, icc_from_f, t_interval
from .laws import haar_cosine_variance, reachable_fraction_mean, subspace_overlap_mean
from .montecarlo import MonteCarloP, mc_pvalue
from .permutation import PermutationResult, permutation_test

__all__ = [
    "CombinedTest", "CrossedTest", "MonteCarloP", "PermutationResult", "benjamini_hochberg", "bootstrap_interval",
    "chi2_sum", "crossed_t", "fisher", "haar_cosine_variance", "holm", "icc_from_f", "ks_by_labels", "mc_pvalue",
    "permutation_test", "pseudo_values", "random_effects", "reachable_fraction_mean", "stouffer",
    "subspace_overlap_mean", "t_interval", "z_from_p",
]
