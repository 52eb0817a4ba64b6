"""``Run``: the lazy reader every analysis stands on.

Opening a run reads run.json and lists the snapshot folder; no tensor is read until one is
asked for. The first read of a snapshot file checks it whole (once per file per Run): its
checksum, step, run id, every layer's tensors and their shapes, and that they are finite; the
first read of frozen.safetensors checks its checksum, run id and the fingerprints of the frozen
tensors (and W0 against run.json's ``base_weights`` hash when stored). A run that references W0
instead of storing it reads it from its base model (:mod:`.base_weights`): the one given with
``base_model=`` / :meth:`Run.attach_base_model`, else the model run.json names when it is on this
machine, checked against the hash and kept by the ``Run`` object. Which tensors a layer has, and how they make ΔW, is the method's spec
(:mod:`tlora_analysis.adapters.spec`): the reader never names a method.
A damaged or foreign file raises an error naming it (:class:`~tlora_analysis.fileio.CorruptFileError`,
:class:`~tlora_analysis.store.format.ForeignFileError`, :class:`~tlora_analysis.store.format.NonFiniteError`),
and every other snapshot still reads.
"""

from __future__ import annotations

import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..adapters.methods import get_spec
from ..adapters.spec import MethodSpec
from ..fileio import CorruptFileError, fingerprint, load_tensors, open_tensors
from ..lowrank import FactoredUpdate
from .base_weights import base_weights_hash, loaded_and_verified, reference_problem, resolve_model_folder
from .format import (BASE_WEIGHT_KEY, PREDICTIONS_DIR, ForeignFileError, NonFiniteError, UnknownLayerError,
                     UnknownStepError, snapshot_name, snapshot_step)
from .sources import Source, open_source

__all__ = ["Run", "open_run", "read_metrics", "METRIC_COLUMNS"]

METRIC_COLUMNS = ("step", "epoch", "event", "wall_time")


