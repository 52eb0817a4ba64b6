"""``tlora-analysis train``: the runner on the command line (``train()`` is the same in Python).

Flags left out fall back to the preset (``--preset paper``), then to TrainConfig's defaults;
a flag given always wins.
"""

from __future__ import annotations

import argparse

from ..cli_types import base_weights_mode, positive_float, positive_int
from .config import METHODS, PRECISIONS
from .presets import PRESETS, apply_preset

__all__ = ["register", "config_from_args"]

_SUPPRESS = argparse.SUPPRESS


def config_from_args(args: argparse.Namespace):
    """The TrainConfig for parsed arguments: defaults, then the preset, then given flags."""
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "preset")}
    for key in ("targets", "text_columns"):
        if key in given:
            given[key] = tuple(given[key])
    return apply_preset(getattr(args, "preset", None), given)


def _run(args: argparse.Namespace) -> int:
    from .train import train

    train(config_from_args(args))  # errors (an existing run, a full disk, …) are reported by cli.main
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune with any method (tlora, lora, full, vera, lora-xs, peft-lora) and record the run",
        description="Fine-tune a sequence classifier with TLoRA, LoRA, full fine-tuning, VeRA, LoRA-XS or PEFT's LoRA, "
                    "recording snapshots and metrics into a run directory. Every value is checked before anything "
                    "loads. Several processes: torchrun --nproc_per_node N -m tlora_analysis train ...",
        argument_default=_SUPPRESS,
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="a bundle of hyperparameters ('paper': docs/paper.md); flags given override it")
    for add in (_what_to_train, _data, _optimisation, _recording):
        add(p)
    p.set_defaults(func=_run)


def _what_to_train(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("what to train")
    g.add_argument("--method", choices=METHODS, help="default tlora")
    g.add_argument("--model", help="model folder or hub id (default: the bundled all-MiniLM-L6-v2)")
    g.add_argument("--head", choices=("fresh", "frozen"),
                   help="train a fresh classification head, or keep the checkpoint's frozen as the paper did (default fresh)")
    g.add_argument("--rank", type=positive_int, help="adapter rank (default 8; paper 32)")
    g.add_argument("--targets", nargs="+",
                   help="module names, dotted suffixes or re:REGEX to adapt (default query value)")
    g.add_argument("--lora-alpha", type=positive_float, help="LoRA's alpha; scaling = alpha / rank (default 16)")
    g.add_argument("--dropout", type=float, help="adapter dropout in [0, 1) (default: TLoRA 0.5 on the output, others 0)")
    g.add_argument("--tlora-init", choices=("paper", "gaussian", "orthogonal"), help="init of TLoRA's frozen A, C")


def _data(p: argparse.ArgumentParser) -> None:
    d = p.add_argument_group("data")
    d.add_argument("--task", help="rotten_tomatoes (bundled default), sst2, mrpc, rte, qnli, cola, stsb, mnli, or local")
    d.add_argument("--data-dir", help="a GLUE task folder in the original TSV layout (train.tsv, dev.tsv)")
    d.add_argument("--train-file", help="with --task local: CSV / TSV / JSONL / parquet")
    d.add_argument("--validation-file", help="with --task local")
    d.add_argument("--test-file", help="with --task local (optional)")
    d.add_argument("--text-columns", nargs="+", help="one or two text columns of the local files (default text)")
    d.add_argument("--label-column", help="label column of the local files (default label)")
    d.add_argument("--regression", action="store_true", help="local files hold float scores")
    d.add_argument("--split-seed", type=int, help="seed of the bundled data's train/validation/test split (default 0)")
    d.add_argument("--max-length", type=positive_int, help="token limit (default 128; capped by the model)")
    d.add_argument("--max-train-examples", type=positive_int, help="a seeded subset of the training set")
    d.add_argument("--max-eval-examples", type=positive_int,
                   help="a subset of the validation (and test) set, seeded by --split-seed: the same for every --seed")
    d.add_argument("--holdout", type=float,
                   help="evaluate on this fraction of train (whole movies for Rotten Tomatoes, else per class; seeded "
                        "by --split-seed) and train on the rest, to choose settings without the validation split")


def _optimisation(p: argparse.ArgumentParser) -> None:
    o = p.add_argument_group("optimisation")
    o.add_argument("--seed", type=int, help="seeds data order, dropout, adapter and head init (default 0)")
    o.add_argument("--epochs", type=positive_float, help="default 3 (paper 30)")
    o.add_argument("--max-steps", type=positive_int, help="stop after this many optimizer steps (overrides --epochs)")
    o.add_argument("--batch-size", type=positive_int, help="per process (default 32)")
    o.add_argument("--eval-batch-size", type=positive_int)
    o.add_argument("--lr", type=positive_float, help="AdamW learning rate (default: the method's, tlora and "
                   "lora-xs 2e-2, vera 1e-2, lora and peft-lora 1e-3, full 1e-4; paper preset 1e-3)")
    o.add_argument("--weight-decay", type=float, help="default 0.01, applied to every trainable tensor as the paper")
    o.add_argument("--warmup-ratio", type=float, help="linear warmup fraction, then linear decay (default 0.06)")
    o.add_argument("--precision", choices=PRECISIONS, help="default fp32")
    o.add_argument("--device", help="auto (CUDA if present), cpu, cuda, cuda:1")


def _recording(p: argparse.ArgumentParser) -> None:
    r = p.add_argument_group("recording")
    r.add_argument("--run-dir", help="where the run goes (default runs/<task>-<method>-r<rank>-s<seed>)")
    r.add_argument("--snapshots", help="every:N, log:K or a comma list of steps (default log:20)")
    r.add_argument("--eval-every", type=positive_int, help="also evaluate every N steps (always at each epoch end)")
    r.add_argument("--eval-test", action="store_true", help="evaluate the test split at the end (bundled data)")
    r.add_argument("--log-every", type=positive_int, help="training-loss event every N steps (default 10)")
    r.add_argument("--base-weights", dest="store_base_weights", type=base_weights_mode, metavar="{stored,reference}",
                   help="stored: W0 of the adapted layers in the run (default); reference: only its hash and the "
                        "model in run.json, W0 read back from the model when analysed (paper-faithful merged "
                        "figures need W0)")
    r.add_argument("--no-base-weights", dest="store_base_weights", action="store_false",
                   help="the same as --base-weights reference")
    r.add_argument("--no-save-weights", dest="save_weights", action="store_false",
                   help="write neither the resume point (trainer_state/) nor the final adapter/ (no --resume later); "
                        "for full fine-tuning those are about four copies of the model")
    r.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    r.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last evaluation")
    r.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bars (the data sizes, warnings and the summary are still printed)")
    r.add_argument("--quiet", dest="verbose", action="store_false", help="print nothing but errors")
