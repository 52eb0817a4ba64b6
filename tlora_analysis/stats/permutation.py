"""Permutation tests that shuffle labels only within blocks (layers, or seeds).

Under a null of exchangeability within each block (e.g. "within a layer, which run is TLoRA
and which is LoRA does not matter"), every within-block rearrangement of the labels is
equally likely, so the rank of the observed statistic among them gives an exact p-value.
When the rearrangements number at most ``n_resamples`` they are all enumerated (exact test);
otherwise ``n_resamples`` random ones are drawn and p = (k + 1)/(N + 1) (valid for any N).
``min_pvalue`` is the smallest p-value the test could give on these data: when it exceeds the
level α, no outcome could reject and the test cannot decide.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

__all__ = ["PermutationResult", "permutation_test"]

Statistic = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class PermutationResult:
    """The observed statistic, its p-value, how many arrangements were used, and whether all were."""

    statistic: float
    pvalue: float
    n_arrangements: int
    exact: bool
    min_pvalue: float


def _multiset_permutations(items: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
    """Distinct orderings of a multiset, each once."""
    counts = Counter(items)
    keys = sorted(counts)
    n = len(items)
    out: list[int] = []

    def rec() -> Iterator[tuple[int, ...]]:
        if len(out) == n:
            yield tuple(out)
            return
        for k in keys:
            if counts[k]:
                counts[k] -= 1
                out.append(k)
                yield from rec()
                out.pop()
                counts[k] += 1

    yield from rec()


def _arrangements(counts: Counter) -> int:
    total = math.factorial(sum(counts.values()))
    for c in counts.values():
        total //= math.factorial(c)
    return total


def permutation_test(labels: np.ndarray, blocks: np.ndarray, statistic: Statistic, rng: np.random.Generator,
                     n_resamples: int = 9999) -> PermutationResult:
    """Test by rearranging ``labels`` within each block; large statistics are extreme.

    ``labels`` and ``blocks`` are integer arrays over the same M items; ``statistic`` maps a
    (P × M) array of rearranged labels to P values (vectorised) and must accept the observed
    labels as a 1 × M array.
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    blocks = np.asarray(blocks, dtype=np.int64).ravel()
    if labels.shape != blocks.shape:
        raise ValueError(f"labels and blocks must have the same length, got {labels.size} and {blocks.size}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be ≥ 1, got {n_resamples}")
    observed = float(np.asarray(statistic(labels[None, :]), dtype=np.float64)[0])
    groups = [np.flatnonzero(blocks == b) for b in np.unique(blocks)]
    total = 1
    for idx in groups:
        total *= _arrangements(Counter(labels[idx].tolist()))
        if total > n_resamples:
            break
    if not np.isfinite(observed):
        return PermutationResult(observed, math.nan, 0, False, math.nan)
    tol = 1e-12 * max(1.0, abs(observed))
    if total <= n_resamples:
        per_block = [list(_multiset_permutations(tuple(labels[idx].tolist()))) for idx in groups]
        arranged = np.empty((total, labels.size), dtype=np.int64)
        for row, choice in enumerate(itertools.product(*per_block)):
            for idx, values in zip(groups, choice):
                arranged[row, idx] = values
        values = np.asarray(statistic(arranged), dtype=np.float64)
        k = int(np.count_nonzero(values >= observed - tol))
        top = int(np.count_nonzero(values >= values.max() - 1e-12 * max(1.0, abs(values.max()))))
        return PermutationResult(observed, k / total, total, True, top / total)
    arranged = np.empty((n_resamples, labels.size), dtype=np.int64)
    for idx in groups:
        arranged[:, idx] = rng.permuted(np.broadcast_to(labels[idx], (n_resamples, idx.size)), axis=1)
    values = np.asarray(statistic(arranged), dtype=np.float64)
    k = int(np.count_nonzero(values >= observed - tol))
    return PermutationResult(observed, (k + 1) / (n_resamples + 1), n_resamples, False, 1.0 / (n_resamples + 1))
