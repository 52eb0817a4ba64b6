"""The training runner: ``train(config)`` fine-tunes one model with one method into a run directory.

One loop for every method (tlora, lora, full, peft-lora): AdamW, linear warmup then linear
decay (``transformers.get_linear_schedule_with_warmup``), dynamic padding, evaluation at each
epoch end (and every ``eval_every`` steps), tqdm progress, a :class:`SnapshotRecorder` writing
snapshots and metrics events, the final adapter saved with ``save_adapter``. Under torchrun it
trains with DistributedDataParallel and rank 0 alone writes.
"""

from __future__ import annotations

import errno
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import FullConfig, LoRAConfig, TLoRAConfig, apply_adapters, count_parameters, save_adapter
from ..fileio import read_json
from ..recording import EveryN, Explicit, LogSpaced, SnapshotRecorder
from ..store import Run, RunExistsError
from .checkpoint import load_trainer_state, save_trainer_state
from .config import TrainConfig
from .data import TaskData, hold_out, load_local_files, load_task
from .distributed import DistContext, barrier, init_distributed, mean_across, shutdown_distributed
from .encoding import effective_max_length, encode_split, make_loader, subsample
from .metrics import LOSS_NAMES, compute_metrics, constant_predictions, majority_baseline, selection_metric
from .models import LoadedModel, check_label_range, check_targets, load_model
from .peft_arm import apply_peft_lora, peft_recording_view

__all__ = ["train", "TrainResult", "DiskFullError", "parse_snapshot_schedule", "default_run_dir", "seed_everything"]


class DiskFullError(OSError):
    """The disk filled up while the run was being written."""


@dataclass
class TrainResult:
    """What a run produced: where it is, its best and last evaluation, counts, time, the trained model.

    ``model`` is the trained model itself (unwrapped from DDP; for peft-lora the PEFT model).
    """

    run_dir: Path
    config: TrainConfig
    best: dict[str, Any]
    last: dict[str, Any]
    evals: list[dict[str, Any]]
    train_losses: list[tuple[int, float]]
    parameters: dict[str, int]
    steps: int
    wall_time: float
    max_length: int
    model: nn.Module | None = field(default=None, repr=False)
    data_sizes: dict[str, int] = field(default_factory=dict)
    selection_metric: str = "accuracy"
    baseline: dict[str, float] = field(default_factory=dict)

    @property
    def run(self) -> Run:
        return Run(self.run_dir)

    @property
    def learned(self) -> bool | None:
        """Whether the best evaluation beats the majority baseline on the selection metric (None: no baseline)."""
        best, base = self.best.get(self.selection_metric), self.baseline.get(self.selection_metric)
        if best is None or base is None:
            return None
        return best > base

    def warnings(self) -> list[str]:
        """What a reader must know before trusting the numbers: constant predictions, nothing learned."""
        out = []
        constant = [e["step"] for e in self.evals if e.get("constant_predictions")]
        if constant:
            out.append(f"the predictions were constant (one class or one score for every example) at step(s) "
                       f"{constant}: those evaluations measured the label balance, not the model. Train longer or "
                       f"with a higher learning rate")
        if self.learned is False:
            out.append(f"the best {self.selection_metric} ({self.best.get(self.selection_metric):.4f}) does not beat the "
                       f"majority class ({self.baseline[self.selection_metric]:.4f}): this run learned nothing usable")
        return out

    def summary(self) -> str:
        """One screen: where the run went, metrics against the majority baseline, parameters, time, warnings."""
        keys = [k for k in ("accuracy", "f1", "mcc", "pearson", "spearman", "eval_loss") if k in self.last]
        keys.sort(key=lambda k: k != self.selection_metric)
        fmt = lambda d: "  ".join(f"{k} {d[k]:.4f}" for k in keys if d.get(k) is not None)  # noqa: E731
        p = self.parameters
        base = self.baseline.get(self.selection_metric)
        lines = [
            f"run      {self.run_dir}",
            f"method   {self.config.method}  rank {self.config.rank if self.config.method != 'full' else '-'}  "
            f"targets {','.join(self.config.targets)}  head {self.config.head}",
            f"data     {self.config.task}: " + ", ".join(f"{k} {v:,}" for k, v in self.data_sizes.items()),
            f"params   trainable {p['trainable']:,} of {p['total']:,} ({100 * p['trainable'] / max(p['total'], 1):.3f}%)",
            f"best     step {self.best.get('step')} epoch {self.best.get('epoch', 0):.2f}  {fmt(self.best)}"
            f"  (by {self.selection_metric})",
            f"last     step {self.last.get('step')} epoch {self.last.get('epoch', 0):.2f}  {fmt(self.last)}",
        ]
        if base is not None:
            lines.append(f"baseline majority class: {self.selection_metric} {base:.4f} on validation")
        lines.append(f"time     {self.wall_time:.1f} s for {self.steps} steps")
        lines += [f"WARNING  {w}" for w in self.warnings()]
        return "\n".join(lines)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def parse_snapshot_schedule(text: str, total_steps: int):
    """"every:N", "log:K" or "s1,s2,..." → a recorder schedule."""
    kind, _, value = text.partition(":")
    try:
        if kind == "every":
            return EveryN(int(value))
        if kind == "log":
            return LogSpaced(int(value), total_steps)
        if not value:
            return Explicit([int(s) for s in text.split(",") if s.strip()])
    except ValueError as exc:
        raise ValueError(f"bad snapshot schedule {text!r} ({exc}); use every:N, log:K or a comma list of steps") from exc
    raise ValueError(f"bad snapshot schedule {text!r}; use every:N, log:K or a comma list of steps")


