"""``SnapshotRecorder``: snapshots of the adapter state during training, into a run directory.

The recorder counts optimizer steps through ``Optimizer.register_step_post_hook`` (so it works
in any training loop), copies only the adapter tensors off the device when the schedule says
so (gathered into a few buffers and copied without blocking: :mod:`.staging`), and hands
the file writes to a background thread. Under ``torch.distributed`` only the
process of rank 0 writes; the others count steps and do nothing else.

A snapshot taken at an optimizer step is queued for writing at the next call that follows it
(``log``, the next step, ``flush``, ``close``), after that call's metrics line: the optimizer
step comes before the loop logs its loss, and this order keeps "snapshot k on disk" implying
"the metrics of step k on disk", so a run resumed from its last snapshot loses no line.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .. import __version__
from ..adapters import adapter_config, count_parameters, spec_of, tracked_linears
from ..adapters.io import frozen_prefix
from ..store.base_weights import reference_entry
from ..store.format import BASE_WEIGHT_KEY, RUN_FORMAT, RUN_JSON, SCHEMA_VERSION, tensor_key
from ..store.writer import RunWriter, json_safe
from .background import BackgroundWriter
from .schedule import Schedule, as_schedule
from .staging import HostBufferPool, HostCopy, copy_to_host

__all__ = ["SnapshotRecorder", "DENSE_WARN_BYTES", "BASE_WEIGHTS_MAX_PARAMS"]

DENSE_WARN_BYTES = 512 * 2**20  # warn when one full-fine-tuning snapshot exceeds this
BASE_WEIGHTS_MAX_PARAMS = 1_000_000_000  # store W0 by default below this model size

_NOT_ADAPTED = ("this model has no adapters to record; call apply_adapters(model, TLoRAConfig(...)) (or another "
                "method's config: LoRAConfig, FullConfig, VeRAConfig, LoRAXSConfig) before creating the recorder")
_RESERVED = {"format", "schema_version", "method", "adapter_config", "rank", "layers", "parameters",
             "store_base_weights", "base_weights", "schedule", "created", "created_unix", "status", "package_version"}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel wrappers (names match the bare model)."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def process_rank() -> int:
    """This process's rank under torch.distributed, 0 when it is not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def _check_arguments(run_dir: Any, total_steps: Any, run_info: Any, store_base_weights: Any, overwrite: Any,
                     resume: Any, start_step: Any, background: Any, max_pending: Any) -> None:
    """The recorder's arguments, checked before the model is read or a file is touched (docs/parameters.md)."""
    if not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        raise TypeError(f"run_dir must be a folder path (str or Path), got {run_dir!r}")
    for name, value in (("overwrite", overwrite), ("resume", resume), ("background", background)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if store_base_weights is not None and not isinstance(store_base_weights, bool):
        raise TypeError(f"store_base_weights must be True, False or None (True: W0 in frozen.safetensors; False: W0 "
                        f"referenced by its hash and model; None: stored below 1e9 parameters), got {store_base_weights!r}")
    for name, value, low in (("total_steps", total_steps, 1), ("start_step", start_step, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be None or an int ≥ {low}, got {value!r}")
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be an int ≥ 1 (snapshots waiting for the writer), got {max_pending!r}")
    if run_info is not None and not isinstance(run_info, Mapping):
        raise TypeError(f"run_info must be a mapping of extra run.json entries, e.g. {{'task': 'mrpc'}}; got "
                        f"{type(run_info).__name__}")
    unknown = set(run_info or {}) & _RESERVED
    if unknown:
        raise ValueError(f"run_info may not set {sorted(unknown)}: the recorder writes those itself")


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


class SnapshotRecorder:
    """Record an adapted model's updates during training into ``run_dir``.

    Parameters
    ----------
    model : a model adapted with :func:`~tlora_analysis.apply_adapters` (DDP-wrapped is fine).
    run_dir : the run directory to create (or continue with ``resume=True``).
    schedule : EveryN / LogSpaced / Explicit, an int (every N steps) or a list of steps.
        Step 0 (the state now) and the final step (at ``close``) are always recorded.
    total_steps : the run's length, needed by LogSpaced schedules given without it.
    run_info : extra run.json entries (e.g. {"model": ..., "task": ..., "hyperparameters": {...}}).
    store_base_weights : store W0 of the adapted layers in frozen.safetensors (default: when the model has < 1e9
        parameters). Either way run.json's ``base_weights`` records W0's hash and the model, so a run that does
        not store W0 is analysed with its base model attached (``Run(path, base_model=...)``).
    overwrite : replace whatever ``run_dir`` holds.
    resume : continue the run in ``run_dir`` from ``start_step`` (default: its last recorded step);
        later snapshots and metrics are dropped, since training redoes those steps. With no run
        in ``run_dir`` yet, a new one is created (so a restartable script can always pass True).
    background : write files from a background thread (True) or inline (False).
    max_pending : the background queue's bound; a full queue blocks the training step.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | os.PathLike,
        schedule: Schedule | int | Iterable[int] = 1,
        total_steps: int | None = None,
        run_info: Mapping[str, Any] | None = None,
        store_base_weights: bool | None = None,
        overwrite: bool = False,
        resume: bool = False,
        *,
        start_step: int | None = None,
        background: bool = True,
        max_pending: int = 16,
    ) -> None:
        _check_arguments(run_dir, total_steps, run_info, store_base_weights, overwrite, resume, start_step, background,
                         max_pending)
        self.model = unwrap_model(model)
        self.config = adapter_config(self.model)
        self.layers = tracked_linears(self.model) if self.config is not None else {}
        if self.config is None or not self.layers:
            raise ValueError(_NOT_ADAPTED)
        self.spec = spec_of(self.config)
        self._infos = {n: self.spec.layer_info(m) for n, m in self.layers.items()}
        self.schedule = as_schedule(schedule).bind(total_steps)
        self.schedule.includes(0)  # a LogSpaced schedule without total_steps fails here, not mid-training
        self.total_steps = total_steps
        self.run_dir = Path(run_dir)
        if store_base_weights is None:
            store_base_weights = count_parameters(self.model).total < BASE_WEIGHTS_MAX_PARAMS
        # a method whose trained tensor is the weight itself has W0 in its step-0 snapshot instead
        self.store_base_weights = bool(store_base_weights) and self.spec.weight_key is None
        self.is_writer = process_rank() == 0
        self.epoch: float | None = None
        self._hook = None
        self._closed = False
        self._writer: RunWriter | None = None
        self._thread: BackgroundWriter | None = None
        self._host_buffers = HostBufferPool()
        self.step = 0
        self._recorded: list[int] = []
        self._pending: tuple[int, HostCopy, dict[str, Any]] | None = None
        if not self.is_writer:
            self.step = start_step or 0
            return
        self._warn_if_dense()
        self._open(self._header(dict(run_info or {})), overwrite, resume, start_step)
        self._thread = BackgroundWriter(max_pending) if background else None

    def _open(self, header: dict[str, Any], overwrite: bool, resume: bool, start_step: int | None) -> None:
        """Continue the run in run_dir (resume) or create it with its frozen file and step 0."""
        if resume and (self.run_dir / RUN_JSON).is_file() and not overwrite:
            self._writer = RunWriter.resume(self.run_dir, header, start_step)
            self._recorded = list(self._writer.recorded_steps)
            self.step = start_step if start_step is not None else (self._recorded[-1] if self._recorded else 0)
        else:
            self._writer = RunWriter.create(
                self.run_dir, header, self._frozen_tensors(),
                (0, self._snapshot_tensors(), {"epoch": None, "wall_time": 0.0}), overwrite=overwrite,
            )
            self._recorded = [0]
        self._created_unix = float(self._writer.header["created_unix"])

    # ------------------------------------------------------------------ what is recorded
    @property
    def method(self) -> str:
        return self.config.method

    def _snapshot_tensors(self) -> dict[str, torch.Tensor]:
        spec = self.spec
        return {tensor_key(n, k): t for n, module in self.layers.items() for k, t in spec.trainable_state(module).items()}

    def _frozen_tensors(self) -> dict[str, torch.Tensor]:
        """Each layer's frozen tensors (once per shared group) and, when stored, W0 (a method whose trained
        tensor is the weight itself has W0 in its step-0 snapshot instead)."""
        spec, out = self.spec, {}
        for name, module in self.layers.items():
            prefix = frozen_prefix(name, self._infos[name])
            out.update({tensor_key(prefix, k): t for k, t in spec.frozen_state(module).items()})
            if self.store_base_weights:
                out[tensor_key(name, BASE_WEIGHT_KEY)] = module.base_layer.weight
        return {k: v.detach().cpu() for k, v in out.items()}

    def _base_weights_entry(self, run_info: Mapping[str, Any]) -> dict[str, Any]:
        """run.json's reference to W0: its hash over the adapted layers, whether the run holds it, the model.

        The model is the runner's ``model`` entry when given (e.g. ``bundled:all-MiniLM-L6-v2``, a folder),
        else the model config's ``_name_or_path``. A method whose trained tensor is the weight holds W0 in
        its step-0 snapshot.
        """
        weights = {n: (m.weight if self.spec.weight_key is not None else m.base_layer.weight)
                   for n, m in self.layers.items()}
        model = run_info.get("model")
        if not isinstance(model, str) or not model:
            model = getattr(getattr(self.model, "config", None), "_name_or_path", None) or None
        stored = self.store_base_weights or self.spec.weight_key is not None
        return reference_entry(weights, stored, model)

    def _warn_if_dense(self) -> None:
        if self.spec.weight_key is None:
            return
        size = sum(m.weight.numel() * m.weight.element_size() for m in self.layers.values())
        if size > DENSE_WARN_BYTES:
            warnings.warn(
                f"full fine-tuning snapshots are dense: {size / 2**20:.0f} MiB each for {len(self.layers)} layers. "
                "Use a sparser schedule (LogSpaced) or fewer target_modules to save disk", stacklevel=3,
            )

    def _header(self, run_info: dict[str, Any]) -> dict[str, Any]:
        counts = count_parameters(self.model)
        now = time.time()
        model_cfg = getattr(self.model, "config", None)
        try:  # the installed version, without importing transformers (it may not be installed: [train] extra)
            tf_version = importlib.metadata.version("transformers")
        except importlib.metadata.PackageNotFoundError:
            tf_version = None
        return json_safe({
            "format": RUN_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "name": self.run_dir.name,
            "method": self.method,
            "adapter_config": self.config.to_dict(),
            "rank": getattr(self.config, "rank", None),
            "layers": self._infos,
            "parameters": {"trainable": counts.trainable, "frozen": counts.frozen, "total": counts.total,
                           "adapter_buffers": counts.adapter_buffers},
            "store_base_weights": self.store_base_weights,
            "base_weights": self._base_weights_entry(run_info),
            "schedule": self.schedule.to_dict(),
            "total_steps": self.total_steps,
            "model_class": type(self.model).__name__,
            "model_name_or_path": getattr(model_cfg, "_name_or_path", None) or None,
            "package_version": __version__,
            "torch_version": torch.__version__,
            "transformers_version": tf_version,
            "git_revision": _git_revision(),
            "created": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(),
            "created_unix": now,
            "status": "running",
            **run_info,
        })

    # ------------------------------------------------------------------ training-loop API
    def attach(self, optimizer: torch.optim.Optimizer) -> "SnapshotRecorder":
        """Count this optimizer's steps and snapshot on schedule (one optimizer per recorder)."""
        if self._hook is not None:
            raise ValueError("this recorder is already attached to an optimizer; create one recorder per optimizer")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"attach needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self._hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        return self

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.advance()

    @property
    def run_id(self) -> str | None:
        """The id run.json and every file of the run carry (None in processes that do not write)."""
        return self._writer.run_id if self._writer is not None else None

    def advance(self) -> None:
        """Count one optimizer step and snapshot if the schedule includes it."""
        self._submit_pending()
        self.step += 1
        if self.schedule.includes(self.step):
            self.snapshot(self.step)

    def set_epoch(self, epoch: float | None) -> None:
        """The epoch stamped on later snapshots and metrics events."""
        self.epoch = epoch

    def snapshot(self, step: int, epoch: float | None = None) -> None:
        """Record the adapter state now as ``step`` (a step already recorded is skipped)."""
        self._check_open()
        if not self.is_writer or step in self._recorded:
            return
        if self._recorded and step < self._recorded[-1]:
            raise ValueError(f"snapshot steps must increase: {step} comes after {self._recorded[-1]}")
        self._submit_pending()
        copy = copy_to_host(self._snapshot_tensors(), self._host_buffers)
        meta = {"epoch": self.epoch if epoch is None else epoch, "wall_time": time.time() - self._created_unix}
        self._recorded.append(step)
        self._pending = (step, copy, meta)

    def _submit_pending(self) -> None:
        """Queue the snapshot waiting for its step's metrics line."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._submit(self._write_snapshot, *pending)

    def _write_snapshot(self, step: int, copy: HostCopy, meta: dict[str, Any]) -> None:
        try:
            self._writer.write_snapshot(step, copy.blocks(), meta)
        finally:
            copy.release()

    def log(self, step: int, **metrics: Any) -> None:
        """Append one event to metrics.jsonl (event defaults to "train", epoch to the current one)."""
        self._check_open()
        if not self.is_writer:
            return
        record = {"step": int(step), "epoch": metrics.pop("epoch", self.epoch), "event": metrics.pop("event", "train"),
                  "wall_time": metrics.pop("wall_time", time.time() - self._created_unix), **metrics}
        self._submit(self._writer.append_metrics, json_safe(record))
        if self._pending is not None and self._pending[0] <= int(step):
            self._submit_pending()

    def _submit(self, fn, *args) -> None:
        if self._thread is None:
            fn(*args)
        else:
            self._thread.submit(fn, *args)

    def flush(self) -> None:
        """Write everything recorded so far (a waiting snapshot too); raise if a write failed."""
        if self.is_writer:
            self._check_open()
            self._submit_pending()
        if self._thread is not None:
            self._thread.flush()

    @property
    def recorded_steps(self) -> list[int]:
        """Steps recorded or queued for writing, in order."""
        return list(self._recorded)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("this recorder is closed; create a new one (resume=True continues the run)")
        if self._thread is not None:
            self._thread.check()

    def close(self, summary: Mapping[str, Any] | None = None) -> None:
        """Record the final step if not yet recorded, write everything, mark run.json complete."""
        self._finish("complete", summary)

    def _finish(self, status: str, summary: Mapping[str, Any] | None) -> None:
        if self._closed:
            return
        try:
            if self.is_writer and self.step not in self._recorded and (not self._recorded or self.step > self._recorded[-1]):
                self.snapshot(self.step)
            self._submit_pending()
        finally:
            if self._hook is not None:
                self._hook.remove()
                self._hook = None
            self._closed = True
            if self._thread is not None:
                self._thread.close()
        if self.is_writer:
            fields = {"status": status, "final_step": self.step}
            if summary:
                fields["summary"] = dict(summary)
            self._writer.update_header(**fields)

    def __enter__(self) -> "SnapshotRecorder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:  # keep what was recorded, but let the training error be the one that shows
            self._finish("interrupted", None)
        except Exception:  # noqa: BLE001
            pass
