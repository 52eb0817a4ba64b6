"""Factored updates and raw factors of a run, with per-layer caches of what never changes.

TLoRA's A and C are frozen, so their thin QR decompositions are computed once per layer and
every step's :class:`FactoredUpdate` reuses them: a step then costs O(r³), not
O((out + in)·r²). W0 (float64) and its SVD are kept per layer by the same source, for the
merged analyses and intruder dimensions. Analyzers walk layers in the outer loop and steps in
the inner one, so a cache of a few layers keeps memory flat in the number of snapshots; the
caches live and die with one analysis call (nothing is cached across calls or runs).
"""

from __future__ import annotations

from collections import OrderedDict
from functools import cached_property
from typing import Any, Callable, Hashable

import numpy as np

from ..lowrank import FactoredUpdate, as_float64, thin_qr

__all__ = ["UpdateSource", "BaseWeight", "require_base_weights", "MissingBaseWeightError"]


class MissingBaseWeightError(ValueError):
    """A merged-weight analysis was asked of a run that did not store W0."""


class _LRU:
    """A tiny least-recently-used cache keyed by hashables."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable, make: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make()
        self._items[key] = value
        if len(self._items) > self.maxsize:
            self._items.popitem(last=False)
        return value


class UpdateSource:
    """``update(layer, step)`` and ``factors(layer, step)`` of one run, reusing frozen work."""

    def __init__(self, run: Any, cache_layers: int = 2) -> None:
        self.run = run
        self._frozen = _LRU(cache_layers)
        self._base = _LRU(cache_layers)

    def base(self, layer: str) -> "BaseWeight":
        """W0 of ``layer`` in float64 with its norm and SVD (read once per layer by this source)."""
        require_base_weights(self.run, "this merged-weight analysis")
        return self._base.get(layer, lambda: BaseWeight(self.run.base_weight(layer)))

    def _frozen_factors(self, layer: str) -> dict[str, Any]:
        def make() -> dict[str, Any]:
            frozen = self.run.frozen(layer)
            left = as_float64(frozen["tlora_C"]).T  # Cᵀ: out × r
            right = as_float64(frozen["tlora_A"]).T  # Aᵀ: r × in
            return {
                "left": left, "right": right,
                "qr": (thin_qr(left), thin_qr(right.T)),
                "A": frozen["tlora_A"], "C": frozen["tlora_C"],
            }
        return self._frozen.get(layer, make)

    def update(self, layer: str, step: int) -> FactoredUpdate:
        """ΔW of ``layer`` at ``step`` (TLoRA: α·Cᵀ Bᵀ Aᵀ with A, C decomposed once per layer)."""
        if self.run.method != "tlora":
            return self.run.update(layer, step)
        return self._tlora_update(layer, self.run.trainable(layer, step))

    def _tlora_update(self, layer: str, trainable: dict[str, Any]) -> FactoredUpdate:
        fz = self._frozen_factors(layer)
        return FactoredUpdate(fz["left"], as_float64(trainable["tlora_B"]).T, fz["right"],
                              float(trainable["tlora_alpha"]), qr=fz["qr"])

    def factors(self, layer: str, step: int) -> dict[str, Any]:
        """The stored matrices by role: "A", "B", "C" (as stored) and "alpha" (TLoRA).

        TLoRA: A (in × r), B (r × r), C (r × out), alpha; LoRA: A (r × in), B (out × r);
        full fine-tuning: none.
        """
        return self.factors_and_update(layer, step, with_update=False)[0]

    def factors_and_update(self, layer: str, step: int, with_update: bool = True,
                           ) -> tuple[dict[str, Any], FactoredUpdate | None]:
        """:meth:`factors` and :meth:`update` together, reading a TLoRA snapshot once."""
        method = self.run.method
        if method == "full":
            return {}, self.run.update(layer, step) if with_update else None
        tr = self.run.trainable(layer, step)
        if method == "lora":
            return {"A": tr["lora_A"], "B": tr["lora_B"]}, self.run.update(layer, step) if with_update else None
        fz = self._frozen_factors(layer)
        factors = {"A": fz["A"], "B": tr["tlora_B"], "C": fz["C"], "alpha": float(tr["tlora_alpha"])}
        return factors, self._tlora_update(layer, tr) if with_update else None


class BaseWeight:
    """W0 of one layer in float64, with its norm and (lazily) its SVD, computed once."""

    def __init__(self, weight: Any) -> None:
        self.weight = as_float64(weight)

    @cached_property
    def fro_norm(self) -> float:
        return float(np.linalg.norm(self.weight))

    @cached_property
    def svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thin SVD W0 = U diag(s) Vᵀ as (U, s, V)."""
        u, s, vt = np.linalg.svd(self.weight, full_matrices=False)
        return u, s, vt.T


def require_base_weights(run: Any, analysis: str) -> None:
    """Raise :class:`MissingBaseWeightError` saying how to store W0 when the run lacks it."""
    if not run.has_base_weights:
        raise MissingBaseWeightError(
            f"{analysis} needs the base weights W0, which run {run.name!r} did not store; record "
            "the run again with store_base_weights=True (SnapshotRecorder or the training runner) "
            "to store them")
