"""Crash-safe files: atomic writes, checksummed safetensors, fingerprints. No pickle anywhere.

Every file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over the target, so a process killed at any instant leaves either the old file or the
complete new one. Safetensors files carry a SHA-256 of their tensor bytes in the header
metadata; :func:`load_tensors` recomputes it and names the file when it differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save

__all__ = [
    "CorruptFileError",
    "atomic_write_bytes",
    "write_json",
    "read_json",
    "tensor_checksum",
    "fingerprint",
    "save_tensors",
    "load_tensors",
    "open_tensors",
]

CHECKSUM_KEY = "sha256"


class CorruptFileError(ValueError):
    """A file exists but is damaged (truncated, bit-flipped, unreadable)."""


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc}); restore it or recreate the run") from exc


def _tensor_bytes(t: torch.Tensor) -> bytes:
    t = t.detach().to("cpu").contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def fingerprint(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype and SHA-256 of one tensor: enough to verify a regenerated one."""
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(_tensor_bytes(t)).hexdigest(),
    }


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Atomically write a safetensors file with a checksum and JSON-encoded metadata."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    meta[CHECKSUM_KEY] = tensor_checksum(cpu)
    atomic_write_bytes(path, st_save(cpu, metadata=meta))


def open_tensors(path: str | os.PathLike):
    """``safe_open`` a file lazily, turning a damaged header into a named error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptFileError(
            f"{path} is not a readable safetensors file ({exc}); it is truncated or damaged"
        ) from exc


def load_tensors(
    path: str | os.PathLike, keys: list[str] | None = None, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read tensors and metadata; with ``verify`` check the stored checksum.

    ``keys`` limits what is read (verification then needs every tensor, so it reads all).
    Raises :class:`CorruptFileError` naming the file and the problem.
    """
    path = Path(path)
    try:
        with open_tensors(path) as fh:
            meta = dict(fh.metadata() or {})
            names = list(fh.keys())
            wanted = names if (verify or keys is None) else keys
            missing = [k for k in (keys or []) if k not in names]
            if missing:
                raise KeyError(f"{path} has no tensor(s) {missing[:5]}; it holds {names[:8]}")
            tensors = {k: fh.get_tensor(k) for k in wanted}
    except SafetensorError as exc:
        raise CorruptFileError(f"{path} could not be read ({exc}); it is truncated or damaged") from exc
    if verify:
        stored = meta.get(CHECKSUM_KEY)
        if stored is None:
            raise CorruptFileError(f"{path} has no '{CHECKSUM_KEY}' checksum in its metadata")
        actual = tensor_checksum(tensors)
        if actual != stored:
            raise CorruptFileError(
                f"{path} fails its checksum (stored {stored[:12]}…, computed {actual[:12]}…): "
                "the file was altered or damaged after it was written"
            )
        if keys is not None:
            tensors = {k: tensors[k] for k in keys}
    return tensors, meta
