"""The run directory's names and versions, shared by the writer and the reader (docs/run-format.md).

    <run>/run.json                        header: schema version, method, config, layers, ...
    <run>/frozen.safetensors              the adapters' frozen tensors; W0 per layer when stored
    <run>/snapshots/<step>.safetensors    the trainable state at that optimizer step
    <run>/metrics.jsonl                   one JSON object per logged event
    <run>/manifest.jsonl                  one line per data file written: step, checksum, metrics count
"""

from __future__ import annotations

import re
from pathlib import Path

from ..adapters.spec import BASE_WEIGHT

__all__ = [
    "RUN_FORMAT", "SCHEMA_VERSION", "SUPPORTED_SCHEMA_VERSIONS", "RUN_JSON", "FROZEN_FILE",
    "SNAPSHOT_DIR", "METRICS_FILE", "MANIFEST_FILE", "STATE_DIR", "STATE_FILE", "ADAPTER_DIR", "PREDICTIONS_DIR",
    "BASE_WEIGHT_KEY",
    "snapshot_name", "snapshot_step",
    "tensor_key", "NotARunError", "SchemaVersionError", "UnknownLayerError", "UnknownStepError", "RunExistsError",
    "NonFiniteError", "ForeignFileError",
]

RUN_FORMAT = "tlora_analysis.run"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

RUN_JSON = "run.json"
FROZEN_FILE = "frozen.safetensors"
SNAPSHOT_DIR = "snapshots"
METRICS_FILE = "metrics.jsonl"
MANIFEST_FILE = "manifest.jsonl"
STATE_DIR = "trainer_state"  # the runner's resume point: STATE_DIR/STATE_FILE
STATE_FILE = "state.safetensors"
ADAPTER_DIR = "adapter"  # the runner's final adapter (or PEFT's save_pretrained folder)
PREDICTIONS_DIR = "predictions"  # the runner's validation outputs per evaluation: <step>.safetensors
SNAPSHOT_FORMAT = "tlora_analysis.snapshot"
FROZEN_FORMAT = "tlora_analysis.frozen"

# Per-layer tensor names come from each method's spec (tlora_analysis.adapters.spec); W0's is this one.
BASE_WEIGHT_KEY = BASE_WEIGHT

_SNAPSHOT_RE = re.compile(r"^(\d+)\.safetensors$")


def snapshot_name(step: int) -> str:
    """``snapshots/<step>.safetensors`` with the step zero-padded so names sort by step."""
    return f"{step:09d}.safetensors"


def snapshot_step(path: Path) -> int | None:
    """The step a snapshot file name encodes, or None for any other file."""
    m = _SNAPSHOT_RE.match(path.name)
    return int(m.group(1)) if m else None


def tensor_key(layer: str, name: str) -> str:
    """The key of one layer's tensor inside a safetensors file of the run."""
    return f"{layer}.{name}"


class NotARunError(ValueError):
    """The path exists but holds no run (no run.json, PEFT adapter or Trainer checkpoints)."""


class SchemaVersionError(ValueError):
    """run.json has a schema version this package cannot read."""


class NonFiniteError(ValueError):
    """A snapshot holds NaN or infinite values (training diverged); the message names file and tensor."""


class ForeignFileError(ValueError):
    """A file of the run was written by another run (its run id or checksum is not this run's)."""


class RunExistsError(FileExistsError):
    """A recorder was pointed at a folder that already holds a run or other files."""


class _NamedKeyError(KeyError):
    def __str__(self) -> str:  # KeyError's default repr-quotes the message
        return str(self.args[0]) if self.args else ""


class UnknownLayerError(_NamedKeyError):
    """A layer name the run does not have; the message lists the ones it has."""


class UnknownStepError(_NamedKeyError):
    """A step the run did not record; the message lists the recorded ones."""