def default_run_dir(config: TrainConfig) -> Path:
    """runs/<task>-<method>-r<rank>-s<seed>."""
    rank = "" if config.method == "full" else f"-r{config.rank}"
    return Path("runs") / f"{Path(config.task).name}-{config.method}{rank}-s{config.seed}"


def _load_data(config: TrainConfig) -> TaskData:
    if config.task == "local":
        task = load_local_files(config.train_file, config.validation_file, config.text_columns, config.label_column,
                                test=config.test_file, regression=config.regression)
    else:
        task = load_task(config.task, data_dir=config.data_dir, split_seed=config.split_seed)
    return hold_out(task, config.holdout, config.split_seed) if config.holdout is not None else task


def _adapt(loaded: LoadedModel, config: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """Put the method's adapter on the model: (model to train, model the recorder reads)."""
    model = loaded.model
    save = loaded.head_modules if config.head == "fresh" else ()
    if config.method != "full":
        check_targets(model, config.targets)
    if config.method == "tlora":
        dropout = 0.5 if config.dropout is None else config.dropout
        apply_adapters(model, TLoRAConfig(rank=config.rank, target_modules=config.targets, seed=config.seed,
                                          dropout=dropout, init=config.tlora_init, modules_to_save=save))
        return model, model
    if config.method == "lora":
        apply_adapters(model, LoRAConfig(rank=config.rank, target_modules=config.targets, lora_alpha=config.lora_alpha,
                                         dropout=config.dropout or 0.0, seed=config.seed, modules_to_save=save))
        return model, model
    if config.method == "full":
        # every parameter trains; the layers the adapters would adapt are the ones recorded (dense snapshots)
        check_targets(model, config.targets)
        apply_adapters(model, FullConfig(track_modules=config.targets, modules_to_save=save))
        if config.head == "frozen":
            for name in loaded.head_modules:
                for p in model.get_submodule(name).parameters():
                    p.requires_grad_(False)
        return model, model
    # peft-lora: validate the rank the same way as LoRA (PEFT itself accepts any rank)
    LoRAConfig(rank=config.rank, target_modules=config.targets)
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in config.targets):
            if config.rank > min(m.in_features, m.out_features):
                raise ValueError(f"rank {config.rank} exceeds min(in, out) = {min(m.in_features, m.out_features)} "
                                 f"of {name}; choose a rank ≤ that")
    peft_model = apply_peft_lora(model, config.rank, config.targets, config.lora_alpha, config.dropout or 0.0, save)
    return peft_model, peft_recording_view(peft_model, config.rank, config.targets, config.lora_alpha, save)


