"""Writing a run directory: atomic creation, snapshots, metrics lines, the manifest, resume.

Every file goes through :mod:`tlora_analysis.fileio` (temporary name, fsync, rename). A new
run is assembled in a hidden sibling folder and renamed into place in one step, so a run
directory either does not exist or holds a readable run.json, frozen.safetensors, the step-0
snapshot and its manifest. Metrics lines are appended with flush + fsync each; a torn last
line (a kill mid-write) is cut off before the next append.

The run id (run.json's ``run_id``) is written into every snapshot's metadata (not into
frozen.safetensors, which is then the same bytes for runs with the same frozen tensors), and each
data file, once renamed into place, gets a line in ``manifest.jsonl`` (its step, checksum and
the number of metrics lines written so far), appended with fsync. ``verify`` reads the
manifest to find files deleted, replaced or copied in from another run after they were written.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..fileio import TensorBlock, _fsync_dir, atomic_write_bytes, read_json, save_tensors, write_json
from .format import (
    FROZEN_FILE, FROZEN_FORMAT, MANIFEST_FILE, METRICS_FILE, RUN_FORMAT, RUN_JSON, SCHEMA_VERSION, SNAPSHOT_DIR,
    SNAPSHOT_FORMAT, RunExistsError, snapshot_name, snapshot_step,
)

__all__ = ["RunWriter", "json_safe", "COMPATIBILITY_KEYS", "new_run_id", "read_manifest", "manifest_line",
           "count_metrics_lines"]

# run.json fields that must agree for a resume to continue the same run.
COMPATIBILITY_KEYS = ("method", "adapter_config", "layers")
# run.json fields a resume keeps from the run's creation: identity, and what frozen.safetensors holds (the
# resumed model's weights are no longer W0 for full fine-tuning, so its hash is the one taken at creation)
_KEPT_ON_RESUME = ("created", "created_unix", "name", "run_id", "store_base_weights", "base_weights")


def json_safe(value: Any) -> Any:
    """Plain JSON values: tensors and numpy scalars become numbers, NaN/inf become None."""
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    elif isinstance(value, (np.generic, np.ndarray)):
        value = value.tolist()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def new_run_id() -> str:
    """A fresh run id: 32 hex digits (uuid4)."""
    return uuid.uuid4().hex


def manifest_line(file: str, checksum: str, run_id: str, step: int | None = None, metrics_lines: int = 0) -> bytes:
    """One manifest entry: the file (relative to the run), its step, checksum and run id, metrics written so far."""
    entry = {"file": file, "step": step, "sha256": checksum, "run_id": run_id, "metrics_lines": metrics_lines}
    return (json.dumps(entry) + "\n").encode()


def read_manifest(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The manifest's entries and whether its last line was torn (a kill mid-append, skipped)."""
    if not path.is_file():
        return [], False
    lines = path.read_bytes().split(b"\n")
    entries, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entries.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i == len(lines) - 1:
                torn = True
                continue
            raise
    return entries, torn


def count_metrics_lines(path: Path) -> int:
    """Complete lines of a metrics file (a torn last line does not count)."""
    if not path.is_file():
        return 0
    return path.read_bytes().count(b"\n")


