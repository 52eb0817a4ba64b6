"""Crash-safe files: atomic writes, checksummed safetensors, fingerprints. No pickle anywhere.

Every file is written to a temporary name in the same folder, flushed and fsynced, then
renamed over the target, so a process killed at any instant leaves either the old file or the
complete new one. Safetensors files carry a SHA-256 of their tensor bytes in the header
metadata; :func:`load_tensors` recomputes it and names the file when it differs.

Files are read with the safetensors library (which validates every header) but serialized
here: safetensors' ``save`` spends about 30 µs of Python per tensor, which for the recorder's
224-tensor snapshots held the interpreter lock long enough to slow a GPU training step
(docs/benchmarks.md, "Recorder overhead"). :func:`safetensors_bytes` writes the same format
from flat buffers holding many tensors back to back (:class:`TensorBlock`) without a
per-tensor copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from safetensors import SafetensorError, safe_open

__all__ = [
    "CorruptFileError",
    "atomic_write_bytes",
    "write_json",
    "read_json",
    "tensor_checksum",
    "fingerprint",
    "save_tensors",
    "safetensors_bytes",
    "TensorBlock",
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


def _process_umask() -> int:
    """The process's umask (read once, at import: setting it to read it is not thread-safe later)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_process_umask()  # what open() would give a new file; mkstemp's own 0600 is private


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename), with a new file's usual mode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, _FILE_MODE)
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


def _checksum(entries: Iterable[tuple[str, torch.dtype, tuple[int, ...], Any]]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) entries, in sorted name order."""
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(entries, key=lambda e: e[0]):
        h.update(f"{name}|{dtype}|{tuple(shape)}|".encode())
        h.update(data)
    return h.hexdigest()


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in sorted name order."""
    return _checksum((name, t.dtype, t.shape, _tensor_bytes(t)) for name, t in tensors.items())


def fingerprint(t: torch.Tensor) -> dict[str, Any]:
    """Shape, dtype and SHA-256 of one tensor: enough to verify a regenerated one."""
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).removeprefix("torch."),
        "sha256": hashlib.sha256(_tensor_bytes(t)).hexdigest(),
    }


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass
class TensorBlock:
    """Tensors stored back to back in one flat, contiguous CPU buffer: ``names[i]`` has ``shapes[i]``."""

    names: list[str]
    shapes: list[torch.Size]
    buffer: torch.Tensor

    @classmethod
    def of(cls, name: str, tensor: torch.Tensor) -> "TensorBlock":
        """One tensor as a block (copied to the CPU and made contiguous when needed)."""
        t = tensor.detach().to("cpu").contiguous()
        return cls([name], [t.shape], t.reshape(-1))


def safetensors_bytes(blocks: Sequence[TensorBlock], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file holding every block's tensors, ``metadata`` plus the checksum in its header.

    Blocks of wider dtypes come first, so each tensor's offset is a multiple of its element
    size (as safetensors' own writer arranges); the header is padded to 8 bytes with spaces.
    """
    return _encode(blocks, metadata)[0]


def _encode(blocks: Sequence[TensorBlock], metadata: Mapping[str, str]) -> tuple[bytes, str]:
    """The file's bytes and the checksum written into its header."""
    header: dict[str, Any] = {}
    entries, parts, offset = [], [], 0
    for block in sorted(blocks, key=lambda b: -b.buffer.element_size()):
        code = _SAFETENSORS_DTYPES.get(block.buffer.dtype)
        if code is None:
            raise TypeError(f"cannot store dtype {block.buffer.dtype} (supported: "
                            f"{', '.join(str(d).removeprefix('torch.') for d in _SAFETENSORS_DTYPES)}); convert it first")
        if sum(shape.numel() for shape in block.shapes) != block.buffer.numel():
            raise ValueError(f"a block's buffer holds {block.buffer.numel()} elements, its shapes "
                             f"{sum(s.numel() for s in block.shapes)}")
        raw = memoryview(block.buffer.view(torch.uint8).numpy())
        pos, size = 0, block.buffer.element_size()
        for name, shape in zip(block.names, block.shapes):
            if name in header:
                raise ValueError(f"tensor name {name!r} appears twice; names in one file must be unique")
            end = pos + shape.numel() * size
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset + pos, offset + end]}
            entries.append((name, block.buffer.dtype, shape, raw[pos:end]))
            pos = end
        parts.append(raw)
        offset += pos
    meta = {**metadata, CHECKSUM_KEY: _checksum(entries)}
    text = json.dumps({"__metadata__": meta, **header}, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return b"".join([struct.pack("<Q", len(text)), text, *parts]), meta[CHECKSUM_KEY]


def save_tensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor] | Sequence[TensorBlock],
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Atomically write a safetensors file with a checksum and JSON-encoded metadata; return the checksum.

    ``tensors`` is a name → tensor mapping, or :class:`TensorBlock` s (the recorder's flat buffers).
    """
    blocks = [TensorBlock.of(k, v) for k, v in tensors.items()] if isinstance(tensors, Mapping) else list(tensors)
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    data, checksum = _encode(blocks, meta)
    atomic_write_bytes(path, data)
    return checksum


def open_tensors(path: str | os.PathLike):
    """``safe_open`` a file lazily, turning a damaged header into a named error."""
    path = Path(path)
    if not path.is_file():
        if path.is_symlink():
            raise FileNotFoundError(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist")
        raise FileNotFoundError(f"{path} does not exist")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path} cannot be read (permission denied); fix its permissions")
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
