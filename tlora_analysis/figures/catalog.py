"""Every figure :func:`~tlora_analysis.figures.render.render_all` can make: what it needs, how
it is drawn from the runs (analysis call, then a drawing function), its caption.

A figure the runs cannot support is skipped with the reason (no LoRA run, no base weights,
no eval metrics...), never drawn from partial data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
from matplotlib.figure import Figure

from .. import analysis
from ..adapters.methods import METHODS
from . import distributions, norms, similarity, spectra, training
from .runs import (RunRoles, difference_table, loss_name, majority_baseline, metrics_table, outcome_table,
                   parameter_table, selection_metric)
from .style import method_label

__all__ = ["FigureSpec", "FigureContext", "CATALOG", "catalog_names"]

_EVAL_METRICS = ("accuracy", "pearson", "f1", "mcc", "spearman")


class FigureContext:
    """The runs sorted into roles plus a cache, so figures sharing an analysis compute it once."""

    def __init__(self, roles: RunRoles) -> None:
        self.roles = roles
        self._cache: dict[str, Any] = {}

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # ---------------------------------------------------------------- shared analyses
    def norms(self) -> pd.DataFrame:
        return self.cached("norms", lambda: analysis.norms(self.roles.tlora))

    def similarity(self):
        r = self.roles
        return self.cached("similarity", lambda: analysis.similarity(r.tlora, r.lora, steps="last"))

    def reachable(self, confined: str = "tlora") -> pd.DataFrame:
        """LoRA's update against the reachable set of the ``confined`` method's run (TLoRA or LoRA-XS)."""
        r = self.roles
        return self.cached(f"reachable-{confined}", lambda: analysis.reachable(r.of(confined), r.lora, steps="last"))

    def metrics(self) -> pd.DataFrame:
        return self.cached("metrics", lambda: metrics_table(self.roles.all_runs))

    def common_square_layer(self) -> str:
        t, lo = self.roles.tlora, self.roles.lora
        shared = [n for n in t.layers if n in set(lo.layers) and t.layer_shapes[n][0] == t.layer_shapes[n][1]]
        if not shared:
            raise ValueError("the TLoRA and LoRA runs share no square layer (eigenvalues need out == in)")
        return shared[0]

    def eval_metric(self) -> str:
        """The task's selection metric from run.json (MCC for CoLA, Pearson for STS-B), else the first logged."""
        m = self.metrics()
        recorded = selection_metric(self.roles.all_runs)
        if recorded is not None and recorded in m and m.loc[m["event"] == "eval", recorded].notna().any():
            return recorded
        for name in _EVAL_METRICS:
            if name in m and m.loc[m["event"] == "eval", name].notna().any():
                return name
        raise ValueError("no run logged an evaluation metric (accuracy, pearson, ...): train with evaluation on")

    def baseline(self, metric: str) -> float | None:
        return majority_baseline(self.roles.all_runs, metric)

    def loss(self) -> str:
        return loss_name(self.roles.all_runs)


@dataclass(frozen=True)
class FigureSpec:
    """One figure: file stem, title, caption, the Python that draws it, and what it needs."""

    name: str
    title: str
    caption: str
    code: str
    needs: tuple[str, ...]
    draw: Callable[[FigureContext], Figure]

    def missing(self, roles: RunRoles) -> str | None:
        """Why the runs cannot support this figure, or None."""
        for need in self.needs:
            if need in METHODS and roles.of(need) is None:
                return f"needs a {method_label(need)} run among the runs given"
            if need == "base_weights":
                lacking = [r.name for r in (roles.tlora, roles.lora) if r is not None and not r.has_base_weights]
                if lacking:
                    return (f"needs base weights W0, which {', '.join(lacking)} did not store "
                            f"(record with store_base_weights=True, or give the base model with --base-model)")
            if need == "two_methods" and len(roles.by_method) < 2:
                return "needs runs of at least two methods (e.g. TLoRA and LoRA)"
        return None


def _histograms(ctx: FigureContext) -> Figure:
    run = ctx.roles.tlora
    mats = ("W0", "A", "B", "C") if run.has_base_weights else ("A", "B", "C")
    tables = analysis.distributions(run, matrices=mats, bins="fd", layers=[run.layers[0]], steps="last")
    return distributions.entry_histograms(tables.histogram, tables.stats)


