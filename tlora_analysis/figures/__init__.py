"""Figures: every paper figure (docs/paper.md) and its corrected companion.

Each drawing function takes the tidy DataFrames :mod:`tlora_analysis.analysis` returns and
gives back a matplotlib Figure; none computes a statistic. :func:`render_all` draws every
figure a set of runs supports; :func:`save` writes PDF + PNG. See docs/figures.md.
"""

from . import distributions, norms, similarity, spectra, style, training
from .distributions import entry_histograms, qq_panels
from .norms import alpha_heatmaps, fro_norm_B_heatmaps, layer_step_heatmaps, layer_trajectories, spectral_norm_heatmap
from .render import RenderResult, render, render_all
from .runs import (RunRoles, difference_table, headline_table, loss_name, majority_baseline, metrics_table,
                   outcome_table, parameter_table, selection_metric)
from .similarity import (
    cosine_against_nulls, cosine_heatmap, difference_heatmap, null_band, overlap_panels, phi_heatmaps, reachable_panels,
)
from .spectra import eigenvalue_densities, singular_value_spectra
from .style import save
from .training import loss_curves, method_curves, parameter_bars, params_vs_accuracy

__all__ = [
    "distributions", "norms", "similarity", "spectra", "style", "training",
    "parameter_bars", "loss_curves", "method_curves", "params_vs_accuracy",
    "entry_histograms", "qq_panels",
    "fro_norm_B_heatmaps", "alpha_heatmaps", "spectral_norm_heatmap", "layer_step_heatmaps", "layer_trajectories",
    "eigenvalue_densities", "singular_value_spectra",
    "difference_heatmap", "cosine_heatmap", "null_band", "cosine_against_nulls", "reachable_panels", "overlap_panels",
    "phi_heatmaps",
    "RunRoles", "parameter_table", "metrics_table", "outcome_table", "difference_table", "selection_metric",
    "majority_baseline", "loss_name", "headline_table",
    "render", "render_all", "RenderResult", "save",
]
