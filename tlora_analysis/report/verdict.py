"""One claim's result, and the two decision rules every claim uses at the report's level α.

- A claim *of an effect* ("the updates are aligned", "α differs across layers") is the
  alternative of its test: ``supported`` when the null is rejected at α in the claimed
  direction, ``not supported`` otherwise.
- A claim *of sameness* ("B is Gaussian", "norms are stable", "spectra resemble") is the null
  of its test: ``not supported`` when the null is rejected at α, ``supported`` (consistent with
  the claim at this resolution; the interval shows how fine it is) otherwise.
Either is ``inconclusive`` when no test can be run (missing replicates, W0 not stored, an
update still zero) or when no outcome of the test could reach α (too few layers or runs for
an exact permutation test); the ``detail`` then says what would settle it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["ClaimResult", "CLAIM_COLUMNS", "LAYER_COLUMNS", "DECISIONS", "decide_effect", "decide_sameness",
           "inconclusive", "fmt"]

DECISIONS = ("supported", "not supported", "inconclusive")
CLAIM_COLUMNS = ("claim_id", "statistic", "estimate", "ci_lo", "ci_hi", "p_value", "null", "decision", "paper",
                 "claim", "figure", "test", "n_units", "detail")
LAYER_COLUMNS = ("claim_id", "run_tlora", "run_lora", "layer", "layer_index", "module", "side", "step", "value",
                 "p_value", "p_holm", "significant")


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for the report's text ("n/a" for NaN or None)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return format(x, spec)


@dataclass
class ClaimResult:
    """One row of claims.csv (columns :data:`CLAIM_COLUMNS`) and its per-layer calls."""

    claim_id: str
    claim: str
    figure: str
    statistic: str
    null: str
    paper: str
    test: str = ""
    estimate: float = math.nan
    ci_lo: float = math.nan
    ci_hi: float = math.nan
    p_value: float = math.nan
    decision: str = "inconclusive"
    n_units: int = 0
    detail: str = ""
    layers: list[dict[str, Any]] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("layers")
        return {c: out[c] for c in CLAIM_COLUMNS}


def decide_effect(p: float, alpha: float, min_p: float = 0.0) -> str:
    """Claim of an effect: supported iff its test rejects at α; inconclusive when it could not."""
    if not np.isfinite(p) or not (min_p <= alpha):
        return "inconclusive"
    return "supported" if p <= alpha else "not supported"


def decide_sameness(p: float, alpha: float, min_p: float = 0.0) -> str:
    """Claim of sameness: not supported iff its test rejects at α; inconclusive when it could not."""
    if not np.isfinite(p) or not (min_p <= alpha):
        return "inconclusive"
    return "not supported" if p <= alpha else "supported"


def inconclusive(result: ClaimResult, why: str) -> ClaimResult:
    """Mark ``result`` inconclusive with the reason (what is missing, what would settle it)."""
    result.decision = "inconclusive"
    result.detail = why + (f" {result.detail}" if result.detail else "")
    return result
