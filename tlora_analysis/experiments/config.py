"""The training configuration: every knob of a run in one validated, JSON-serialisable object.

Every field is checked when the object is made (types, ranges, choices, the snapshot schedule's
syntax, the method's adapter config), so a bad value fails with a message naming the fix before
any data or model is loaded. docs/parameters.md lists each field's constraint.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..adapters.methods import METHODS as ADAPTER_METHODS, get_spec
from ..adapters.config import AdapterConfig
from ..adapters.spec import MethodSpec, RunnerOptions
from ..adapters.tlora import INITS
from ..names import as_patterns
from .data import BUNDLED_TASK, GLUE_TASKS, data_dir_needs_task, normalize_task

__all__ = ["TrainConfig", "METHODS", "PRECISIONS", "PEFT_LORA", "check_snapshots"]

PEFT_LORA = "peft-lora"  # the runner's reference arm: PEFT's own LoRA, recorded as a LoRA run
METHODS = (*ADAPTER_METHODS, PEFT_LORA)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
HEADS = ("fresh", "frozen")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_POSITIVE_INTS = ("rank", "batch_size", "eval_batch_size", "max_length", "log_every")
_OPTIONAL_POSITIVE_INTS = ("max_steps", "max_train_examples", "max_eval_examples", "eval_every")
_BOOLS = ("regression", "eval_test", "store_base_weights", "save_weights", "overwrite", "resume", "progress", "verbose")
_OPTIONAL_PATHS = ("model", "data_dir", "train_file", "validation_file", "test_file", "run_dir")


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, and how.

    model: None (the bundled MiniLM), a model folder or a hub id. task: "rotten_tomatoes"
    (bundled), a GLUE task name (with ``data_dir`` for a local TSV folder), or "local" with
    ``train_file``/``validation_file``. method: a registered adapter method (tlora, lora, full,
    vera, lora-xs) or "peft-lora" (PEFT's own LoRA). dropout None means the method's default
    (TLoRA 0.5 on the adapter output as in the paper; the others 0.0), and lr None the method's
    learning rate (``learning_rate``: tlora and lora-xs 2e-2, vera 1e-2, lora and peft-lora 1e-3,
    full 1e-4; run.json records the value used). epochs is the budget
    unless max_steps is set. snapshots: "every:N", "log:K" (K log-spaced steps) or a comma list
    of steps. targets and text_columns take one name or a list. progress: the tqdm bars (training
    and evaluation); verbose: the data sizes before training, warnings (constant predictions) and
    the summary after it, printed with or without bars. save_weights=False writes neither the
    resume point (trainer_state/) nor the final adapter/: the run can be analysed but not resumed
    or reloaded (for full fine-tuning those are about four copies of the model). holdout, a
    fraction in (0, 1), evaluates on that share of the training split (drawn with ``split_seed``:
    whole movies for Rotten Tomatoes, else per class) and trains on the rest, so that choices such
    as the learning rate are made without touching the validation split.
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
    lr: float | None = None
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
        self._normalise()
        _check_types(self)
        _check_ranges(self)
        _check_choices(self)
        _check_combinations(self)
        self.adapter_config(())  # the method's own checks (e.g. lora_alpha, dropout), before a model loads

    def _normalise(self) -> None:
        """One name for a list (targets, text_columns), paths as strings."""
        object.__setattr__(self, "targets", as_patterns(self.targets, "targets"))
        columns = (self.text_columns,) if isinstance(self.text_columns, str) else tuple(self.text_columns)
        object.__setattr__(self, "text_columns", columns)
        for name in _OPTIONAL_PATHS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                object.__setattr__(self, name, os.fspath(value))

    @property
    def method_spec(self) -> MethodSpec:
        """The spec of the method the run records (peft-lora records a LoRA run)."""
        return get_spec("lora" if self.method == PEFT_LORA else self.method)

    @property
    def learning_rate(self) -> float:
        """``lr``, or the method's default learning rate when it is None."""
        return self.method_spec.default_lr if self.lr is None else self.lr

    def adapter_config(self, modules_to_save: tuple[str, ...]) -> AdapterConfig:
        """The adapter config this run's method gets (peft-lora: the LoRA config its recording view carries)."""
        return self.method_spec.runner_config(RunnerOptions(
            rank=self.rank, targets=self.targets, seed=self.seed, dropout=self.dropout,
            modules_to_save=tuple(modules_to_save), lora_alpha=self.lora_alpha, tlora_init=self.tlora_init))

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values, ``lr`` resolved to the learning rate used."""
        d = {**asdict(self), "lr": self.learning_rate}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def replace(self, **changes: Any) -> "TrainConfig":
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown TrainConfig field(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **changes)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_types(c: TrainConfig) -> None:
    for name in _BOOLS:
        if not isinstance(getattr(c, name), bool):
            raise TypeError(f"{name} must be True or False, got {getattr(c, name)!r} (on the command line it is a "
                            "flag without a value)")
    for name in _OPTIONAL_PATHS:
        value = getattr(c, name)
        if value is not None and (not isinstance(value, str) or not value):
            raise TypeError(f"{name} must be a non-empty path or name, or None; got {value!r}")
    for name in ("method", "task", "label_column", "snapshots", "device", "precision", "head", "tlora_init"):
        if not isinstance(getattr(c, name), str) or not getattr(c, name):
            raise TypeError(f"{name} must be a non-empty string, got {getattr(c, name)!r}")
    if not c.text_columns or len(c.text_columns) > 2 or not all(isinstance(t, str) and t for t in c.text_columns):
        raise ValueError(f"text_columns must be one or two column names (a sentence, or a sentence pair), got "
                         f"{c.text_columns!r}")
    for name in ("seed", "split_seed"):
        if not _is_int(getattr(c, name)):
            raise TypeError(f"{name} must be an int, got {getattr(c, name)!r}")


def _check_ranges(c: TrainConfig) -> None:
    for name in _POSITIVE_INTS + _OPTIONAL_POSITIVE_INTS:
        value = getattr(c, name)
        if (value is not None or name in _POSITIVE_INTS) and not (_is_int(value) and value > 0):
            optional = " or None" if name in _OPTIONAL_POSITIVE_INTS else ""
            raise ValueError(f"{name} must be a positive integer{optional}, got {value!r}")
    for name, low, high, text in (("epochs", 0, math.inf, "positive"),
                                  ("lora_alpha", 0, math.inf, "positive (LoRA's scaling is lora_alpha / rank)")):
        value = getattr(c, name)
        if not (_is_number(value) and low < value < high):
            raise ValueError(f"{name} must be {text}, got {value!r}")
    if c.lr is not None and not (_is_number(c.lr) and c.lr > 0):
        raise ValueError(f"lr must be positive, or None (the method's default), got {c.lr!r}")
    if not (_is_number(c.weight_decay) and c.weight_decay >= 0):
        raise ValueError(f"weight_decay must be ≥ 0, got {c.weight_decay!r}")
    if not (_is_number(c.warmup_ratio) and 0 <= c.warmup_ratio < 1):
        raise ValueError(f"warmup_ratio must be in [0, 1), got {c.warmup_ratio!r}")
    if c.dropout is not None and not (_is_number(c.dropout) and 0 <= c.dropout < 1):
        raise ValueError(f"dropout must be a probability in [0, 1) or None (the method's default), got {c.dropout!r}")
    if c.holdout is not None and not (_is_number(c.holdout) and 0 < c.holdout < 1):
        raise ValueError(f"holdout must be a fraction strictly between 0 and 1 (the share of train held out for "
                         f"evaluation), or None; got {c.holdout!r}")
    check_snapshots(c.snapshots)


def _check_choices(c: TrainConfig) -> None:
    for name, choices in (("method", METHODS), ("precision", PRECISIONS), ("head", HEADS), ("tlora_init", INITS)):
        if getattr(c, name) not in choices:
            raise ValueError(f"{name} must be one of {tuple(choices)}, got {getattr(c, name)!r}")
    if not _DEVICE.fullmatch(c.device):
        raise ValueError(f"device {c.device!r} is not supported; use auto (CUDA when present), cpu, cuda or cuda:N")
    task = normalize_task(c.task)
    if task not in (BUNDLED_TASK, "local", *GLUE_TASKS):
        raise ValueError(f"unknown task {c.task!r}; use {BUNDLED_TASK!r} (the bundled default), a GLUE task "
                         f"({', '.join(sorted(GLUE_TASKS))}), or 'local' with --train-file/--validation-file")


def _check_combinations(c: TrainConfig) -> None:
    if c.holdout is not None and c.eval_test:
        raise ValueError("holdout evaluates on part of train to choose settings; eval_test would score the test split "
                         "in the same run: drop one of them")
    if c.overwrite and c.resume:
        raise ValueError("give --overwrite or --resume, not both")
    if c.resume and not c.save_weights:
        raise ValueError("--resume needs the resume point that --no-save-weights leaves out; drop one of them")
    if c.task == "local" and not (c.train_file and c.validation_file):
        raise ValueError("task 'local' needs --train-file and --validation-file")
    if c.task != "local" and (c.train_file or c.validation_file or c.test_file):
        raise ValueError(f"--train-file / --validation-file are read with --task local (got --task {c.task}); "
                         "add --task local, or give a GLUE folder with --task NAME --data-dir DIR")
    if c.data_dir is not None and normalize_task(c.task) in (BUNDLED_TASK, "local"):
        raise ValueError(data_dir_needs_task(c.data_dir))


def check_snapshots(text: Any) -> str:
    """A snapshot schedule's syntax: "every:N" or "log:K" (N, K ≥ 1) or a comma list of steps ≥ 0."""
    fix = "use every:N, log:K (N, K ≥ 1) or a comma list of steps such as 0,10,100"
    if not isinstance(text, str):
        raise TypeError(f"snapshots must be a string; {fix}; got {text!r}")
    kind, sep, value = text.partition(":")
    if sep and kind in ("every", "log"):
        ok = value.isdigit() and int(value) >= 1
    else:
        parts = [s.strip() for s in text.split(",")]
        ok = not sep and all(p.isdigit() for p in parts)
    if not ok:
        raise ValueError(f"bad snapshot schedule {text!r}; {fix}")
    return text
