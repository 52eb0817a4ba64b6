"""Where another run's update lies relative to what a confined method can reach, and how it aligns inside it.

TLoRA's update ΔW_T = α·Cᵀ Bᵀ Aᵀ lives in S = {Q_C M Q_Aᵀ : M ∈ R^{p×q}}, with Q_C, Q_A
orthonormal bases of col(Cᵀ) and col(A) (p = q = r): fixed at initialisation, whatever
training does. The same holds for any method whose outer factors are frozen (its spec's
``fixed_subspaces``): LoRA-XS's ΔW = A R B lives in W0's top-r singular subspaces, so the
table compares where another update lies against random projections (TLoRA) or against W0's
own top directions (LoRA-XS). Below, "TLoRA" stands for the confined run. For the other run's
update X (LoRA, full fine-tuning, another TLoRA), per (layer, step):

- ``reachable_fraction`` f = ‖Q_Cᵀ X Q_A‖²_F / ‖X‖²_F, the share of X's energy inside S;
  √f (``max_cosine``) is the largest cosine *any* update in S could have with X.
  Null: X unrelated to the frozen A, C (their column spaces uniformly random, as Gaussian or
  orthogonal initialisations give): E f = p·q/(out·in); p-values from ``n_null`` exact draws
  of those subspaces.
- ``cosine_reachable`` c_S = cos(ΔW_T, P_S(X)), TLoRA's alignment with the part of X it can
  reach; cos(ΔW_T, X) = c_S·√f exactly. Null: inside S, ΔW_T keeps its singular values and
  its singular vectors are uniformly random (Haar in O(p) × O(q)): E c_S = 0 and
  Var c_S = 1/(p·q) exactly, as for an update isotropic in S; unlike the isotropic (Beta)
  law it keeps the update's spectrum, whose low stable rank gives the cosine heavier tails
  (docs/statistics.md). ``n_null`` exact draws give the band and p-value.
- ``overlap_out`` / ``overlap_in``: the subspace similarity φ = ‖Q_Cᵀ U_X‖² / min(p, k)
  (output side) and ‖Q_Aᵀ V_X‖² / min(q, k) (input side) between X's top-k singular subspaces
  (k its numerical rank) and TLoRA's frozen ones; null mean max(·, k)/d, p-values from the
  subspace draws. TLoRA's own singular subspaces *are* col(Cᵀ) and col(A) for a full-rank B,
  so this is what the paper-style φ between TLoRA and another method measures.

Every p-value is upper-tail ("more than chance", (k + 1)/(N + 1)) and comes with a z-score
Φ⁻¹(1 − mid-rank p) for combining layers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from ..lowrank import FactoredUpdate
from ..stats import haar_cosine_variance, mc_pvalue, reachable_fraction_mean, subspace_overlap_mean, z_from_p
from .nulls import HAAR_IN_REACH, SUBSPACES, RandomNull, haar_block, layer_rng
from .select import PAIR_COLUMNS, LayerSelection, StepSelection, TableBuilder, common_steps, match_layers, pair_identity
from .spectra import numerical_rank
from .updates import UpdateSource

__all__ = ["reachable", "REACHABLE_COLUMNS"]

REACHABLE_COLUMNS = PAIR_COLUMNS + (
    "reach_dim_out", "reach_dim_in", "other_rank", "n_null",
    "reachable_fraction", "null_mean_reachable_fraction", "null_lo_reachable_fraction", "null_hi_reachable_fraction",
    "p_reachable_fraction", "z_reachable_fraction",
    "max_cosine", "cosine_dW", "null_lo_cosine_dW", "null_hi_cosine_dW",
    "cosine_reachable", "null_mean_cosine_reachable", "null_sd_cosine_reachable", "null_lo_cosine_reachable",
    "null_hi_cosine_reachable", "p_cosine_reachable", "z_cosine_reachable",
    "overlap_out", "null_mean_overlap_out", "null_lo_overlap_out", "null_hi_overlap_out", "p_overlap_out",
    "z_overlap_out",
    "overlap_in", "null_mean_overlap_in", "null_lo_overlap_in", "null_hi_overlap_in", "p_overlap_in", "z_overlap_in",
)
_BAND = (2.5, 97.5)


def _basis(q: np.ndarray | None, dim: int) -> np.ndarray:
    return np.eye(dim) if q is None else q


def _reach_basis(q: np.ndarray | None, factor: np.ndarray | None, dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """An orthonormal basis of the frozen factor's column space, of its exact rank, and the map from ``q``'s
    coordinates to it (None when ``q`` already is one: the factor has full rank, as a random A or C has).

    ``q`` comes from a thin QR, so it has as many columns as the factor even when the factor is
    rank-deficient (a LoRA-XS factor from a W0 of rank below r); S must not count the extra ones."""
    if q is None:
        return np.eye(dim), None
    u, sigma, _ = np.linalg.svd(q.T @ factor)
    k = numerical_rank(sigma, factor.shape)
    if k == q.shape[1]:
        return q, None
    return q @ u[:, :k], u[:, :k]


def _test(name: str, draws: np.ndarray, observed: float) -> dict[str, float]:
    """The 95% band of the draws, the upper-tail Monte-Carlo p-value and the z-score of its mid-rank."""
    mc = mc_pvalue(draws, observed, "greater")
    lo, hi = np.percentile(draws, _BAND)
    return {f"null_lo_{name}": float(lo), f"null_hi_{name}": float(hi), f"p_{name}": mc.pvalue,
            f"z_{name}": float(z_from_p(mc.mid)) if np.isfinite(mc.mid) else math.nan}


class _LayerNulls:
    """One layer's null draws, made on first use and shared by its steps.

    ``subspaces(p, q, a, b)``: Fᵀ Q_X for uniformly random p- and q-frames F and the other
    update's fixed orthonormal bases (out × a, in × b): for fixed Q, Fᵀ Q has the law of
    ``haar_block(dim, a, p)`` transposed, so a draw costs O(a³ + p³), not O(dim·p·a).
    ``inside(p, q, k_t, k_x)``: a :class:`RandomNull` in the p × q coordinates of S.
    """

    def __init__(self, n: int, seed: int, layer: str, shape: tuple[int, int]) -> None:
        self.n, self.seed, self.layer, self.shape = n, seed, layer, shape
        self._subspaces: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._inside: dict[tuple[int, ...], RandomNull] = {}

    def subspaces(self, p: int, q: int, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        key = (p, q, a, b)
        if key not in self._subspaces:
            rng = layer_rng(self.seed, self.layer, SUBSPACES)
            out, inn = self.shape
            self._subspaces[key] = (np.swapaxes(haar_block(rng, self.n, out, a, p), 1, 2),  # n × p × a
                                    np.swapaxes(haar_block(rng, self.n, inn, b, q), 1, 2))  # n × q × b
        return self._subspaces[key]

    def inside(self, p: int, q: int, k_t: int, k_x: int) -> RandomNull:
        key = (p, q, k_t, k_x)
        if key not in self._inside:
            self._inside[key] = RandomNull(self.n, self.seed, self.layer, (p, q), k_t, k_x, purpose=HAAR_IN_REACH)
        return self._inside[key]


def _nonzero_sigma(core: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    s = np.linalg.svd(core, compute_uv=False)
    return s[: numerical_rank(s, shape)]


def _cosine_inside(k_t: np.ndarray, projected: np.ndarray, f: float, nulls: _LayerNulls,
                   shape: tuple[int, int]) -> dict[str, float]:
    """c_S with its spectrum-preserving null inside S, and the band that null gives the raw cosine (c_S·√f)."""
    p, q = projected.shape
    out = {"null_mean_cosine_reachable": 0.0, "null_sd_cosine_reachable": math.sqrt(haar_cosine_variance(p, q))}
    norm_t, norm_p = float(np.linalg.norm(k_t)), float(np.linalg.norm(projected))
    if norm_t == 0.0 or norm_p == 0.0:
        return {**out, **dict.fromkeys(("cosine_reachable", "null_lo_cosine_reachable", "null_hi_cosine_reachable",
                                        "p_cosine_reachable", "z_cosine_reachable", "null_lo_cosine_dW",
                                        "null_hi_cosine_dW"), math.nan)}
    c_s = float(np.clip(np.sum(k_t * projected) / (norm_t * norm_p), -1.0, 1.0))
    s_t, s_x = _nonzero_sigma(k_t, shape), _nonzero_sigma(projected, shape)
    draws = nulls.inside(p, q, s_t.size, s_x.size).statistics(s_t, s_x, "left")["cosine_dW"]
    out.update(cosine_reachable=c_s, **_test("cosine_reachable", draws, c_s))
    out["null_lo_cosine_dW"] = out["null_lo_cosine_reachable"] * math.sqrt(f)
    out["null_hi_cosine_dW"] = out["null_hi_cosine_reachable"] * math.sqrt(f)
    return out


def _layer_row(ut: FactoredUpdate, uo: FactoredUpdate, nulls: _LayerNulls) -> dict[str, float]:
    """Every statistic of one (layer, step)."""
    q_c, k_t, q_a = ut.compressed()
    q_lo, k_o, q_ro = uo.compressed()
    out, inn = ut.shape
    q_c, to_c = _reach_basis(q_c, ut.left, out)
    q_a, to_a = _reach_basis(q_a, None if ut.right is None else ut.right.T, inn)
    if to_c is not None:  # ΔW_T lies in the factor's range, so these maps lose none of it
        k_t = to_c.T @ k_t
    if to_a is not None:
        k_t = k_t @ to_a
    q_lo, q_ro = _basis(q_lo, out), _basis(q_ro, inn)
    g_left, g_right = q_c.T @ q_lo, q_a.T @ q_ro  # p × a, q × b
    projected = g_left @ k_o @ g_right.T  # Q_Cᵀ X Q_A: the reachable part of X, in S's coordinates
    p, q = projected.shape
    norm_o2, norm_t = float(np.sum(k_o**2)), float(np.linalg.norm(k_t))
    f = float(np.sum(projected**2)) / norm_o2 if norm_o2 > 0 else math.nan
    u_k, s_o, vt_k = np.linalg.svd(k_o, full_matrices=False)
    k = numerical_rank(s_o, uo.shape)
    row: dict[str, float] = {
        "reach_dim_out": p, "reach_dim_in": q, "other_rank": k, "reachable_fraction": f,
        "null_mean_reachable_fraction": reachable_fraction_mean(p, q, out, inn),
        "max_cosine": math.sqrt(f) if np.isfinite(f) else math.nan,
        "cosine_dW": float(np.sum(k_t * projected)) / (norm_t * math.sqrt(norm_o2)) if norm_t * norm_o2 > 0 else math.nan,
    }
    if k == 0:
        row.update({c: math.nan for c in REACHABLE_COLUMNS if c not in row and c not in PAIR_COLUMNS
                    and c not in ("n_null",)})
        return row
    row.update(_cosine_inside(k_t, projected, f, nulls, ut.shape))
    left, right = nulls.subspaces(p, q, *k_o.shape)
    if p < out or q < inn:
        null_f = np.sum((left @ k_o @ np.swapaxes(right, 1, 2)) ** 2, axis=(1, 2)) / norm_o2
        row.update(_test("reachable_fraction", null_f, f))
    else:  # S is every out × in matrix: f = 1 for any update, so no test
        row.update(null_lo_reachable_fraction=1.0, null_hi_reachable_fraction=1.0, p_reachable_fraction=math.nan,
                   z_reachable_fraction=math.nan)
    for side, gram, draws, basis, dim, full in (("out", g_left, left, u_k[:, :k], p, out),
                                                 ("in", g_right, right, vt_k[:k].T, q, inn)):
        observed = float(np.sum((gram @ basis) ** 2)) / min(dim, k)
        row[f"overlap_{side}"] = observed
        row[f"null_mean_overlap_{side}"] = subspace_overlap_mean(dim, k, full)
        if max(dim, k) < full:
            row.update(_test(f"overlap_{side}", np.sum((draws @ basis) ** 2, axis=(1, 2)) / min(dim, k), observed))
        else:  # one of the subspaces is the whole space: φ = 1 for any pair, so no test
            row.update({f"null_lo_overlap_{side}": 1.0, f"null_hi_overlap_{side}": 1.0,
                        f"p_overlap_{side}": math.nan, f"z_overlap_{side}": math.nan})
    return row


def reachable(run_tlora: Any, run_other: Any, layers: LayerSelection = None, steps: StepSelection = "all",
              n_null: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per matched (layer, step): the other run's update against the first run's reachable set.

    ``run_tlora`` must be a run of a method confined to fixed subspaces (TLoRA: its frozen A, C
    define the set; LoRA-XS: W0's top-r singular vectors); ``run_other`` any run with the same
    layers (LoRA, full fine-tuning, TLoRA with another seed). ``n_null`` exact draws per layer
    (seeded by ``seed`` and the layer name, shared by its steps) give the Monte-Carlo p-values
    and bands. Columns: :data:`REACHABLE_COLUMNS` (docs/analysis.md).
    """
    if not run_tlora.spec.fixed_subspaces:
        raise ValueError(f"reachable() needs first a run whose update is confined by frozen outer factors (TLoRA, "
                         f"LoRA-XS); run {run_tlora.name!r} is {run_tlora.method!r}, whose update can leave any "
                         f"fixed subspace: pass it second")
    if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)) or n_null < 2:
        raise ValueError(f"n_null must be an int ≥ 2 (null draws per layer; 2,000 or more for p-values), got {n_null!r}")
    chosen, _, _, _ = match_layers(run_tlora, run_other, layers)
    chosen_steps = common_steps([run_tlora, run_other], steps)
    tlora, other = UpdateSource(run_tlora), UpdateSource(run_other)
    table = TableBuilder(REACHABLE_COLUMNS)
    for layer in chosen:
        ident = pair_identity(run_tlora, run_other, layer)
        nulls = _LayerNulls(n_null, seed, layer, tuple(run_tlora.layer_shapes[layer]))
        for step in chosen_steps:
            table.add(**ident, step=step, n_null=n_null,
                      **_layer_row(tlora.update(layer, step), other.update(layer, step), nulls))
    return table.frame()
