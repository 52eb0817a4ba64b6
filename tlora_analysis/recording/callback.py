"""``RecorderCallback``: a SnapshotRecorder driven by a Hugging Face ``Trainer``.

Snapshots on ``on_optimizer_step`` (step = global_step + 1, since Trainer counts the step
after that callback), metrics on ``on_log`` / ``on_evaluate``, close on ``on_train_end``.
The recorder is created at ``on_train_begin`` from the Trainer's model, with
``total_steps = state.max_steps`` and the TrainingArguments as hyperparameters; a Trainer
resuming from a checkpoint resumes the run at that checkpoint's step.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from ..store.trainer_logs import trainer_log_to_event
from .recorder import SnapshotRecorder

__all__ = ["RecorderCallback"]

_HYPERPARAMETERS = ("learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
                    "max_steps", "weight_decay", "warmup_steps", "lr_scheduler_type", "seed", "optim")


class RecorderCallback(TrainerCallback):
    """Record a Trainer run into ``run_dir``; keyword arguments go to :class:`SnapshotRecorder`."""

    def __init__(self, run_dir: str | os.PathLike, **recorder_kwargs: Any) -> None:
        if "total_steps" in recorder_kwargs or "start_step" in recorder_kwargs:
            raise ValueError("RecorderCallback takes total_steps and start_step from the Trainer; leave them out")
        self.run_dir = run_dir
        self.recorder_kwargs = recorder_kwargs
        self.recorder: SnapshotRecorder | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("RecorderCallback needs the Trainer's model at on_train_begin")
        kw = dict(self.recorder_kwargs)
        info = dict(kw.pop("run_info", None) or {})
        info.setdefault("hyperparameters", {k: getattr(args, k, None) for k in _HYPERPARAMETERS})
        resuming = state.global_step > 0
        self.recorder = SnapshotRecorder(
            model, self.run_dir, total_steps=state.max_steps, run_info=info,
            resume=kw.pop("resume", resuming), start_step=state.global_step if resuming else None, **kw,
        )
        self.recorder.step = state.global_step

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.set_epoch(state.epoch)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.recorder.set_epoch(state.epoch)
        self.recorder.advance()

    def on_log(self, args, state, control, logs=None, **kwargs):
        event = trainer_log_to_event({**(logs or {}), "step": state.global_step, "epoch": state.epoch})
        if event is not None and event["event"] == "train" and self.recorder is not None:
            self.recorder.log(**event)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        event = trainer_log_to_event({**(metrics or {}), "step": state.global_step, "epoch": state.epoch})
        if event is not None and self.recorder is not None:
            self.recorder.log(**event)

    def on_train_end(self, args, state, control, **kwargs):
        if self.recorder is not None:
            self.recorder.step = state.global_step
            self.recorder.close()
