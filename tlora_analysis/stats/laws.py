"""Closed-form null laws for comparing low-rank updates (docs/statistics.md derives each).

- An update with Haar-random singular vectors against a fixed matrix X (out × in): E cos = 0,
  Var cos = 1/(out·in) exactly, whatever the two spectra. Its law is *not* normal for low-rank
  updates (a rank-1 pair gives a product of two near-normal factors), so tests draw it
  (:mod:`..analysis.nulls`). Inside TLoRA's reachable set S (p·q dimensions) the same holds
  with out·in replaced by p·q; an update isotropic in S (a Gaussian core) has the lighter-tailed
  law (c + 1)/2 ~ Beta((pq − 1)/2, (pq − 1)/2), which low-rank updates do not follow.
- TLoRA's reachable fraction f(X) = ‖P_C X P_A‖² / ‖X‖² for X unrelated to uniformly random
  subspaces col(Cᵀ) (dimension p) and col(A) (dimension q): E f = p·q / (out·in).
- Two independent uniformly random subspaces of dimensions i and j in R^d: E ‖U_iᵀ V_j‖² = i·j/d,
  so the subspace similarity φ = ‖U_iᵀ V_j‖² / min(i, j) has mean max(i, j)/d.
"""

from __future__ import annotations

__all__ = ["haar_cosine_variance", "reachable_fraction_mean", "subspace_overlap_mean"]


def haar_cosine_variance(out: int, inn: int) -> float:
    """Var cos(R, X) = 1/(out·in) for R with Haar-random singular vectors and any fixed X ≠ 0."""
    return 1.0 / (out * inn)


def reachable_fraction_mean(dim_left: int, dim_right: int, out: int, inn: int) -> float:
    """E f = (p/out)·(q/in) for a fixed X and uniformly random subspaces of dimensions p (output
    side) and q (input side)."""
    return (dim_left / out) * (dim_right / inn)


def subspace_overlap_mean(i: int, j: int, d: int) -> float:
    """E φ(i, j) = max(i, j)/d for independent uniformly random subspaces of R^d."""
    return max(i, j) / d
