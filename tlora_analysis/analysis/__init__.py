"""Analyzers: tidy pandas tables of spectra, norms, distributions, α, similarity, the reachable set of
a confined method (TLoRA, LoRA-XS) and intruders.

Every analyzer reads :class:`tlora_analysis.Run` objects and returns long-form DataFrames
with the columns documented in docs/analysis.md; what a run's layers hold comes from its
method's spec (``run.spec``). Updates are analysed exactly from their factors
(:class:`tlora_analysis.lowrank.FactoredUpdate`); only full fine-tuning and the merged-weight
analyses take a dense path. Selections: ``layers=`` (None, or name patterns by the package's one
rule, :mod:`tlora_analysis.names`) and ``steps=`` ("all", "last", every k-th as an int, or a list).
"""

from .distributions import DistributionTables, available_matrices, distributions
from .intruders import intruders
from .merged import merged_eigenvalues, paper_faithful_update
from .norms import norm_columns, norms
from .reachable import reachable
from .scaling import ScalingTables, scaling
from .select import NoCommonLayersError, SelectionError
from .similarity import SimilarityTables, similarity
from .spectra import eigenvalues, spectra, spectral_summary
from .updates import MissingBaseWeightError

__all__ = [
    "DistributionTables", "MissingBaseWeightError", "NoCommonLayersError", "ScalingTables", "SelectionError",
    "SimilarityTables", "available_matrices", "distributions", "eigenvalues", "intruders", "merged_eigenvalues",
    "norm_columns", "norms",
    "paper_faithful_update", "reachable", "scaling", "similarity", "spectra", "spectral_summary",
]
