"""The two-sample Kolmogorov–Smirnov distance between pooled groups, for many labellings at once.

Values belong to items (a run's layer); a labelling assigns each item to group 1 or 0, and
the distance is sup |F₁ − F₀| between the pooled empirical distributions of the two groups.
Permutation tests relabel items thousands of times, so the values are sorted once and each
labelling costs two cumulative sums; ties are handled by reading the curves only at the last
copy of each value (so the result equals scipy.stats.ks_2samp's statistic).
"""

from __future__ import annotations

import numpy as np

__all__ = ["ks_by_labels"]


def ks_by_labels(values: np.ndarray, owners: np.ndarray, labels: np.ndarray, chunk: int = 256) -> np.ndarray:
    """KS distance per row of ``labels`` (P × M, 0/1 per item); ``owners[i]`` is the item of ``values[i]``.

    A row that leaves one group empty gets NaN.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    owners = np.asarray(owners, dtype=np.int64).ravel()
    labels = np.atleast_2d(np.asarray(labels))
    order = np.argsort(values, kind="stable")
    v, o = values[order], owners[order]
    last = np.append(v[1:] != v[:-1], True)  # the last copy of each distinct value
    out = np.empty(labels.shape[0])
    for start in range(0, labels.shape[0], chunk):
        lab = labels[start:start + chunk][:, o].astype(np.float64)  # P × V: 1 where the value is in group 1
        n1 = lab.sum(axis=1, keepdims=True)
        n0 = lab.shape[1] - n1
        with np.errstate(invalid="ignore", divide="ignore"):
            diff = np.cumsum(lab, axis=1) / n1 - np.cumsum(1.0 - lab, axis=1) / n0
        d = np.max(np.abs(diff[:, last]), axis=1)
        d[(n1[:, 0] == 0) | (n0[:, 0] == 0)] = np.nan
        out[start:start + chunk] = d
    return out