def _qq(ctx: FigureContext) -> Figure:
    run = ctx.roles.tlora
    tables = analysis.distributions(run, matrices=("B",), qq=True, layers=run.layers[:8], steps="last")
    return distributions.qq_panels(tables.qq, tables.stats)


def _eigenvalues(ctx: FigureContext) -> Figure:
    layer = ctx.common_square_layer()
    pair = (ctx.roles.tlora, ctx.roles.lora)
    merged = None
    if all(r.has_base_weights for r in pair):
        merged = pd.concat([analysis.merged_eigenvalues(r, layers=[layer], steps="last", paper_faithful=True)
                            for r in pair], ignore_index=True)
    update = pd.concat([analysis.eigenvalues(r, layers=[layer], steps="last") for r in pair], ignore_index=True)
    return spectra.eigenvalue_densities(merged=merged, update=update)


def _spectra(ctx: FigureContext) -> Figure:
    runs = list(ctx.roles.by_method.values())
    first = [n for n in runs[0].layers if all(n in r.layers for r in runs)][:4]
    if not first:
        raise ValueError("the runs share no adapted layer")
    return spectra.singular_value_spectra(pd.concat([analysis.spectra(r, layers=first) for r in runs],
                                                    ignore_index=True))


def _loss(ctx: FigureContext) -> Figure:
    return training.loss_curves(ctx.metrics(), loss=ctx.loss())


def _method_curves(ctx: FigureContext) -> Figure:
    metric = ctx.eval_metric()
    return training.method_curves(ctx.metrics(), metric=metric, baseline=ctx.baseline(metric),
                                  loss=f"training {ctx.loss()}")


def _params_vs_metric(ctx: FigureContext) -> Figure:
    metric = ctx.eval_metric()
    return training.params_vs_accuracy(outcome_table(ctx.roles.all_runs, metric=metric), metric=metric,
                                       baseline=ctx.baseline(metric))


# Fig. 9 shows entries one by one: a block small enough that each cell is visible (a whole
# 384 × 384 layer is a PNG of pixel noise); the title says which block.
DIFFERENCE_BLOCK = 48


