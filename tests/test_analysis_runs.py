"""Every analyzer end to end on tiny recorded runs (TLoRA, LoRA, full, VeRA, LoRA-XS), against dense float64."""

from __future__ import annotations

import numpy as np
import pytest
from helpers_runs import make_tiny_run
from scipy import stats as sps

from tlora_analysis import analysis
from tlora_analysis.analysis.select import IDENTITY_COLUMNS
from tlora_analysis.analysis.similarity import STATISTICS

RTOL = 1e-10
METHODS = ("tlora", "lora", "full", "vera", "lora-xs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    made = {m: make_tiny_run(root, m, steps=4) for m in METHODS}
    made["tlora_s1"] = make_tiny_run(root, "tlora", steps=4, seed=1)
    made["tlora_s2"] = make_tiny_run(root, "tlora", steps=4, seed=2)
    made["tlora_nobase"] = make_tiny_run(root, "tlora", steps=2, store_base_weights=False, name="nobase")
    return made


def f64(t):
    return t.detach().double().numpy()


def dense_update(run, layer, step):
    """ΔW straight from the stored tensors, independent of FactoredUpdate."""
    t = run.trainable(layer, step)
    if run.method == "tlora":
        fz = run.frozen(layer)
        return float(t["tlora_alpha"]) * (f64(fz["tlora_A"]) @ f64(t["tlora_B"]) @ f64(fz["tlora_C"])).T
    if run.method == "lora":
        cfg = run.adapter_config
        return cfg["lora_alpha"] / cfg["rank"] * f64(t["lora_B"]) @ f64(t["lora_A"])
    if run.method == "vera":
        fz = run.frozen(layer)
        return np.diag(f64(t["vera_lambda_b"])) @ f64(fz["vera_B"]) @ np.diag(f64(t["vera_lambda_d"])) @ f64(fz["vera_A"])
    if run.method == "lora-xs":
        fz = run.frozen(layer)
        return f64(fz["loraxs_A"]) @ f64(t["loraxs_R"]) @ f64(fz["loraxs_B"])
    return f64(t["weight"]) - f64(run.trainable(layer, 0)["weight"])


def w0(run, layer):
    return f64(run.base_weight(layer))


def close(got, want, tol=RTOL):
    got, want = np.asarray(got, float), np.asarray(want, float)
    assert got.shape == want.shape
    assert np.linalg.norm(got - want) <= tol * max(np.linalg.norm(want), 1e-300)


def rows(df, layer, step):
    return df[(df.layer == layer) & (df.step == step)]


@pytest.mark.parametrize("method", METHODS)
def test_spectra_and_summary_match_dense_svd(runs, method):
    run = runs[method]
    sp, summ = analysis.spectra(run), analysis.spectral_summary(run)
    assert list(sp.columns) == list(IDENTITY_COLUMNS) + ["rank_order", "sigma"]
    assert set(sp.step) == set(run.steps) and set(sp.layer) == set(run.layers)
    for layer in run.layers:
        for step in run.steps[1:]:
            s = np.linalg.svd(dense_update(run, layer, step), compute_uv=False)
            got = rows(sp, layer, step)
            k = len(got)
            assert list(got.rank_order) == list(range(1, k + 1))
            close(got.sigma, s[:k])
            assert np.all(s[k:] <= 1e-12 * s[0])
            row = rows(summ, layer, step).iloc[0]
            assert row.fro_norm_dW == pytest.approx(np.linalg.norm(s), rel=RTOL)
            assert row.spectral_norm_dW == pytest.approx(s[0], rel=RTOL)
            assert row.stable_rank == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=RTOL)
            p = s[s > 1e-14 * s[0]] / s[s > 1e-14 * s[0]].sum()
            assert row.effective_rank_sigma == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-8)
            assert row.numerical_rank == np.linalg.matrix_rank(dense_update(run, layer, step))
    first = summ[summ.step == 0]
    if method != "full":
        assert (first.numerical_rank == 0).all() and first.stable_rank.isna().all()
    ident = sp.iloc[0]
    assert ident.run == run.name and ident.method == method and ident.module in ("query", "value")
    assert ident.layer_index == int(ident.layer.split(".")[3])


