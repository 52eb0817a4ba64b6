"""Drawing functions on small synthetic tables with the analysis contract's columns:
each returns a Figure with the right panels and labels, copes with NaN, keeps labels apart,
and rejects a wrong table with a clear message."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from tlora_analysis.figures import distributions, norms, similarity, spectra, style, training

from figure_checks import (
    assert_no_overlapping_labels, axis_texts, distribution_tables, eigen_frame, metrics_frame, norms_frame,
    reachable_frame, similarity_frames, spectra_frame,
)


@pytest.fixture(autouse=True)
def _no_pyplot_figures():
    """Drawing functions never register figures with pyplot (no windows, no leak across calls)."""
    before = plt.get_fignums()
    yield
    assert plt.get_fignums() == before


def _images(fig: Figure):
    return [im for ax in fig.axes for im in ax.get_images()]


# ---------------------------------------------------------------- style
def test_save_writes_pdf_and_png_and_replaces(tmp_path):
    fig, axes = style.new_figure("single")
    axes[0, 0].plot([0, 1], [0, 1])
    paths = style.save(fig, tmp_path / "sub" / "plot.png")
    assert [p.name for p in paths] == ["plot.pdf", "plot.png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    fig2, axes2 = style.new_figure("double")
    axes2[0, 0].bar([0], [1])
    style.save(fig2, tmp_path / "sub" / "plot")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["plot.pdf", "plot.png"]


def test_widths_and_bad_arguments():
    fig, _ = style.new_figure("single")
    assert fig.get_size_inches()[0] == pytest.approx(style.SINGLE_COLUMN)
    fig, _ = style.new_figure("double", nrows=2, ncols=3)
    assert fig.get_size_inches()[0] == pytest.approx(style.DOUBLE_COLUMN)
    with pytest.raises(ValueError, match="width"):
        style.new_figure("triple")
    with pytest.raises(TypeError, match="Figure"):
        style.save("not a figure", "x")


def test_diverging_norm_is_centred_at_zero():
    norm = style.diverging_norm(np.array([-0.2, 3.0, np.nan]))
    assert (norm.vmin, norm.vmax) == (-3.0, 3.0)
    assert norm(0.0) == pytest.approx(0.5)
    assert style.diverging_norm([], limit=1.0).vmax == 1.0


def test_palette_is_okabe_ito_and_methods_fixed():
    assert style.method_color("tlora") != style.method_color("lora") != style.method_color("full")
    assert set(style.METHOD_COLORS.values()) <= set(style.OKABE_ITO)
    assert style.method_label("tlora") == "TLoRA"


# ---------------------------------------------------------------- norms (figs 5, 6, 7, trajectories)
def test_fro_norm_B_heatmaps_panels_labels_and_nan():
    frame = norms_frame()
    frame.loc[frame.index[3], "fro_norm_B"] = np.nan
    fig = norms.fro_norm_B_heatmaps(frame)
    assert isinstance(fig, Figure)
    heat = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in heat] == ["query (q)", "value (v)"]
    image = heat[0].get_images()[0].get_array()
    assert image.shape == (4, 5)  # layers × steps
    assert image.mask.sum() == 1  # the NaN cell is masked (drawn grey), not zero
    assert "Frobenius" in axis_texts(fig) + fig.axes[-1].get_ylabel()
    assert "recorded snapshot (labelled by step, not to scale)" in axis_texts(fig)
    assert_no_overlapping_labels(fig)


def test_alpha_heatmap_is_diverging_when_alpha_changes_sign():
    frame = norms_frame()
    frame["alpha"] = frame["alpha"] - 1.0  # now signed
    fig = norms.alpha_heatmaps(frame)
    im = _images(fig)[0]
    assert im.cmap.name.startswith(style.DIVERGING_CMAP)
    assert im.norm.vmin == pytest.approx(-im.norm.vmax)
    positive = norms.alpha_heatmaps(norms_frame())
    assert _images(positive)[0].cmap.name.startswith(style.SEQUENTIAL_CMAP)


def test_heatmap_with_many_steps_thins_tick_labels():
    fig = norms.layer_step_heatmaps(norms_frame(steps=tuple(range(0, 600, 10)), n_layers=12), "fro_norm_B")
    ax = [a for a in fig.axes if a.get_images()][0]
    assert len(ax.get_xticks()) <= 8
    assert_no_overlapping_labels(fig)


def test_spectral_norm_heatmap_rows_columns_log_scale():
    frame = norms_frame(method="lora")
    frame["spectral_norm_C"] = np.nan  # LoRA has no C
    fig = norms.spectral_norm_heatmap(frame)
    ax = [a for a in fig.axes if a.get_images()][0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["A", "B", "C"]
    assert ax.get_images()[0].get_array().shape == (8, 3)
    assert isinstance(ax.get_images()[0].norm, matplotlib.colors.LogNorm)
    assert "spectral" in fig.axes[-1].get_ylabel()
    assert "step 40" in ax.get_title()
    assert_no_overlapping_labels(fig)


def test_spectral_norm_heatmap_unknown_step():
    with pytest.raises(ValueError, match="steps present"):
        norms.spectral_norm_heatmap(norms_frame(), step=7)


def test_layer_trajectories_one_line_per_layer():
    frame = norms_frame(n_layers=5)
    frame.loc[frame["layer_index"] == 2, "alpha"] = np.nan  # an all-NaN layer draws no line
    fig = norms.layer_trajectories(frame, "alpha")
    line_axes = [a for a in fig.axes if a.get_lines()]
    assert len(line_axes) == 2
    assert len(line_axes[0].get_lines()) == 4
    assert "layer index" in fig.axes[-1].get_ylabel()
    assert_no_overlapping_labels(fig)


def test_norm_figures_reject_wrong_tables():
    with pytest.raises(ValueError, match="analysis.norms"):
        norms.fro_norm_B_heatmaps(norms_frame().drop(columns="fro_norm_B"))
    with pytest.raises(ValueError, match="no rows"):
        norms.alpha_heatmaps(norms_frame().iloc[0:0])
    with pytest.raises(ValueError, match="modules present"):
        norms.fro_norm_B_heatmaps(norms_frame(), modules=("key",))
    with pytest.raises(TypeError, match="DataFrame"):
        norms.alpha_heatmaps({"alpha": [1.0]})


# ---------------------------------------------------------------- distributions (fig 4, Q-Q)
def test_entry_histograms_one_panel_per_matrix_with_stats():
    hist, stats, _ = distribution_tables()
    fig = distributions.entry_histograms(hist, stats)
    assert [ax.get_title() for ax in fig.axes][:4] == ["$W_0$ (frozen base)", "$A$ (frozen)", "$B$ (trained)",
                                                      "$C$ (frozen)"]
    assert all(len(ax.patches) == 20 for ax in fig.axes)
    printed = [t.get_text() for t in fig.axes[2].texts]
    assert any("ex. kurt" in t and "KS D" in t for t in printed)
    assert "layer 0 query" in fig._suptitle.get_text()
    assert_no_overlapping_labels(fig)


def test_entry_histograms_layer_choice_and_nan_bins():
    hist, _, _ = distribution_tables()
    hist.loc[hist.index[:3], "density"] = np.nan
    fig = distributions.entry_histograms(hist, None, layer="layer.2.attention.self.query", matrices=("B",))
    assert len(fig.axes) == 1 and "layer 2" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="matches 0 layers"):
        distributions.entry_histograms(hist, layer="layer.9.x")
    with pytest.raises(ValueError, match="not in the table"):
        distributions.entry_histograms(hist, matrices=("dW",))


def test_stats_text_gives_the_shapiro_wilk_sample_size_when_it_is_a_subsample():
    row = pd.Series({"skew": 0.1, "excess_kurtosis": 0.2, "ks_stat": 0.01, "shapiro_pvalue": 5.8e-16,
                     "shapiro_n": 5000, "n_entries": 147456, "n_sampled": 147456})
    assert "Shapiro p 5.8e-16 (on 5,000)" in distributions.stats_text(row)
    whole = row.copy()
    whole[["shapiro_n", "n_entries", "n_sampled"]] = 64
    assert "(on" not in distributions.stats_text(whole)


def test_qq_panels_reference_line_from_stats():
    _, stats, qq = distribution_tables()
    fig = distributions.qq_panels(qq, stats, matrix="B")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    row = stats[(stats["layer_index"] == 0) & (stats["matrix"] == "B")].iloc[0]
    (line,) = visible[0].get_lines()
    x, y = line.get_data()
    assert y == pytest.approx(row["mean"] + row["std"] * np.asarray(x))
    assert any("KS D" in t.get_text() for t in visible[0].texts)
    assert "normal quantile" in axis_texts(fig)
    assert_no_overlapping_labels(fig)
    with pytest.raises(ValueError, match="matrices present"):
        distributions.qq_panels(qq, stats, matrix="dW")


# ---------------------------------------------------------------- spectra (fig 8, singular values)
def test_eigenvalue_densities_paper_and_corrected_rows():
    merged = pd.concat([eigen_frame("tlora", construction="paper_faithful"),
                        eigen_frame("lora", construction="paper_faithful", seed=1)])
    update = pd.concat([eigen_frame("tlora", seed=2), eigen_frame("lora", seed=3)])
    fig = spectra.eigenvalue_densities(merged=merged, update=update)
    titles = [ax.get_title() for ax in fig.axes]
    assert sum("paper-faithful" in t for t in titles) == 2
    assert sum("corrected" in t for t in titles) == 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["TLoRA", "LoRA"] and "without its scale" in labels[2]
    pos = merged[merged["eig_real"] > 0].groupby("method").size()
    assert fig.axes[0].texts[0].get_text() == f"n: TLoRA {pos['tlora']}, LoRA {pos['lora']}"
    assert_no_overlapping_labels(fig)


def test_eigenvalue_densities_survive_tiny_and_nan_input():
    update = pd.concat([eigen_frame("tlora", n=2), eigen_frame("lora", n=1)])
    update.loc[update.index[0], "eig_abs"] = np.nan
    fig = spectra.eigenvalue_densities(update=update)
    assert len(fig.axes) == 2
    with pytest.raises(ValueError, match="merged="):
        spectra.eigenvalue_densities()


def test_singular_value_spectra_grid_and_colourbar():
    frame = pd.concat([spectra_frame("tlora"), spectra_frame("lora")])
    fig = spectra.singular_value_spectra(frame, max_layers=2)
    panels = [ax for ax in fig.axes if ax.get_lines()]
    assert len(panels) == 4  # 2 methods × 2 layers
    assert len(panels[0].get_lines()) == 3  # step 0 has σ = 0: nothing on a log axis
    assert panels[0].get_yscale() == "log"
    assert fig.axes[-1].get_ylabel() == "training step"
    assert_no_overlapping_labels(fig)


# ---------------------------------------------------------------- similarity (figs 9, 10, null band, φ)
def test_cosine_heatmap_both_constructions_fixed_scale():
    per, _ = similarity_frames()
    fig = similarity.cosine_heatmap(per)
    images = _images(fig)
    assert len(images) == 2
    assert all((im.norm.vmin, im.norm.vmax) == (-1.0, 1.0) for im in images)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "paper-faithful" in titles and "cosine of updates" in titles
    assert len(fig.axes[0].texts) == 8  # annotated cells: 4 layers × q, v
    assert_no_overlapping_labels(fig)


def test_cosine_heatmap_without_base_weights_drops_merged_panel():
    per, _ = similarity_frames()
    per["cosine_merged_paper"] = np.nan
    fig = similarity.cosine_heatmap(per)
    assert len(_images(fig)) == 1 and "no data" in fig._suptitle.get_text()
    assert_no_overlapping_labels(fig)  # the long title wraps within the single-column figure
    per["cosine_dW"] = np.nan
    with pytest.raises(ValueError, match="store_base_weights"):
        similarity.cosine_heatmap(per)


def test_layers_sharing_a_module_name_get_their_own_cells_and_lines():
    """Three adapted "dense" layers per block (attention output, intermediate, output): each keeps a
    heatmap cell and a panel of its own, named by the layer name after its index."""
    from tlora_analysis.analysis.select import layer_index, module_name
    names = [f"bert.encoder.layer.{i}.{m}" for i in range(2)
             for m in ("attention.output.dense", "intermediate.dense", "output.dense")]
    per = pd.DataFrame({"run_a": "t", "run_b": "l", "method_a": "tlora", "method_b": "lora", "layer": names,
                        "layer_index": [layer_index(n) for n in names], "module": [module_name(n) for n in names],
                        "step": 10, "cosine_dW": 0.1 * np.arange(1, 7), "cosine_merged_paper": np.nan,
                        "null_lo_cosine_dW": -0.01, "null_hi_cosine_dW": 0.01})
    cells = np.ma.filled(similarity.cosine_heatmap(per, values=("cosine_dW",)).axes[0].images[0].get_array(), np.nan)
    assert sorted(np.round(cells[np.isfinite(cells)], 6)) == pytest.approx(0.1 * np.arange(1, 7))
    fig = similarity.cosine_against_nulls(per)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(titles) == 3 and any(t.startswith("intermediate.dense") for t in titles)
    for ax in fig.axes[:3]:
        (observed,) = [line for line in ax.get_lines() if line.get_label() == "observed"]
        assert list(observed.get_xdata()) == [0, 1]


def test_null_band_draws_band_mean_and_observed():
    per, _ = similarity_frames()
    per.loc[per.index[1], "null_hi_cosine_dW"] = np.nan
    fig = similarity.null_band(per, "cosine_dW")
    ax = fig.axes[0]
    assert len(ax.collections) == 1  # the band
    observed = [l for l in ax.get_lines() if l.get_label() == "observed"][0]
    q = per[per["module"] == "query"].sort_values("layer_index")
    assert observed.get_ydata() == pytest.approx(q["cosine_dW"].to_numpy())
    assert fig.legends[0].get_texts()[0].get_text() == "null 2.5–97.5% band"
    assert_no_overlapping_labels(fig)


def test_cosine_against_nulls_draws_both_bands_and_the_reachable_envelope():
    per, _ = similarity_frames()
    reach = reachable_frame()
    fig = similarity.cosine_against_nulls(per, reach)
    ax = fig.axes[0]
    assert len(ax.collections) == 2  # unconstrained and method-aware bands
    q = reach[reach["module"] == "query"].sort_values("layer_index")
    envelope = [l for l in ax.get_lines() if l.get_label().startswith("±√f")][0]
    assert envelope.get_ydata() == pytest.approx(q["max_cosine"].to_numpy())
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("unconstrained" in t for t in labels) and any("method-aware" in t for t in labels)
    assert len(similarity.cosine_against_nulls(per).axes[0].collections) == 1
    assert_no_overlapping_labels(fig)


@pytest.mark.parametrize("draw, values", [(similarity.reachable_panels, ("reachable_fraction", "cosine_reachable")),
                                          (similarity.overlap_panels, ("overlap_out", "overlap_in"))])
def test_reachable_and_overlap_panels_one_row_per_statistic(draw, values):
    reach = reachable_frame()
    fig = draw(reach)
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len(axes) == 4  # two statistics × (query, value)
    for ax, value in zip(axes[::2], values):
        observed = [l for l in ax.get_lines() if l.get_label() == "observed"][0]
        q = reach[reach["module"] == "query"].sort_values("layer_index")
        assert observed.get_ydata() == pytest.approx(q[value].to_numpy())
    assert "LoRA's" in fig.get_suptitle()
    assert_no_overlapping_labels(fig)


def test_phi_heatmaps_unit_range():
    _, phi = similarity_frames()
    fig = similarity.phi_heatmaps(phi, max_layers=3)
    images = _images(fig)
    assert len(images) == 3 and images[0].get_array().shape == (4, 4)
    assert (images[0].norm.vmin, images[0].norm.vmax) == (0.0, 1.0)
    assert "TLoRA" in fig.axes[0].get_ylabel()
    assert_no_overlapping_labels(fig)


def test_difference_heatmap_two_constructions_centred():
    rng = np.random.default_rng(0)
    frames = []
    for kind in ("paper_faithful", "corrected"):
        d = rng.normal(size=(6, 6)) * (10 if kind == "corrected" else 1)
        o, i = np.indices(d.shape)
        frames.append(pd.DataFrame({"construction": kind, "layer": "l0", "step": 3, "out_index": o.ravel(),
                                    "in_index": i.ravel(), "difference": d.ravel()}))
    fig = similarity.difference_heatmap(pd.concat(frames))
    images = _images(fig)
    assert len(images) == 2
    for im in images:
        assert im.norm.vmin == pytest.approx(-im.norm.vmax)
    assert images[1].norm.vmax > images[0].norm.vmax  # own colour bar per construction
    assert "paper-faithful" in fig.axes[0].get_title() and "corrected" in fig.axes[2].get_title() + \
        fig.axes[1].get_title()
    assert_no_overlapping_labels(fig)


# ---------------------------------------------------------------- training (figs 2, 3, comparisons)
def test_parameter_bars_log_scale_and_ratios():
    frame = pd.DataFrame({"run": ["a", "b", "c"], "method": ["tlora", "lora", "full"], "rank": [4, 4, None],
                          "trainable": [34, 1024, 100000]})
    fig = training.parameter_bars(frame)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Full FT", "LoRA, r=4", "TLoRA, r=4"]
    assert any("30× TLoRA" in t.get_text() for t in ax.texts)
    assert_no_overlapping_labels(fig)


def test_loss_curves_train_and_validation():
    metrics = metrics_frame(methods=("tlora",))
    fig = training.loss_curves(metrics)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2
    assert ax.get_ylabel() == "loss"
    assert training.loss_curves(metrics, loss="MSE loss").axes[0].get_ylabel() == "MSE loss"
    epoch_fig = training.loss_curves(metrics, x="epoch")
    assert epoch_fig.axes[0].get_xlabel() == "epoch"
    assert_no_overlapping_labels(fig)
    with pytest.raises(ValueError, match="no finite"):
        training.loss_curves(metrics.assign(loss=np.nan, eval_loss=np.nan))
    with pytest.raises(ValueError, match="x must be"):
        training.loss_curves(metrics, x="time")


def test_method_curves_and_scatter():
    metrics = metrics_frame()
    fig = training.method_curves(metrics)
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.get_lines()) == 3 and len(acc_ax.get_lines()) == 3
    assert acc_ax.get_ylabel() == "validation accuracy"
    assert fig._suptitle.get_text().startswith("TLoRA vs LoRA vs Full FT")
    assert_no_overlapping_labels(fig)
    two = training.method_curves(metrics[metrics["method"] != "full"], baseline=0.546)
    assert two._suptitle.get_text().startswith("TLoRA vs LoRA:")
    assert any(np.allclose(line.get_ydata(), 0.546) for line in two.axes[1].get_lines())  # the majority line
    with pytest.raises(ValueError, match="evaluated metrics present"):
        training.method_curves(metrics, metric="pearson")
    outcome = pd.DataFrame({"run": ["a", "b", "c"], "method": ["tlora", "lora", "full"],
                            "trainable": [34, 1024, 100000], "accuracy": [0.8, 0.85, np.nan]})
    scatter = training.params_vs_accuracy(outcome, baseline=0.6)
    assert any(np.allclose(line.get_ydata(), 0.6) for line in scatter.axes[0].get_lines())
    assert scatter.axes[0].get_xscale() == "log"
    assert len(scatter.axes[0].collections) == 2  # the NaN run is not drawn
    assert_no_overlapping_labels(scatter)


def test_spectral_norm_colour_bar_reads_as_plain_numbers():
    from tlora_analysis.figures import norms as norm_figs

    rows = [{"run": "r", "method": "tlora", "layer": f"l.{i}.q", "layer_index": i, "module": "q", "step": 5,
             "epoch": None, "spectral_norm_A": 3.1 + 0.1 * i, "spectral_norm_B": 4.2 + 0.2 * i,
             "spectral_norm_C": 5.0 + 0.1 * i} for i in range(4)]
    fig = norm_figs.spectral_norm_heatmap(pd.DataFrame(rows))
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels() if t.get_text()]
    assert labels and not any("10^" in t or "times" in t or "×" in t for t in labels), labels
