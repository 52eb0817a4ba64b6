"""Sibling TLoRA layers that read one input tensor get their projections u = x A from one GEMM.

Why: q, k and v of an attention block read the same activation x, and so do gate and up of a
LLaMA MLP. Each fused layer (fast.py) reads x once more for its own u = x A (tokens × r), a pass
at memory bandwidth: 1.67 ms of a 105 ms step on the benchmark model (docs/benchmarks.md, "Idea
16"). One product x [A_q | A_k | A_v] reads x once for all three.

How, without model-specific code: the layer that sees an input first (the owner) computes the
projections of the siblings it has learned, and leaves their column slices in a per-thread slot
with a weak reference to x. A sibling called with that very tensor (same object, unchanged since:
``_version``) takes its slice; one the owner did not know of learns itself as the owner's sibling
for the next call; a slice nobody took drops that sibling again (the calls' order changed). The
first step learns, later steps share. Each slice is the same u = x A the layer would compute
(cuBLAS may round the wider product differently, within bf16 rounding); the layer's backward
treats it exactly as its own. Not under ``torch.compile`` (dynamo would have to trace the slot),
not with dropout on the input (each layer draws its own mask), and not in the "plain" and
"adapter" paths.
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

__all__ = ["get_projection_sharing", "set_projection_sharing", "shared_projection"]

_enabled = True
_siblings: weakref.WeakKeyDictionary[nn.Module, list[weakref.ref]] = weakref.WeakKeyDictionary()
_stacked: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()


class _Slot(threading.local):
    """The last input an owner projected: weak reference to x, x's version, weak reference to the
    owner, and per sibling (by id) a weak reference to it, the factor A its slice was computed from
    with A's version, and the slice u."""

    def __init__(self) -> None:
        self.x: weakref.ref | None = None
        self.version = -1
        self.owner: weakref.ref | None = None
        self.pending: dict[int, tuple[weakref.ref, torch.Tensor, int, torch.Tensor]] = {}


_slot = _Slot()


def set_projection_sharing(enabled: bool) -> None:
    """Whether sibling layers share one projection of their common input (default True;
    process-wide). Off: every layer computes its own x A (A/B runs, bit-for-bit comparisons)."""
    global _enabled
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r}")
    _enabled = enabled
    _slot.__init__()


def get_projection_sharing() -> bool:
    """What :func:`set_projection_sharing` chose."""
    return _enabled


def _stacked_factors(owner: nn.Module, factors: list[torch.Tensor]) -> torch.Tensor:
    """[A_owner | A_sibling …] (in × Σ r), rebuilt only when one of the factors changed."""
    key = tuple((id(a), a.data_ptr(), a._version) for a in factors)
    cached = _stacked.get(owner)
    if cached is not None and cached[0] == key:
        return cached[1]
    stacked = torch.cat(factors, dim=1)
    _stacked[owner] = (key, stacked)
    return stacked


def _learn(owner: nn.Module, layer: nn.Module) -> None:
    siblings = _siblings.setdefault(owner, [])
    if layer is not owner and all(ref() is not layer for ref in siblings):
        siblings.append(weakref.ref(layer))


def _forget(owner: nn.Module | None, ids: set[int]) -> None:
    """Drop the owner's siblings that did not take their slice."""
    if owner is not None and owner in _siblings:
        _siblings[owner] = [ref for ref in _siblings[owner] if ref() is not None and id(ref()) not in ids]


def shared_projection(layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
    """u = x A (tokens × r, no autograd) for ``layer`` with frozen factor ``a`` (in × r), when a
    sibling's call already computed it or this call computes it for its siblings too; None when
    the layer should compute its own (no sibling known yet, sharing off, under compile)."""
    if not _enabled or torch.compiler.is_compiling():
        return None
    slot = _slot
    if slot.x is not None and slot.x() is x and slot.version == x._version:
        entry = slot.pending.pop(id(layer), None)
        if entry is not None and entry[0]() is layer and entry[1] is a and entry[2] == a._version:
            return entry[3]
        if entry is None and (owner := slot.owner()) is not None:
            _learn(owner, layer)
        return None
    if slot.pending:  # the previous owner's siblings that were not called with its input
        _forget(slot.owner(), set(slot.pending))
    slot.x, slot.version, slot.owner, slot.pending = weakref.ref(x), x._version, weakref.ref(layer), {}
    siblings, factors = [], [a]
    for ref in _siblings.get(layer, ()):
        if (s := ref()) is not None and (f := s.tlora_A).dtype == a.dtype and f.device == a.device \
                and f.shape[0] == a.shape[0]:
            siblings.append(s)
            factors.append(f)
    if not siblings:
        return None
    projections = x.detach().reshape(-1, x.shape[-1]) @ _stacked_factors(layer, factors)  # no autograd
    slices = projections.split([f.shape[1] for f in factors], dim=1)
    slot.pending = {id(s): (weakref.ref(s), f, f._version, u) for s, f, u in zip(siblings, factors[1:], slices[1:])}
    return slices[0]
