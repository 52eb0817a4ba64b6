"""The training runner: ``train(config)`` fine-tunes one model with one method into a run directory.

One loop for every method (the registered adapters and peft-lora): AdamW, linear warmup then
linear decay (``transformers.get_linear_schedule_with_warmup``), dynamic padding, evaluation at
each epoch end (and every ``eval_every`` steps), tqdm progress, a :class:`SnapshotRecorder`
writing snapshots and metrics events, the final adapter saved with ``save_adapter``. Under
torchrun it trains with DistributedDataParallel and rank 0 alone writes.

Read from the top: :func:`train` sets up the processes; :func:`_train` prepares the data and the
model (:func:`_prepare`), the optimiser (:func:`_optimiser`) and the recorder, then runs
:class:`_Training`, whose :meth:`~_Training.run` steps, logs and evaluates until the budget is spent.
"""

from __future__ import annotations

import errno
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import apply_adapters, count_parameters, save_adapter
from ..adapters.inject import ParameterCount
from ..fileio import read_json, save_tensors
from ..names import as_patterns, select_names
from ..recording import EveryN, Explicit, LogSpaced, SnapshotRecorder
from ..store import Run, RunExistsError
from ..store.format import ADAPTER_DIR, PREDICTIONS_DIR, snapshot_name
from .checkpoint import load_trainer_state, save_trainer_state
from .config import PEFT_LORA, TrainConfig, check_snapshots
from .data import TaskData, hold_out, load_local_files, load_task
from .distributed import DistContext, barrier, init_distributed, mean_across, shutdown_distributed
from .encoding import EncodedSplit, effective_max_length, encode_split, make_loader, subsample
from .evaluation import autocast_factory, check_precision, evaluate, is_better, matmul_precision
from .metrics import LOSS_NAMES, majority_baseline, selection_metric
from .models import LoadedModel, check_label_range, check_targets, load_model
from .peft_arm import apply_peft_lora, peft_recording_view
from .result import TrainResult

__all__ = ["train", "TrainResult", "DiskFullError", "parse_snapshot_schedule", "default_run_dir", "seed_everything",
           "evaluate"]


