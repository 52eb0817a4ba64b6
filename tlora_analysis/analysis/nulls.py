"""Random null baselines: what similarity statistics look like between unrelated updates.

The null partner of ΔW_a is R = U_R diag(σ_b) V_Rᵀ: ΔW_b's singular values (so the same
rank and Frobenius norm, "norm-matched") with Haar-random singular vectors. Because the
statistics depend on U_R only through U_aᵀ U_R (k_a × k_b), that block is drawn directly:
for U_R = G R⁻¹ with G Gaussian and R the Cholesky factor of GᵀG (the Q of G's QR with a
positive diagonal, which is Haar), U_aᵀ U_R has the law of G₁ R⁻¹ with G₁ a k_a × k_b
Gaussian and RᵀR = G₁ᵀG₁ + W, W ~ Wishart(dim − k_a, I) (Bartlett). This is exact in
distribution and costs O(k³) per draw instead of O(dim·k²).

Draws are made once per layer (seeded by the seed and the layer name) and reused at every
step: each step's null band is exactly distributed, and bands of different steps share
their random numbers, so they move smoothly over training.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import torch

__all__ = ["haar_block", "haar_frames", "layer_rng", "RandomNull", "MergedRandomNull", "summarize", "HAAR",
           "MERGED", "SUBSPACES", "HAAR_IN_REACH"]

# The random streams of one layer, one per null (layer_rng's ``purpose``).
HAAR, MERGED, SUBSPACES, HAAR_IN_REACH = 1, 2, 3, 4


def layer_rng(seed: int, layer: str, purpose: int) -> np.random.Generator:
    """A generator that depends only on (seed, layer name, purpose), not on what else is selected."""
    return np.random.default_rng([seed, zlib.crc32(layer.encode()), purpose])


def _matmul(a: np.ndarray, b: np.ndarray, transpose_a: bool = False) -> np.ndarray:
    """Batched a @ b (aᵀ @ b with ``transpose_a``) through torch's batched GEMM: numpy's stacked
    matmul falls back to a loop for transposed views (10× slower for 1024 × 32 frames)."""
    ta = torch.from_numpy(a)
    return torch.matmul(ta.transpose(-1, -2) if transpose_a else ta, torch.from_numpy(b)).numpy()


def _wishart_identity(rng: np.random.Generator, n: int, df: int, k: int) -> np.ndarray:
    """n draws of Wishart(df, I_k) (df ≥ k) by the Bartlett decomposition."""
    lower = np.tril(rng.standard_normal((n, k, k)), -1)
    idx = np.arange(k)
    lower[:, idx, idx] = np.sqrt(rng.chisquare(df - idx, size=(n, k)))
    return _matmul(lower, np.ascontiguousarray(np.swapaxes(lower, -1, -2)))


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
        rest = _matmul(g2, g2, transpose_a=True)
    lower = np.linalg.cholesky(_matmul(g1, g1, transpose_a=True) + rest)  # gram = L Lᵀ = RᵀR with R = Lᵀ
    return np.swapaxes(np.linalg.solve(lower, np.swapaxes(g1, -1, -2)), -1, -2)  # G₁ R⁻¹ = (L⁻¹ G₁ᵀ)ᵀ


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

    W0 is full rank, so R's singular vectors are drawn explicitly as (out + in) × k frames and
    the null needs uᵀW0v per draw. When both runs share one square W0 = P diag(s) Qᵀ, frames are
    drawn in W0's singular bases (P u' is Haar when u' is), so uᵀW0v = Σ_i s_i u'_i v'_i costs
    O(n·d·k) instead of a GEMM with W0; otherwise W0 [v_1 … v_n] is one GEMM, O(n·out·in·k).
    To keep memory bounded at any layer size the draws are made in chunks of at most
    ``_CHUNK_FLOATS`` numbers, each chunk from its own seeded stream so that it can be drawn
    again exactly: each step draws the frames (O(n·(out + in)·k²)) to project P_a on them, and
    the first also computes uᵀW0v.
    """

    _CHUNK_FLOATS = 1 << 23  # 64 MiB of float64 per frame chunk

    def __init__(self, n: int, seed: int, layer: str, w0_a, w0_b, kb: int) -> None:
        """``w0_a``, ``w0_b``: the two runs' W0 as objects with ``weight`` (float64 array) and ``svd``."""
        out, inn = w0_a.weight.shape
        self.kb, self.shape, self.n = kb, (out, inn), n
        self._key = [seed, zlib.crc32(layer.encode()), MERGED]
        size = max(1, self._CHUNK_FLOATS // ((out + inn) * kb))
        self._chunks = [(start, min(size, n - start)) for start in range(0, n, size)]
        self._w0 = (w0_a, w0_b)
        self._same = w0_b is w0_a or np.array_equal(w0_a.weight, w0_b.weight)
        self._rotation = w0_a.svd if self._same and out == inn else None
        self.d_a: np.ndarray | None = None  # u_jᵀ W0a v_j per draw and column, made with the first step's frames
        self.d_b: np.ndarray | None = None
        self.w0_ab = float(np.sum(w0_a.weight * w0_b.weight))
        self.w0_b2 = float(np.sum(w0_b.weight * w0_b.weight))

    def _bilinear_w0(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w0_a, w0_b = self._w0
        if self._rotation is not None:
            d_a = np.einsum("nij,i,nij->nj", u, self._rotation[1], v)  # u'ᵀ diag(s) v'
        else:
            d_a = _bilinear(u, w0_a.weight, v)
        return d_a, d_a if self._same else _bilinear(u, w0_b.weight, v)

    def _frames(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([*self._key, index])
        count = self._chunks[index][1]
        return haar_frames(rng, count, self.shape[0], self.kb), haar_frames(rng, count, self.shape[1], self.kb)

    def cosine(self, pa_svd: tuple[np.ndarray, np.ndarray, np.ndarray], pa_w0b: float, pa_norm_merged: float,
               sb: np.ndarray) -> np.ndarray:
        """Per draw; pa_svd: (U, σ, V) of P_a truncated to its nonzero σ; pa_w0b = ⟨P_a, W0b⟩;
        pa_norm_merged = ‖W0a + P_a‖_F; sb: the nonzero σ of P_b."""
        ua, sa, va = pa_svd
        if self._rotation is not None:  # P_a's singular vectors in the basis the frames are drawn in
            ua, va = self._rotation[0].T @ ua, self._rotation[2].T @ va
        kb = sb.size
        pa_r = np.empty(self.n)
        first = self.d_a is None
        if first:
            self.d_a, self.d_b = np.empty((self.n, self.kb)), np.empty((self.n, self.kb))
        for index, (start, count) in enumerate(self._chunks):
            u, v = self._frames(index)
            if first:
                self.d_a[start:start + count], self.d_b[start:start + count] = self._bilinear_w0(u, v)
            x = _matmul(np.ascontiguousarray(u[:, :, :kb]), ua, transpose_a=True)  # count × k_b × k_a
            y = _matmul(np.ascontiguousarray(v[:, :, :kb]), va, transpose_a=True)
            pa_r[start:start + count] = _inner_with_random(sa, np.swapaxes(x, 1, 2), sb, np.swapaxes(y, 1, 2))
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
