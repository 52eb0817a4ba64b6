"""Copying a snapshot's tensors to the host with a few large copies instead of one per tensor.

Why: a TLoRA snapshot of a 16-layer decoder with every linear layer adapted is 224 tiny tensors
(B and α per layer). Copying them one by one costs a launch and a pinned allocation each, and
naming, checking and serializing them one by one costs Python time that the writer thread
spends holding the interpreter lock, which the training step needs to launch its kernels
(docs/benchmarks.md, "Recorder overhead"). Here tensors of the same device, dtype and shape
are stacked into one flat buffer on their device (one kernel), copied with one non-blocking
copy into a host buffer taken from a pool (pinned for CUDA), and handed to the file writer as
:class:`~tlora_analysis.fileio.TensorBlock` s, which it serializes without a per-tensor copy.
The training thread only enqueues work; waiting for the copy happens in the writer thread.

Gathering is capped at ``GATHER_BYTES`` per buffer so that a dense snapshot (full fine-tuning)
never needs more than that much extra device memory; a tensor at least that large is copied on
its own, without a gather.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..fileio import TensorBlock

__all__ = ["GATHER_BYTES", "HostCopy", "HostBufferPool", "copy_to_host"]

GATHER_BYTES = 64 * 2**20


class HostBufferPool:
    """Reusable flat host buffers keyed by (length, dtype, pinned); thread-safe.

    A snapshot of the same model needs the same buffers every time, so after the first few
    snapshots no host memory is allocated (pinned allocations are slow). At most ``keep`` free
    buffers per key are kept; the writer queue bounds how many are in use.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._free: dict[tuple[int, torch.dtype, bool], list[torch.Tensor]] = {}
        self._lock = threading.Lock()

    def take(self, numel: int, dtype: torch.dtype, pinned: bool) -> torch.Tensor:
        with self._lock:
            free = self._free.get((numel, dtype, pinned))
            if free:
                return free.pop()
        return torch.empty(numel, dtype=dtype, pin_memory=pinned)

    def give(self, buf: torch.Tensor) -> None:
        key = (buf.numel(), buf.dtype, buf.is_pinned())
        with self._lock:
            free = self._free.setdefault(key, [])
            if len(free) < self.keep:
                free.append(buf)


@dataclass
class HostCopy:
    """A snapshot on its way to the host, as blocks over pool buffers.

    ``blocks()`` waits for the copies (call it off the training thread); ``release()`` hands the
    buffers back to the pool once the blocks have been written and are no longer used.
    """

    pieces: list[TensorBlock]
    pool: HostBufferPool
    events: list[torch.cuda.Event] = field(default_factory=list)

    def blocks(self) -> list[TensorBlock]:
        for event in self.events:
            event.synchronize()
        return self.pieces

    def release(self) -> None:
        for piece in self.pieces:
            self.pool.give(piece.buffer)
        self.pieces = []


def _chunks(items: list[tuple[str, torch.Tensor]], cap: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Consecutive groups of at most ``cap`` bytes (a larger tensor forms a group of its own)."""
    groups: list[list[tuple[str, torch.Tensor]]] = []
    size = 0
    for name, t in items:
        nbytes = t.numel() * t.element_size()
        if not groups or size + nbytes > cap:
            groups.append([])
            size = 0
        groups[-1].append((name, t))
        size += nbytes
    return groups


@torch.no_grad()
def copy_to_host(tensors: Mapping[str, torch.Tensor], pool: HostBufferPool, gather_bytes: int = GATHER_BYTES) -> HostCopy:
    """Start copying ``tensors`` to host buffers: one stack and one copy per (device, dtype, shape) group.

    CUDA copies are non-blocking into pinned memory behind an event; other devices copy
    synchronously. The values are those the tensors hold when this is called, even if training
    changes them before the copy runs (the gather, or the copy itself, is ordered on the stream).
    """
    groups: dict[tuple[torch.device, torch.dtype, torch.Size], list[tuple[str, torch.Tensor]]] = {}
    for name, t in tensors.items():
        groups.setdefault((t.device, t.dtype, t.shape), []).append((name, t))
    copy = HostCopy(pieces=[], pool=pool)
    devices = set()
    for (device, dtype, shape), items in groups.items():
        is_cuda = device.type == "cuda"
        for chunk in _chunks(items, gather_bytes):
            flat = (torch.stack([t for _, t in chunk]) if len(chunk) > 1 else chunk[0][1]).reshape(-1)
            buf = pool.take(flat.numel(), dtype, pinned=is_cuda)
            buf.copy_(flat, non_blocking=is_cuda)
            copy.pieces.append(TensorBlock([n for n, _ in chunk], [shape] * len(chunk), buf))
        if is_cuda:
            devices.add(device)
    for device in devices:
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        copy.events.append(event)
    return copy