class DiskFullError(OSError):
    """The disk filled up while the run was being written."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def parse_snapshot_schedule(text: str, total_steps: int):
    """"every:N", "log:K" or "s1,s2,..." → a recorder schedule."""
    kind, _, value = check_snapshots(text).partition(":")
    if kind == "every":
        return EveryN(int(value))
    if kind == "log":
        return LogSpaced(int(value), total_steps)
    return Explicit([int(s) for s in text.split(",")])


def default_run_dir(config: TrainConfig) -> Path:
    """runs/<task>-<method>-r<rank>-s<seed> (no rank for a method without one)."""
    rank = f"-r{config.rank}" if config.method_spec.has_rank else ""
    return Path("runs") / f"{Path(config.task).name}-{config.method}{rank}-s{config.seed}"


def train(config: TrainConfig | None = None, **overrides: Any) -> TrainResult:
    """Train one run as ``config`` says (keyword overrides replace its fields); returns the result.

    Raises clear errors for unknown tasks/models/targets, missing columns, labels outside the
    head, ranks the method rejects, an existing run directory without resume/overwrite, and a
    full disk (:class:`DiskFullError`: the run stays readable up to its last snapshot).
    """
    config = (config or TrainConfig()).replace(**overrides) if overrides else (config or TrainConfig())
    start = time.time()
    ctx = init_distributed(config.device)
    try:
        check_precision(config.precision, ctx.device)  # before the model and data load
        with matmul_precision(config.precision, ctx.device):
            return _train(config, ctx, start)
    finally:
        shutdown_distributed(ctx)


def _train(config: TrainConfig, ctx: DistContext, start: float) -> TrainResult:
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    _check_run_dir(run_dir, config)
    barrier(ctx)  # every process checks before rank 0 creates the folder
    seed_everything(config.seed)
    prepared = _prepare(config, ctx)
    _say(config, ctx, prepared.plan())
    training = _Training(config, ctx, run_dir, prepared, _optimiser(config, prepared, ctx))
    training.run()
    barrier(ctx)
    result = training.result(time.time() - start)
    _say(config, ctx, result.summary())
    return result


def _check_run_dir(run_dir: Path, config: TrainConfig) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file; give a folder path for the run")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (config.overwrite or config.resume):
        raise RunExistsError(f"{run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                             f"or choose another --run-dir")
    if config.resume and not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"--resume given but {run_dir} holds no run; drop --resume to start a new one")
    if config.resume and not config.overwrite:
        _check_resumed_settings(run_dir, config)


# settings a resume may change: how the run is shown, where it runs, and batching of evaluation alone
_FREE_ON_RESUME = frozenset({"resume", "overwrite", "progress", "verbose", "run_dir", "device", "eval_batch_size",
                             "eval_test"})


def _check_resumed_settings(run_dir: Path, config: TrainConfig) -> None:
    """Refuse a resume whose settings differ from those run.json records (data, schedule, optimiser, …): the
    run would continue as another experiment, and run.json would misstate how its first part was trained."""
    recorded = read_json(run_dir / "run.json").get("hyperparameters") or {}
    now = config.to_dict()
    differ = [f"{k} (recorded {recorded[k]!r}, now {now[k]!r})" for k in now
              if k in recorded and k not in _FREE_ON_RESUME and recorded[k] != now[k]]
    if differ:
        raise ValueError(f"--resume continues {run_dir} with the settings it was started with, but these differ: "
                         f"{'; '.join(differ)}. Resume with the recorded settings (run.json's hyperparameters), "
                         "or pass --overwrite to start the run again with the new ones")


def _say(config: TrainConfig, ctx: DistContext, text: str) -> None:
    """A line for the person running the job (main process, unless verbose is off)."""
    if ctx.is_main and config.verbose:
        print(text, file=sys.stderr if text.startswith("WARNING") else sys.stdout, flush=True)


# ---------------------------------------------------------------------- data and model
@dataclass
class _Prepared:
    """Everything the loop trains on: the task, the adapted model, the encoded splits and the plan."""

    config: TrainConfig
    task: TaskData
    loaded: LoadedModel
    model: nn.Module
    record_model: nn.Module
    counts: ParameterCount
    max_length: int
    train_set: EncodedSplit
    eval_set: EncodedSplit
    train_loader: Any
    eval_loader: Any
    steps_per_epoch: int  # taken once: the loader's length shrinks while a resumed epoch skips its first batches
    total_steps: int
    facts: dict[str, Any]

    @property
    def primary(self) -> str:
        """The metric "best" is chosen by."""
        return self.facts["selection_metric"]

    @property
    def baseline(self) -> dict[str, float]:
        return {k: v for k, v in self.facts.get("majority_baseline", {}).items() if k in ("accuracy", "f1", "mcc")}

    def plan(self) -> str:
        """The lines printed before training: data sizes, the majority class, steps, loss, selection metric."""
        c, primary = self.config, self.primary
        majority = (f"; majority class: {primary} {self.baseline[primary]:.4f} on validation"
                    if primary in self.baseline else "")
        return (f"data     {self.task.name} ({self.task.source}): train {len(self.train_set):,}, validation "
                f"{len(self.eval_set):,}{majority}\nplan     {self.total_steps} steps of {c.batch_size} per process "
                f"({self.total_steps / self.steps_per_epoch:.2f} epochs) at lr {c.learning_rate:g}"
                f"{' (the method default)' if c.lr is None else ''}, {self.facts['loss']} loss, best by {primary}")


def _load_data(config: TrainConfig) -> TaskData:
    if config.task == "local":
        task = load_local_files(config.train_file, config.validation_file, config.text_columns, config.label_column,
                                test=config.test_file, regression=config.regression)
    else:
        task = load_task(config.task, data_dir=config.data_dir, split_seed=config.split_seed)
    return hold_out(task, config.holdout, config.split_seed) if config.holdout is not None else task


def _load_model(config: TrainConfig, task: TaskData) -> LoadedModel:
    """The model with the task's head, its outputs checked against the labels."""
    loaded = load_model(config.model, task.num_labels, config.head, task.is_regression, seed=config.seed)
    outputs = loaded.model.config.num_labels
    if task.is_regression and outputs != 1:
        raise ValueError(f"a regression task needs a 1-output head, the model has {outputs}; use head='fresh'")
    if not task.is_regression:
        for frame in task.splits.values():
            check_label_range(frame["label"], outputs, config.head)
    return loaded