def _append_line(path: Path, data: bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _remove_temporaries(folder: Path) -> None:
    """Delete temporary files a killed atomic write left behind (``.<name>.*.tmp``)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


class RunWriter:
    """The file side of a recorder: owns one run directory while it is being written."""

    def __init__(self, run_dir: Path, header: dict[str, Any], recorded_steps: list[int], metrics_lines: int = 0) -> None:
        self.run_dir = run_dir
        self.header = header
        self.recorded_steps = recorded_steps
        self.metrics_lines = metrics_lines

    @property
    def run_id(self) -> str:
        return self.header["run_id"]

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        run_dir: str | os.PathLike,
        header: dict[str, Any],
        frozen: Mapping[str, torch.Tensor],
        initial_snapshot: tuple[int, Mapping[str, torch.Tensor], dict[str, Any]],
        overwrite: bool = False,
    ) -> "RunWriter":
        """Write a new run in one atomic rename: run.json, frozen.safetensors, the first snapshot, the manifest.

        ``header`` gets a fresh ``run_id`` unless it has one.
        """
        run_dir = Path(run_dir)
        header = {**header, "run_id": header.get("run_id") or new_run_id()}
        run_id = header["run_id"]
        if run_dir.exists() and not run_dir.is_dir():
            raise RunExistsError(f"{run_dir} is a file, not a folder; give a folder path for the run")
        occupied = run_dir.is_dir() and any(run_dir.iterdir())
        if occupied and not overwrite:
            what = "a run" if (run_dir / RUN_JSON).is_file() else "other files"
            raise RunExistsError(
                f"{run_dir} already holds {what}; pass resume=True to continue that run, "
                "overwrite=True to replace it, or choose another folder"
            )
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.parent.glob(f".{run_dir.name}.creating-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = run_dir.parent / f".{run_dir.name}.creating-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            # no run id: runs with the same frozen tensors then have byte-identical frozen files (a study links
            # them); run.json's fingerprints and base_weights hash, and the manifest, still tell another run's file
            frozen_sum = save_tensors(staging / FROZEN_FILE, frozen,
                                      {"format": FROZEN_FORMAT, "schema_version": SCHEMA_VERSION})
            step, tensors, meta = initial_snapshot
            (staging / SNAPSHOT_DIR).mkdir()
            snap_sum = _save_snapshot(staging, step, tensors, meta, run_id)
            write_json(staging / RUN_JSON, header)
            (staging / METRICS_FILE).touch()
            atomic_write_bytes(staging / MANIFEST_FILE, manifest_line(FROZEN_FILE, frozen_sum, run_id)
                               + manifest_line(_snapshot_file(step), snap_sum, run_id, step))
            _fsync_dir(staging)
            if occupied:
                trash = run_dir.parent / f".{run_dir.name}.replaced-{uuid.uuid4().hex[:8]}"
                os.replace(run_dir, trash)
                os.replace(staging, run_dir)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                if run_dir.is_dir():
                    run_dir.rmdir()
                os.replace(staging, run_dir)
            _fsync_dir(run_dir.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return cls(run_dir, header, [step])

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, header: dict[str, Any], start_step: int | None) -> "RunWriter":
        """Continue an existing run after ``start_step`` (default: its last recorded step).

        Snapshots and metrics lines after ``start_step`` belong to a trajectory that training
        will redo, so they are removed; a torn last metrics line is cut off.
        """
        run_dir = Path(run_dir)
        path = run_dir / RUN_JSON
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: nothing to resume; drop resume=True to start a new run")
        old = read_json(path)
        if old.get("format") != RUN_FORMAT:
            raise RunExistsError(f"{path} was not written by tlora_analysis' recorder; it cannot be resumed")
        for key in COMPATIBILITY_KEYS:
            if json.dumps(old.get(key), sort_keys=True) != json.dumps(header.get(key), sort_keys=True):
                raise RunExistsError(
                    f"{run_dir} holds a different run: its '{key}' differs from this model's "
                    f"({str(old.get(key))[:120]} vs {str(header.get(key))[:120]}); "
                    "pass overwrite=True to replace it or choose another folder"
                )
        snap_dir = run_dir / SNAPSHOT_DIR
        if not snap_dir.is_dir():
            raise FileNotFoundError(f"{snap_dir} is missing, so {run_dir} cannot be resumed; "
                                    "run `tlora-analysis verify` on it, or start again with overwrite")
        _remove_temporaries(run_dir)
        _remove_temporaries(snap_dir)
        steps = sorted(s for p in snap_dir.iterdir() if (s := snapshot_step(p)) is not None)
        if start_step is None:
            start_step = steps[-1] if steps else 0
        for s in steps:
            if s > start_step:
                (snap_dir / snapshot_name(s)).unlink()
        _truncate_metrics(run_dir / METRICS_FILE, start_step)
        merged = {**old, **{k: v for k, v in header.items() if k not in _KEPT_ON_RESUME}}
        merged["status"] = "running"
        merged["resumed_at_steps"] = [*old.get("resumed_at_steps", []), start_step]
        kept = [s for s in steps if s <= start_step]
        if merged.get("run_id"):
            _rewrite_manifest(run_dir, merged["run_id"], kept)
        write_json(path, merged)
        return cls(run_dir, merged, kept, count_metrics_lines(run_dir / METRICS_FILE))

    # ------------------------------------------------------------------ writing
    def write_snapshot(self, step: int, tensors: Mapping[str, torch.Tensor] | Sequence[TensorBlock],
                       meta: dict[str, Any]) -> None:
        """Write the snapshot file, then its manifest line (a kill between leaves one unlisted last file)."""
        run_id = self.header.get("run_id")
        checksum = _save_snapshot(self.run_dir, step, tensors, meta, run_id)
        if run_id:
            _append_line(self.run_dir / MANIFEST_FILE,
                         manifest_line(_snapshot_file(step), checksum, run_id, step, self.metrics_lines))
        self.recorded_steps.append(step)

    def append_metrics(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(json_safe(dict(record)), allow_nan=False) + "\n"
        _append_line(self.run_dir / METRICS_FILE, line.encode())
        self.metrics_lines += 1

    def update_header(self, **fields: Any) -> None:
        self.header.update(json_safe(fields))
        write_json(self.run_dir / RUN_JSON, self.header)


def _snapshot_file(step: int) -> str:
    return f"{SNAPSHOT_DIR}/{snapshot_name(step)}"


def _save_snapshot(run_dir: Path, step: int, tensors: Mapping[str, torch.Tensor] | Sequence[TensorBlock],
                   meta: dict[str, Any], run_id: str | None) -> str:
    meta = {"format": SNAPSHOT_FORMAT, "schema_version": SCHEMA_VERSION, **json_safe(meta), "step": step,
            **({"run_id": run_id} if run_id else {})}
    return save_tensors(run_dir / SNAPSHOT_DIR / snapshot_name(step), tensors, meta)


def _rewrite_manifest(run_dir: Path, run_id: str, kept_steps: list[int]) -> None:
    """The manifest of a resumed run: the frozen file and the kept snapshots, nothing after the resume step.

    A kept snapshot the manifest lacks (written just before a kill, its line not yet appended)
    is checked against its own checksum and run id, then listed.
    """
    from ..fileio import load_tensors  # the reader side of fileio, only needed here

    path = run_dir / MANIFEST_FILE
    try:
        entries, _ = read_manifest(path)
    except json.JSONDecodeError as exc:
        raise RunExistsError(f"{path} is damaged ({exc}); run `tlora-analysis verify` on the run") from exc
    by_file = {e.get("file"): e for e in entries}
    lines = [manifest_line(FROZEN_FILE, by_file[FROZEN_FILE]["sha256"], run_id)] if FROZEN_FILE in by_file else []
    for step in kept_steps:
        entry = by_file.get(_snapshot_file(step))
        if entry is None:
            _, meta = load_tensors(run_dir / _snapshot_file(step))
            if meta.get("run_id") != run_id:
                raise RunExistsError(f"{run_dir / _snapshot_file(step)} belongs to another run (run id "
                                     f"{meta.get('run_id')!r}); remove it or run `tlora-analysis verify`")
            entry = {"sha256": meta["sha256"], "metrics_lines": 0}
        lines.append(manifest_line(_snapshot_file(step), entry["sha256"], run_id, step,
                                   min(entry.get("metrics_lines", 0), count_metrics_lines(run_dir / METRICS_FILE))))
    atomic_write_bytes(path, b"".join(lines))


def _truncate_metrics(path: Path, start_step: int) -> None:
    """Keep the complete lines whose step ≤ start_step (atomically rewritten when anything goes)."""
    if not path.is_file():
        path.touch()
        return
    raw = path.read_bytes()
    kept, changed = [], not raw.endswith(b"\n") and bool(raw)
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            step = json.loads(line).get("step")
        except json.JSONDecodeError:
            changed = True
            continue
        if isinstance(step, (int, float)) and step > start_step:
            changed = True
            continue
        kept.append(line)
    if changed:
        atomic_write_bytes(path, b"".join(line + b"\n" for line in kept))