CATALOG: tuple[FigureSpec, ...] = (
    FigureSpec("fig02_trainable_parameters", "Trainable parameters",
               "Paper Fig. 2: trainable parameters of each run (log scale), from run.json's `parameters`.",
               "figures.training.parameter_bars(figures.runs.parameter_table(runs))", (),
               lambda ctx: training.parameter_bars(parameter_table(ctx.roles.all_runs))),
    FigureSpec("fig03_loss", "Train and validation loss",
               "Paper Fig. 3: training loss (solid) and validation loss (dashed) of every run against the step; the "
               "axis names the loss the runs optimised (cross-entropy, or MSE for regression).",
               "figures.training.loss_curves(figures.runs.metrics_table(runs))", (), _loss),
    FigureSpec("fig04_entry_histograms", "Entry histograms (TLoRA, first layer)",
               "Paper Fig. 4: density histograms of the entries of W0 (when stored), A, B and C of the first "
               "adapted layer at the last step (bins by the Freedman–Diaconis rule, not the paper's fixed 50), with "
               "skew, excess kurtosis, KS distance and Shapiro–Wilk p printed.",
               "t = analysis.distributions(run, matrices=('W0', 'A', 'B', 'C'), bins='fd', layers=[run.layers[0]], "
               "steps='last'); figures.distributions.entry_histograms(t.histogram, t.stats)", ("tlora",), _histograms),
    FigureSpec("fig05_fro_norm_B", "Frobenius norm of B (TLoRA)",
               "Paper Fig. 5: Frobenius norm of B per layer and recorded step, one panel per module.",
               "figures.norms.fro_norm_B_heatmaps(analysis.norms(run), modules=None)", ("tlora",),
               lambda ctx: norms.fro_norm_B_heatmaps(ctx.norms(), modules=None)),
    FigureSpec("fig06_alpha", "TLoRA scale α",
               "Paper Fig. 6: α per layer and recorded step, one panel per module (α starts at 1).",
               "figures.norms.alpha_heatmaps(analysis.norms(run), modules=None)", ("tlora",),
               lambda ctx: norms.alpha_heatmaps(ctx.norms(), modules=None)),
    FigureSpec("fig07_spectral_norms", "Spectral norms of A, B, C (TLoRA)",
               "Paper Fig. 7: spectral norm of A, B and C of every adapted layer at the last step (log colour "
               "scale; the paper called these 'layer normalization values').",
               "figures.norms.spectral_norm_heatmap(analysis.norms(run))", ("tlora",),
               lambda ctx: norms.spectral_norm_heatmap(ctx.norms())),
    FigureSpec("fig08_eigenvalues", "Eigenvalues TLoRA vs LoRA",
               "Paper Fig. 8 (top, when both runs have W0): KDE of the real parts of the eigenvalues of the "
               "paper-faithful merged weights, positive and negative panels. Corrected (bottom): the nonzero "
               "eigenvalues of ΔW itself, complex plane and modulus. First common square layer, last step.",
               "figures.spectra.eigenvalue_densities(merged=analysis.merged_eigenvalues(..., paper_faithful=True), "
               "update=analysis.eigenvalues(...))", ("tlora", "lora"), _eigenvalues),
    FigureSpec("fig09_difference", "LoRA − TLoRA difference (one layer)",
               f"Paper Fig. 9: entry-wise LoRA − TLoRA of the first common layer at the last step, paper-faithful "
               f"(transposed, LoRA scale dropped) beside corrected (ΔW_LoRA − ΔW_TLoRA); the top-left "
               f"{DIFFERENCE_BLOCK} × {DIFFERENCE_BLOCK} entries, so each one is visible.",
               f"figures.similarity.difference_heatmap(figures.runs.difference_table(lora, tlora), "
               f"max_cells={DIFFERENCE_BLOCK})",
               ("tlora", "lora"), lambda ctx: similarity.difference_heatmap(
                   difference_table(ctx.roles.lora, ctx.roles.tlora), max_cells=DIFFERENCE_BLOCK)),
    FigureSpec("fig10_cosine", "Cosine TLoRA vs LoRA per layer",
               "Paper Fig. 10: cosine per layer and module at the last step; left the paper-faithful cosine of "
               "merged weights (near 1 for any small updates), right the cosine of the updates themselves.",
               "figures.similarity.cosine_heatmap(analysis.similarity(tlora, lora, steps='last').per_layer)",
               ("tlora", "lora"), lambda ctx: similarity.cosine_heatmap(ctx.similarity().per_layer)),
    FigureSpec("cosine_null_band", "Update cosine against both nulls",
               "Corrected Fig. 10: cos(ΔW_TLoRA, ΔW_LoRA) per layer at the last step. Grey: the unconstrained null "
               "(TLoRA's update with its singular values and uniformly random singular vectors, 2,000 exact draws); "
               "green: the method-aware null (random singular vectors inside TLoRA's reachable set, the run's own A "
               "and C kept); dotted: ±√f, the largest cosine any TLoRA update could have with this LoRA update.",
               "figures.similarity.cosine_against_nulls(analysis.similarity(tlora, lora, steps='last').per_layer, "
               "analysis.reachable(tlora, lora, steps='last'))",
               ("tlora", "lora"), lambda ctx: similarity.cosine_against_nulls(ctx.similarity().per_layer,
                                                                               ctx.reachable())),
    FigureSpec("reachable_set", "LoRA's update inside TLoRA's reachable set",
               "Top: the share f of ΔW_LoRA's energy inside the set TLoRA can reach (fixed by its frozen A and C), "
               "against the null of unrelated subspaces (mean r²/(out·in)). Bottom: the cosine between TLoRA's "
               "update and that part, against random directions inside the set. Bands: 2.5–97.5% of 2,000 exact "
               "draws per layer.",
               "figures.similarity.reachable_panels(analysis.reachable(tlora, lora, steps='last'))",
               ("tlora", "lora"), lambda ctx: similarity.reachable_panels(ctx.reachable())),
    FigureSpec("reachable_set_lora_xs", "LoRA's update inside W0's top singular subspaces (LoRA-XS's reachable set)",
               "As reachable_set, with LoRA-XS in place of TLoRA: its update lies in W0's top-r singular subspaces "
               "instead of random ones. Top: the share f of ΔW_LoRA's energy in that set against unrelated "
               "subspaces; bottom: LoRA-XS's cosine with that part, against random directions inside it. Side by side "
               "with reachable_set it asks whether TLoRA's random projections matter.",
               "figures.similarity.reachable_panels(analysis.reachable(lora_xs, lora, steps='last'))",
               ("lora-xs", "lora"), lambda ctx: similarity.reachable_panels(ctx.reachable("lora-xs"))),
    FigureSpec("subspace_overlap_null_band", "Subspace overlap φ with TLoRA's frozen subspaces",
               "φ between ΔW_LoRA's top singular subspaces and TLoRA's col(Cᵀ) (output side, top) and col(A) (input "
               "side, bottom), per layer, with the 2.5–97.5% band of 2,000 draws of unrelated subspaces (mean r/d). "
               "TLoRA's singular subspaces are these frozen ones whatever B learns, so this is what the paper-style φ "
               "between TLoRA and LoRA measures.",
               "figures.similarity.overlap_panels(analysis.reachable(tlora, lora, steps='last'))",
               ("tlora", "lora"), lambda ctx: similarity.overlap_panels(ctx.reachable())),
    FigureSpec("phi_heatmaps", "Subspace overlap φ(i, j)",
               "φ(i, j) between the top-i right (input-side) singular directions of ΔW_TLoRA and the top-j of "
               "ΔW_LoRA for the first layers at the last step; TLoRA's are spanned by its frozen A.",
               "figures.similarity.phi_heatmaps(analysis.similarity(tlora, lora).phi)", ("tlora", "lora"),
               lambda ctx: similarity.phi_heatmaps(ctx.similarity().phi)),
    FigureSpec("singular_values", "Singular values of ΔW over training",
               "Singular values σ_k of ΔW for the first four common layers, one line per recorded step, per method.",
               "figures.spectra.singular_value_spectra(analysis.spectra(run, layers=...))", (), _spectra),
    FigureSpec("alpha_trajectories", "α over training",
               "α of every TLoRA layer against the training step, coloured by layer depth.",
               "figures.norms.layer_trajectories(analysis.norms(run), 'alpha')", ("tlora",),
               lambda ctx: norms.layer_trajectories(ctx.norms(), "alpha")),
    FigureSpec("fro_norm_B_trajectories", "‖B‖_F over training",
               "Frobenius norm of B of every TLoRA layer against the training step, coloured by layer depth.",
               "figures.norms.layer_trajectories(analysis.norms(run), 'fro_norm_B')", ("tlora",),
               lambda ctx: norms.layer_trajectories(ctx.norms(), "fro_norm_B")),
    FigureSpec("qq_B", "Normal Q-Q plots of B",
               "Normal Q-Q plots of the entries of B for up to eight TLoRA layers at the last step, with skew, "
               "excess kurtosis, KS distance and Shapiro-Wilk p printed (effect sizes, not p-values alone).",
               "t = analysis.distributions(run, matrices=('B',), qq=True, steps='last'); "
               "figures.distributions.qq_panels(t.qq, t.stats)", ("tlora",), _qq),
    FigureSpec("method_curves", "Methods compared: loss and validation metric",
               "Training loss and the task's validation metric (MCC for CoLA, Pearson for STS-B, else accuracy) of "
               "every run, coloured by method, with the majority class as a dotted line.",
               "figures.training.method_curves(figures.runs.metrics_table(runs), metric=..., "
               "baseline=figures.runs.majority_baseline(runs, metric))", ("two_methods",), _method_curves),
    FigureSpec("params_vs_accuracy", "Trainable parameters vs the task's metric",
               "Best validation metric of each run (the task's: MCC for CoLA, Pearson for STS-B, else accuracy) "
               "against its trainable parameters (log scale), with the majority class as a dotted line.",
               "figures.training.params_vs_accuracy(figures.runs.outcome_table(runs, metric=...), metric=..., "
               "baseline=figures.runs.majority_baseline(runs, metric))", (), _params_vs_metric),
)


def catalog_names() -> list[str]:
    """The file stems of every figure in the catalog, in drawing order."""
    return [spec.name for spec in CATALOG]
