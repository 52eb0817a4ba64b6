"""Analyzers: tidy pandas tables of spectra, norms, distributions, α, similarity, TLoRA's reachable
set and intruders.

Every analyzer reads :class:`tlora_analysis.Run` objects and returns long-form DataFrames
with the columns documented in docs/analysis.md. Updates are analysed exactly from their
factors (:class:`tlora_analysis.lowrank.FactoredUpdate`); only full fine-tuning and the
merged-weight analyses take a dense path. Selections: ``layers=`` (None, a regex, or a
list of names/suffixes) and ``steps=`` ("all", "last", every k-th as an int, or a list).
"""

from .distributions import DistributionTables, distributions
from .intruders import intruders
from .merged import merged_eigenvalues, paper_faithful_update
from .norms import norms
from .reachable import reachable
from .scaling import ScalingTables, scaling
from .select import NoCommonLayersError, SelectionError
from .similarity import SimilarityTables, similarity
from .spectra import eigenvalues, spectra, spectral_summary
from .updates import MissingBaseWeightError

__all__ = [
    "DistributionTables", "MissingBaseWeightError", "NoCommonLayersError", "ScalingTables", "SelectionError",
    "SimilarityTables", "distributions", "eigenvalues", "intruders", "merged_eigenvalues", "norms",
    "paper_faithful_update", "reachable", "scaling", "similarity", "spectra", "spectral_summary",
]
