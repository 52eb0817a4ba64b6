"""``Run.verify()``: the state of every file of a run, as a report.

Problems make the report not ``ok``: a file that is missing, truncated, bit-flipped, fails its
checksum, lacks a tensor or has one of the wrong shape, holds NaN or infinities, was written by
another run (run id, manifest checksum, the frozen tensors' fingerprints or stored W0's hash differ), a
malformed ``base_weights`` entry in run.json, a base model given to check that is not the run's
(its W0 hashes differently), a snapshot the manifest
lists that is gone, a snapshot inside the recorded range the manifest does not list, or a
metrics file shorter than the manifest says it was. Notes are what a killed process
legitimately leaves (a torn last line, temporary files, the last snapshot written just before
its manifest line); they keep it ``ok``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from safetensors import SafetensorError

from ..adapters.io import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from ..fileio import CorruptFileError, open_tensors, read_json
from .base_weights import BaseModelError, reference_problem
from .format import (ADAPTER_DIR, MANIFEST_FILE, RUN_JSON, SNAPSHOT_DIR, STATE_DIR, STATE_FILE, ForeignFileError,
                     NonFiniteError, snapshot_name)
from .reader import read_metrics
from .writer import read_manifest

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["FileCheck", "VerifyReport", "verify_run"]

OK, NOTE, PROBLEM = "ok", "note", "problem"
_READ_ERRORS = (CorruptFileError, ForeignFileError, NonFiniteError, SafetensorError, OSError, KeyError, ValueError)


@dataclass(frozen=True)
class FileCheck:
    """One file's state: status "ok", "note" (harmless) or "problem", and what was found."""

    path: str
    status: str
    message: str