def read_metrics(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The events of a metrics.jsonl and whether its last line was torn (and skipped).

    A torn last line is what a kill during an append leaves; a bad line anywhere else means
    the file was damaged and raises :class:`CorruptFileError` naming the line.
    """
    if not path.is_file():
        return [], False
    lines = path.read_bytes().split(b"\n")
    records, torn = [], False
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if i == len(lines) - 1:  # no newline after it: an append cut short
                torn = True
                continue
            raise CorruptFileError(f"{path} line {i + 1} is not valid JSON ({exc}); the file is damaged") from exc
    return records, torn


def _list_some(items: list[Any], limit: int = 12) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


class Run:
    """A recorded run, opened lazily: ``Run(path)``.

    ``path`` is a run directory written by :class:`~tlora_analysis.SnapshotRecorder`, a PEFT
    LoRA adapter folder (one snapshot), or a Trainer ``output_dir`` of ``checkpoint-*/``
    folders of a PEFT LoRA model (one snapshot per checkpoint).

    ``base_model`` (a model folder, a cached hub id or the bundled default's name) is attached at once
    (:meth:`attach_base_model`): W0 of a run that references it instead of storing it is then read from that
    model and checked against the run's hash. Without it such a run uses the model run.json names when that
    is on this machine.
    """

    def __init__(self, path: str | os.PathLike, base_model: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        self._source: Source = open_source(self.path)
        self._verified: set[int] = set()
        self._frozen_verified = False
        self._base_model: str | os.PathLike | None = None
        self._base_weights: dict[str, torch.Tensor] | None = None  # W0 read from the base model, per Run object
        if base_model is not None:
            self.attach_base_model(base_model)

    # ------------------------------------------------------------------ header
    @property
    def config(self) -> dict[str, Any]:
        """The run.json dict (synthesised from adapter_config.json for imported runs)."""
        return self._source.header

    @property
    def kind(self) -> str:
        """"run", "peft_adapter" or "trainer_checkpoints"."""
        return self._source.kind

    @property
    def name(self) -> str:
        return str(self.config.get("name") or self.path.resolve().name)

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def spec(self) -> MethodSpec:
        """The method's spec: which tensors a layer stores and how they make ΔW."""
        return get_spec(self.method)

    @property
    def adapter_config(self) -> dict[str, Any]:
        return self.config["adapter_config"]

    @property
    def rank(self) -> int | None:
        return self.config.get("rank")

    @property
    def run_id(self) -> str | None:
        """The id bound into every file of the run (None for imported runs and runs recorded before run ids)."""
        return self.config.get("run_id")

    def layer_rank(self, layer: str) -> int | None:
        """The adapter rank of one layer (LoRA layers may differ, e.g. PEFT's rank_pattern)."""
        return self.config["layers"][layer].get("rank") or self.rank

    def layer_info(self, layer: str) -> dict[str, Any]:
        """run.json's record of one layer: shape, dtype and what its method adds (rank, scaling, fingerprints, ...)."""
        self._check_layer(layer)
        return self.config["layers"][layer]

    @property
    def layers(self) -> list[str]:
        """Full module names of the tracked layers, in model order."""
        return list(self.config["layers"])

    @property
    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        """Layer name → (out, in) of its weight."""
        return {n: tuple(info["shape"]) for n, info in self.config["layers"].items()}

    @property
    def steps(self) -> list[int]:
        """The recorded steps, sorted (0 is the state before the first optimizer step)."""
        return sorted(self._source.snapshot_files)

    @property
    def has_base_weights(self) -> bool:
        """Whether W0 can be read: stored with the run, or referenced and either a base model was attached (and
        verified) or the model run.json names is on this machine (verified when W0 is first read). Cheap: no
        tensor is read."""
        if self.spec.weight_key is not None:  # the trained tensor is the weight: W0 is its step-0 value
            return 0 in self._source.snapshot_files
        if self.config.get("store_base_weights"):
            return self._source.frozen_file is not None
        return self._base_weights is not None or self._recorded_base_model is not None

    @property
    def base_weights_reference(self) -> dict[str, Any] | None:
        """run.json's ``base_weights`` entry (stored, sha256, model), None for runs recorded without it."""
        return self.config.get("base_weights")

    @cached_property
    def _recorded_base_model(self) -> Path | None:
        """The local folder of the base model run.json names, when this run references W0 and it is here."""
        ref = self.base_weights_reference
        if ref is None or reference_problem(ref) or not ref.get("model"):
            return None
        return resolve_model_folder(ref["model"])

    def attach_base_model(self, base_model: str | os.PathLike) -> "Run":
        """Read W0 of every layer from ``base_model`` (a model folder, a hub id in the local cache or the bundled
        default's name), check it against run.json's hash and keep it for this Run; returns the Run.

        Raises :class:`~tlora_analysis.store.base_weights.BaseWeightsMismatchError` naming both hashes when it is
        another model, :class:`~tlora_analysis.store.base_weights.BaseModelError` when it cannot be read.
        """
        if not isinstance(base_model, (str, os.PathLike)) or not os.fspath(base_model):
            raise TypeError(f"base_model must be a model folder or name, got {base_model!r}")
        ref = self.base_weights_reference
        problem = "it records no base_weights hash (recorded before W0 was hashed)" if ref is None else \
            reference_problem(ref)
        if problem:
            raise ValueError(f"{self.name}: a base model cannot be checked against this run: {problem}; analyse it "
                             "with the W0 it stores, or record it again")
        self._base_weights = loaded_and_verified(base_model, self.config["layers"], ref["sha256"], self.name)
        self._base_model = base_model
        return self

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, method={self.method!r}, layers={len(self.layers)}, steps={len(self.steps)})"

    # ------------------------------------------------------------------ metrics
    @cached_property
    def metrics(self) -> pd.DataFrame:
        """One row per logged event; always has the columns step, epoch, event, wall_time."""
        if self._source.metrics_file is not None:
            records, _ = read_metrics(self._source.metrics_file)
        else:
            records = self._source.metrics_records
        frame = pd.DataFrame.from_records(records)
        for col in METRIC_COLUMNS:
            if col not in frame.columns:
                frame[col] = pd.Series(dtype="float64" if col != "event" else "object")
        rest = [c for c in frame.columns if c not in METRIC_COLUMNS]
        return frame[list(METRIC_COLUMNS) + rest]

    def validation_evals(self) -> pd.DataFrame:
        """The evaluation events on the validation split, in order (every evaluation when none names a split)."""
        ev = self.metrics[self.metrics["event"] == "eval"]
        return ev[ev["split"] == "validation"] if "split" in ev else ev

    @cached_property
    def prediction_steps(self) -> list[int]:
        """Steps whose validation outputs the runner kept (predictions/<step>.safetensors), ascending."""
        folder = self.path / PREDICTIONS_DIR
        steps = (snapshot_step(p) for p in folder.iterdir()) if folder.is_dir() else ()
        return sorted(s for s in steps if s is not None)

    def predictions(self, step: int) -> dict[str, torch.Tensor]:
        """The validation outputs the runner kept at ``step``: ``logits`` (examples × outputs; one column for
        regression) and ``labels``, in the validation split's order; checksum, step, run id and lengths checked."""
        if step not in self.prediction_steps:
            raise UnknownStepError(f"{self.name} kept no validation outputs at step {step!r}; steps with outputs: "
                                   f"{_list_some(self.prediction_steps) if self.prediction_steps else 'none'} "
                                   "(runs trained before the runner kept them have none)")
        path = self.path / PREDICTIONS_DIR / snapshot_name(step)
        tensors, meta = load_tensors(path)
        if _decode(meta.get("step", "null")) != step:
            raise CorruptFileError(f"{path} says it holds step {meta.get('step')}, not {step}: the file was renamed "
                                   "or mixed up")
        if self.run_id and meta.get("run_id") != self.run_id:
            raise ForeignFileError(f"{path} was written by another run (run id {meta.get('run_id')}, this run's is "
                                   f"{self.run_id!r}): it was copied in; restore this run's file")
        if set(tensors) != {"logits", "labels"} or len(tensors["logits"]) != len(tensors["labels"]):
            raise CorruptFileError(f"{path} must hold 'logits' and 'labels' of one length each; it holds "
                                   f"{ {k: tuple(v.shape) for k, v in tensors.items()} }")
        return tensors

    # ------------------------------------------------------------------ lookups
    def _check_layer(self, layer: str) -> None:
        if layer not in self.config["layers"]:
            raise UnknownLayerError(f"{self.name} has no layer {layer!r}; its layers are: {_list_some(self.layers)}")

    def snapshot_path(self, step: int) -> Path:
        """The file holding the snapshot of ``step``."""
        try:
            return self._source.snapshot_files[step]
        except (KeyError, TypeError):
            raise UnknownStepError(f"{self.name} has no snapshot at step {step!r}; recorded steps: {_list_some(self.steps)}") from None

    def check_snapshot(self, step: int) -> dict[str, Any]:
        """Read the whole snapshot and check it: checksum, step, run id, every layer's tensors, their shapes,
        finite values. Returns its metadata."""
        path = self.snapshot_path(step)
        tensors, meta = load_tensors(path, verify=self._source.checksummed)
        if self._source.checksummed:
            stored = meta.get("step")
            if stored is None or int(stored) != step:
                raise CorruptFileError(f"{path} says it holds step {stored}, not {step}: the file was renamed or mixed up")
            if self.run_id and meta.get("run_id") != self.run_id:
                raise ForeignFileError(f"{path} was written by another run (run id {meta.get('run_id')!r}, this run's "
                                       f"is {self.run_id!r}): it was copied in; restore this run's file")
        for layer, shape in self.layer_shapes.items():
            for name, dims in self.spec.trainable_shapes(*shape, self.layer_rank(layer)).items():
                key = self._source.key(layer, name)
                if key not in tensors:
                    raise CorruptFileError(f"{path} lacks tensor {key!r}: the snapshot is incomplete")
                t = tensors[key]
                if tuple(t.shape) != dims and not (dims == () and t.numel() == 1):
                    raise CorruptFileError(f"{path}: {key} has shape {tuple(t.shape)}, but layer {layer} ({shape[0]} × "
                                           f"{shape[1]}, rank {self.layer_rank(layer)}) needs {dims}: the file does not "
                                           f"fit this run's run.json")
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise NonFiniteError(f"{path}: {key} holds NaN or infinite values (training diverged at or before "
                                         f"step {step}); analyse earlier steps, or retrain with a lower learning rate")
        self._verified.add(step)
        return meta

    def snapshot_info(self, step: int) -> dict[str, Any]:
        """Metadata of one snapshot (step, epoch, wall_time, …) from the file header only."""
        path = self.snapshot_path(step)
        info: dict[str, Any] = {"step": step, "epoch": self._source.epochs.get(step), "wall_time": None, "path": str(path)}
        if self._source.checksummed:
            with open_tensors(path) as fh:
                meta = fh.metadata() or {}
            for k, v in meta.items():
                if k not in ("format", "step"):
                    info[k] = _decode(v)
        return info

    def trainable(self, layer: str, step: int) -> dict[str, torch.Tensor]:
        """The layer's trainable tensors at ``step``, by the keys its method's spec lists (TLoRA: tlora_B,
        tlora_alpha; LoRA: lora_A, lora_B; full: weight; ...)."""
        self._check_layer(layer)
        path = self.snapshot_path(step)
        if step not in self._verified:
            self.check_snapshot(step)
        with open_tensors(path) as fh:
            return {name: fh.get_tensor(self._source.key(layer, name)) for name in self.spec.trainable_keys}

    def frozen_keys(self, layer: str) -> dict[str, str]:
        """The layer's frozen tensors: key → its key in frozen.safetensors (a shared group's key for tensors that
        layers share, e.g. VeRA's per-shape projections)."""
        prefix = self.layer_info(layer).get("frozen_group") or layer
        return {name: self._source.key(prefix, name) for name in self.spec.frozen_keys}

    def frozen(self, layer: str) -> dict[str, torch.Tensor]:
        """The layer's frozen adapter tensors by key (TLoRA: tlora_A, tlora_C; LoRA and full: none; ...)."""
        keys = self.frozen_keys(layer)
        return self._frozen_tensors(list(keys.values()), tuple(keys)) if keys else {}

    def check_frozen(self) -> dict[str, torch.Tensor]:
        """Read frozen.safetensors whole and check it: checksum, run id, the frozen tensors against run.json's
        fingerprints."""
        path = self._source.frozen_file
        tensors, meta = load_tensors(path, verify=True)
        if self.run_id and meta.get("run_id") not in (None, self.run_id):  # frozen files carry no run id now
            raise ForeignFileError(f"{path} was written by another run (run id {meta.get('run_id')!r}, this run's is "
                                   f"{self.run_id!r}): it was copied in; restore this run's file")
        checked: set[str] = set()
        for layer, info in self.config["layers"].items():
            keys = self.frozen_keys(layer)
            for role, fp in (info.get("fingerprints") or {}).items():
                key = keys.get(self.spec.roles.get(role, ""))
                if key in tensors and key not in checked:
                    if fingerprint(tensors[key]) != fp:
                        raise ForeignFileError(f"{path} was written by another run: {key} does not match its "
                                               f"fingerprint in run.json (another seed or another run's factors); "
                                               f"restore this run's frozen.safetensors")
                    checked.add(key)
        self._check_stored_base_weights(path, tensors)
        self._frozen_verified = True
        return tensors

    def _check_stored_base_weights(self, path: Path, tensors: dict[str, torch.Tensor]) -> None:
        """W0 stored in frozen.safetensors against run.json's base_weights hash (when both are there)."""
        ref = self.base_weights_reference
        if not self.config.get("store_base_weights") or ref is None or reference_problem(ref):
            return
        keys = [self._source.key(layer, BASE_WEIGHT_KEY) for layer in self.layers]
        if all(k in tensors for k in keys):
            actual = base_weights_hash((layer, tensors[k]) for layer, k in zip(self.layers, keys))
            if actual != ref["sha256"]:
                raise ForeignFileError(f"{path} was written by another run: its W0 hashes to {actual[:12]}…, run.json "
                                       f"recorded {ref['sha256'][:12]}… (another base model); restore this run's "
                                       f"frozen.safetensors")

    def _frozen_tensors(self, keys: list[str], names: tuple[str, ...]) -> dict[str, torch.Tensor]:
        if not self._frozen_verified:
            tensors = self.check_frozen()
            missing = [k for k in keys if k not in tensors]
            if missing:
                raise CorruptFileError(f"{self._source.frozen_file} lacks {missing[:3]}: the file is incomplete")
        else:
            tensors, _ = load_tensors(self._source.frozen_file, keys=keys, verify=False)
        return dict(zip(names, (tensors[k] for k in keys)))

    def base_weight(self, layer: str) -> torch.Tensor:
        """W0 (out × in) of the layer: stored with the run, step 0's weight for full fine-tuning, or read from the
        base model (attached, else the one run.json names when it is here; checked against the run's hash)."""
        self._check_layer(layer)
        weight_key = self.spec.weight_key
        if weight_key is not None:
            if 0 not in self._source.snapshot_files:
                raise ValueError(f"{self.name} has no step-0 snapshot, which holds W0 for a {self.method} run")
            return self.trainable(layer, 0)[weight_key]
        if self.config.get("store_base_weights") and self._source.frozen_file is not None:
            key = self._source.key(layer, BASE_WEIGHT_KEY)
            return self._frozen_tensors([key], (BASE_WEIGHT_KEY,))[BASE_WEIGHT_KEY]
        if self._base_weights is None:
            if not self.has_base_weights:
                raise ValueError(self._no_base_weights_message())
            self.attach_base_model(self.base_weights_reference["model"])
        return self._base_weights[layer]

    def _no_base_weights_message(self) -> str:
        """Why W0 cannot be read, and the fix."""
        ref = self.base_weights_reference
        if ref is None or reference_problem(ref):
            return (f"{self.name} does not store base weights W0; record it with "
                    "SnapshotRecorder(..., store_base_weights=True) to run merged-weight analyses")
        return (f"{self.name} references W0 (base model {ref.get('model')!r}, sha256 {ref['sha256'][:12]}…) without "
                "storing it, and that model is not on this machine: pass the base model it was trained from with "
                "--base-model / base_model= (or attach_base_model), or record the run with store_base_weights=True")

    def layer_tensors(self, layer: str, step: int) -> dict[str, torch.Tensor]:
        """Everything ΔW of the layer at ``step`` is made of, by key: trainable, frozen and (for a method with
        a weight key) W0 as ``base_weight``."""
        tensors = {**self.frozen(layer), **self.trainable(layer, step)}
        if self.spec.weight_key is not None:
            tensors[BASE_WEIGHT_KEY] = self.base_weight(layer)
        return tensors

    def update(self, layer: str, step: int) -> FactoredUpdate:
        """ΔW of the layer at ``step`` as a :class:`FactoredUpdate` (exact, nothing dense for adapters), from the
        method's one definition, in float64."""
        tensors = {k: t.double() for k, t in self.layer_tensors(layer, step).items()}
        return self.spec.factored_update(tensors, self.layer_info(layer))

    def lora_scaling(self, layer: str) -> float:
        """LoRA's lora_alpha / r (or / √r with rsLoRA) for this layer."""
        self._check_layer(layer)
        scaling = self.layer_info(layer).get("scaling")
        if scaling is None:
            raise ValueError(f"{self.name} is a {self.method} run; only LoRA layers have a scaling")
        return float(scaling)

    def verify(self, base_model: str | os.PathLike | None = None):
        """Check every file of the run, and W0 of ``base_model`` against the run's hash when given; returns a
        :class:`~tlora_analysis.store.VerifyReport`."""
        from .verify import verify_run

        return verify_run(self, base_model)


def open_run(path: str | os.PathLike, base_model: str | os.PathLike | None = None) -> Run:
    """Open a run; ``base_model`` supplies W0 when the run references it instead of storing it."""
    return Run(path, base_model=base_model)


def _decode(value: str) -> Any:
    try:
        out = json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value
    return None if isinstance(out, float) and math.isnan(out) else out