def _check_run_dir(run_dir: Path, config: TrainConfig) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise RunExistsError(f"{run_dir} is a file; give a folder path for the run")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (config.overwrite or config.resume):
        raise RunExistsError(f"{run_dir} already exists; pass --resume to continue it, --overwrite to replace it, "
                             f"or choose another --run-dir")
    if config.resume and not (run_dir / "run.json").is_file():
        raise FileNotFoundError(f"--resume given but {run_dir} holds no run; drop --resume to start a new one")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, is_regression: bool, autocast, progress: bool = False,
             desc: str = "evaluate") -> dict[str, Any]:
    """eval_loss, the task's metrics and whether every prediction was the same, over a whole split."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    losses, logits_all, labels_all, n = 0.0, [], [], 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = model(**batch)
        size = batch["labels"].shape[0]
        losses += float(out.loss) * size
        n += size
        logits_all.append(out.logits.float().cpu().numpy())
        labels_all.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    logits = np.concatenate(logits_all)
    metrics = compute_metrics(np.concatenate(labels_all), logits, is_regression)
    return {"eval_loss": losses / max(n, 1), **metrics, "constant_predictions": constant_predictions(logits, is_regression)}


def _autocast_factory(precision: str, device: torch.device):
    if precision == "fp32":
        return lambda: torch.autocast(device.type, enabled=False)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a CUDA device; use --precision bf16 or fp32 on the CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


def _disk_full(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


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
        return _train(config, ctx, start)
    finally:
        shutdown_distributed(ctx)


def _say(config: TrainConfig, ctx: DistContext, text: str) -> None:
    """A line for the person running the job (main process, unless verbose is off)."""
    if ctx.is_main and config.verbose:
        print(text, file=sys.stderr if text.startswith("WARNING") else sys.stdout, flush=True)


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


def _train(config: TrainConfig, ctx: DistContext, start: float) -> TrainResult:
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    _check_run_dir(run_dir, config)
    barrier(ctx)  # every process checks before rank 0 creates the folder
    seed_everything(config.seed)
    task = _load_data(config)
    loaded = load_model(config.model, task.num_labels, config.head, task.is_regression, seed=config.seed)
    outputs = loaded.model.config.num_labels
    if task.is_regression and outputs != 1:
        raise ValueError(f"a regression task needs a 1-output head, the model has {outputs}; use head='fresh'")
    if not task.is_regression:
        for frame in task.splits.values():
            check_label_range(frame["label"], outputs, config.head)
    model, record_model = _adapt(loaded, config)
    counts = count_parameters(record_model)
    model.to(ctx.device)
    max_length = effective_max_length(loaded.tokenizer, loaded.model, config.max_length)

    train_frame = subsample(task.splits["train"], config.max_train_examples, config.seed)
    # the evaluated subset depends on the data only (split_seed), so runs of different seeds score the same examples
    eval_frame = subsample(task.splits["validation"], config.max_eval_examples, config.split_seed)
    facts = _task_facts(task, train_frame, eval_frame)
    train_set = encode_split(train_frame, loaded.tokenizer, max_length, task.is_regression)
    eval_set = encode_split(eval_frame, loaded.tokenizer, max_length, task.is_regression)
    train_loader = make_loader(train_set, loaded.tokenizer, config.batch_size, True, config.seed, ctx.world_size, ctx.rank)
    eval_loader = make_loader(eval_set, loaded.tokenizer, config.eval_batch_size, False, config.seed)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training examples make no batch of {config.batch_size} per process; "
                         "lower --batch-size")
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    primary = facts["selection_metric"]
    baseline = {k: v for k, v in facts.get("majority_baseline", {}).items() if k in ("accuracy", "f1", "mcc")}
    majority = (f"; majority class: {primary} {baseline[primary]:.4f} on validation" if primary in baseline else "")
    _say(config, ctx, f"data     {task.name} ({task.source}): train {len(train_set):,}, validation {len(eval_set):,}"
                      f"{majority}\nplan     {total_steps} steps of {config.batch_size} per process "
                      f"({total_steps / steps_per_epoch:.2f} epochs), {facts['loss']} loss, best by {primary}")

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=config.weight_decay)
    from transformers import get_linear_schedule_with_warmup

    scheduler = get_linear_schedule_with_warmup(optimizer, round(config.warmup_ratio * total_steps), total_steps)
    ddp_model = model
    if ctx.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    run_info = {
        "model": loaded.source,
        **facts,
        "data_source": task.source,
        "hyperparameters": {**config.to_dict(), "regression": task.is_regression, "effective_max_length": max_length,
                            "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                            "world_size": ctx.world_size},
        "trainer": "tlora_analysis.experiments.train",
    }
    if loaded.head_note:
        run_info["head_note"] = loaded.head_note
    if config.method == "peft-lora":
        run_info["recorded_from"] = "peft.get_peft_model (PEFT's own LoRA), recorded as a LoRA run"
    state = {"best": {}, "evals": [], "train_losses": []}
    step = 0
    if config.resume:
        meta = load_trainer_state(run_dir, model, optimizer, scheduler, read_json(run_dir / "run.json").get("run_id"))
        step = int(meta["step"])
        state = {"best": meta["best"], "evals": meta["evals"], "train_losses": [tuple(x) for x in meta["train_losses"]]}
        _say(config, ctx, f"resume   from step {step} (the last evaluation's resume point)")
    recorder = SnapshotRecorder(
        record_model, run_dir, schedule=parse_snapshot_schedule(config.snapshots, total_steps), total_steps=total_steps,
        run_info=run_info, store_base_weights=config.store_base_weights and config.method != "full",
        overwrite=config.overwrite, resume=config.resume, start_step=step if config.resume else None,
    )
    recorder.attach(optimizer)
    autocast = _autocast_factory(config.precision, ctx.device)
    scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
    show_bars = ctx.is_main and config.progress

    def better(metrics: dict[str, Any]) -> bool:
        new, old = metrics.get(primary), state["best"].get(primary)
        return not state["best"] or (new is not None and not math.isnan(new) and (old is None or new > old))

    def run_eval(at_step: int) -> None:
        epoch = at_step / steps_per_epoch
        if ctx.is_main:
            metrics = evaluate(model, eval_loader, ctx.device, task.is_regression, autocast, progress=show_bars,
                               desc=f"evaluate step {at_step}")
            event = {"step": at_step, "epoch": epoch, "split": "validation", **metrics}
            recorder.log(at_step, event="eval", epoch=epoch, split="validation", **metrics)
            state["evals"].append(event)
            if better(metrics):
                state["best"] = event
            if metrics["constant_predictions"]:
                _say(config, ctx, f"WARNING  step {at_step}: every validation prediction is the same "
                                  f"({'one score' if task.is_regression else 'one class'}); {primary} "
                                  f"{metrics.get(primary)} only reflects the label balance")
            # Everything up to this step is on disk before the resume point names it.
            recorder.flush()
            if config.save_weights:
                save_trainer_state(run_dir, model, optimizer, scheduler, at_step,
                                   {"best": state["best"], "evals": state["evals"],
                                    "train_losses": state["train_losses"]}, run_id=recorder.run_id)
        barrier(ctx)

    progress = None
    if show_bars:
        from tqdm.auto import tqdm

        progress = tqdm(total=total_steps, initial=step, desc=f"{config.method} r{config.rank}", unit="step", dynamic_ncols=True)
    ddp_model.train()
    try:
        # The logged training loss is the mean over the logging window (as transformers.Trainer
        # logs it), kept on the device so no step waits for a host copy.
        window_start, window_examples, window_loss, window_steps = time.time(), 0, 0.0, 0
        step_seconds: list[float] = []  # seconds per optimizer step in each logging window
        while step < total_steps:
            epoch_index = step // steps_per_epoch
            skip = step - epoch_index * steps_per_epoch
            train_loader.sampler.set_epoch(epoch_index, start=skip * config.batch_size)
            for batch in train_loader:
                recorder.set_epoch(step / steps_per_epoch)
                batch = {k: v.to(ctx.device) for k, v in batch.items()}
                with autocast():
                    loss = ddp_model(**batch).loss
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window_examples += batch["labels"].shape[0] * ctx.world_size
                window_loss, window_steps = window_loss + loss.detach().float(), window_steps + 1
                if step % config.log_every == 0 or step == total_steps:
                    mean_loss = float(mean_across(window_loss / window_steps, ctx))
                    window_seconds = max(time.time() - window_start, 1e-9)
                    rate = window_examples / window_seconds
                    step_seconds.append(window_seconds / window_steps)
                    lr = scheduler.get_last_lr()[0]
                    recorder.log(step, event="train", epoch=step / steps_per_epoch, loss=mean_loss, lr=lr,
                                 examples_per_s=rate)
                    state["train_losses"].append((step, mean_loss))
                    if progress is not None:
                        progress.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", ex_s=f"{rate:.0f}")
                    window_start, window_examples, window_loss, window_steps = time.time(), 0, 0.0, 0
                if progress is not None:
                    progress.update(1)
                at_epoch_end = step % steps_per_epoch == 0
                if at_epoch_end or step == total_steps or (config.eval_every and step % config.eval_every == 0):
                    run_eval(step)
                if step >= total_steps:
                    break
        if progress is not None:
            progress.close()
            progress = None
        last = state["evals"][-1] if state["evals"] else {}
        if ctx.is_main and config.eval_test and "test" in task.splits:
            test_set = encode_split(subsample(task.splits["test"], config.max_eval_examples, config.split_seed),
                                    loaded.tokenizer, max_length, task.is_regression)
            metrics = evaluate(model, make_loader(test_set, loaded.tokenizer, config.eval_batch_size, False, config.seed),
                               ctx.device, task.is_regression, autocast, progress=show_bars, desc="evaluate test")
            recorder.log(step, event="eval", epoch=step / steps_per_epoch, split="test", **metrics)
            last = {**last, **{f"test_{k}": v for k, v in metrics.items()}}
        summary = {"best": state["best"], "last": last, "steps": step,
                   # median over logging windows (a window with an evaluation in it is an outlier)
                   "step_seconds": float(np.median(step_seconds)) if step_seconds else None,
                   "peak_memory_bytes": torch.cuda.max_memory_allocated(ctx.device)
                   if ctx.device.type == "cuda" else None}
        recorder.close(summary=summary)
        if ctx.is_main and config.save_weights:
            if config.method == "peft-lora":
                model.save_pretrained(str(run_dir / "adapter"))
            else:
                save_adapter(model, run_dir / "adapter")
    except BaseException as exc:
        recorder.__exit__(type(exc), exc, exc.__traceback__)  # marks the run interrupted, keeps what was written
        if _disk_full(exc):
            steps = Run(run_dir).steps if (run_dir / "run.json").is_file() else []
            raise DiskFullError(
                errno.ENOSPC,
                f"no space left on the device while writing {run_dir}; the run is readable up to step "
                f"{steps[-1] if steps else 'none'} (its last complete snapshot). Free disk space, then continue with "
                f"--resume (or use a sparser --snapshots schedule)",
            ) from exc
        raise
    finally:
        if progress is not None:
            progress.close()
    barrier(ctx)
    result = TrainResult(
        run_dir=run_dir, config=config, best=state["best"], last=last, evals=state["evals"],
        train_losses=state["train_losses"],
        parameters={"trainable": counts.trainable, "frozen": counts.frozen, "total": counts.total},
        steps=step, wall_time=time.time() - start, max_length=max_length, model=model,
        data_sizes={"train": len(train_set), "validation": len(eval_set)}, selection_metric=primary, baseline=baseline,
    )
    _say(config, ctx, result.summary())
    return result
