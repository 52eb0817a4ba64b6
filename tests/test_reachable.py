"""analysis.reachable: every statistic against an independent dense float64 computation from the
raw factors, hand cases (an update inside / outside the reachable set), its nulls, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from helpers_runs import make_tiny_run
from synthetic_runs import STEPS, Design, lora_copy_of, lora_run, tlora_run
from tlora_analysis import analysis
from tlora_analysis.analysis.reachable import REACHABLE_COLUMNS


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"tlora": make_tiny_run(base, "tlora", steps=4), "lora": make_tiny_run(base, "lora", steps=4),
            "full": make_tiny_run(base, "full", steps=4), "tlora_s1": make_tiny_run(base, "tlora", steps=4, seed=1),
            "lora-xs": make_tiny_run(base, "lora-xs", steps=4), "vera": make_tiny_run(base, "vera", steps=4)}


def _dense(run, layer, step):
    return run.update(layer, step).dense()


def _projector(m: np.ndarray) -> np.ndarray:
    q = np.linalg.qr(m)[0]
    return q @ q.T


@pytest.mark.parametrize("other", ["lora", "full", "tlora_s1"])
def test_matches_dense_projections(runs, other):
    t, o = runs["tlora"], runs[other]
    table = analysis.reachable(t, o, n_null=50)
    assert tuple(table.columns) == REACHABLE_COLUMNS and len(table) == len(t.layers) * len(t.steps)
    for layer in t.layers:
        frozen = {k: v.double().numpy() for k, v in t.frozen(layer).items()}
        p_c, p_a = _projector(frozen["tlora_C"].T), _projector(frozen["tlora_A"])  # out × out, in × in
        for step in t.steps[1:]:
            row = table[(table.layer == layer) & (table.step == step)].iloc[0]
            dt, do = _dense(t, layer, step), _dense(o, layer, step)
            inside = p_c @ do @ p_a
            f = np.sum(inside**2) / np.sum(do**2)
            assert row.reachable_fraction == pytest.approx(f, rel=1e-9)
            assert row.max_cosine == pytest.approx(np.sqrt(f), rel=1e-9)
            assert row.cosine_dW == pytest.approx(np.sum(dt * do) / np.linalg.norm(dt) / np.linalg.norm(do), rel=1e-8)
            assert row.cosine_reachable == pytest.approx(
                np.sum(dt * inside) / np.linalg.norm(dt) / np.linalg.norm(inside), rel=1e-8)
            assert row.cosine_dW == pytest.approx(row.cosine_reachable * row.max_cosine, rel=1e-8)
            u, s, vt = np.linalg.svd(do)
            k = int(np.sum(s > s[0] * 1e-10))
            r = frozen["tlora_A"].shape[1]
            assert row.other_rank == k
            assert row.overlap_out == pytest.approx(np.trace(p_c @ u[:, :k] @ u[:, :k].T) / min(r, k), rel=1e-8)
            assert row.overlap_in == pytest.approx(np.trace(p_a @ vt[:k].T @ vt[:k]) / min(r, k), rel=1e-8)
            out, inn = do.shape
            assert row.null_mean_reachable_fraction == pytest.approx(r * r / (out * inn))
            assert row.null_mean_overlap_in == pytest.approx(max(r, k) / inn)
            assert row.null_sd_cosine_reachable == pytest.approx(1 / r)
            for name in ("reachable_fraction", "cosine_reachable", "overlap_out", "overlap_in"):
                assert row[f"null_lo_{name}"] <= row[f"null_hi_{name}"]
                dim = {"overlap_out": out, "overlap_in": inn}.get(name, np.inf)
                if max(r, k) < dim:
                    assert 1 / 51 <= row[f"p_{name}"] <= 1
                else:  # LoRA's update spans the whole space on this side: φ = 1 whatever, no test
                    assert row[name] == pytest.approx(1.0) and np.isnan(row[f"p_{name}"]) and np.isnan(row[f"z_{name}"])
            if other == "full":
                assert k == min(out, inn)  # full fine-tuning's update has full rank, so one side at least is untestable


def test_lora_xs_reachable_set_is_w0s_top_singular_subspaces(runs):
    """LoRA-XS's set is {U_r M V_rᵀ} from W0's SVD: LoRA's update measured against it, densely."""
    xs, lo = runs["lora-xs"], runs["lora"]
    table = analysis.reachable(xs, lo, n_null=50)
    r = xs.rank
    for layer in xs.layers:
        frozen = {k: v.double().numpy() for k, v in xs.frozen(layer).items()}
        p_u, p_v = _projector(frozen["loraxs_A"]), _projector(frozen["loraxs_B"].T)
        u, _, vt = np.linalg.svd(xs.base_weight(layer).double().numpy())  # the spans are W0's top-r (float32 SVD)
        np.testing.assert_allclose(p_u, u[:, :r] @ u[:, :r].T, atol=1e-5)
        np.testing.assert_allclose(p_v, vt[:r].T @ vt[:r], atol=1e-5)
        t = {k: v.double().numpy() for k, v in lo.trainable(layer, lo.steps[-1]).items()}
        do = lo.layer_info(layer)["scaling"] * t["lora_B"] @ t["lora_A"]
        row = table[(table.layer == layer) & (table.step == lo.steps[-1])].iloc[0]
        assert row.method_a == "lora-xs" and row.reach_dim_out == r == row.reach_dim_in
        assert row.reachable_fraction == pytest.approx(np.sum((p_u @ do @ p_v) ** 2) / np.sum(do**2), rel=1e-8)
    with pytest.raises(ValueError, match="VeRA|vera"):  # VeRA's output side moves with b: no fixed set
        analysis.reachable(runs["vera"], lo)


