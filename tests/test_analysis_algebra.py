"""Pure functions of the analyzers against dense float64 numpy on random factored updates."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from tlora_analysis.adapters import get_spec
from tlora_analysis.analysis.distributions import _sample_update, entry_statistics
from tlora_analysis.analysis.intruders import count_intruders, merged_top_left_vectors
from tlora_analysis.analysis.merged import inner_with_dense, paper_faithful_update
from tlora_analysis.analysis.nulls import MergedRandomNull, RandomNull, haar_block, haar_frames, summarize
from tlora_analysis.analysis.similarity import _PairAlgebra
from tlora_analysis.lowrank import FactoredUpdate

RTOL = 1e-10


def relative_difference(a, b):
    return _PairAlgebra().statistics(a, b, "right", want_grid=False)["rel_diff_dW"]


def rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / max(np.linalg.norm(b), 1e-300))


def random_update(rng, out=24, inn=24, r=4, kind="tlora"):
    if kind == "tlora":
        return FactoredUpdate(rng.standard_normal((out, r)), rng.standard_normal((r, r)), rng.standard_normal((r, inn)),
                              rng.uniform(0.5, 2.0))
    if kind == "lora":
        return FactoredUpdate(rng.standard_normal((out, r)), None, rng.standard_normal((r, inn)), 0.5)
    return FactoredUpdate.from_dense(rng.standard_normal((out, inn)))


@pytest.mark.parametrize("kind", ["tlora", "lora", "dense"])
def test_relative_difference_matches_dense(kind):
    rng = np.random.default_rng(1)
    a, b = random_update(rng, kind=kind), random_update(rng, kind=kind)
    dense = np.linalg.norm(a.dense() - b.dense()) / np.linalg.norm(b.dense())
    assert abs(relative_difference(a, b) - dense) <= RTOL * dense


def test_relative_difference_exact_when_updates_nearly_cancel():
    rng = np.random.default_rng(2)
    a = random_update(rng)
    b = a + 1e-3 * random_update(rng)
    dense = np.linalg.norm(a.dense() - b.dense()) / np.linalg.norm(b.dense())
    assert abs(relative_difference(a, b) - dense) <= RTOL * dense
    assert np.isnan(relative_difference(a, 0.0 * b))


def test_paper_faithful_update_transposes_and_drops_lora_scale():
    rng = np.random.default_rng(3)
    lora = random_update(rng, kind="lora")
    assert rel(paper_faithful_update(lora, get_spec("lora")).dense(), lora.dense().T / 0.5) <= RTOL
    for method in ("tlora", "vera", "lora-xs"):  # a trained or unit scale stays
        update = random_update(rng, kind="tlora")
        assert rel(paper_faithful_update(update, get_spec(method)).dense(), update.dense().T) <= RTOL
    full = random_update(rng, kind="dense")
    assert paper_faithful_update(full, get_spec("full")) is full
    with pytest.raises(ValueError, match="square"):
        paper_faithful_update(random_update(rng, out=20, inn=12, kind="lora"), get_spec("lora"))


@pytest.mark.parametrize("kind", ["tlora", "lora", "dense"])
def test_inner_with_dense(kind):
    rng = np.random.default_rng(4)
    upd = random_update(rng, out=20, inn=16, kind=kind)
    w = rng.standard_normal((20, 16))
    expect = float(np.sum(upd.dense() * w))
    assert abs(inner_with_dense(upd, w) - expect) <= RTOL * abs(expect)


@pytest.mark.parametrize("kind", ["tlora", "lora", "dense"])
def test_sampled_update_entries_are_the_dense_entries(kind):
    rng = np.random.default_rng(5)
    upd = random_update(rng, out=30, inn=20, kind=kind)
    sample = _sample_update(upd, 100, np.random.default_rng(7))
    flat = np.random.default_rng(7).choice(600, size=100, replace=False)
    assert rel(sample, upd.dense().reshape(-1)[flat]) <= RTOL
    assert rel(_sample_update(upd, 10_000, rng), upd.dense().reshape(-1)) <= RTOL


def test_sampled_entries_with_identity_factors():
    rng = np.random.default_rng(6)
    m = rng.standard_normal((12, 9))
    for upd in (FactoredUpdate(None, None, m), FactoredUpdate(m, None, None), FactoredUpdate(None, m[:9], m.T)):
        n = upd.shape[0] * upd.shape[1]
        sample = _sample_update(upd, n - 3, np.random.default_rng(0))
        flat = np.random.default_rng(0).choice(n, size=n - 3, replace=False)
        assert rel(sample, upd.dense().reshape(-1)[flat]) <= RTOL


def test_entry_statistics_match_scipy_and_handle_constants():
    rng = np.random.default_rng(8)
    x = rng.standard_normal(6000) * 2 + 1
    st = entry_statistics(x, 6000, 5000, np.random.default_rng(0))
    assert st["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert st["std"] == pytest.approx(x.std(ddof=1), rel=1e-12)
    m2 = np.mean((x - x.mean()) ** 2)
    assert st["skew"] == pytest.approx(np.mean((x - x.mean()) ** 3) / m2**1.5, rel=1e-9)
    assert st["excess_kurtosis"] == pytest.approx(np.mean((x - x.mean()) ** 4) / m2**2 - 3, rel=1e-9)
    assert st["ks_stat"] == pytest.approx(sps.kstest(x, sps.norm(x.mean(), x.std(ddof=1)).cdf).statistic)
    assert st["shapiro_n"] == 5000 and st["shapiro_pvalue"] > 1e-3
    zero = entry_statistics(np.zeros(16), 16, 5000, rng)
    assert zero["std"] == 0 and np.isnan(zero["skew"]) and np.isnan(zero["ks_stat"])


def test_haar_frames_are_orthonormal():
    u = haar_frames(np.random.default_rng(0), 5, 30, 6)
    assert np.allclose(np.swapaxes(u, 1, 2) @ u, np.eye(6), atol=1e-12)


@pytest.mark.parametrize("dim,p,k", [(40, 3, 4), (9, 6, 5)])  # Wishart branch, explicit branch
def test_haar_block_has_the_law_of_projected_haar_frames(dim, p, k):
    n = 3000
    reduced = haar_block(np.random.default_rng(1), n, dim, p, k)
    q, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((dim, p)))
    explicit = np.einsum("dp,ndk->npk", q, haar_frames(np.random.default_rng(3), n, dim, k))
    for stat in (lambda x: np.sum(x**2, axis=(1, 2)), lambda x: x[:, 0, 0]):
        assert sps.ks_2samp(stat(reduced), stat(explicit)).pvalue > 1e-3
    assert np.mean(np.sum(reduced**2, axis=(1, 2))) == pytest.approx(p * k / dim, rel=0.05)


def test_random_null_statistics_match_dense_for_given_frames():
    rng = np.random.default_rng(9)
    a, b = random_update(rng, out=20, inn=16), random_update(rng, out=20, inn=16)
    ua, sa, va = a.svd()
    _, sb, _ = b.svd()
    u_r, v_r = haar_frames(rng, 1, 20, 4)[0], haar_frames(rng, 1, 16, 4)[0]
    r_dense = u_r @ np.diag(sb) @ v_r.T
    null = RandomNull(1, 0, "layer", (20, 16), 4, 4)
    null.x, null.y = (ua.T @ u_r)[None], (va.T @ v_r)[None]
    st = null.statistics(sa, sb, side="right")
    a_d = a.dense()
    cos = np.sum(a_d * r_dense) / (np.linalg.norm(a_d) * np.linalg.norm(r_dense))
    assert st["cosine_dW"][0] == pytest.approx(cos, rel=1e-10)
    assert st["rel_diff_dW"][0] == pytest.approx(np.linalg.norm(a_d - r_dense) / np.linalg.norm(r_dense), rel=1e-10)
    assert st["phi_rr"][0] == pytest.approx(np.linalg.norm(va.T @ v_r) ** 2 / 4, rel=1e-10)


@pytest.mark.parametrize("shared_w0", [False, True], ids=["two-W0", "one-W0-rotated-frames"])
def test_merged_random_null_matches_dense(shared_w0):
    """Each draw equals the dense merged cosine with the partner its frames define: R = U diag(σ_b) Vᵀ,
    U, V the drawn frames, or P u', Q v' when they are drawn in the shared W0's singular bases."""
    from tlora_analysis.analysis.updates import BaseWeight

    rng = np.random.default_rng(10)
    w0a = BaseWeight(rng.standard_normal((12, 12)))
    w0b = w0a if shared_w0 else BaseWeight(rng.standard_normal((12, 12)))
    pa, pb = random_update(rng, 12, 12, 3), random_update(rng, 12, 12, 3)
    null = MergedRandomNull(4, 0, "layer", w0a, w0b, 3)
    assert (null._rotation is not None) == shared_w0
    sb = pb.singular_values()
    ma = w0a.weight + pa.dense()
    got = null.cosine(pa.svd(), float(np.sum(pa.dense() * w0b.weight)), float(np.linalg.norm(ma)), sb)
    u, v = null._frames(0)
    if shared_w0:
        p_left, _, q_right = w0a.svd
        u, v = np.einsum("ij,njk->nik", p_left, u), np.einsum("ij,njk->nik", q_right, v)
    for k in range(4):
        mb = w0b.weight + u[k] @ np.diag(sb) @ v[k].T
        assert got[k] == pytest.approx(np.sum(ma * mb) / (np.linalg.norm(ma) * np.linalg.norm(mb)), rel=1e-10)


