"""FactoredUpdate against dense float64 numpy, on random factors and hand-computed cases."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tlora_analysis.lowrank import FactoredUpdate

TOL = 1e-10


def rel(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


def random_update(rng, out, inn, p, q, rank_deficient=False, core=True):
    left = rng.standard_normal((out, p))
    right = rng.standard_normal((q, inn))
    if rank_deficient:  # duplicate a column / row so the factors lose rank
        left[:, -1] = left[:, 0]
        right[-1] = 2 * right[0]
    m = rng.standard_normal((p, q)) if core else None
    return FactoredUpdate(left, m, right, scale=rng.uniform(0.3, 2.0))


SHAPES = [  # out, in, p, q
    (12, 9, 3, 3),
    (9, 12, 4, 2),
    (20, 20, 5, 5),
    (7, 30, 6, 4),
    (16, 16, 8, 8),
]


@pytest.mark.parametrize("out,inn,p,q", SHAPES)
@pytest.mark.parametrize("deficient", [False, True])
def test_spectral_quantities_match_dense(out, inn, p, q, deficient):
    rng = np.random.default_rng(out * 100 + inn + deficient)
    u = random_update(rng, out, inn, p, q, deficient)
    d = u.dense()
    np.testing.assert_allclose(d, u.scale * u.left @ u.core @ u.right, rtol=1e-13)
    s_dense = np.linalg.svd(d, compute_uv=False)
    s = u.singular_values()
    k = s.size
    assert rel(s, s_dense[:k]) < TOL
    assert np.all(s_dense[k:] < 1e-10 * s_dense[0])
    assert abs(u.fro_norm() - np.linalg.norm(d)) / np.linalg.norm(d) < TOL
    assert abs(u.spectral_norm() - s_dense[0]) / s_dense[0] < TOL
    assert abs(u.stable_rank() - np.sum(s_dense**2) / s_dense[0] ** 2) < TOL * 10
    U, sig, V = u.svd()
    assert rel(U @ np.diag(sig) @ V.T, d) < TOL
    np.testing.assert_allclose(U.T @ U, np.eye(k), atol=1e-12)
    np.testing.assert_allclose(V.T @ V, np.eye(k), atol=1e-12)


def test_effective_rank_variants_by_hand():
    # σ = (3, 1): sigma-normalised p = (3/4, 1/4); energy p = (9/10, 1/10).
    u = FactoredUpdate(np.eye(4)[:, :2], np.diag([3.0, 1.0]), np.eye(5)[:2])
    h_sigma = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    h_energy = -(0.9 * np.log(0.9) + 0.1 * np.log(0.1))
    assert u.effective_rank("sigma") == pytest.approx(np.exp(h_sigma), rel=1e-14)
    assert u.effective_rank("energy") == pytest.approx(np.exp(h_energy), rel=1e-14)
    assert u.stable_rank() == pytest.approx(10 / 9, rel=1e-14)
    with pytest.raises(ValueError, match="kind"):
        u.effective_rank("bogus")


def test_diagonal_core_by_hand():
    # Orthonormal factors and a diagonal B: σ are |diag| sorted, eigenvalues are the diagonal.
    left = np.eye(6)[:, :3]
    right = np.eye(6)[:3]
    u = FactoredUpdate(left, np.diag([2.0, -5.0, 1.0]), right, scale=0.5)
    np.testing.assert_allclose(u.singular_values(), [2.5, 1.0, 0.5], rtol=1e-15)
    np.testing.assert_allclose(u.eigenvalues(), [-2.5, 1.0, 0.5], rtol=1e-15)
    assert u.fro_norm() == pytest.approx(np.sqrt(2.5**2 + 1 + 0.25), rel=1e-15)


@pytest.mark.parametrize("out,inn,p,q", SHAPES)
def test_pairs_match_dense(out, inn, p, q):
    rng = np.random.default_rng(7 + out + inn)
    a = random_update(rng, out, inn, p, q)
    b = random_update(rng, out, inn, q, p, core=False) if p == q else random_update(rng, out, inn, 2, 2)
    da, db = a.dense(), b.dense()
    assert abs(a.inner(b) - np.sum(da * db)) / abs(np.sum(da * db)) < TOL
    cos = np.sum(da * db) / np.linalg.norm(da) / np.linalg.norm(db)
    assert abs(a.cosine(b) - cos) < TOL
    assert abs(a.relative_difference(b) - np.linalg.norm(da - db) / np.linalg.norm(db)) < TOL
    assert rel((a - b).dense(), da - db) < TOL
    assert rel((a + 2 * b).dense(), da + 2 * db) < TOL


@pytest.mark.parametrize("side", ["left", "right"])
def test_subspace_similarity_matches_dense(side):
    rng = np.random.default_rng(3)
    a = random_update(rng, 15, 11, 4, 4)
    b = random_update(rng, 15, 11, 3, 5)
    grid = a.subspace_similarity(b, side=side)
    ua, _, va = np.linalg.svd(a.dense())
    ub, _, vb = np.linalg.svd(b.dense())
    if side == "left":
        x, y = ua[:, :4], ub[:, :3]
    else:
        x, y = va[:4].T, vb[:3].T
    assert grid.shape == (4, 3)
    for i in range(1, 5):
        for j in range(1, 4):
            want = np.linalg.norm(x[:, :i].T @ y[:, :j]) ** 2 / min(i, j)
            assert abs(grid[i - 1, j - 1] - want) < TOL
    self_grid = a.subspace_similarity(a)
    np.testing.assert_allclose(np.diag(self_grid), 1.0, atol=1e-12)


def test_eigenvalues_match_dense_nonzero_spectrum():
    rng = np.random.default_rng(11)
    u = random_update(rng, 18, 18, 4, 4)
    lam = u.eigenvalues()
    dense = np.linalg.eigvals(u.dense())
    dense = dense[np.abs(dense) > 1e-9 * np.abs(dense).max()]
    assert lam.size == dense.size == 4
    key = lambda z: (round(z.real, 8), round(z.imag, 8))  # noqa: E731
    np.testing.assert_allclose(sorted(lam, key=key), sorted(dense, key=key), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="square"):
        random_update(rng, 5, 6, 2, 2).eigenvalues()


def test_dense_representation_and_mixed_pairs():
    rng = np.random.default_rng(5)
    low = random_update(rng, 10, 8, 3, 3)
    d = rng.standard_normal((10, 8))
    full = FactoredUpdate.from_dense(d)
    assert full.is_dense and full.shape == (10, 8)
    assert rel(full.singular_values(), np.linalg.svd(d, compute_uv=False)) < TOL
    assert abs(full.inner(low) - np.sum(d * low.dense())) < TOL * np.linalg.norm(d) * low.fro_norm()
    assert abs(low.inner(full) - full.inner(low)) < 1e-12
    assert rel((full - low).dense(), d - low.dense()) < TOL


def test_lora_form_without_core_and_torch_inputs():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(9, 4, generator=g)
    a = torch.randn(4, 7, generator=g)
    u = FactoredUpdate(b, None, a, torch.tensor(0.5))
    want = 0.5 * b.double().numpy() @ a.double().numpy()
    assert rel(u.dense(), want) < 1e-15
    assert rel(u.singular_values(), np.linalg.svd(want, compute_uv=False)[:4]) < TOL


def test_zero_update_gives_nan_ratios():
    u = FactoredUpdate(np.ones((4, 2)), np.zeros((2, 2)), np.ones((2, 3)))
    assert u.fro_norm() == 0.0 and u.spectral_norm() == 0.0
    assert np.isnan(u.stable_rank()) and np.isnan(u.effective_rank())
    assert np.isnan(u.cosine(u))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="inner sizes"):
        FactoredUpdate(np.ones((4, 2)), np.ones((3, 3)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="different shapes"):
        FactoredUpdate.from_dense(np.ones((3, 3))).cosine(FactoredUpdate.from_dense(np.ones((3, 4))))
    with pytest.raises(ValueError, match="2-D"):
        FactoredUpdate(np.ones(3), None, None)


@settings(max_examples=25, deadline=None)
@given(
    out=st.integers(2, 14), inn=st.integers(2, 14), p=st.integers(1, 5), q=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_singular_values_and_cosine(out, inn, p, q, seed):
    rng = np.random.default_rng(seed)
    a = random_update(rng, out, inn, p, q)
    b = random_update(rng, out, inn, q, p)
    da, db = a.dense(), b.dense()
    s = np.linalg.svd(da, compute_uv=False)
    k = a.singular_values().size
    assert np.allclose(a.singular_values(), s[:k], rtol=1e-9, atol=1e-12 * s[0])
    assert abs(a.inner(b) - np.sum(da * db)) <= 1e-10 * np.linalg.norm(da) * np.linalg.norm(db)


@pytest.mark.parametrize("out,inn,p,q", SHAPES)
def test_gram_and_compressed_paths_agree(out, inn, p, q):
    rng = np.random.default_rng(21 + p)
    u = random_update(rng, out, inn, p, q, rank_deficient=True)
    gram_norm = u.fro_norm()  # no compressed form yet: Gram products
    assert "_compressed" not in u.__dict__
    u.singular_values()
    assert abs(gram_norm - u.fro_norm()) / u.fro_norm() < TOL
    assert abs(gram_norm - np.linalg.norm(u.dense())) / np.linalg.norm(u.dense()) < TOL
    v = random_update(rng, out, inn, q, p)
    assert abs(u.inner(v) - u._compressed_inner(v)) < TOL * u.fro_norm() * v.fro_norm()


def test_relative_difference_of_nearly_equal_updates_does_not_cancel():
    rng = np.random.default_rng(2)
    a = random_update(rng, 30, 20, 4, 4)
    tiny = FactoredUpdate(rng.standard_normal((30, 1)), None, rng.standard_normal((1, 20)), 1e-9)
    b = a + tiny
    want = np.linalg.norm(tiny.dense()) / np.linalg.norm(b.dense())
    assert abs(a.relative_difference(b) - want) / want < 1e-6
