"""Sibling TLoRA layers that read one input tensor get their projections u = x A from one GEMM.

Why: q, k and v of an attention block read the same activation x, and so do gate and up of a
LLaMA MLP. Each fused layer (functions.py) reads x once more for its own u = x A (tokens × r), a
pass at memory bandwidth: 1.67 ms of a 105 ms step on the benchmark model (docs/benchmarks.md,
"Where the fused layer's GPU time goes"). One product x [A_q | A_k | A_v] reads x once for all
three.

How, without model-specific code: the layer that sees an input first (the owner) computes the
projections of the siblings it has learned, and leaves their column slices in a per-thread slot
with a weak reference to x. A sibling called with that very tensor (same object, unchanged since:
``_version``) takes its slice; one the owner did not know of learns itself as the owner's sibling
for the next call; a slice nobody took drops that sibling again (the calls' order changed). The
first step learns, later steps share. Each slice is the same u = x A the layer would compute
(cuBLAS may round the wider product differently, within bf16 rounding); the layer's backward
treats it exactly as its own. Not under ``torch.compile`` (dynamo would have to trace the slot),
not with dropout on the input (each layer draws its own mask), and not in the "plain" and
"adapter" paths. What is learned lives in a :class:`ProjectionSharing`, the backend's
``projections`` (state.py).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch import nn

__all__ = ["ProjectionSharing"]


class _Group:
    """An owner's learned siblings (weak references), and its stacked factors [A_owner | A_sibling …]
    with what they were built from: each factor (held, so that its id stays its own), its data
    pointer and version, and which siblings could join (same dtype, device and input width)."""

    __slots__ = ("owner", "siblings", "state", "factors", "members", "stacked")

    def __init__(self, owner: nn.Module) -> None:
        self.owner = weakref.ref(owner)
        self.siblings: list[weakref.ref] = []
        self.state: tuple = ()
        self.factors: list[torch.Tensor] = []
        self.members: list[int] = []
        self.stacked: torch.Tensor | None = None


class _Slot(threading.local):
    """The last input an owner projected: weak reference to x, x's version, the owner's group,
    and per sibling (by id) a weak reference to it, the factor A its slice was computed from
    with A's version, and the slice u."""

    def __init__(self) -> None:
        self.x: weakref.ref | None = None
        self.version = -1
        self.group: _Group | None = None
        self.pending: dict[int, tuple[weakref.ref, torch.Tensor, int, torch.Tensor]] = {}


def _stacked_factors(group: _Group, factors: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[int]]:
    """[A_owner | A_sibling …] (in × Σ r) and the indices of the siblings in it: rebuilt only when
    one of the factors changed (another tensor, other storage, or written in place)."""
    state = tuple([(id(f), f.data_ptr(), f._version) for f in factors])
    if state == group.state:
        return group.stacked, group.members
    a = factors[0]
    members = [i for i, f in enumerate(factors[1:]) if f.dtype == a.dtype and f.device == a.device
               and f.shape[0] == a.shape[0]]
    group.stacked = torch.cat([a] + [factors[1 + i] for i in members], dim=1) if members else None
    group.state, group.factors, group.members = state, factors, members
    return group.stacked, members


def _learn(group: _Group, layer: nn.Module) -> None:
    if group.owner() is not layer and all(ref() is not layer for ref in group.siblings):
        group.siblings.append(weakref.ref(layer))


def _forget(group: _Group | None, ids: set[int]) -> None:
    """Drop the owner's siblings that did not take their slice."""
    if group is not None:
        group.siblings = [ref for ref in group.siblings if ref() is not None and id(ref()) not in ids]


class ProjectionSharing:
    """The siblings learned per owner layer (weakly: a layer that is gone is forgotten), the
    current thread's last projected input, and the switch."""

    def __init__(self) -> None:
        self.enabled = True
        self.groups: weakref.WeakKeyDictionary[nn.Module, _Group] = weakref.WeakKeyDictionary()
        self.slot = _Slot()

    def set_enabled(self, enabled: bool) -> None:
        """Share (True, the default) or let every layer compute its own x A; either way the
        projections waiting to be taken are dropped."""
        if not isinstance(enabled, bool):
            raise TypeError(f"enabled must be True or False, got {enabled!r}")
        self.enabled = enabled
        self.slot = _Slot()

    def project(self, layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | None:
        """u = x A (tokens × r, no autograd) for ``layer`` with frozen factor ``a`` (in × r), when a
        sibling's call already computed it or this call computes it for its siblings too; None when
        the layer should compute its own (no sibling known yet, sharing off, under compile)."""
        if not self.enabled or torch.compiler.is_compiling():
            return None
        slot = self.slot
        if slot.x is not None and slot.x() is x and slot.version == x._version:
            entry = slot.pending.pop(id(layer), None)
            if entry is not None and entry[0]() is layer and entry[1] is a and entry[2] == a._version:
                return entry[3]
            if entry is None and slot.group is not None:
                _learn(slot.group, layer)
            return None
        if slot.pending:  # the previous owner's siblings that were not called with its input
            _forget(slot.group, set(slot.pending))
        group = self.groups.get(layer)
        if group is None:
            group = self.groups[layer] = _Group(layer)
        slot.x, slot.version, slot.group, slot.pending = weakref.ref(x), x._version, group, {}
        refs, alive, factors = [], [], [a]
        for ref in group.siblings:  # the siblings alive, with their current factors (read from the buffers)
            if (s := ref()) is not None and (f := s._buffers.get("tlora_A")) is not None:
                refs.append(ref)
                alive.append(s)
                factors.append(f)
        if not refs:
            return None
        stacked, members = _stacked_factors(group, factors)
        if stacked is None:
            return None
        projections = torch.mm(x.detach().reshape(-1, x.shape[-1]), stacked)  # no autograd
        slices = projections.split([a.shape[1]] + [factors[1 + i].shape[1] for i in members], dim=1)
        state = group.state
        slot.pending = {id(alive[i]): (refs[i], factors[1 + i], state[1 + i][2], u) for i, u in zip(members, slices[1:])}
        return slices[0]