def test_merged_random_null_draws_in_bounded_chunks(monkeypatch):
    """Chunked draws (forced small here) give the same null as one chunk would from the same law."""
    from tlora_analysis.analysis.updates import BaseWeight

    monkeypatch.setattr(MergedRandomNull, "_CHUNK_FLOATS", 24 * 3 * 5)
    rng = np.random.default_rng(11)
    w0 = BaseWeight(rng.standard_normal((12, 12)))
    null = MergedRandomNull(23, 0, "layer", w0, w0, 3)
    assert len(null._chunks) == 5 and sum(c for _, c in null._chunks) == 23
    pa = random_update(rng, 12, 12, 3)
    ma = w0.weight + pa.dense()
    got = null.cosine(pa.svd(), float(np.sum(pa.dense() * w0.weight)), float(np.linalg.norm(ma)), np.ones(3))
    again = null.cosine(pa.svd(), float(np.sum(pa.dense() * w0.weight)), float(np.linalg.norm(ma)), np.ones(3))
    assert got.shape == (23,) and np.isfinite(got).all() and np.array_equal(got, again)  # redrawn exactly


def test_summarize_ignores_nan():
    got = summarize({"x": np.array([1.0, 2.0, np.nan, 3.0]), "y": np.full(4, np.nan)})
    assert got["null_mean_x"] == 2.0 and got["null_lo_x"] == pytest.approx(1.05) and got["null_hi_x"] == pytest.approx(2.95)
    assert np.isnan([got["null_mean_y"], got["null_lo_y"], got["null_hi_y"]]).all()


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("kinds", [("tlora", "lora"), ("lora", "dense"), ("dense", "dense")])
def test_pair_algebra_matches_dense(side, kinds):
    rng = np.random.default_rng(12)
    a, b = random_update(rng, 18, 14, kind=kinds[0]), random_update(rng, 18, 14, kind=kinds[1])
    st = _PairAlgebra().statistics(a, b, side, want_grid=True)
    da, db = a.dense(), b.dense()
    assert st["cosine_dW"] == pytest.approx(np.sum(da * db) / (np.linalg.norm(da) * np.linalg.norm(db)), rel=1e-10)
    u_a, _, vt_a = np.linalg.svd(da)
    u_b, _, vt_b = np.linalg.svd(db)
    ka, kb = np.linalg.matrix_rank(da), np.linalg.matrix_rank(db)
    basis_a, basis_b = (u_a[:, :ka], u_b[:, :kb]) if side == "left" else (vt_a[:ka].T, vt_b[:kb].T)
    expect = np.array([[np.linalg.norm(basis_a[:, :i].T @ basis_b[:, :j]) ** 2 / min(i, j)
                        for j in range(1, kb + 1)] for i in range(1, ka + 1)])
    assert rel(st["grid"], expect) <= 1e-9


@pytest.mark.parametrize("k", [3, 40])  # matrix-free Lanczos, dense SVD
def test_merged_top_vectors_and_intruder_count(k):
    rng = np.random.default_rng(11)
    w0 = rng.standard_normal((150, 100))
    upd = FactoredUpdate(rng.standard_normal((150, 4)) * 3, None, rng.standard_normal((4, 100)), 1.0)
    top = merged_top_left_vectors(w0, upd, k)
    u_ref = np.linalg.svd(w0 + upd.dense())[0][:, :k]
    assert np.allclose(np.abs(np.sum(top * u_ref, axis=0)), 1.0, atol=1e-8)
    u0 = np.linalg.svd(w0)[0]
    best = np.max(np.abs(u0.T @ u_ref), axis=0)
    assert count_intruders(u0, top, 0.5) == int(np.sum(best < 0.5))
    assert count_intruders(u0, u0[:, :k], 0.5) == 0
