"""``tlora-analysis params``: trainable-parameter table for every registered method (TLoRA, LoRA, full
fine-tuning, VeRA, LoRA-XS).

Models are built on PyTorch's meta device from their config, so a RoBERTa-large count needs
no weights and no memory. Counts come from applying the real adapters and counting
``requires_grad`` parameters, not from a formula.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from .adapters import METHODS, ParameterCount, apply_adapters, count_parameters, get_spec
from .adapters.spec import RunnerOptions
from .cli_types import positive_int

__all__ = ["ParamRow", "parameter_table", "load_config_model", "REFERENCE"]

REFERENCE = "lora"  # the method the other adapters' counts are compared with at the same rank (the paper's ratio)


@dataclass(frozen=True)
class ParamRow:
    """One method at one rank: trainable and total parameters, and how many times fewer than LoRA (at that
    rank) and full fine-tuning train."""

    method: str
    rank: int | None
    trainable: int
    total: int
    lora_over_method: float | None
    full_over_method: float


def load_config_model(path: str | Path, num_labels: int | None = None) -> torch.nn.Module:
    """A sequence-classification model with random weights on the meta device.

    ``path`` is a model folder or a ``config.json``. ``num_labels`` overrides the config's.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; give a Hugging Face model folder or a config.json")
    cfg = AutoConfig.from_pretrained(str(path.parent if path.is_file() else path))
    if num_labels is not None:
        cfg.num_labels = num_labels
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(cfg)


def rank_methods() -> list[str]:
    """The registered methods that have a rank (all but full fine-tuning), in registration order."""
    return [name for name, spec in METHODS.items() if spec.has_rank]


def _count(model_factory, method: str, rank: int, targets: Sequence[str], save: tuple[str, ...]) -> ParameterCount:
    options = RunnerOptions(rank=rank, targets=tuple(targets), seed=0, dropout=None, modules_to_save=save)
    return count_parameters(apply_adapters(model_factory(), get_spec(method).runner_config(options)))


def parameter_table(
    model_factory,
    ranks: Sequence[int],
    targets: Sequence[str],
    head: str = "frozen",
    methods: Sequence[str] | None = None,
) -> list[ParamRow]:
    """One row for full fine-tuning (every parameter) and one per (method, rank) for the adapters.

    ``model_factory()`` returns a fresh model. head="frozen" counts adapter parameters only
    (the paper's TLoRA setup); head="trained" adds the classifier's parameters. ``methods``: the
    methods with a rank to count (default :func:`rank_methods`: all of them).
    """
    if head not in ("frozen", "trained"):
        raise ValueError(f"head must be 'frozen' or 'trained', got {head!r}")
    chosen = rank_methods() if methods is None else list(methods)
    without = [m for m in chosen if not get_spec(m).has_rank]
    if without:
        raise ValueError(f"{without} have no rank; methods must be among {rank_methods()} (full fine-tuning is "
                         "always the first row)")
    save = ("classifier",) if head == "trained" else ()
    full = sum(p.numel() for p in model_factory().parameters())  # full fine-tuning trains every parameter
    rows = [ParamRow("full", None, full, full, None, 1.0)]
    for rank in ranks:
        counts = {m: _count(model_factory, m, rank, targets, save) for m in chosen}
        reference = (counts[REFERENCE] if REFERENCE in counts else _count(model_factory, REFERENCE, rank, targets,
                                                                           save)).trainable
        rows += [ParamRow(m, rank, c.trainable, c.total, None if m == REFERENCE else reference / c.trainable,
                          full / c.trainable) for m, c in counts.items()]
    return rows


def format_table(rows: Sequence[ParamRow]) -> str:
    lines = [f"{'method':<8} {'rank':>5} {'trainable':>14} {'LoRA/method':>12} {'full/method':>13}"]
    for r in rows:
        ratio = f"{r.lora_over_method:,.1f}x" if r.lora_over_method else ""
        lines.append(f"{r.method:<8} {r.rank if r.rank else '':>5} {r.trainable:>14,} {ratio:>12} "
                     f"{r.full_over_method:>12,.1f}x")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .experiments.bundled import bundled_model_dir

    source = args.model or bundled_model_dir()
    rows = parameter_table(lambda: load_config_model(source, args.num_labels), args.ranks, args.targets, args.head,
                           args.methods)
    if args.json:
        print(json.dumps({"model": str(source), "targets": args.targets, "head": args.head,
                          "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"model: {source}\ntargets: {', '.join(args.targets)}; head {args.head}\n")
        print(format_table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="trainable-parameter table for every method (tlora, lora, full, vera, lora-xs)",
                       description="Trainable parameters of full fine-tuning and of each adapter method at each rank "
                                   "for a model, counted on the real adapters (model built from its config on the "
                                   "meta device).")
    p.add_argument("model", nargs="?", help="Hugging Face model folder or config.json (default: the bundled MiniLM)")
    p.add_argument("--ranks", type=positive_int, nargs="+", default=[8, 16, 32])
    p.add_argument("--targets", nargs="+", default=["query", "value"],
                   help="module names, dotted suffixes or re:REGEX (default query value)")
    p.add_argument("--methods", nargs="+", choices=rank_methods(), default=None,
                   help="the adapter methods to count (default: all)")
    p.add_argument("--num-labels", type=positive_int, default=None, help="classifier outputs (default: the config's)")
    p.add_argument("--head", choices=["frozen", "trained"], default="frozen",
                   help="count the classifier as trainable with the adapters (default: frozen, as the paper)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)
