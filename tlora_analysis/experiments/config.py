"""The training configuration: every knob of a run in one validated, JSON-serialisable object."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .data import BUNDLED_TASK, data_dir_needs_task, normalize_task

__all__ = ["TrainConfig", "METHODS", "PRECISIONS"]

METHODS = ("tlora", "lora", "full", "peft-lora")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, and how.

    model: None (the bundled MiniLM), a model folder or a hub id. task: "rotten_tomatoes"
    (bundled), a GLUE task name (with ``data_dir`` for a local TSV folder), or "local" with
    ``train_file``/``validation_file``. dropout None means the method's default (TLoRA 0.5 on
    the adapter output as in the paper; LoRA 0.0). epochs is the budget unless max_steps is set.
    snapshots: "every:N", "log:K" (K log-spaced steps) or a comma list of steps.
    progress: the tqdm bars (training and evaluation); verbose: the data sizes before training,
    warnings (constant predictions) and the summary after it, printed with or without bars.
    save_weights=False writes neither the resume point (trainer_state/) nor the final adapter/:
    the run can be analysed but not resumed or reloaded (for full fine-tuning those are about
    four copies of the model). holdout, a fraction in (0, 1), evaluates on that share of the
    training split (drawn per class with ``split_seed``) and trains on the rest, so that choices
    such as the learning rate are made without touching the validation split.
    """

    method: str = "tlora"
    model: str | None = None
    task: str = "rotten_tomatoes"
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    text_columns: tuple[str, ...] = ("text",)
    label_column: str = "label"
    regression: bool = False
    rank: int = 8
    targets: tuple[str, ...] = ("query", "value")
    lora_alpha: float = 16.0
    dropout: float | None = None
    tlora_init: str = "paper"
    head: str = "fresh"
    seed: int = 0
    split_seed: int = 0
    epochs: float = 3.0
    max_steps: int | None = None
    batch_size: int = 32
    eval_batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    holdout: float | None = None
    eval_every: int | None = None
    eval_test: bool = False
    log_every: int = 10
    snapshots: str = "log:20"
    store_base_weights: bool = True
    save_weights: bool = True
    precision: str = "fp32"
    device: str = "auto"
    run_dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    progress: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.head not in ("fresh", "frozen"):
            raise ValueError(f"head must be 'fresh' (train a new head) or 'frozen' (keep the checkpoint's), got {self.head!r}")
        object.__setattr__(self, "targets", tuple(self.targets))
        object.__setattr__(self, "text_columns", tuple(self.text_columns))
        for name in ("batch_size", "eval_batch_size", "max_length", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "max_train_examples", "max_eval_examples", "eval_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be ≥ 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.holdout is not None and (isinstance(self.holdout, bool) or not 0 < self.holdout < 1):
            raise ValueError(f"holdout must be a fraction strictly between 0 and 1 (the share of train held out for "
                             f"evaluation), or None; got {self.holdout!r}")
        if self.holdout is not None and self.eval_test:
            raise ValueError("holdout evaluates on part of train to choose settings; eval_test would score the test "
                             "split in the same run: drop one of them")
        if self.overwrite and self.resume:
            raise ValueError("give --overwrite or --resume, not both")
        if self.resume and not self.save_weights:
            raise ValueError("--resume needs the resume point that --no-save-weights leaves out; drop one of them")
        if self.task == "local" and not (self.train_file and self.validation_file):
            raise ValueError("task 'local' needs --train-file and --validation-file")
        if self.task != "local" and (self.train_file or self.validation_file or self.test_file):
            raise ValueError(f"--train-file / --validation-file are read with --task local (got --task {self.task}); "
                             "add --task local, or give a GLUE folder with --task NAME --data-dir DIR")
        if self.data_dir is not None and normalize_task(self.task) in (BUNDLED_TASK, "local"):
            raise ValueError(data_dir_needs_task(self.data_dir))
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(self.device)):
            raise ValueError(f"device {self.device!r} is not supported; use auto (CUDA when present), cpu, "
                             "cuda or cuda:N")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> "TrainConfig":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)
