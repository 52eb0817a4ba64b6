"""Shared checks for figure tests: synthetic tidy tables with the analysis contract's columns,
and a layout check that no two labels of a drawn figure overlap."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

MODULES = ("query", "value")


def _ident(method: str, layer_index: int, module: str, step: int) -> dict:
    return {"run": f"{method}-run", "method": method, "layer": f"encoder.layer.{layer_index}.attention.self.{module}",
            "layer_index": layer_index, "module": module, "step": step, "epoch": np.nan}


def norms_frame(method: str = "tlora", n_layers: int = 4, steps=(0, 5, 10, 20, 40), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(n_layers):
        for module in MODULES:
            for step in steps:
                b = 0.01 * step * (1 + layer) + rng.random() * 1e-3
                rows.append({**_ident(method, layer, module, step), "fro_norm_A": 5.0, "spectral_norm_A": 1.5,
                             "fro_norm_B": b, "spectral_norm_B": b / 2 + 1e-9, "fro_norm_C": 0.8,
                             "spectral_norm_C": 0.3, "alpha": 1.0 + 0.002 * step * (layer - 1.5),
                             "alpha_fro_norm_B": b, "fro_norm_dW": b / 3, "spectral_norm_dW": b / 4,
                             "fro_norm_W0": 10.0, "rel_fro_norm_dW": b / 30})
    return pd.DataFrame(rows)


def distribution_tables(method: str = "tlora", n_layers: int = 3, step: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    hist, stats, qq = [], [], []
    scale = {"W0": 0.05, "A": 0.1, "B": 1e-3, "C": 0.03}
    for layer in range(n_layers):
        for matrix, s in scale.items():
            x = rng.normal(0, s, 400)
            counts, edges = np.histogram(x, bins=20)
            dens = counts / (counts.sum() * np.diff(edges))
            for lo, hi, c, d in zip(edges[:-1], edges[1:], counts, dens):
                hist.append({**_ident(method, layer, "query", step), "matrix": matrix, "bin_left": lo,
                             "bin_right": hi, "count": c, "density": d, "n_entries": 400, "n_sampled": 400})
            stats.append({**_ident(method, layer, "query", step), "matrix": matrix, "n_entries": 400,
                          "n_sampled": 400, "mean": x.mean(), "std": x.std(), "skew": 0.01, "excess_kurtosis": -0.1,
                          "ks_stat": 0.03, "k2_pvalue": 0.7, "shapiro_stat": 0.99,
                          "shapiro_pvalue": 0.6, "shapiro_n": 400})
            levels = (np.arange(1, 51) - 0.5) / 50
            from scipy.stats import norm
            for t, q in zip(norm.ppf(levels), np.quantile(x, levels)):
                qq.append({**_ident(method, layer, "query", step), "matrix": matrix, "theoretical_quantile": t,
                           "sample_quantile": q})
    return pd.DataFrame(hist), pd.DataFrame(stats), pd.DataFrame(qq)


def eigen_frame(method: str, n: int = 16, step: int = 40, construction: str | None = None, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    lam = rng.normal(size=n) + 1j * rng.normal(size=n) * 0.3
    rows = [{**_ident(method, 0, "query", step), "eig_index": k, "eig_real": v.real, "eig_imag": v.imag,
             "eig_abs": abs(v)} for k, v in enumerate(lam)]
    frame = pd.DataFrame(rows)
    return frame if construction is None else frame.assign(construction=construction)


def spectra_frame(method: str, n_layers: int = 3, r: int = 4, steps=(0, 5, 10, 40)) -> pd.DataFrame:
    rows = []
    for layer in range(n_layers):
        for step in steps:
            for k in range(1, r + 1):
                rows.append({**_ident(method, layer, "query", step), "rank_order": k, "sigma": step * 0.01 / k})
    return pd.DataFrame(rows)


def similarity_frames(n_layers: int = 4, step: int = 40, r: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    per, phi = [], []
    for layer in range(n_layers):
        for module in MODULES:
            ident = {"run_a": "t", "run_b": "l", "method_a": "tlora", "method_b": "lora",
                     "layer": f"encoder.layer.{layer}.attention.self.{module}", "layer_index": layer,
                     "module": module, "step": step}
            row = {**ident, "cosine_dW": rng.uniform(-0.2, 0.4), "cosine_merged_paper": rng.uniform(0.95, 0.99),
                   "rel_diff_dW": rng.uniform(1, 2), "phi_rr": rng.uniform(0, 1)}
            for col in ("cosine_dW", "cosine_merged_paper", "rel_diff_dW", "phi_rr"):
                row[f"null_mean_{col}"] = row[col] * 0.5
                row[f"null_lo_{col}"] = row[col] * 0.5 - 0.1
                row[f"null_hi_{col}"] = row[col] * 0.5 + 0.1
            per.append(row)
            for i in range(1, r + 1):
                for j in range(1, r + 1):
                    phi.append({**ident, "i": i, "j": j, "phi": rng.uniform(0, 1)})
    return pd.DataFrame(per), pd.DataFrame(phi)


def reachable_frame(n_layers: int = 4, step: int = 40, seed: int = 0) -> pd.DataFrame:
    """Rows shaped like ``analysis.reachable``: each statistic with its null band and mean."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(n_layers):
        for module in MODULES:
            row = {"run_a": "t", "run_b": "l", "method_a": "tlora", "method_b": "lora",
                   "layer": f"encoder.layer.{layer}.attention.self.{module}", "layer_index": layer, "module": module,
                   "step": step, "n_null": 2000, "reachable_fraction": rng.uniform(1e-4, 6e-4),
                   "null_mean_reachable_fraction": 4e-4, "max_cosine": rng.uniform(0.01, 0.03),
                   "cosine_dW": rng.uniform(-0.01, 0.01), "cosine_reachable": rng.uniform(-0.5, 0.5),
                   "null_mean_cosine_reachable": 0.0, "overlap_out": rng.uniform(0.01, 0.03),
                   "overlap_in": rng.uniform(0.01, 0.03), "null_mean_overlap_out": 0.02, "null_mean_overlap_in": 0.02}
            for col, half in (("reachable_fraction", 3e-4), ("cosine_reachable", 0.25), ("overlap_out", 0.007),
                              ("overlap_in", 0.007)):
                centre = row.get(f"null_mean_{col}", 0.0)
                row[f"null_lo_{col}"], row[f"null_hi_{col}"] = centre - half, centre + half
            row["null_lo_cosine_dW"], row["null_hi_cosine_dW"] = -0.25 * row["max_cosine"], 0.25 * row["max_cosine"]
            rows.append(row)
    return pd.DataFrame(rows)


