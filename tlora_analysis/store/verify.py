"""``Run.verify()``: the state of every file of a run, as a report.

Problems (a file that is missing, truncated, bit-flipped, fails its checksum or lacks a
tensor) make the report not ``ok``. Notes (a torn last metrics line, temporary files of an
interrupted write) are what a killed process legitimately leaves; they keep it ``ok``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from safetensors import SafetensorError

from ..fileio import CorruptFileError, fingerprint, load_tensors
from .format import BASE_WEIGHT_KEY, FROZEN_KEYS, SNAPSHOT_DIR
from .reader import read_metrics

if TYPE_CHECKING:
    from .reader import Run

__all__ = ["FileCheck", "VerifyReport", "verify_run"]

OK, NOTE, PROBLEM = "ok", "note", "problem"


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

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.__dict__ for c in self.checks], columns=["path", "status", "message"])

    def __str__(self) -> str:
        head = f"{self.run}: {'OK' if self.ok else f'{len(self.problems)} problem(s)'} ({len(self.checks)} checks)"
        shown = [c for c in self.checks if c.status != OK]
        return "\n".join([head] + [f"  {c.status.upper():8s} {c.path}: {c.message}" for c in shown])


def _present(path: Path | None, report: VerifyReport) -> bool:
    """Whether a file the run's layout names is there to check (a missing one is a problem)."""
    if path is None:
        return False
    if not path.is_file():
        report.checks.append(FileCheck(str(path), PROBLEM, "missing"))
        return False
    return True


def _check_frozen(run: "Run", report: VerifyReport) -> None:
    path = run._source.frozen_file
    if not _present(path, report):
        return
    try:
        tensors, _ = load_tensors(path, verify=True)
    except (CorruptFileError, SafetensorError, OSError) as exc:
        report.checks.append(FileCheck(str(path), PROBLEM, str(exc)))
        return
    wanted = list(FROZEN_KEYS[run.method]) + ([BASE_WEIGHT_KEY] if run.config.get("store_base_weights") and run.method != "full" else [])
    problems = []
    for layer, info in run.config["layers"].items():
        for name in wanted:
            key = run._source.key(layer, name)
            if key not in tensors:
                problems.append(f"lacks {key}")
        for letter, fp in (info.get("fingerprints") or {}).items():
            key = run._source.key(layer, f"tlora_{letter}")
            if key in tensors and fingerprint(tensors[key]) != fp:
                problems.append(f"{key} does not match its fingerprint in run.json")
    if problems:
        report.checks.append(FileCheck(str(path), PROBLEM, "; ".join(problems[:5])))
    else:
        report.checks.append(FileCheck(str(path), OK, f"{len(tensors)} tensors, checksum ok"))


def _check_snapshots(run: "Run", report: VerifyReport) -> None:
    how = "checksum ok" if run._source.checksummed else "readable (this format has no checksum)"
    for step in run.steps:
        path = run.snapshot_path(step)
        try:
            run.check_snapshot(step)
        except (CorruptFileError, SafetensorError, OSError, KeyError, ValueError) as exc:
            report.checks.append(FileCheck(str(path), PROBLEM, str(exc)))
        else:
            report.checks.append(FileCheck(str(path), OK, f"step {step}, {how}"))


def _check_metrics(run: "Run", report: VerifyReport) -> None:
    path = run._source.metrics_file
    if not _present(path, report):
        return
    try:
        records, torn = read_metrics(path)
    except CorruptFileError as exc:
        report.checks.append(FileCheck(str(path), PROBLEM, str(exc)))
        return
    report.checks.append(FileCheck(str(path), OK, f"{len(records)} events"))
    if torn:
        report.checks.append(FileCheck(str(path), NOTE, "last line torn (a kill mid-append); readers skip it"))


def _check_leftovers(run: "Run", report: VerifyReport) -> None:
    for folder in (run.path, run.path / SNAPSHOT_DIR):
        if folder.is_dir():
            for p in sorted(folder.glob(".*.tmp")):
                report.checks.append(FileCheck(str(p), NOTE, "temporary file of an interrupted write; ignored, removed on resume"))


def verify_run(run: "Run") -> VerifyReport:
    """Check the frozen file, every snapshot, the metrics and leftovers of ``run``."""
    report = VerifyReport(run.name)
    if run.kind == "run":
        _check_frozen(run, report)
    _check_snapshots(run, report)
    if run.kind == "run":
        _check_metrics(run, report)
        _check_leftovers(run, report)
    if not run.steps:
        report.checks.append(FileCheck(str(run.path), NOTE, "no snapshot recorded yet"))
    return report
