"""Models: the bundled MiniLM, a local Hugging Face folder, or a hub id; head modes; target checks.

Head modes (the paper's setup uses both, docs/paper.md):
- ``"fresh"``: a newly initialised classification head with the task's number of labels,
  trained next to the adapter (PEFT's ``modules_to_save=["classifier"]``).
- ``"frozen"``: the checkpoint's head is kept and frozen; labels index its logits (the paper
  reuses the 3-way MNLI head for binary tasks). A checkpoint without a head gets a random
  one, which then stays frozen: a loud warning says so (and run.json's ``head_note``).

Weights are read from safetensors only: a folder holding only pickled weights
(``pytorch_model.bin``) is refused with the way to convert it.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..adapters.inject import head_module_names
from ..names import REGEX_PREFIX, as_patterns, looks_like_regex, unmatched
from .bundled import BUNDLED_MODEL_NAME, bundled_model_dir

__all__ = [
    "HEAD_MODES",
    "LoadedModel",
    "UnknownModelError",
    "UnknownTargetError",
    "LabelRangeError",
    "resolve_model_source",
    "load_model",
    "head_module_names",
    "check_targets",
    "check_label_range",
]

HEAD_MODES = ("fresh", "frozen")


class UnknownModelError(FileNotFoundError):
    """The model is neither the bundled default, an existing folder, nor a reachable hub id."""


class UnknownTargetError(ValueError):
    """A target module name matches nothing in the model."""


class LabelRangeError(ValueError):
    """The data has class ids the model's head cannot produce."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    source: str          # what was asked for ("bundled", a folder or a hub id)
    resolved: str        # the folder or hub id actually loaded
    head: str
    head_modules: tuple[str, ...]
    head_note: str | None = None  # set when a frozen head had to be initialised at random


def resolve_model_source(spec: str | os.PathLike | None) -> tuple[str, str]:
    """(identity, what to load): the bundled folder, an existing folder, or a hub id."""
    if spec is None or str(spec) in ("bundled", BUNDLED_MODEL_NAME):
        return "bundled:" + BUNDLED_MODEL_NAME, str(bundled_model_dir())
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path} has no config.json: not a Hugging Face model folder")
        pickled = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        if pickled and not any(path.glob("*.safetensors")):
            raise UnknownModelError(
                f"{path} holds only pickled weights ({', '.join(pickled[:3])}); tlora-analysis reads safetensors only, "
                f"since unpickling can run code. Convert it once where you trust the file: "
                f"AutoModelForSequenceClassification.from_pretrained(path).save_pretrained(path) writes model.safetensors"
            )
        return str(path.resolve()), str(path.resolve())
    is_hub_id = re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", text) is not None
    if not is_hub_id:
        raise UnknownModelError(
            f"model path {text!r} does not exist and is not a hub id (org/name); give a Hugging Face model folder, "
            f"a hub id such as roberta-large, or leave --model out for the bundled {BUNDLED_MODEL_NAME}"
        )
    return text, text


@contextlib.contextmanager
def _transformers_quiet():
    """transformers' logging at errors only and its progress bars off, restored afterwards."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(
    spec: str | os.PathLike | None,
    num_labels: int,
    head: str = "fresh",
    is_regression: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Load a sequence-classification model and its tokenizer.

    ``head="fresh"`` gives a new head of ``num_labels`` outputs, initialised from ``seed``;
    ``head="frozen"`` keeps the checkpoint's head (its size is checked against the labels later
    by :func:`check_label_range`).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if head not in HEAD_MODES:
        raise ValueError(f"head must be one of {HEAD_MODES}, got {head!r}")
    identity, target = resolve_model_source(spec)
    try:
        config = AutoConfig.from_pretrained(target)
    except OSError as exc:
        raise UnknownModelError(
            f"could not load model {target!r} ({exc}). Offline, a hub id only works when it is in the local "
            f"Hugging Face cache; give a downloaded model folder instead"
        ) from exc
    kwargs = {}
    if head == "fresh":
        config.num_labels = num_labels
        config.problem_type = "regression" if is_regression else "single_label_classification"
        kwargs["ignore_mismatched_sizes"] = True
    torch.manual_seed(seed)
    try:
        with _transformers_quiet():  # its loading bar and report of the new head: the runner says what it did
            model, info = AutoModelForSequenceClassification.from_pretrained(
                target, config=config, use_safetensors=True, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise UnknownModelError(f"could not load the weights of {target!r} ({exc}); give a Hugging Face model "
                                f"folder with model.safetensors") from exc
    heads = head_module_names(model)
    note = _set_up_head(model, heads, head, info.get("missing_keys", []), seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target)
    except (OSError, ValueError, TypeError) as exc:
        raise UnknownModelError(f"could not load a tokenizer from {target!r} ({exc}); the model folder needs its "
                                f"tokenizer files (tokenizer.json or vocab files)") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return LoadedModel(model, tokenizer, identity, target, head, heads, note)


def _set_up_head(model: nn.Module, heads: tuple[str, ...], head: str, missing_keys: Sequence[str],
                 seed: int) -> str | None:
    """A fresh head initialised from ``seed``; for a kept head that the checkpoint lacks, the warning note."""
    missing = [k for k in missing_keys if k.split(".")[0] in heads]
    if head == "frozen" and missing:
        note = (f"the checkpoint has no trained classification head ({', '.join(missing[:2])} newly initialised) and "
                f"--head frozen keeps that random head frozen: the model can only learn through the adapter into "
                f"a random readout. Use --head fresh to train the head")
        warnings.warn(note, stacklevel=3)
        print(f"WARNING  {note}", file=sys.stderr, flush=True)
        return note
    if head == "fresh":
        if not heads:
            raise ValueError(f"{type(model).__name__} has no 'classifier' or 'score' head to train; use head='frozen'")
        torch.manual_seed(seed)
        for name in heads:
            model.get_submodule(name).apply(model._init_weights)
    return None


def check_targets(model: nn.Module, targets: str | Sequence[str]) -> None:
    """Raise :class:`UnknownTargetError` naming close module names when a target pattern matches nothing."""
    names = [n for n, _ in model.named_modules() if n]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    try:
        patterns = as_patterns(targets, "targets")
    except ValueError as exc:
        raise UnknownTargetError(str(exc)) from exc
    for entry in unmatched(names, patterns):
        bare = entry.removeprefix(REGEX_PREFIX)
        candidates = difflib.get_close_matches(bare, suffixes, n=5, cutoff=0.5) or \
            difflib.get_close_matches(bare, names, n=5, cutoff=0.5)
        close = f"close names: {candidates}" if candidates else "no close name"
        hint = f"; as a regular expression write 're:{entry}'" if looks_like_regex(entry) else ""
        raise UnknownTargetError(
            f"target {entry!r} matches no module of {type(model).__name__} ({close}); "
            f"linear layers here are named {suffixes}{hint}"
        )


def check_label_range(labels: Sequence[int], num_outputs: int, head: str) -> None:
    """Class ids must index the head's logits: 0 ≤ label < num_outputs."""
    labels = list(labels)
    low, high = min(labels), max(labels)
    if low < 0 or high >= num_outputs:
        fix = ("use head='fresh' to train a head with the task's number of labels"
               if head == "frozen" else "check the label column")
        raise LabelRangeError(f"labels span {low}..{high} but the model's head has {num_outputs} outputs "
                              f"(valid ids 0..{num_outputs - 1}); {fix}")