def metrics_frame(methods=("tlora", "lora", "full"), steps: int = 20) -> pd.DataFrame:
    rows = []
    for m_i, method in enumerate(methods):
        for step in range(1, steps + 1):
            epoch = (step - 1) // 10
            rows.append({"run": f"{method}-run", "method": method, "step": step, "epoch": epoch, "event": "train",
                         "wall_time": float(step), "loss": 0.7 / (1 + 0.1 * step * (m_i + 1)), "lr": 1e-3,
                         "examples_per_s": 100.0})
            if step % 10 == 0:
                rows.append({"run": f"{method}-run", "method": method, "step": step, "epoch": epoch, "event": "eval",
                             "wall_time": float(step), "split": "validation", "eval_loss": 0.6 / (1 + 0.05 * step),
                             "accuracy": 0.5 + 0.01 * step * (m_i + 1), "f1": 0.5, "mcc": 0.1})
    return pd.DataFrame(rows)


def _text_boxes(fig: Figure):
    """(description, bbox) of every visible label-like text: tick labels, axis labels, titles."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = []
    for ax_i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        texts = []
        for kind, axis in (("xtick", ax.xaxis), ("ytick", ax.yaxis)):
            lo, hi = sorted(axis.get_view_interval())
            texts += [(kind, tick.label1) for tick in axis.get_major_ticks()
                      if lo - 1e-12 * abs(hi - lo) <= tick.get_loc() <= hi + 1e-12 * abs(hi - lo)]
        texts += [("xlabel", ax.xaxis.label), ("ylabel", ax.yaxis.label), ("title", ax.title)]
        for kind, t in texts:
            if t.get_visible() and t.get_text().strip():
                boxes.append((f"axes{ax_i}.{kind}:{t.get_text()!r}", t.get_window_extent(renderer)))
    if fig._suptitle is not None and fig._suptitle.get_text():
        boxes.append(("suptitle", fig._suptitle.get_window_extent(renderer)))
    return boxes


def assert_no_overlapping_labels(fig: Figure, tolerance: float = 1.0) -> None:
    """Fail if any two tick labels, axis labels or titles of ``fig`` overlap by more than ``tolerance`` px,
    or its title runs past the figure's edges."""
    boxes = _text_boxes(fig)
    width = fig.bbox.width
    clashes = [f"{name} spans x {box.x0:.0f}..{box.x1:.0f} of a {width:.0f} px figure" for name, box in boxes
               if name == "suptitle" and (box.x0 < -tolerance or box.x1 > width + tolerance)]
    for (name_a, a), (name_b, b) in itertools.combinations(boxes, 2):
        w = min(a.x1, b.x1) - max(a.x0, b.x0)
        h = min(a.y1, b.y1) - max(a.y0, b.y0)
        if w > tolerance and h > tolerance:
            clashes.append(f"{name_a} overlaps {name_b}")
    assert not clashes, "; ".join(clashes[:10])


def axis_texts(fig: Figure) -> str:
    """All axis labels, titles and the suptitle of a figure, joined (to assert on names and units)."""
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return " | ".join(parts)