@dataclass
class VerifyReport:
    run: str
    checks: list[FileCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no file has a problem."""
        return not self.problems

    @property
    def problems(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status == PROBLEM]

    def add(self, path: Path | str, status: str, message: str) -> None:
        self.checks.append(FileCheck(str(path), status, message))

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.checks], columns=["path", "status", "message"])

    def __str__(self) -> str:
        head = f"{self.run}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'} ({len(self.checks)} checks)"
        shown = [c for c in self.checks if c.status != OK]
        return "\n".join([head] + [f"  {c.status.upper():8s} {c.path}: {c.message}" for c in shown])


@dataclass
class _Manifest:
    """What manifest.jsonl says was written: checksum per file, steps, metrics lines."""

    by_file: dict[str, dict[str, Any]]
    steps: list[int]
    metrics_lines: int


def _read_manifest(run: "Run", report: VerifyReport) -> _Manifest | None:
    """The manifest of a run that has a run id (older runs have neither: a note says what cannot be checked)."""
    path = run.path / MANIFEST_FILE
    if not run.run_id:
        report.add(run.path, NOTE, "recorded without a run id and manifest (an earlier version): deleted or "
                                   "foreign snapshots cannot be detected")
        return None
    if not path.is_file():
        report.add(path, PROBLEM, "missing: the manifest lists every file this run wrote; without it deleted or "
                                  "foreign files cannot be told apart")
        return None
    try:
        entries, torn = read_manifest(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        report.add(path, PROBLEM, f"not valid JSON lines ({exc}): damaged")
        return None
    if torn:
        report.add(path, NOTE, "last line torn (a kill mid-append); ignored")
    foreign = sorted({e.get("run_id") for e in entries} - {run.run_id})
    if foreign:
        report.add(path, PROBLEM, f"holds entries of another run (run id {foreign[0]!r})")
    report.add(path, OK, f"{len(entries)} files listed")
    steps = [e["step"] for e in entries if isinstance(e.get("step"), int)]
    return _Manifest({e.get("file"): e for e in entries}, sorted(steps),
                     max((int(e.get("metrics_lines") or 0) for e in entries), default=0))


def _stored_checksum(path: Path) -> str | None:
    with open_tensors(path) as fh:
        return (fh.metadata() or {}).get("sha256")


def _against_manifest(run: "Run", path: Path, manifest: _Manifest | None) -> str | None:
    """Why ``path`` is not the file the manifest recorded, or None."""
    if manifest is None:
        return None
    entry = manifest.by_file.get(path.relative_to(run.path).as_posix())
    if entry is None:
        return None
    if _stored_checksum(path) != entry.get("sha256"):
        return (f"is not the file this run wrote (checksum {str(_stored_checksum(path))[:12]}…, the manifest "
                f"recorded {str(entry.get('sha256'))[:12]}…): replaced or copied in from another run")
    return None


def _check_frozen(run: "Run", report: VerifyReport, manifest: _Manifest | None) -> None:
    path = run._source.frozen_file
    if path is None:
        return
    if not path.is_file():
        report.add(path, PROBLEM, "missing")
        return
    try:
        tensors = run.check_frozen()
        wrong = _against_manifest(run, path, manifest)
    except _READ_ERRORS as exc:
        report.add(path, PROBLEM, str(exc))
        return
    if wrong:
        report.add(path, PROBLEM, wrong)
        return
    from .format import BASE_WEIGHT_KEY

    with_w0 = run.config.get("store_base_weights") and run.spec.weight_key is None
    wanted = [key for layer in run.layers for key in (
        *run.frozen_keys(layer).values(), *([run._source.key(layer, BASE_WEIGHT_KEY)] if with_w0 else []))]
    lacking = list(dict.fromkeys(k for k in wanted if k not in tensors))
    if lacking:
        report.add(path, PROBLEM, f"lacks {', '.join(lacking[:5])}")
    else:
        report.add(path, OK, f"{len(tensors)} tensors, checksum, run id and fingerprints ok")


def _check_reference(run: "Run", report: VerifyReport, base_model: str | os.PathLike | None) -> None:
    """run.json's base_weights entry: well formed, consistent with what the run stores, and, with a base model
    (given, else the one it names when that is on this machine), W0 of that model hashing to it."""
    path, ref = run.path / RUN_JSON, run.base_weights_reference
    if ref is None:
        report.add(path, NOTE, "no base_weights entry (recorded before W0 was hashed): a base model cannot be checked")
        return
    problem = reference_problem(ref)
    stored = bool(run.config.get("store_base_weights")) or run.spec.weight_key is not None
    if problem is None and ref["stored"] != stored:
        problem = f"base_weights.stored is {ref['stored']}, but the run {'holds' if stored else 'does not hold'} W0"
    if problem:
        report.add(path, PROBLEM, problem)
        return
    model = base_model if base_model is not None else (None if ref["stored"] or run._recorded_base_model is None
                                                       else ref["model"])
    if model is None:
        where = "stored with the run" if ref["stored"] else f"referenced (model {ref['model']!r}), not checked: " \
                                                            "give --base-model to check it"
        report.add(path, OK, f"base_weights entry well formed; W0 {where}")
        return
    try:
        run.attach_base_model(model)
    except (BaseModelError, ValueError, OSError) as exc:
        report.add(path, PROBLEM, str(exc))
        return
    report.add(path, OK, f"W0 of base model {os.fspath(model)!r} matches base_weights.sha256 {ref['sha256'][:12]}…")


def _check_snapshots(run: "Run", report: VerifyReport, manifest: _Manifest | None) -> None:
    how = "checksum, run id, shapes and values ok" if run._source.checksummed else \
        "readable, shapes and values ok (this format has no checksum)"
    if run.kind == "run":
        folder = run.path / SNAPSHOT_DIR
        if not folder.is_dir():
            why = "a symbolic link that leads nowhere or loops" if folder.is_symlink() else "missing"
            report.add(folder, PROBLEM, f"the snapshot folder is {why}: no snapshot can be read")
    for step in run.steps:
        path = run.snapshot_path(step)
        try:
            run.check_snapshot(step)
            wrong = _against_manifest(run, path, manifest)
        except _READ_ERRORS as exc:
            report.add(path, PROBLEM, str(exc))
            continue
        if wrong:
            report.add(path, PROBLEM, wrong)
        elif manifest is not None and f"{SNAPSHOT_DIR}/{path.name}" not in manifest.by_file:
            last = manifest.steps[-1] if manifest.steps else -1
            newer = [s for s in run.steps if s > last]
            if step > last and newer == [step]:
                report.add(path, NOTE, f"step {step}, written just before the process stopped (its manifest line "
                                       "was not yet appended); checksum and run id ok")
            else:
                report.add(path, PROBLEM, f"step {step} is not in the manifest: this run never wrote it (copied in "
                                          "from elsewhere)")
        else:
            report.add(path, OK, f"step {step}, {how}")
    if manifest is not None:
        for step in manifest.steps:
            if step not in run.steps:
                report.add(run.path / SNAPSHOT_DIR / snapshot_name(step), PROBLEM,
                           f"missing: the manifest lists step {step}, so it was written and later deleted")


def _check_metrics(run: "Run", report: VerifyReport, manifest: _Manifest | None) -> None:
    path = run._source.metrics_file
    if path is None:
        return
    if not path.is_file():
        report.add(path, PROBLEM, "missing")
        return
    try:
        records, torn = read_metrics(path)
    except CorruptFileError as exc:
        report.add(path, PROBLEM, str(exc))
        return
    if manifest is not None and len(records) < manifest.metrics_lines:
        report.add(path, PROBLEM, f"holds {len(records)} events, but {manifest.metrics_lines} had been written when "
                                  "the last snapshot was: the file was emptied or cut short")
    else:
        report.add(path, OK, f"{len(records)} events")
    if torn:
        report.add(path, NOTE, "last line torn (a kill mid-append); readers skip it")


def _check_saved_state(run: "Run", report: VerifyReport) -> None:
    """The runner's resume point and final adapter, where the run has them: each tensor file reads in full and
    the adapter's config is JSON. They carry no manifest checksum, so this finds damage, not substitution."""
    for path in (run.path / STATE_DIR / STATE_FILE, run.path / ADAPTER_DIR / ADAPTER_WEIGHTS):
        if path.exists():
            try:
                with open_tensors(path) as f:
                    count = sum(1 for key in f.keys() if f.get_tensor(key) is not None)
                report.add(path, OK, f"{count} tensors read")
            except _READ_ERRORS as exc:
                report.add(path, PROBLEM, f"unreadable ({exc}); a resume or load from it fails: train again from "
                                          "the start, or delete it")
    config = run.path / ADAPTER_DIR / ADAPTER_CONFIG
    if config.exists():
        try:
            read_json(config)
            report.add(config, OK, "valid JSON")
        except _READ_ERRORS as exc:
            report.add(config, PROBLEM, f"unreadable ({exc})")


def _check_leftovers(run: "Run", report: VerifyReport) -> None:
    for folder in (run.path, run.path / SNAPSHOT_DIR):
        if folder.is_dir():
            for p in sorted(folder.glob(".*.tmp")):
                report.add(p, NOTE, "temporary file of an interrupted write; ignored, removed on resume")


def verify_run(run: "Run", base_model: str | os.PathLike | None = None) -> VerifyReport:
    """Check the frozen file, W0's reference (against ``base_model`` when given), every snapshot, the metrics,
    the manifest and leftovers of ``run``."""
    report = VerifyReport(run.name)
    manifest = _read_manifest(run, report) if run.kind == "run" else None
    if run.kind == "run":
        _check_frozen(run, report, manifest)
        _check_reference(run, report, base_model)
    _check_snapshots(run, report, manifest)
    if run.kind == "run":
        _check_metrics(run, report, manifest)
        _check_saved_state(run, report)
        _check_leftovers(run, report)
    if not run.steps and report.ok:
        report.add(run.path, NOTE, "no snapshot recorded yet")
    return report
