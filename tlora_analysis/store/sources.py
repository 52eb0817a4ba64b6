"""Where a run's files are: the native run directory, a PEFT adapter, a Trainer output folder.

Each opener returns a :class:`Source`, a uniform description the reader works from: the
run.json-style header, the snapshot file of every step, how a (layer, tensor) pair is named
inside those files, and where the metrics come from. Nothing here reads a tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..adapters.methods import METHODS
from ..fileio import CorruptFileError, open_tensors, read_json
from .format import (
    FROZEN_FILE, METRICS_FILE, RUN_FORMAT, RUN_JSON, SCHEMA_VERSION, SNAPSHOT_DIR, SUPPORTED_SCHEMA_VERSIONS,
    NotARunError, SchemaVersionError, snapshot_step, tensor_key,
)
from .trainer_logs import trainer_log_to_event

__all__ = ["Source", "open_source"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Source:
    """What the reader needs to know about a run's files."""

    kind: str  # "run" | "peft_adapter" | "trainer_checkpoints"
    header: dict[str, Any]
    snapshot_files: dict[int, Path]
    key: Callable[[str, str], str]
    checksummed: bool
    frozen_file: Path | None = None
    metrics_file: Path | None = None
    metrics_records: list[dict[str, Any]] = field(default_factory=list)
    epochs: dict[int, float] = field(default_factory=dict)


def open_source(path: Path) -> Source:
    """Recognise what ``path`` holds, or raise a clear error."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a run directory written by SnapshotRecorder")
    if path.is_file():
        raise NotARunError(f"{path} is a file; a run is a folder holding {RUN_JSON}")
    if (path / RUN_JSON).is_file():
        return _native(path)
    if (path / PEFT_CONFIG).is_file() and (path / PEFT_WEIGHTS).is_file():
        return _peft_adapter(path)
    if _checkpoints(path):
        return _trainer_checkpoints(path)
    raise NotARunError(
        f"{path} is not a run: it has no {RUN_JSON} (a SnapshotRecorder run), no {PEFT_CONFIG} + "
        f"{PEFT_WEIGHTS} (a PEFT adapter) and no checkpoint-*/ folders (a Trainer output_dir)"
    )


# ---------------------------------------------------------------------- native
def _native(path: Path) -> Source:
    header = read_json(path / RUN_JSON)
    if not isinstance(header, dict) or header.get("format") != RUN_FORMAT:
        raise NotARunError(f"{path / RUN_JSON} is not a tlora_analysis run header (no format '{RUN_FORMAT}')")
    version = header.get("schema_version")
    if not isinstance(version, int) or version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise SchemaVersionError(
            f"{path / RUN_JSON} has schema version {version!r}; this tlora-analysis reads versions "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}" + (" — upgrade tlora-analysis to read it" if newer else "")
        )
    _check_header(path / RUN_JSON, header)
    snap_dir = path / SNAPSHOT_DIR
    files = {}
    if snap_dir.is_dir():
        for p in snap_dir.iterdir():
            step = snapshot_step(p)
            if step is not None:
                files[step] = p
    return Source("run", header, files, tensor_key, True, path / FROZEN_FILE, path / METRICS_FILE)


def _check_header(path: Path, header: dict[str, Any]) -> None:
    """run.json names a method this package reads and describes its layers; else a clear error."""
    method = header.get("method")
    if method not in METHODS:
        raise NotARunError(f"{path} names method {method!r}; this tlora-analysis reads {list(METHODS)} runs "
                           "(PEFT LoRA folders open too)")
    layers = header.get("layers")
    if not isinstance(layers, dict) or not layers:
        raise CorruptFileError(f"{path} has no 'layers' record (the adapted layers and their shapes): run.json is "
                               "damaged or was written by hand; restore it from a copy or re-record the run")
    bad = [n for n, info in layers.items()
           if not isinstance(info, dict) or not (isinstance(info.get("shape"), list) and len(info["shape"]) == 2)]
    if bad:
        raise CorruptFileError(f"{path}: layer(s) {bad[:3]} have no [out, in] 'shape'; run.json is damaged")


# ---------------------------------------------------------------------- PEFT
def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _pattern_value(patterns: dict[str, Any], layer: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup: a key matches the name or a dotted suffix."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", layer):
            return value
    return default


def _peft_layers(folder: Path, peft: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Layer name → {"shape", "rank", "scaling"} and layer name → key prefix in the file."""
    with open_tensors(folder / PEFT_WEIGHTS) as fh:
        keys = list(fh.keys())
        trainable = sum(math.prod(fh.get_slice(k).get_shape()) for k in keys)
        prefixes = {}
        for k in keys:
            if k.endswith(".lora_A.weight"):
                stem = k[: -len(".lora_A.weight")]
                prefixes[stem.removeprefix("base_model.model.")] = stem
        layers = {}
        for name in sorted(prefixes, key=_natural_key):
            stem = prefixes[name]
            if f"{stem}.lora_B.weight" not in keys:
                raise NotARunError(f"{folder / PEFT_WEIGHTS} has {stem}.lora_A.weight but no lora_B: incomplete adapter")
            r, inn = fh.get_slice(f"{stem}.lora_A.weight").get_shape()
            out, _ = fh.get_slice(f"{stem}.lora_B.weight").get_shape()
            alpha = _pattern_value(peft.get("alpha_pattern"), name, peft.get("lora_alpha", 8))
            scaling = alpha / (math.sqrt(r) if peft.get("use_rslora") else r)
            layers[name] = {"shape": [out, inn], "rank": r, "scaling": scaling}
    if not layers:
        raise NotARunError(f"{folder / PEFT_WEIGHTS} holds no lora_A / lora_B tensors; only LoRA adapters open as runs")
    return layers, prefixes, trainable


