"""Factored updates and raw factors of a run, with per-layer caches of what never changes.

Which tensors a layer has and how they make ΔW is the run's method spec (``run.spec``: its
``factors``, ``roles`` and ``frozen_sides``); nothing here names a method. Frozen tensors are read
once per layer, and the factors built from them alone (TLoRA's Cᵀ and Aᵀ, LoRA-XS's A and B,
VeRA's A) get their thin QR decompositions once per layer, which every step's
:class:`FactoredUpdate` reuses: a step then costs O(r³), not O((out + in)·r²). W0 (float64) and
its SVD are kept per layer by the same source, for the merged analyses and intruder dimensions.
Analyzers walk layers in the outer loop and steps in the inner one, so a cache of a few layers
keeps memory flat in the number of snapshots; the caches live and die with one analysis call
(nothing is cached across calls or runs).
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


def _double(t: Any) -> Any:
    """A float64 copy of a floating tensor (exact algebra downstream); others as they are."""
    return t.double() if getattr(t, "is_floating_point", lambda: False)() else t


class _FrozenLayer:
    """One layer's frozen tensors in float64 (W0 too where ΔW needs it) and the QR of its frozen factors."""

    def __init__(self, tensors: dict[str, Any]) -> None:
        self.tensors = tensors
        self.qr: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def decompositions(self, factors: Any, sides: tuple[str, ...]) -> tuple[Any, Any]:
        """(QR of left, QR of rightᵀ) for the frozen sides, computed on first use."""
        for side in sides:
            if side not in self.qr:
                m = as_float64(factors.left if side == "left" else factors.right)
                self.qr[side] = thin_qr(m if side == "left" else m.T)
        return self.qr.get("left"), self.qr.get("right")


class UpdateSource:
    """``update(layer, step)`` and ``factors(layer, step)`` of one run, reusing frozen work."""

    def __init__(self, run: Any, cache_layers: int = 2) -> None:
        self.run = run
        self.spec = run.spec
        self._frozen = _LRU(cache_layers)
        self._base = _LRU(cache_layers)

    def base(self, layer: str) -> "BaseWeight":
        """W0 of ``layer`` in float64 with its norm and SVD (read once per layer by this source)."""
        require_base_weights(self.run, "this merged-weight analysis")
        return self._base.get(layer, lambda: BaseWeight(self.run.base_weight(layer)))

    def _frozen_layer(self, layer: str) -> _FrozenLayer:
        def make() -> _FrozenLayer:
            tensors = {k: _double(t) for k, t in self.run.frozen(layer).items()}
            if self.spec.weight_key is not None:
                tensors[self.spec.base_weight_key] = _double(self.run.base_weight(layer))
            return _FrozenLayer(tensors)
        return self._frozen.get(layer, make)

    def update(self, layer: str, step: int) -> FactoredUpdate:
        """ΔW of ``layer`` at ``step`` from the method's one definition, frozen factors decomposed once per layer."""
        return self.factors_and_update(layer, step, with_roles=False)[1]

    def factors(self, layer: str, step: int) -> dict[str, Any]:
        """The stored matrices by the method's roles, as stored: TLoRA A (in × r), B (r × r), C (r × out),
        alpha; LoRA A (r × in), B (out × r); VeRA A, B, d, b; LoRA-XS A, R, B; full fine-tuning none.
        Scalars (α) are floats."""
        return self.factors_and_update(layer, step, with_update=False)[0]

    def factors_and_update(self, layer: str, step: int, with_update: bool = True, with_roles: bool = True,
                           ) -> tuple[dict[str, Any], FactoredUpdate | None]:
        """:meth:`factors` and :meth:`update` together, reading the snapshot once."""
        frozen = self._frozen_layer(layer)
        tensors = {**frozen.tensors, **{k: _double(t) for k, t in self.run.trainable(layer, step).items()}}
        roles = {}
        if with_roles:
            roles = {role: (float(tensors[key]) if tensors[key].ndim == 0 else tensors[key])
                     for role, key in self.spec.roles.items()}
        if not with_update:
            return roles, None
        factors = self.spec.factors(tensors, self.run.layer_info(layer))
        qr = frozen.decompositions(factors, self.spec.frozen_sides) if self.spec.frozen_sides else None
        return roles, FactoredUpdate(*factors, qr=qr)


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
    """Raise :class:`MissingBaseWeightError` saying how to get W0 when the run lacks it."""
    if not run.has_base_weights:
        raise MissingBaseWeightError(
            f"{analysis} needs the base weights W0, which run {run.name!r} did not store and whose base model "
            "is not attached; open it with the base model it was trained from (Run(path, base_model=...), "
            "--base-model), or record the run again with store_base_weights=True (SnapshotRecorder or the "
            "training runner) to store them")
