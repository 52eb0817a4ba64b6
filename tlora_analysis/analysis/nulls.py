"""Random null baselines: what similarity statistics look like between unrelated updates.

The null partner of ΔW_a is R = U_R diag(σ_b) V_Rᵀ: ΔW_b's singular values (so the same
rank and Frobenius norm, "norm-matched") with Haar-random singular vectors. Because the
statistics depend on U_R only through U_aᵀ U_R (k_a × k_b), that block is drawn directly:
for U_R = G (GᵀG)^{-1/2} with G Gaussian (the polar factor is Haar), U_aᵀ U_R has the law of
G₁ (G₁ᵀG₁ + W)^{-1/2} with G₁ a k_a × k_b Gaussian and W ~ Wishart(dim − k_a, I) (Bartlett).
This is exact in distribution and costs O(k³) per draw instead of O(dim·k²).

Draws are made once per layer (seeded by the seed and the layer name) and reused at every
step: each step's null band is exactly distributed, and bands of different steps share
their random numbers, so they move smoothly over training.
"""

from __future__ import annotations

import math
import zlib

import numpy as np

__all__ = ["haar_block", "haar_frames", "layer_rng", "RandomNull", "MergedRandomNull", "summarize", "HAAR",
           "MERGED", "SUBSPACES", "HAAR_IN_REACH"]

# The random streams of one layer, one per null (layer_rng's ``purpose``).
HAAR, MERGED, SUBSPACES, HAAR_IN_REACH = 1, 2, 3, 4


def layer_rng(seed: int, layer: str, purpose: int) -> np.random.Generator:
    """A generator that depends only on (seed, layer name, purpose), not on what else is selected."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), purpose])


def _inv_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v / np.sqrt(w)[..., None, :]) @ np.swapaxes(v, -1, -2)


def _wishart_identity(rng: np.random.Generator, n: int, df: int, k: int) -> np.ndarray:
    """n draws of Wishart(df, I_k) (df ≥ k) by the Bartlett decomposition."""
    lower = np.tril(rng.standard_normal((n, k, k)), -1)
    idx = np.arange(k)
    lower[:, idx, idx] = np.sqrt(rng.chisquare(df - idx, size=(n, k)))
    return lower @ np.swapaxes(lower, -1, -2)


def haar_block(rng: np.random.Generator, n: int, dim: int, p: int, k: int) -> np.ndarray:
    """n draws (n × p × k) of Qᵀ U for a fixed orthonormal Q (dim × p) and Haar U (dim × k)."""
    if not (1 <= p <= dim and 1 <= k <= dim):
        raise ValueError(f"need 1 ≤ p, k ≤ dim; got p={p}, k={k}, dim={dim}")
    g1 = rng.standard_normal((n, p, k))
    df = dim - p
    if df >= k:
        rest = _wishart_identity(rng, n, df, k)
    else:
        g2 = rng.standard_normal((n, df, k))
        rest = np.swapaxes(g2, -1, -2) @ g2
    gram = np.swapaxes(g1, -1, -2) @ g1 + rest
    return g1 @ _inv_sqrt(gram)


def haar_frames(rng: np.random.Generator, n: int, dim: int, k: int) -> np.ndarray:
    """n explicit Haar-random orthonormal frames (n × dim × k)."""
    return haar_block(rng, n, dim, dim, k)


def _inner_with_random(sa: np.ndarray, x: np.ndarray, sb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """⟨U_a Σ_a V_aᵀ, U_R Σ_b V_Rᵀ⟩ = Σ_ij σa_i X_ij σb_j Y_ij for each draw (X = U_aᵀU_R, Y = V_aᵀV_R)."""
    return np.tensordot(x * y, np.outer(sa, sb), axes=([1, 2], [0, 1]))


class RandomNull:
    """Null statistics of ΔW_a against norm-matched random partners, for one layer.

    ``shape`` is the space the singular vectors are drawn in: (out, in) for the unconstrained
    null, (p, q) for TLoRA's reachable set in its own coordinates; ``purpose`` separates the
    random streams of different nulls of one layer."""

    def __init__(self, n: int, seed: int, layer: str, shape: tuple[int, int], ka: int, kb: int,
                 purpose: int = HAAR) -> None:
        rng = layer_rng(seed, layer, purpose)
        out, inn = shape
        self.x = haar_block(rng, n, out, ka, kb)  # U_aᵀ U_R
        self.y = haar_block(rng, n, inn, ka, kb)  # V_aᵀ V_R

    def statistics(self, sa: np.ndarray, sb: np.ndarray, side: str) -> dict[str, np.ndarray]:
        """cosine_dW, rel_diff_dW, phi_rr per draw; sa, sb: the nonzero σ of ΔW_a and ΔW_b."""
        ka, kb = sa.size, sb.size
        x, y = self.x[:, :ka, :kb], self.y[:, :ka, :kb]
        ip = _inner_with_random(sa, x, sb, y)
        na2, nb2 = float(sa @ sa), float(sb @ sb)
        m = min(ka, kb)
        block = (x if side == "left" else y)[:, :m, :m]
        return {
            "cosine_dW": ip / math.sqrt(na2 * nb2),
            "rel_diff_dW": np.sqrt(np.maximum(na2 + nb2 - 2.0 * ip, 0.0) / nb2),
            "phi_rr": np.sum(block**2, axis=(1, 2)) / m,
        }


def _bilinear(u: np.ndarray, w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u_jᵀ W v_j per draw and column (n × k), from one GEMM W [v_1 … v_n] and a column-wise dot."""
    n, inn, k = v.shape
    wv = (w @ np.swapaxes(v, 0, 1).reshape(inn, n * k)).reshape(w.shape[0], n, k)
    return np.einsum("nok,onk->nk", u, wv)