def test_hand_cases_inside_and_outside_the_set():
    """LoRA = TLoRA's own update: all of it reachable, cosine 1. An update built in the orthogonal
    complement of col(Cᵀ): nothing reachable, its cosine with TLoRA exactly 0."""
    design = Design(n_layers=1, dim=16, rank=2)
    rng = np.random.default_rng(0)
    finals = {n: rng.standard_normal((2, 2)) for n in design.names}
    tl = tlora_run("t", 0, design, lambda step, name: finals[name] * step, w0={})
    same = analysis.reachable(tl, lora_copy_of(tl, "l", 1, design), steps=[STEPS[-1]], n_null=100)
    np.testing.assert_allclose(same[["reachable_fraction", "cosine_reachable", "cosine_dW"]], 1.0, atol=1e-12)
    assert (same["p_cosine_reachable"] == 1 / 101).all() and (same["p_reachable_fraction"] == 1 / 101).all()
    name = design.names[0]
    q_c = np.linalg.qr(tl.frozen(name)["tlora_C"].numpy().T)[0]
    outside = np.linalg.qr(rng.standard_normal((16, 2)) - q_c @ (q_c.T @ rng.standard_normal((16, 2))))[0]
    outside -= q_c @ (q_c.T @ outside)
    lo = lora_run("l", 2, design, lambda step, n: (rng.standard_normal((2, 16)), outside), w0={})
    far = analysis.reachable(tl, lo, steps=[STEPS[-1]], n_null=100, layers=[name])
    assert far["reachable_fraction"].iloc[0] == pytest.approx(0.0, abs=1e-24)
    assert far["cosine_dW"].iloc[0] == pytest.approx(0.0, abs=1e-12)
    assert far["overlap_out"].iloc[0] == pytest.approx(0.0, abs=1e-12)


