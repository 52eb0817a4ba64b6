"""The TLoRA paper's claims, each a stated test at one level α, on replicate TLoRA and LoRA runs.

:func:`evaluate_claims` returns one row per claim (:data:`~.verdict.CLAIM_COLUMNS`: statistic,
estimate with a 95% interval, p-value, null, decision in {supported, not supported,
inconclusive}, the paper's own number) and the per-layer calls behind them. Which claim uses
which test, null and combination rule, and how each was calibrated, is docs/statistics.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from .. import analysis
from .alignment import cosine_merged_faithful, reachable_cosine, reachable_fraction, subspace_overlap, update_cosine
from .replicates import Arms
from .spectra import eigen_merged_faithful, eigen_updates
from .verdict import CLAIM_COLUMNS, LAYER_COLUMNS, ClaimResult
from .weights import alpha_varies, gaussian_b, stable_norms

__all__ = ["ClaimsReport", "evaluate_claims", "CLAIM_IDS"]

CLAIM_IDS = ("gaussian_B", "stable_norms", "alpha_varies", "eigen_merged_faithful", "eigen_updates",
             "cosine_merged_faithful", "update_cosine", "reachable_cosine", "reachable_fraction", "subspace_overlap")
Progress = Callable[[str], None]


@dataclass
class ClaimsReport:
    """``claims`` (one row per claim), ``layers`` (per-layer calls), the runs and the settings used."""

    claims: pd.DataFrame
    layers: pd.DataFrame
    arms: Arms
    alpha: float
    n_null: int
    seed: int


def _as_list(runs: Any | Sequence[Any]) -> list[Any]:
    return list(runs) if isinstance(runs, (list, tuple)) else [runs]


def _validate(alpha: float, n_null: int, seed: int) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number strictly between 0 and 1 (the report's one level), got {alpha!r}")
    if isinstance(n_null, bool) or not isinstance(n_null, (int, np.integer)) or n_null < 100:
        raise ValueError(f"n_null must be an int ≥ 100 (null draws and permutations; the default 2000 gives p-values "
                         f"to ±0.005 near 0.05), got {n_null!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int, got {seed!r}")


def _pair_seed(seed: int, index: int) -> int:
    """Independent null draws for each disjoint pair (the layer-seeded streams would repeat otherwise)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def evaluate_claims(tlora: Any | Sequence[Any], lora: Any | Sequence[Any], alpha: float = 0.05, n_null: int = 2000,
                    seed: int = 0, progress: Progress | None = None) -> ClaimsReport:
    """Test every claim on TLoRA and LoRA runs (one run each, or replicates with independent seeds).

    Runs are compared at the last step all of them recorded. ``n_null`` is the number of exact
    null draws per layer and of permutations; ``seed`` makes every draw reproducible;
    ``progress`` is called with each claim's id before it is evaluated.
    """
    _validate(alpha, n_null, seed)
    arms = Arms.from_runs(_as_list(tlora), _as_list(lora))
    note = progress or (lambda _: None)
    rng = np.random.default_rng(seed)
    note("similarity and reachable set")
    sims, reach = [], []
    for i, (t, lo) in enumerate(arms.pairs):
        pair_seed = _pair_seed(seed, i)
        sims.append(analysis.similarity(t, lo, layers=arms.layers, steps=[arms.step], n_null=n_null,
                                        seed=pair_seed).per_layer)
        reach.append(analysis.reachable(t, lo, layers=arms.layers, steps=[arms.step], n_null=n_null, seed=pair_seed))
    sim, rch = pd.concat(sims, ignore_index=True), pd.concat(reach, ignore_index=True)
    has_w0 = all(r.has_base_weights for r in [*arms.tlora, *arms.lora])
    steps: list[tuple[str, Callable[[], ClaimResult]]] = [
        ("gaussian_B", lambda: gaussian_b(arms, alpha, seed)),
        ("stable_norms", lambda: stable_norms(arms, alpha)),
        ("alpha_varies", lambda: alpha_varies(arms, alpha, n_null, rng)),
        ("eigen_merged_faithful", lambda: eigen_merged_faithful(arms, alpha, n_null, rng)),
        ("eigen_updates", lambda: eigen_updates(arms, alpha, n_null, rng)),
        ("cosine_merged_faithful", lambda: cosine_merged_faithful(sim, alpha, n_null, has_w0)),
        ("update_cosine", lambda: update_cosine(sim, rch, alpha, n_null)),
        ("reachable_cosine", lambda: reachable_cosine(rch, alpha, n_null)),
        ("reachable_fraction", lambda: reachable_fraction(rch, alpha, n_null)),
        ("subspace_overlap", lambda: subspace_overlap(rch, alpha, n_null)),
    ]
    results = []
    for claim_id, evaluate in steps:
        note(claim_id)
        results.append(evaluate())
    claims = pd.DataFrame([r.row() for r in results], columns=list(CLAIM_COLUMNS))
    layers = pd.DataFrame([row for r in results for row in r.layers], columns=list(LAYER_COLUMNS))
    return ClaimsReport(claims, layers, arms, alpha, n_null, seed)
