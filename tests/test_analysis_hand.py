"""Hand-computed cases: a diagonal B between coordinate-axis frozen factors, through the analyzers.

The runs here are in-memory objects with the Run contract's attributes (shared with
tlora_analysis.store.Run), so every number can be worked out on paper.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tlora_analysis import analysis
from tlora_analysis.adapters import get_spec
from tlora_analysis.lowrank import FactoredUpdate

N, R = 6, 4
E = torch.eye(N, R, dtype=torch.float64)  # the first R coordinate axes
D = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64))


class HandRun:
    """One or two square N × N layers, steps 0 and 1; ΔW at step 1 is 2·E D Eᵀ = diag(6, 4, 2, 0, 0, 0)."""

    def __init__(self, method, name, alphas=(2.0,), w0=None):
        self.method, self.name, self.path = method, name, f"/hand/{name}"
        self.spec = get_spec(method)
        self.layers = [f"encoder.layer.{i}.attention.self.query" for i in range(len(alphas))]
        self.layer_shapes = {layer: (N, N) for layer in self.layers}
        self.steps, self.rank = [0, 1], R
        self.alphas = dict(zip(self.layers, alphas))
        self._w0 = w0
        self.has_base_weights = w0 is not None

    def snapshot_info(self, step):
        return {"step": step, "epoch": float(step)}

    def layer_info(self, layer):
        return {"shape": [N, N], "rank": R, "scaling": 2.0}

    def frozen(self, layer):
        return {"tlora_A": E.clone(), "tlora_C": E.T.clone()} if self.method == "tlora" else {}

    def trainable(self, layer, step):
        b = D if step else torch.zeros(R, R, dtype=torch.float64)
        if self.method == "tlora":
            return {"tlora_B": b, "tlora_alpha": torch.tensor(self.alphas[layer] if step else 1.0)}
        return {"lora_A": b @ E.T, "lora_B": E.clone()}  # ΔW = 2 · B A with scaling 2

    def update(self, layer, step):
        t = self.trainable(layer, step)
        if self.method == "tlora":
            f = self.frozen(layer)
            return FactoredUpdate(f["tlora_C"].T, t["tlora_B"].T, f["tlora_A"].T, t["tlora_alpha"])
        return FactoredUpdate(t["lora_B"], None, t["lora_A"], 2.0)

    def base_weight(self, layer):
        return self._w0


def test_spectra_of_diagonal_b():
    run = HandRun("tlora", "t")
    sp = analysis.spectra(run, steps="last")
    assert list(sp.sigma) == pytest.approx([6.0, 4.0, 2.0, 0.0], abs=1e-14)
    row = analysis.spectral_summary(run, steps="last").iloc[0]
    assert row.stable_rank == pytest.approx(56 / 36)
    p = np.array([6, 4, 2]) / 12
    assert row.effective_rank_sigma == pytest.approx(math.exp(-np.sum(p * np.log(p))))
    q = np.array([36, 16, 4]) / 56
    assert row.effective_rank_energy == pytest.approx(math.exp(-np.sum(q * np.log(q))))
    assert row.numerical_rank == 3 and row.fro_norm_dW == pytest.approx(math.sqrt(56))
    eig = analysis.eigenvalues(run, steps="last")
    assert list(eig.eig_real) == pytest.approx([6, 4, 2]) and not eig.eig_imag.any()
    assert list(analysis.eigenvalues(run, steps=[0]).eig_abs) == []


def test_norms_of_diagonal_b():
    row = analysis.norms(HandRun("tlora", "t"), steps="last").iloc[0]
    assert (row.fro_norm_A, row.spectral_norm_A) == pytest.approx((2.0, 1.0))
    assert (row.fro_norm_C, row.spectral_norm_C) == pytest.approx((2.0, 1.0))
    assert (row.fro_norm_B, row.spectral_norm_B) == pytest.approx((math.sqrt(14), 3.0))
    assert row.alpha == 2.0 and row.alpha_fro_norm_B == pytest.approx(2 * math.sqrt(14))
    assert row.spectral_norm_dW == pytest.approx(6.0) and np.isnan(row.rel_fro_norm_dW)
    assert row.epoch == 1.0 and row.layer_index == 0 and row.module == "query"


def test_histogram_of_diagonal_b():
    tables = analysis.distributions(HandRun("tlora", "t"), bins=3, steps="last")
    assert list(tables.histogram["count"]) == [13, 1, 2]
    assert list(tables.histogram.bin_left) == pytest.approx([0, 1, 2])
    assert tables.stats.iloc[0]["mean"] == pytest.approx(6 / 16)


def test_alpha_spread_by_hand():
    tables = analysis.scaling(HandRun("tlora", "t", alphas=(2.0, 4.0)), steps="last")
    row = tables.across_layers.query("module == 'all'").iloc[0]
    assert (row.n_layers, row.alpha_range, row.alpha_mean) == (2, 2.0, 3.0)
    assert row.alpha_cv == pytest.approx(math.sqrt(2) / 3) and np.isnan(row.corr_alpha_fro_norm_B)


def test_identical_updates_by_hand():
    w0 = torch.eye(N, dtype=torch.float64)
    sim = analysis.similarity(HandRun("tlora", "t", w0=w0), HandRun("lora", "l", w0=w0), n_null=10)
    row = sim.per_layer.query("step == 1").iloc[0]
    assert row.cosine_dW == pytest.approx(1.0) and row.rel_diff_dW == pytest.approx(0.0, abs=1e-15)
    assert row.phi_rr == pytest.approx(1.0)
    # paper-faithful: I + diag(6,4,2,0,0,0) against I + diag(6,4,2,0,0,0)ᵀ / 2 (LoRA's scale 2 left out)
    assert row.cosine_merged_paper == pytest.approx(52 / math.sqrt(86 * 32))
    start = sim.per_layer.query("step == 0").iloc[0]
    assert np.isnan(start.cosine_dW) and np.isnan(start.phi_rr) and start.cosine_merged_paper == pytest.approx(1.0)
    assert list(sim.phi.phi) == pytest.approx([1, 1, 1, 1, 1, 1, 1, 1, 1])  # φ(i, j) = 1 for nested identical subspaces


def test_merged_eigenvalues_by_hand():
    w0 = torch.eye(N, dtype=torch.float64)
    got = analysis.merged_eigenvalues(HandRun("lora", "l", w0=w0), paper_faithful=True)
    assert sorted(got.eig_real) == pytest.approx([1, 1, 1, 2, 3, 4])  # I + diag(3, 2, 1, 0, 0, 0)
    got = analysis.merged_eigenvalues(HandRun("lora", "l", w0=w0))
    assert sorted(got.eig_real) == pytest.approx([1, 1, 1, 3, 5, 7])
    assert analysis.intruders(HandRun("lora", "l", w0=w0), k=3).n_intruders.iloc[0] == 0