def test_a_rank_deficient_frozen_factor_shrinks_the_set():
    """A of rank 3 < r = 4: S is {Q_C M Q_Aᵀ} with Q_A of 3 columns, and every statistic follows it (densely)."""
    design = Design(n_layers=1, dim=24, rank=4)

    def frozen(rng):
        a, c = rng.standard_normal((24, 4)), rng.standard_normal((4, 24))
        a[:, 3] = a[:, 0] + a[:, 1]
        return a, c

    rng = np.random.default_rng(5)
    tl = tlora_run("t", 0, design, lambda step, name: rng.standard_normal((4, 4)), frozen=frozen, w0={})
    lo = lora_run("l", 1, design, lambda step, name: (rng.standard_normal((4, 24)), rng.standard_normal((24, 4))),
                  w0={})
    name, step = design.names[0], STEPS[-1]
    row = analysis.reachable(tl, lo, steps=[step], n_null=50).iloc[0]
    a, c = (tl.frozen(name)[k].numpy() for k in ("tlora_A", "tlora_C"))
    u, s, _ = np.linalg.svd(a)
    q_a = u[:, : int(np.sum(s > 1e-10 * s[0]))]  # rank 3
    p_c, p_a = _projector(c.T), q_a @ q_a.T
    dt, do = _dense(tl, name, step), _dense(lo, name, step)
    inside = p_c @ do @ p_a
    assert (row.reach_dim_out, row.reach_dim_in) == (4, 3)
    assert row.reachable_fraction == pytest.approx(np.sum(inside**2) / np.sum(do**2), rel=1e-9)
    assert row.null_mean_reachable_fraction == pytest.approx(4 * 3 / 24**2)
    assert row.cosine_reachable == pytest.approx(np.sum(dt * inside) / np.linalg.norm(dt) / np.linalg.norm(inside),
                                                 rel=1e-8)
    assert row.null_sd_cosine_reachable == pytest.approx(1 / np.sqrt(12))


def test_a_set_that_is_every_matrix_or_a_whole_side_has_no_test():
    """r equal to the layer's size: f = 1 and φ(r, r) = 1 for any update, so p and z are NaN, not a number
    that floating-point noise in the draws would make up."""
    design = Design(n_layers=1, dim=6, rank=6)
    rng = np.random.default_rng(2)
    tl = tlora_run("t", 0, design, lambda step, name: rng.standard_normal((6, 6)), w0={})
    lo = lora_run("l", 1, design, lambda step, name: (rng.standard_normal((6, 6)), rng.standard_normal((6, 6))),
                  w0={})
    row = analysis.reachable(tl, lo, steps=[STEPS[-1]], n_null=50).iloc[0]
    assert row.reachable_fraction == pytest.approx(1.0)
    assert np.isnan(row.p_reachable_fraction) and np.isnan(row.z_reachable_fraction)
    assert np.isfinite(row.p_cosine_reachable)  # the cosine inside S still has its test
    per = analysis.similarity(tl, lo, steps=[STEPS[-1]], n_null=50).per_layer.iloc[0]
    assert per.phi_rr == pytest.approx(1.0) and np.isnan(per.p_phi_rr) and np.isnan(per.z_phi_rr)
    assert np.isfinite(per.p_cosine_dW)


def test_zero_updates_give_nan_not_errors(runs):
    first = analysis.reachable(runs["tlora"], runs["lora"], steps=[0], n_null=20)
    assert first[["reachable_fraction", "cosine_reachable", "p_reachable_fraction"]].isna().all().all()


def test_seeded_and_bad_input(runs):
    a = analysis.reachable(runs["tlora"], runs["lora"], steps="last", n_null=100, seed=2)
    b = analysis.reachable(runs["tlora"], runs["lora"], steps="last", n_null=100, seed=2)
    c = analysis.reachable(runs["tlora"], runs["lora"], steps="last", n_null=100, seed=3)
    assert a.equals(b) and not a["p_cosine_reachable"].equals(c["p_cosine_reachable"])
    with pytest.raises(ValueError, match="needs first a run whose update is confined.*pass it second"):
        analysis.reachable(runs["lora"], runs["tlora"])
    with pytest.raises(ValueError, match="compared with itself"):
        analysis.reachable(runs["tlora"], type(runs["tlora"])(runs["tlora"].path))
    with pytest.raises(ValueError, match="compared with itself"):
        analysis.similarity(runs["lora"], runs["lora"])
    with pytest.raises(ValueError, match="n_null"):
        analysis.reachable(runs["tlora"], runs["lora"], n_null=0)