def _read_peft_config(folder: Path) -> dict[str, Any]:
    peft = read_json(folder / PEFT_CONFIG)
    if peft.get("format") == "tlora_analysis.adapter":
        raise NotARunError(
            f"{folder} is a tlora_analysis.save_adapter folder, not a run; load it with load_adapter, "
            "or record training with SnapshotRecorder"
        )
    if peft.get("peft_type") != "LORA":
        raise NotARunError(f"{folder / PEFT_CONFIG} is a {peft.get('peft_type')!r} adapter; only PEFT LoRA adapters open as runs")
    if peft.get("use_dora"):
        raise NotARunError(f"{folder / PEFT_CONFIG} is a DoRA adapter (use_dora=true): its update is not B·A, so it cannot open as a LoRA run")
    return peft


def _peft_header(folder: Path, peft: dict[str, Any], layers: dict[str, dict[str, Any]], kind: str,
                 trainable: int) -> dict[str, Any]:
    rank = int(peft.get("r", 8))
    targets = peft.get("target_modules")
    return {
        "format": kind,
        "schema_version": None,
        "name": folder.name,
        "method": "lora",
        "adapter_config": {
            "method": "lora", "rank": rank,
            "target_modules": sorted(targets) if isinstance(targets, list) else targets,
            "lora_alpha": peft.get("lora_alpha"), "dropout": peft.get("lora_dropout", 0.0),
            "use_rslora": bool(peft.get("use_rslora", False)), "seed": None,
            "modules_to_save": list(peft.get("modules_to_save") or []),
        },
        "rank": rank,
        "layers": layers,
        "model": peft.get("base_model_name_or_path"),
        "store_base_weights": False,
        # PEFT saves exactly what trains (lora_A, lora_B, modules_to_save); the frozen model is not there
        "parameters": {"trainable": trainable, "frozen": None, "total": None, "counted_from": PEFT_WEIGHTS},
        "peft_config": peft,
    }


def _peft_key(prefixes: dict[str, str]) -> Callable[[str, str], str]:
    return lambda layer, name: f"{prefixes[layer]}.{name}.weight"


def _peft_adapter(folder: Path) -> Source:
    peft = _read_peft_config(folder)
    layers, prefixes, trainable = _peft_layers(folder, peft)
    m = _CHECKPOINT_RE.match(folder.name)
    state = read_json(folder / TRAINER_STATE) if (folder / TRAINER_STATE).is_file() else {}
    step = int(state.get("global_step", int(m.group(1)) if m else 0))
    epochs = {step: state["epoch"]} if state.get("epoch") is not None else {}
    records = [e for e in map(trainer_log_to_event, state.get("log_history", [])) if e]
    return Source("peft_adapter", _peft_header(folder, peft, layers, "peft_adapter", trainable),
                  {step: folder / PEFT_WEIGHTS}, _peft_key(prefixes), False,
                  metrics_records=records, epochs=epochs)


def _checkpoints(folder: Path) -> dict[int, Path]:
    found = {}
    for p in folder.iterdir():
        m = _CHECKPOINT_RE.match(p.name)
        if m and p.is_dir():
            found[int(m.group(1))] = p
    return dict(sorted(found.items()))


def _trainer_checkpoints(folder: Path) -> Source:
    checkpoints = _checkpoints(folder)
    without = [p.name for p in checkpoints.values() if not (p / PEFT_WEIGHTS).is_file()]
    if without:
        raise NotARunError(
            f"{folder}: {without[:5]} hold no {PEFT_WEIGHTS}; only Trainer runs of PEFT LoRA models "
            "open as runs (record other runs with RecorderCallback)"
        )
    first = next(iter(checkpoints.values()))
    peft = _read_peft_config(first)
    layers, prefixes, trainable = _peft_layers(first, peft)
    epochs, records = {}, []
    for step, ckpt in checkpoints.items():
        if (ckpt / TRAINER_STATE).is_file():
            state = read_json(ckpt / TRAINER_STATE)
            if state.get("epoch") is not None:
                epochs[step] = state["epoch"]
            records = state.get("log_history", records)  # the last checkpoint's history is the longest
    events = [e for e in map(trainer_log_to_event, records) if e]
    header = _peft_header(folder, peft, layers, "trainer_checkpoints", trainable)
    header["checkpoints"] = {str(s): p.name for s, p in checkpoints.items()}
    return Source("trainer_checkpoints", header, {s: p / PEFT_WEIGHTS for s, p in checkpoints.items()},
                  _peft_key(prefixes), False, metrics_records=events, epochs=epochs)