def _adapt(loaded: LoadedModel, config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """Put the method's adapter on the model: (model to train, model the recorder reads)."""
    model = loaded.model
    save = loaded.head_modules if config.head == "fresh" else ()
    check_targets(model, config.targets)
    adapter = config.adapter_config(save)  # validated when the config was made
    if config.method == PEFT_LORA:
        _check_peft_rank(model, config)
        peft_model = apply_peft_lora(model, config.rank, config.targets, adapter.lora_alpha, adapter.dropout, save)
        return peft_model, peft_recording_view(peft_model, config.rank, config.targets, adapter.lora_alpha, save)
    apply_adapters(model, adapter)
    if config.head == "frozen":  # a method that trains every parameter must leave a kept head alone
        for name in loaded.head_modules:
            model.get_submodule(name).requires_grad_(False)
    return model, model


def _check_peft_rank(model: nn.Module, config: TrainConfig) -> None:
    """PEFT accepts any rank; the runner holds its LoRA to the rank our LoRA accepts."""
    modules = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for name in select_names(modules, as_patterns(config.targets)):
        limit = min(modules[name].in_features, modules[name].out_features)
        if config.rank > limit:
            raise ValueError(f"rank {config.rank} exceeds min(in, out) = {limit} of {name}; choose a rank ≤ that")


def _task_facts(task: TaskData, train_frame, eval_frame) -> dict[str, Any]:
    """run.json's description of what was learned: task kind, loss, selection metric, sizes, majority baseline."""
    facts: dict[str, Any] = {
        "task": task.name,
        "regression": task.is_regression,
        "num_labels": task.num_labels,
        "label_names": list(task.label_names) if task.label_names else None,
        "loss": LOSS_NAMES[task.is_regression],
        "selection_metric": selection_metric(task.name, task.is_regression),
        "data_sizes": {"train": len(train_frame), "validation": len(eval_frame)},
    }
    if not task.is_regression:
        facts["majority_baseline"] = {"split": "validation", **majority_baseline(eval_frame["label"], task.num_labels)}
    return facts


def _prepare(config: TrainConfig, ctx: DistContext) -> _Prepared:
    """Data, model and adapter, on the device; the encoded splits and their loaders; the step budget."""
    task = _load_data(config)
    loaded = _load_model(config, task)
    model, record_model = _adapt(loaded, config)
    counts = count_parameters(record_model)
    model.to(ctx.device)
    max_length = effective_max_length(loaded.tokenizer, loaded.model, config.max_length)
    train_frame = subsample(task.splits["train"], config.max_train_examples, config.seed)
    # the evaluated subset depends on the data only (split_seed), so runs of different seeds score the same examples
    eval_frame = subsample(task.splits["validation"], config.max_eval_examples, config.split_seed)
    train_set = encode_split(train_frame, loaded.tokenizer, max_length, task.is_regression)
    eval_set = encode_split(eval_frame, loaded.tokenizer, max_length, task.is_regression)
    train_loader = make_loader(train_set, loaded.tokenizer, config.batch_size, True, config.seed, ctx.world_size,
                               ctx.rank)
    eval_loader = make_loader(eval_set, loaded.tokenizer, config.eval_batch_size, False, config.seed)
    if len(train_loader) == 0:
        raise ValueError(f"{len(train_set)} training examples make no batch of {config.batch_size} per process; "
                         "lower --batch-size")
    steps_per_epoch = len(train_loader)
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return _Prepared(config, task, loaded, model, record_model, counts, max_length, train_set, eval_set,
                     train_loader, eval_loader, steps_per_epoch, total_steps, _task_facts(task, train_frame, eval_frame))


# ---------------------------------------------------------------------- optimisation
@dataclass
class _Optimiser:
    """AdamW over the trainable parameters, its schedule, the (DDP-wrapped) model, precision context."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    ddp_model: nn.Module
    autocast: Any
    scaler: Any


def _optimiser(config: TrainConfig, prepared: _Prepared, ctx: DistContext) -> _Optimiser:
    from transformers import get_linear_schedule_with_warmup

    model = prepared.model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=config.weight_decay)
    total = prepared.total_steps
    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total), total)
    ddp_model = model
    if ctx.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    return _Optimiser(optimizer, scheduler, ddp_model, autocast_factory(config.precision, ctx.device), scaler)


def _run_info(config: TrainConfig, prepared: _Prepared, ctx: DistContext) -> dict[str, Any]:
    """What run.json records about the job besides the adapter (the recorder writes that)."""
    info = {
        "model": prepared.loaded.source,
        **prepared.facts,
        "data_source": prepared.task.source,
        "hyperparameters": {**config.to_dict(), "regression": prepared.task.is_regression,
                            "effective_max_length": prepared.max_length, "total_steps": prepared.total_steps,
                            "steps_per_epoch": prepared.steps_per_epoch, "world_size": ctx.world_size},
        "trainer": "tlora_analysis.experiments.train",
    }
    if prepared.loaded.head_note:
        info["head_note"] = prepared.loaded.head_note
    if config.method == PEFT_LORA:
        info["recorded_from"] = "peft.get_peft_model (PEFT's own LoRA), recorded as a LoRA run"
    return info


# ---------------------------------------------------------------------- the loop
class _Training:
    """One run's loop: the recorder, the step counter, the loss window, evaluations and the resume point."""

    def __init__(self, config: TrainConfig, ctx: DistContext, run_dir: Path, prepared: _Prepared,
                 opt: _Optimiser) -> None:
        self.config, self.ctx, self.run_dir, self.prepared, self.opt = config, ctx, run_dir, prepared, opt
        self.step = 0
        self.state: dict[str, Any] = {"best": {}, "evals": [], "train_losses": []}
        if config.resume:
            self._resume()
        self.recorder = self._recorder()
        self.recorder.attach(opt.optimizer)
        self.show_bars = ctx.is_main and config.progress
        self.progress = None
        self.last: dict[str, Any] = {}

    def _resume(self) -> None:
        run_id = read_json(self.run_dir / "run.json").get("run_id")
        meta = load_trainer_state(self.run_dir, self.prepared.model, self.opt.optimizer, self.opt.scheduler, run_id,
                                  scaler=self.opt.scaler)
        self.step = int(meta["step"])
        self.state = {"best": meta["best"], "evals": meta["evals"],
                      "train_losses": [tuple(x) for x in meta["train_losses"]]}
        _say(self.config, self.ctx, f"resume   from step {self.step} (the last evaluation's resume point)")

    def _recorder(self) -> SnapshotRecorder:
        c, p = self.config, self.prepared
        return SnapshotRecorder(
            p.record_model, self.run_dir, schedule=parse_snapshot_schedule(c.snapshots, p.total_steps),
            total_steps=p.total_steps, run_info=_run_info(c, p, self.ctx), store_base_weights=c.store_base_weights,
            overwrite=c.overwrite, resume=c.resume, start_step=self.step if c.resume else None,
        )

    def run(self) -> None:
        """Train to the budget, evaluate the test split if asked, close the run and save the adapter; on any
        error mark the run interrupted and keep what was written."""
        try:
            self._open_progress()
            self._loop()
            self._close_progress()
            self._finish()
        except BaseException as exc:
            self._interrupted(exc)
            raise
        finally:
            self._close_progress()

    def _loop(self) -> None:
        p = self.prepared
        self.opt.ddp_model.train()
        # The logged training loss is the mean over the logging window (as transformers.Trainer logs it),
        # kept on the device so no step waits for a host copy.
        self._new_window()
        self.step_seconds: list[float] = []  # seconds per optimizer step in each logging window
        while self.step < p.total_steps:
            epoch_index = self.step // p.steps_per_epoch
            skip = self.step - epoch_index * p.steps_per_epoch
            p.train_loader.sampler.set_epoch(epoch_index, start=skip * self.config.batch_size)
            for batch in p.train_loader:
                self._train_step(batch)
                self._after_step()
                if self.step >= p.total_steps:
                    break

    def _train_step(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimizer step on one batch (the recorder snapshots on its hook)."""
        opt, p = self.opt, self.prepared
        self.recorder.set_epoch((self.step + 1) / p.steps_per_epoch)  # the epoch after this step, as its snapshot is
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        with opt.autocast():
            loss = opt.ddp_model(**batch).loss
        if opt.scaler is not None:
            opt.scaler.scale(loss).backward()
            opt.scaler.step(opt.optimizer)
            opt.scaler.update()
        else:
            loss.backward()
            opt.optimizer.step()
        self._window["lr"] = opt.scheduler.get_last_lr()[0]  # the rate this step used, before the schedule moves
        opt.scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self._window["examples"] += batch["labels"].shape[0] * self.ctx.world_size
        self._window["loss"] = self._window["loss"] + loss.detach().float()
        self._window["steps"] += 1

    def _after_step(self) -> None:
        """Log the loss window, advance the bar, evaluate at epoch ends, the last step and every eval_every.

        A window also ends at each evaluation, where the resume point is written: a resumed run starts a window
        where the uninterrupted run did, so their logged losses agree."""
        c, p, step = self.config, self.prepared, self.step
        evaluate = step % p.steps_per_epoch == 0 or step == p.total_steps or (c.eval_every and step % c.eval_every == 0)
        if step % c.log_every == 0 or evaluate:
            self._log_window()
        if self.progress is not None:
            self.progress.update(1)
        if evaluate:
            self._evaluate(step)

    def _speed(self) -> dict[str, Any]:
        """Median seconds per optimizer step over the logging windows (a window holding an evaluation is an
        outlier the median ignores) and CUDA's peak allocated memory (None on the CPU)."""
        device = self.ctx.device
        return {"step_seconds": float(np.median(self.step_seconds)) if self.step_seconds else None,
                "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}

    def _new_window(self) -> None:
        self._window: dict[str, Any] = {"start": time.time(), "examples": 0, "loss": 0.0, "steps": 0}

    def _log_window(self) -> None:
        w, p = self._window, self.prepared
        mean_loss = float(mean_across(w["loss"] / w["steps"], self.ctx))
        seconds = max(time.time() - w["start"], 1e-9)
        rate = w["examples"] / seconds
        self.step_seconds.append(seconds / w["steps"])
        self.recorder.log(self.step, event="train", epoch=self.step / p.steps_per_epoch, loss=mean_loss, lr=w["lr"],
                          examples_per_s=rate)
        self.state["train_losses"].append((self.step, mean_loss))
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{w['lr']:.2e}", ex_s=f"{rate:.0f}")
        self._new_window()

    def _evaluate(self, at_step: int) -> None:
        """Score the validation split, log it, keep the best, then write the resume point (main process)."""
        p, c = self.prepared, self.config
        if self.ctx.is_main:
            epoch = at_step / p.steps_per_epoch
            outputs: dict[str, np.ndarray] = {}
            metrics = evaluate(p.model, p.eval_loader, self.ctx.device, p.task.is_regression, self.opt.autocast,
                               progress=self.show_bars, desc=f"evaluate step {at_step}",
                               num_labels=p.task.num_labels, outputs=outputs)
            # per-example outputs, so values can be compared example by example (a study's test over seeds × examples)
            save_tensors(self.run_dir / PREDICTIONS_DIR / snapshot_name(at_step),
                         {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in outputs.items()},
                         {"format": "tlora_analysis.predictions", "step": at_step, "split": "validation",
                          "run_id": self.recorder.run_id or ""})
            event = {"step": at_step, "epoch": epoch, "split": "validation", **metrics}
            self.recorder.log(at_step, event="eval", epoch=epoch, split="validation", **metrics)
            self.state["evals"].append(event)
            if is_better(metrics, self.state["best"], p.primary):
                self.state["best"] = event
            if metrics["constant_predictions"]:
                _say(c, self.ctx, f"WARNING  step {at_step}: every validation prediction is the same "
                                  f"({'one score' if p.task.is_regression else 'one class'}); {p.primary} "
                                  f"{metrics.get(p.primary)} only reflects the label balance")
            self.recorder.flush()  # everything up to this step is on disk before the resume point names it
            if c.save_weights:
                save_trainer_state(self.run_dir, p.model, self.opt.optimizer, self.opt.scheduler, at_step,
                                   dict(self.state), run_id=self.recorder.run_id, scaler=self.opt.scaler)
        barrier(self.ctx)

    def _finish(self) -> None:
        """The test split (if asked), the run closed with its summary, the final adapter."""
        p, c = self.prepared, self.config
        self.last = self.state["evals"][-1] if self.state["evals"] else {}
        if self.ctx.is_main and c.eval_test and "test" in p.task.splits:
            test_set = encode_split(subsample(p.task.splits["test"], c.max_eval_examples, c.split_seed),
                                    p.loaded.tokenizer, p.max_length, p.task.is_regression)
            loader = make_loader(test_set, p.loaded.tokenizer, c.eval_batch_size, False, c.seed)
            metrics = evaluate(p.model, loader, self.ctx.device, p.task.is_regression, self.opt.autocast,
                               progress=self.show_bars, desc="evaluate test", num_labels=p.task.num_labels)
            self.recorder.log(self.step, event="eval", epoch=self.step / p.steps_per_epoch, split="test", **metrics)
            self.last = {**self.last, **{f"test_{k}": v for k, v in metrics.items()}}
        self.recorder.close(summary={"best": self.state["best"], "last": self.last, "steps": self.step,
                                     **self._speed()})
        if self.ctx.is_main and c.save_weights:
            if c.method == PEFT_LORA:
                p.model.save_pretrained(str(self.run_dir / ADAPTER_DIR))
            else:
                save_adapter(p.model, self.run_dir / ADAPTER_DIR)

    def _interrupted(self, exc: BaseException) -> None:
        """Mark the run interrupted (what was written stays readable); a full disk becomes DiskFullError."""
        self.recorder.__exit__(type(exc), exc, exc.__traceback__)
        if _disk_full(exc):
            steps = Run(self.run_dir).steps if (self.run_dir / "run.json").is_file() else []
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the device while writing {self.run_dir}; the run is readable up to step "
                f"{steps[-1] if steps else 'none'} (its last complete snapshot). Free disk space, then continue with "
                f"--resume (or use a sparser --snapshots schedule)",
            ) from exc

    def _open_progress(self) -> None:
        if self.show_bars:
            from tqdm.auto import tqdm

            self.progress = tqdm(total=self.prepared.total_steps, initial=self.step,
                                 desc=f"{self.config.method} r{self.config.rank}", unit="step", dynamic_ncols=True)

    def _close_progress(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None

    def result(self, wall_time: float) -> TrainResult:
        p, counts = self.prepared, self.prepared.counts
        return TrainResult(
            run_dir=self.run_dir, config=self.config, best=self.state["best"], last=self.last,
            evals=self.state["evals"], train_losses=self.state["train_losses"],
            parameters={"trainable": counts.trainable, "frozen": counts.frozen, "total": counts.total},
            steps=self.step, wall_time=wall_time, max_length=p.max_length, model=p.model,
            data_sizes={"train": len(p.train_set), "validation": len(p.eval_set)}, selection_metric=p.primary,
            baseline=p.baseline,
        )


def _disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False
