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

The layers called with one input also share its gradient (:class:`InputGradShare`), where x
needs one: autograd would add each layer's ∂x (tokens × in) onto the others' in a pass of its
own (two reads and one write per sibling, 48 passes a step on the benchmark model). Instead each
later layer's ∂x GEMM adds its product onto the running sum in its epilogue, and the owner's
Function, whose backward runs after all of theirs (they take its token, an empty output, as an
input, so autograd orders the owner's node after theirs), adds its own and returns the sum as
the one gradient x gets from them; the others return none for x. Joining needs no learning
(the first step shares as the later ones do, so a resumed run sums as the uninterrupted one
did). A backward pass that reaches only some of the layers sums only theirs, as autograd would;
one that does not run the owner (asked for some layer's B or α only) leaves the sum alone, and
those layers hand their ∂x to autograd, as every layer does under compiled autograd (which
traces the backward, and sums a gradient for every input that needs one).
"""

from __future__ import annotations

import threading
import weakref
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["InputGradShare", "ProjectionSharing", "Shared"]


class _TokenBox:
    """The owner's token, held by the slot for the layers called after it (None: none yet, or let go)."""

    __slots__ = ("token", "__weakref__")

    def __init__(self) -> None:
        self.token: torch.Tensor | None = None


class InputGradShare:
    """The running sum of sibling layers' ∂x for one owner's call: taken and added to by each
    sibling's backward, drained by the owner's (functions.py). ``token_box``: a weak reference to
    the box in which the slot holds the owner's token for later layers; the owner's backward
    empties it, so the slot keeps no graph alive once the forward it belongs to is over (the
    token's node reaches every node before it, with what their contexts hold)."""

    __slots__ = ("grad", "added", "token_box")

    def __init__(self, token_box: _TokenBox) -> None:
        self.grad: torch.Tensor | None = None
        self.added: set[int] = set()  # the contexts (by id) of the siblings already summed
        self.token_box = weakref.ref(token_box)  # weak: the owner's context must not hold its own token

    def take(self, ctx: object) -> torch.Tensor | None:
        """The sum so far for a sibling to add onto in place (None: it writes the first term). A
        sibling already in the sum means a backward pass that stopped before the owner's ran
        (an error in between): its partial sum is dropped."""
        if id(ctx) in self.added:
            self.grad, self.added = None, set()
        return self.grad

    def put(self, ctx: object, grad: torch.Tensor) -> None:
        """The sum with the sibling's ∂x in it."""
        self.grad = grad
        self.added.add(id(ctx))

    def drain(self) -> torch.Tensor | None:
        """The siblings' sum (None if none ran), emptied for the next backward pass: the owner's,
        which also lets go of the token."""
        if (box := self.token_box()) is not None:
            box.token = None
        grad, self.grad, self.added = self.grad, None, set()
        return grad


class Shared(NamedTuple):
    """What a layer gets from :meth:`ProjectionSharing.project`: its u = x A (None: not computed
    for it), the share of x's gradient (None where x needs none), and the owner's token (None for
    the owner itself)."""

    u: torch.Tensor | None
    grad: InputGradShare | None
    token: torch.Tensor | None


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
    per sibling (by id) a weak reference to it, the factor A its slice was computed from with
    A's version, and the slice u; the share of x's gradient, and the owner's token in a box
    (empty until the owner's Function returns it, and again after the owner's backward)."""

    def __init__(self) -> None:
        self.x: weakref.ref | None = None
        self.version = -1
        self.group: _Group | None = None
        self.pending: dict[int, tuple[weakref.ref, torch.Tensor, int, torch.Tensor]] = {}
        self.grad: InputGradShare | None = None
        self.token = _TokenBox()


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

    def project(self, layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> Shared | None:
        """For ``layer`` with frozen factor ``a`` (in × r) called with ``x``: u = x A (tokens × r, no
        autograd) when a sibling's call already computed it or this call computes it for its
        siblings too (else None: the layer computes its own), and the share of x's gradient where
        x needs one (:class:`Shared`); None for neither (sharing off, under compile). The layer
        that sees x first, the owner, passes the token its Function returns to :meth:`set_token`;
        every later layer called with x joins the share, learned as a sibling or not yet."""
        if not self.enabled or torch.compiler.is_compiling():
            return None
        slot = self.slot
        if slot.x is not None and slot.x() is x and slot.version == x._version:  # a layer after the owner
            entry = slot.pending.pop(id(layer), None)
            u = None
            if entry is not None and entry[0]() is layer and entry[1] is a and entry[2] == a._version:
                u = entry[3]
            elif entry is None and slot.group is not None:
                _learn(slot.group, layer)
            token = slot.token.token
            return None if u is None and token is None else Shared(u, None if token is None else slot.grad, token)
        if slot.pending:  # the previous owner's siblings that were not called with its input
            _forget(slot.group, set(slot.pending))
        group = self.groups.get(layer)
        if group is None:
            group = self.groups[layer] = _Group(layer)
        slot.x, slot.version, slot.group, slot.pending = weakref.ref(x), x._version, group, {}
        slot.token = _TokenBox()
        slot.grad = InputGradShare(slot.token) if x.requires_grad and torch.is_grad_enabled() else None
        own = None if slot.grad is None else Shared(None, slot.grad, None)
        refs, alive, factors = [], [], [a]
        for ref in group.siblings:  # the siblings alive, with their current factors (read from the buffers)
            if (s := ref()) is not None and (f := s._buffers.get("tlora_A")) is not None:
                refs.append(ref)
                alive.append(s)
                factors.append(f)
        if not refs:
            return own
        stacked, members = _stacked_factors(group, factors)
        if stacked is None:
            return own
        projections = torch.mm(x.detach().reshape(-1, x.shape[-1]), stacked)  # no autograd
        slices = projections.split([a.shape[1]] + [factors[1 + i].shape[1] for i in members], dim=1)
        state = group.state
        slot.pending = {id(alive[i]): (refs[i], factors[1 + i], state[1 + i][2], u)
                        for i, u in zip(members, slices[1:])}
        return Shared(slices[0], slot.grad, None)

    def set_token(self, token: torch.Tensor) -> None:
        """The owner's token, for the layers called with its input next: held until another
        owner's call or the owner's backward, whichever comes first."""
        self.slot.token.token = token