@pytest.mark.parametrize("method", METHODS)
def test_eigenvalues_match_dense(runs, method):
    run = runs[method]
    eig = analysis.eigenvalues(run, steps="last")
    step = run.steps[-1]
    for layer in run.layers:
        d = dense_update(run, layer, step)
        lam = np.linalg.eigvals(d)
        lam = lam[np.abs(lam) > 1e-9 * np.abs(lam).max()]
        got = rows(eig, layer, step)
        assert len(got) == len(lam)
        assert np.allclose(np.sort(got.eig_abs.to_numpy()), np.sort(np.abs(lam)), rtol=1e-8)
        assert np.allclose(np.sort_complex(got.eig_real + 1j * got.eig_imag), np.sort_complex(lam), rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_merged_eigenvalues_corrected_and_paper_faithful(runs, method):
    run = runs[method]
    layer, step = run.layers[0], run.steps[-1]
    dw = dense_update(run, layer, step)
    for flag, matrix, label in ((False, w0(run, layer) + dw, "corrected"), (True, w0(run, layer) + paper(run, dw), "paper_faithful")):
        got = rows(analysis.merged_eigenvalues(run, layers=[layer], paper_faithful=flag), layer, step)
        assert (got.construction == label).all()
        lam = np.linalg.eigvals(matrix)
        assert np.allclose(np.sort_complex(got.eig_real + 1j * got.eig_imag), np.sort_complex(lam), atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_norms_match_dense(runs, method):
    run = runs[method]
    table = analysis.norms(run)
    for layer in run.layers:
        for step in run.steps:
            row = rows(table, layer, step).iloc[0]
            d = dense_update(run, layer, step)
            assert row.fro_norm_dW == pytest.approx(np.linalg.norm(d), rel=RTOL, abs=1e-300)
            assert row.spectral_norm_dW == pytest.approx(np.linalg.norm(d, 2), rel=RTOL, abs=1e-300)
            assert row.fro_norm_W0 == pytest.approx(np.linalg.norm(w0(run, layer)), rel=RTOL)
            assert row.rel_fro_norm_dW == pytest.approx(np.linalg.norm(d) / np.linalg.norm(w0(run, layer)), rel=RTOL, abs=1e-300)
            t = run.trainable(layer, step)
            if method == "tlora":
                fz = run.frozen(layer)
                b = f64(t["tlora_B"])
                assert row.fro_norm_B == pytest.approx(np.linalg.norm(b), abs=1e-300, rel=RTOL)
                assert row.spectral_norm_A == pytest.approx(np.linalg.norm(f64(fz["tlora_A"]), 2), rel=RTOL)
                assert row.spectral_norm_C == pytest.approx(np.linalg.norm(f64(fz["tlora_C"]), 2), rel=RTOL)
                assert row.alpha == float(t["tlora_alpha"])
                assert row.alpha_fro_norm_B == pytest.approx(abs(row.alpha) * np.linalg.norm(b), rel=RTOL, abs=1e-300)
            elif method == "lora":
                assert row.fro_norm_A == pytest.approx(np.linalg.norm(f64(t["lora_A"])), rel=RTOL)
                assert row.spectral_norm_B == pytest.approx(np.linalg.norm(f64(t["lora_B"]), 2), rel=RTOL, abs=1e-300)
                assert np.isnan(row.fro_norm_C) and np.isnan(row.alpha) and np.isnan(row.alpha_fro_norm_B)
            elif method == "vera":  # vectors read as the diagonal matrices they scale by
                fz, d, b = run.frozen(layer), f64(t["vera_lambda_d"]), f64(t["vera_lambda_b"])
                assert row.spectral_norm_B == pytest.approx(np.linalg.norm(f64(fz["vera_B"]), 2), rel=RTOL)
                assert row.fro_norm_d == pytest.approx(np.linalg.norm(d), rel=RTOL)
                assert row.spectral_norm_d == pytest.approx(np.linalg.norm(np.diag(d), 2), rel=RTOL)
                assert row.fro_norm_b == pytest.approx(np.linalg.norm(b), rel=RTOL, abs=1e-300)
                assert np.isnan(row.fro_norm_C) and np.isnan(row.alpha)
            elif method == "lora-xs":
                fz, r = run.frozen(layer), f64(t["loraxs_R"])
                assert row.fro_norm_R == pytest.approx(np.linalg.norm(r), rel=RTOL, abs=1e-300)
                assert row.spectral_norm_R == pytest.approx(np.linalg.norm(r, 2), rel=RTOL, abs=1e-300)
                assert row.spectral_norm_A == pytest.approx(np.linalg.norm(f64(fz["loraxs_A"]), 2), rel=RTOL)
                assert row.fro_norm_B == pytest.approx(np.linalg.norm(f64(fz["loraxs_B"])), rel=RTOL)
            else:
                assert np.isnan(row.fro_norm_A) and np.isnan(row.fro_norm_B) and np.isnan(row.fro_norm_C)
    assert np.isnan(analysis.norms(runs["tlora_nobase"]).rel_fro_norm_dW).all()


def test_distributions_match_numpy_and_scipy(runs):
    run = runs["tlora"]
    layer, step = run.layers[1], run.steps[-1]
    tables = analysis.distributions(run, matrices=("A", "B", "C", "W0", "dW"), bins=7, qq=True)
    b = f64(run.trainable(layer, step)["tlora_B"]).ravel()
    hist = rows(tables.histogram, layer, step)
    hb = hist[hist.matrix == "B"]
    counts, edges = np.histogram(b, bins=7)
    assert list(hb["count"]) == list(counts) and np.allclose(hb.bin_left, edges[:-1])
    assert np.isclose(np.sum(hb.density * (hb.bin_right - hb.bin_left)), 1.0)
    st = rows(tables.stats, layer, step).set_index("matrix")
    assert st.loc["B", "n_entries"] == 16 and st.loc["B", "std"] == pytest.approx(b.std(ddof=1), rel=1e-12)
    assert st.loc["B", "excess_kurtosis"] == pytest.approx(sps.kurtosis(b), rel=1e-10)
    dw = dense_update(run, layer, step).ravel()
    assert st.loc["dW", "mean"] == pytest.approx(dw.mean(), rel=1e-9)
    assert st.loc["W0", "n_entries"] == 1024 and st.loc["C", "n_entries"] == 4 * 32
    qq = rows(tables.qq, layer, step)
    qb = qq[qq.matrix == "B"]
    # 16 entries: one point each, the sorted entries against the normal at (i − ½)/16
    np.testing.assert_allclose(qb.sample_quantile, np.sort(b), rtol=1e-12)
    np.testing.assert_allclose(qb.theoretical_quantile, sps.norm.ppf((np.arange(16) + 0.5) / 16), rtol=1e-12)
    qw = qq[qq.matrix == "W0"]  # 1,024 entries: 200 points, Hazen's quantiles at the same levels
    w0 = f64(run.base_weight(layer)).ravel()
    levels = (np.arange(200) + 0.5) / 200
    np.testing.assert_allclose(qw.sample_quantile, np.quantile(w0, levels, method="hazen"), rtol=1e-12)
    auto = analysis.distributions(run, bins="auto", steps="all")
    assert set(auto.stats.step) == set(run.steps) and auto.qq is None


@pytest.mark.parametrize("method, matrices", [("vera", ("A", "B", "d", "b", "dW")), ("lora-xs", ("A", "R", "B", "W0"))])
def test_distributions_of_each_methods_own_matrices(runs, method, matrices):
    run = runs[method]
    step = run.steps[-1]
    stats = analysis.distributions(run, matrices=matrices, steps="all").stats
    stored = {**{k: f64(v) for k, v in run.frozen(run.layers[0]).items()},
              **{k: f64(v) for k, v in run.trainable(run.layers[0], step).items()}}
    keys = run.spec.roles
    for matrix in matrices:
        row = rows(stats, run.layers[0], step).set_index("matrix").loc[matrix]
        x = (dense_update(run, run.layers[0], step) if matrix == "dW" else
             w0(run, run.layers[0]) if matrix == "W0" else stored[keys[matrix]]).ravel()
        assert row["n_entries"] == x.size and row["mean"] == pytest.approx(x.mean(), rel=1e-9, abs=1e-15)
    frozen = stats[stats.matrix == "A"]
    assert frozen.groupby("layer")["mean"].nunique().eq(1).all()  # a frozen matrix is summarised once per layer
    with pytest.raises(ValueError, match="has no matrix 'C'"):
        analysis.distributions(run, matrices=("C",))


def test_distributions_subsample_and_repeat_frozen_matrices(runs):
    run = runs["tlora"]
    tables = analysis.distributions(run, matrices=("W0", "dW"), max_entries=100, shapiro_max=50, steps=[2, 4])
    st = tables.stats
    assert (st.n_sampled == 100).all() and (st.n_entries == 1024).all() and (st.shapiro_n == 50).all()
    w = st[st.matrix == "W0"]
    assert w.groupby("layer")["mean"].nunique().eq(1).all()  # frozen: the same sample at every step
    again = analysis.distributions(run, matrices=("W0", "dW"), max_entries=100, shapiro_max=50, steps=[2, 4])
    assert st.equals(again.stats)


def test_distributions_bad_input(runs):
    with pytest.raises(ValueError, match="no matrix 'C'"):
        analysis.distributions(runs["lora"], matrices=("C",))
    with pytest.raises(ValueError, match="has no matrix .Q.; it has"):
        analysis.distributions(runs["tlora"], matrices=("Q",))
    with pytest.raises(ValueError, match="bins"):
        analysis.distributions(runs["tlora"], bins=0)
    with pytest.raises(analysis.MissingBaseWeightError, match="store_base_weights=True"):
        analysis.distributions(runs["tlora_nobase"], matrices=("W0",))


def test_scaling_per_layer_and_across_layers(runs):
    run = runs["tlora"]
    tables = analysis.scaling(run)
    step = run.steps[-1]
    per = tables.per_layer[tables.per_layer.step == step]
    alphas = np.array([float(run.trainable(layer, step)["tlora_alpha"]) for layer in per.layer])
    norms_b = np.array([np.linalg.norm(f64(run.trainable(layer, step)["tlora_B"])) for layer in per.layer])
    close(per.alpha, alphas)
    close(per.fro_norm_B, norms_b)
    row = tables.across_layers.query("step == @step and module == 'all'").iloc[0]
    assert row.n_layers == 4 and row.alpha_range == pytest.approx(np.ptp(alphas))
    assert row.alpha_cv == pytest.approx(alphas.std(ddof=1) / abs(alphas.mean()))
    assert row.corr_alpha_fro_norm_B == pytest.approx(np.corrcoef(alphas, norms_b)[0, 1])
    assert set(tables.across_layers.module) == {"query", "value", "all"}
    for other in ("lora", "vera", "lora-xs"):
        with pytest.raises(ValueError, match="trains none"):
            analysis.scaling(runs[other])


@pytest.mark.parametrize("pair", [("tlora", "lora"), ("lora", "full"), ("tlora", "tlora_s1"), ("vera", "lora"),
                                  ("lora-xs", "tlora")])
def test_similarity_matches_dense(runs, pair):
    a, b = runs[pair[0]], runs[pair[1]]
    sim = analysis.similarity(a, b, n_null=20, phi_steps="all")
    assert sim.common_layers == a.layers and sim.only_in_a == [] and sim.only_in_b == []
    for layer in a.layers:
        for step in a.steps[1:]:
            row = rows(sim.per_layer, layer, step).iloc[0]
            da, db = dense_update(a, layer, step), dense_update(b, layer, step)
            assert row.cosine_dW == pytest.approx(np.sum(da * db) / (np.linalg.norm(da) * np.linalg.norm(db)), rel=1e-9, abs=1e-12)
            assert row.rel_diff_dW == pytest.approx(np.linalg.norm(da - db) / np.linalg.norm(db), rel=RTOL)
            va = np.linalg.svd(da)[2].T[:, : np.linalg.matrix_rank(da)]
            vb = np.linalg.svd(db)[2].T[:, : np.linalg.matrix_rank(db)]
            m = min(va.shape[1], vb.shape[1])
            assert row.phi_rr == pytest.approx(np.linalg.norm(va[:, :m].T @ vb[:, :m]) ** 2 / m, rel=1e-8)
            grid = rows(sim.phi, layer, step)
            assert len(grid) == va.shape[1] * vb.shape[1]
            g = grid[(grid.i == 2) & (grid.j == 3)].phi.iloc[0]
            assert g == pytest.approx(np.linalg.norm(va[:, :2].T @ vb[:, :3]) ** 2 / 2, rel=1e-8)
            pa = paper(a, da)
            pb = paper(b, db)
            ma, mb = w0(a, layer) + pa, w0(b, layer) + pb
            assert row.cosine_merged_paper == pytest.approx(np.sum(ma * mb) / (np.linalg.norm(ma) * np.linalg.norm(mb)), rel=1e-10)
            assert row.n_null == 20
            assert row.null_lo_cosine_dW <= row.null_mean_cosine_dW <= row.null_hi_cosine_dW
            assert row.null_sd_cosine_dW == pytest.approx(1 / np.sqrt(da.size))
            assert 1 / 21 <= row.p_cosine_dW <= 1


def paper(run, dw):
    if run.method == "full":
        return dw
    if run.method == "lora":
        cfg = run.adapter_config
        return (dw / (cfg["lora_alpha"] / cfg["rank"])).T
    return dw.T


def test_similarity_random_null_is_seeded_and_centred(runs):
    a, b = runs["tlora"], runs["lora"]
    one = analysis.similarity(a, b, steps="last", n_null=200, seed=3).per_layer
    two = analysis.similarity(a, b, steps="last", n_null=200, seed=3).per_layer
    other = analysis.similarity(a, b, steps="last", n_null=200, seed=4).per_layer
    assert one.equals(two) and not one.null_mean_cosine_dW.equals(other.null_mean_cosine_dW)
    assert (one.null_mean_cosine_dW.abs() < 0.05).all()
    assert (one.null_lo_phi_rr < one.null_hi_phi_rr).all()


def test_similarity_p_values_are_the_rank_among_the_null_draws(runs):
    """p = (1 + #{draws ≥ observed}) / (N + 1): recomputed here from draws made with the module's own law."""
    from tlora_analysis.analysis.nulls import RandomNull

    a, b = runs["tlora"], runs["lora"]
    layer, step = a.layers[0], a.steps[-1]
    row = rows(analysis.similarity(a, b, layers=[layer], steps=[step], n_null=300, seed=5).per_layer, layer, step).iloc[0]
    sa = np.linalg.svd(dense_update(a, layer, step), compute_uv=False)
    sb = np.linalg.svd(dense_update(b, layer, step), compute_uv=False)
    sa, sb = sa[sa > 1e-12 * sa[0]], sb[sb > 1e-12 * sb[0]]
    draws = RandomNull(300, 5, layer, a.layer_shapes[layer], sa.size, sb.size).statistics(sa, sb, "right")["cosine_dW"]
    assert row.p_cosine_dW == pytest.approx((1 + np.sum(draws >= row.cosine_dW - 1e-12)) / 301)
    with pytest.raises(ValueError, match="n_null"):
        analysis.similarity(a, b, n_null=1)


class LayerSubset:
    """A run that shows only some of its layers (to test layer matching)."""

    def __init__(self, run, layers):
        self._run, self.layers = run, list(layers)

    def __getattr__(self, name):
        return getattr(self._run, name)


def test_similarity_matches_common_layers_and_reports_the_rest(runs):
    a, b = runs["tlora"], runs["lora"]
    sub_a = LayerSubset(a, a.layers[:3])
    sub_b = LayerSubset(b, b.layers[1:])
    sim = analysis.similarity(sub_a, sub_b, n_null=5)
    assert sim.common_layers == a.layers[1:3]
    assert sim.only_in_a == [a.layers[0]] and sim.only_in_b == [b.layers[3]]
    assert set(sim.per_layer.layer) == set(a.layers[1:3])
    with pytest.raises(analysis.NoCommonLayersError, match="no layer in common"):
        analysis.similarity(LayerSubset(a, a.layers[:1]), LayerSubset(b, b.layers[1:]))


def test_similarity_step_errors(runs):
    short = runs["tlora_nobase"]  # steps 0, 1, 2
    sim = analysis.similarity(runs["tlora"], short, n_null=5)
    assert sorted(set(sim.per_layer.step)) == [0, 1, 2]
    with pytest.raises(analysis.SelectionError, match="step.*4.*not recorded"):
        analysis.similarity(runs["tlora"], short, steps=[2, 4])
    assert np.isnan(sim.per_layer.cosine_merged_paper).all()


@pytest.mark.parametrize("method", METHODS)
def test_intruders_match_dense(runs, method):
    run = runs[method]
    table = analysis.intruders(run, k=6, threshold=0.6, steps="all")
    for layer in run.layers:
        u0 = np.linalg.svd(w0(run, layer))[0]
        for step in run.steps:
            u = np.linalg.svd(w0(run, layer) + dense_update(run, layer, step))[0][:, :6]
            expect = int(np.sum(np.max(np.abs(u0.T @ u), axis=0) < 0.6))
            row = rows(table, layer, step).iloc[0]
            assert row.n_intruders == expect and row.k == 6 and row.threshold == 0.6
    assert (table[table.step == 0].n_intruders == 0).all()


def test_merged_analyses_need_base_weights(runs):
    run = runs["tlora_nobase"]
    for call in (lambda: analysis.intruders(run), lambda: analysis.merged_eigenvalues(run)):
        with pytest.raises(analysis.MissingBaseWeightError, match="store_base_weights=True"):
            call()


def test_selections(runs):
    run = runs["tlora"]
    assert set(analysis.norms(run, layers="value").module) == {"value"}  # a bare string is one name
    assert set(analysis.norms(run, layers="re:.*value").module) == {"value"}
    assert set(analysis.norms(run, layers=["layer.1.attention.self.query"]).layer) == {run.layers[2]}
    with pytest.raises(analysis.SelectionError, match="matches no layer.*write 're:value\\$'"):
        analysis.norms(run, layers="value$")  # a regex without re: is a name, and no layer has it
    with pytest.raises(analysis.SelectionError, match="matches no layer"):
        analysis.norms(run, layers="uery")  # whole components only: "uery" is no name's suffix
    assert sorted(set(analysis.norms(run, steps=2).step)) == run.steps[::2]
    assert sorted(set(analysis.norms(run, steps="last").step)) == [run.steps[-1]]
    assert sorted(set(analysis.norms(run, steps=[3, 1]).step)) == [1, 3]
    with pytest.raises(analysis.SelectionError, match="matches no layer"):
        analysis.spectra(run, layers="re:.*key")
    with pytest.raises(analysis.SelectionError, match="matches no layer"):
        analysis.spectra(run, layers=["dense"])
    with pytest.raises(analysis.SelectionError, match="not recorded"):
        analysis.spectra(run, steps=[99])
    with pytest.raises(analysis.SelectionError, match="≥ 1"):
        analysis.spectra(run, steps=0)
    with pytest.raises(TypeError):
        analysis.spectra(run, steps=True)


def test_frozen_factors_are_read_once_per_layer(runs):
    run = runs["tlora"]
    calls = []

    class Counting(LayerSubset):
        def frozen(self, layer):
            calls.append(layer)
            return self._run.frozen(layer)

    analysis.spectra(Counting(run, run.layers))
    assert sorted(calls) == sorted(run.layers)


def test_parameter_validation(runs):
    run = runs["tlora"]
    with pytest.raises(ValueError, match="k must be"):
        analysis.intruders(run, k=0)
    with pytest.raises(ValueError, match="threshold"):
        analysis.intruders(run, threshold=1.5)
    with pytest.raises(ValueError, match="exceeds"):
        analysis.intruders(run, k=33)
    with pytest.raises(ValueError, match="side"):
        analysis.similarity(run, runs["lora"], side="up")
    with pytest.raises(ValueError, match="n_null"):
        analysis.similarity(run, runs["lora"], n_null=1)


def test_similarity_left_side_and_phi_steps(runs):
    sim = analysis.similarity(runs["tlora"], runs["lora"], side="left", steps=[1, 3], phi_steps="all", n_null=5)
    assert set(sim.phi.step) == {1, 3} and (sim.per_layer.phi_side == "left").all()
    layer = runs["tlora"].layers[0]
    da, db = dense_update(runs["tlora"], layer, 3), dense_update(runs["lora"], layer, 3)
    ua, ub = np.linalg.svd(da)[0][:, :4], np.linalg.svd(db)[0][:, :4]
    row = rows(sim.per_layer, layer, 3).iloc[0]
    assert row.phi_rr == pytest.approx(np.linalg.norm(ua.T @ ub) ** 2 / 4, rel=1e-8)
