"""``tlora-analysis params``: trainable-parameter table for TLoRA, LoRA and full fine-tuning.

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

from .adapters import FullConfig, LoRAConfig, TLoRAConfig, apply_adapters, count_parameters

__all__ = ["ParamRow", "parameter_table", "load_config_model"]


@dataclass(frozen=True)
class ParamRow:
    method: str
    rank: int | None
    trainable: int
    total: int
    lora_over_tlora: float | None
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


def parameter_table(
    model_factory,
    ranks: Sequence[int],
    targets: Sequence[str],
    head: str = "frozen",
) -> list[ParamRow]:
    """One row for full fine-tuning and one per (method, rank) for LoRA and TLoRA.

    ``model_factory()`` returns a fresh model. head="frozen" counts adapter parameters only
    (the paper's TLoRA setup); head="trained" adds the classifier's parameters.
    """
    if head not in ("frozen", "trained"):
        raise ValueError(f"head must be 'frozen' or 'trained', got {head!r}")
    save = ("classifier",) if head == "trained" else ()
    full = count_parameters(apply_adapters(model_factory(), FullConfig())).trainable
    rows = [ParamRow("full", None, full, full, None, 1.0)]
    for rank in ranks:
        counts = {}
        for cls in (LoRAConfig, TLoRAConfig):
            m = apply_adapters(model_factory(), cls(rank=rank, target_modules=tuple(targets), modules_to_save=save))
            counts[cls] = count_parameters(m)
        lora, tlora = counts[LoRAConfig].trainable, counts[TLoRAConfig].trainable
        rows.append(ParamRow("lora", rank, lora, counts[LoRAConfig].total, None, full / lora))
        rows.append(ParamRow("tlora", rank, tlora, counts[TLoRAConfig].total, lora / tlora, full / tlora))
    return rows


def format_table(rows: Sequence[ParamRow]) -> str:
    lines = [f"{'method':<7} {'rank':>5} {'trainable':>14} {'LoRA/TLoRA':>11} {'full/method':>13}"]
    for r in rows:
        ratio = f"{r.lora_over_tlora:.1f}x" if r.lora_over_tlora else ""
        lines.append(f"{r.method:<7} {r.rank if r.rank else '':>5} {r.trainable:>14,} {ratio:>11} {r.full_over_method:>12,.1f}x")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    from .experiments.bundled import bundled_model_dir

    source = args.model or bundled_model_dir()
    rows = parameter_table(lambda: load_config_model(source, args.num_labels), args.ranks, args.targets, args.head)
    if args.json:
        print(json.dumps({"model": str(source), "targets": args.targets, "head": args.head,
                          "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"model: {source}\ntargets: {', '.join(args.targets)}; head {args.head}\n")
        print(format_table(rows))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("params", help="trainable-parameter table for tlora / lora / full",
                       description="Trainable parameters of TLoRA, LoRA and full fine-tuning for a model, "
                                   "counted on the real adapters (model built from its config on the meta device).")
    p.add_argument("model", nargs="?", help="Hugging Face model folder or config.json (default: the bundled MiniLM)")
    p.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--targets", nargs="+", default=["query", "value"])
    p.add_argument("--num-labels", type=int, default=None, help="classifier outputs (default: the config's)")
    p.add_argument("--head", choices=["frozen", "trained"], default="frozen",
                   help="count the classifier as trainable in LoRA/TLoRA (default: frozen, as the paper)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run)