class MergedRandomNull:
    """Null of the paper-faithful merged cosine cos(W0a + P_a, W0b + R), for one layer.

    W0 is full rank, so R's singular vectors are drawn explicitly (n × (out + in) × k) and
    uᵀW0v is computed once per layer and draw: O(n·out·in·k) per layer, O(n·(out+in)·k²) per step.
    """

    def __init__(self, n: int, seed: int, layer: str, w0_a: np.ndarray, w0_b: np.ndarray, kb: int) -> None:
        rng = layer_rng(seed, layer, MERGED)
        out, inn = w0_a.shape
        self.u = haar_frames(rng, n, out, kb)
        self.v = haar_frames(rng, n, inn, kb)
        self.d_a = _bilinear(self.u, w0_a, self.v)  # u_jᵀ W0a v_j
        self.d_b = self.d_a if w0_b is w0_a or np.array_equal(w0_a, w0_b) else _bilinear(self.u, w0_b, self.v)
        self.w0_ab = float(np.sum(w0_a * w0_b))
        self.w0_b2 = float(np.sum(w0_b * w0_b))

    def cosine(self, pa_svd: tuple[np.ndarray, np.ndarray, np.ndarray], pa_w0b: float, pa_norm_merged: float,
               sb: np.ndarray) -> np.ndarray:
        """Per draw; pa_svd: (U, σ, V) of P_a truncated to its nonzero σ; pa_w0b = ⟨P_a, W0b⟩;
        pa_norm_merged = ‖W0a + P_a‖_F; sb: the nonzero σ of P_b."""
        ua, sa, va = pa_svd
        kb = sb.size
        u, v = self.u[:, :, :kb], self.v[:, :, :kb]
        x = np.matmul(ua.T, u)  # n × k_a × k_b
        y = np.matmul(va.T, v)
        pa_r = _inner_with_random(sa, x, sb, y)
        w0a_r, w0b_r = self.d_a[:, :kb] @ sb, self.d_b[:, :kb] @ sb
        num = self.w0_ab + pa_w0b + w0a_r + pa_r
        merged_b = np.sqrt(np.maximum(self.w0_b2 + 2.0 * w0b_r + float(sb @ sb), 0.0))
        return num / (pa_norm_merged * merged_b)


def summarize(draws: dict[str, np.ndarray]) -> dict[str, float]:
    """``null_mean_X``, ``null_lo_X``, ``null_hi_X`` (2.5 / 97.5 percentiles) for each statistic X.

    NaN draws (e.g. a zero update) are ignored; a statistic with no finite draw gets NaN.
    """
    names = list(draws)
    stacked = np.vstack([np.asarray(draws[name], dtype=np.float64) for name in names])
    finite = np.isfinite(stacked)
    mean, lo, hi = (np.full(len(names), math.nan) for _ in range(3))
    whole = finite.all(axis=1)  # the common case, vectorised; rows with some NaN one by one
    if whole.any():
        mean[whole] = stacked[whole].mean(axis=1)
        lo[whole], hi[whole] = np.percentile(stacked[whole], [2.5, 97.5], axis=1)
    for i in np.flatnonzero(~whole & finite.any(axis=1)):
        row = stacked[i, finite[i]]
        mean[i], (lo[i], hi[i]) = row.mean(), np.percentile(row, [2.5, 97.5])
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        out.update({f"null_mean_{name}": float(mean[i]), f"null_lo_{name}": float(lo[i]),
                    f"null_hi_{name}": float(hi[i])})
    return out
