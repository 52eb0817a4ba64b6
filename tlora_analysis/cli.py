"""The ``tlora-analysis`` command line: one subcommand per job.

Each subcommand lives in the module that does the work; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` (args → exit code). Only the
module of the command being run is imported: the others are listed by :data:`COMMANDS`' one-line
help, so ``tlora-analysis --help`` imports neither torch nor any other heavy library. A command
whose optional dependencies are not installed (the ``[train]`` or ``[figures]`` extra) says which
extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Iterable, Sequence

from . import __version__

COMMANDS = {  # command → (the module that registers it, its one-line help, as that module registers it)
    "params": ("tlora_analysis.params", "trainable-parameter table for every method (tlora, lora, full, vera, lora-xs)"),
    "train": ("tlora_analysis.experiments.cli",
              "fine-tune with any method (tlora, lora, full, vera, lora-xs, peft-lora) and record the run"),
    "demo": ("tlora_analysis.demo", "the main job: train TLoRA and LoRA on the bundled default, write every figure"),
    "figures": ("tlora_analysis.figures.cli",
                "regenerate every paper figure and its corrected companion from recorded runs"),
    "report": ("tlora_analysis.report.cli", "the paper's claims, each a stated test at one level α, with a decision"),
    "inspect": ("tlora_analysis.store.cli", "summarise a recorded run (no tensor is read)"),
    "verify": ("tlora_analysis.store.cli", "check every file of a run; exit 1 on a problem"),
    "study": ("tlora_analysis.study.cli",
              "run a grid of tasks × methods × ranks × learning rates × seeds and summarise it"),
}
# which extra installs a missing module (pyproject.toml's optional-dependencies)
EXTRA_OF = {"matplotlib": "figures", "seaborn": "figures", "tqdm": "train", "transformers": "train",
            "datasets": "train", "peft": "train", "tokenizers": "train"}


def missing_extra(exc: ImportError) -> str | None:
    """The extra that provides the module an ImportError is about, or None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return EXTRA_OF.get(name)


def _unavailable(command: str, extra: str, module: str | None) -> int:
    print(f"tlora-analysis {command}: needs {module}, part of the [{extra}] extra: "
          f"pip install 'tlora-analysis[{extra}]' (or [all])", file=sys.stderr)
    return 1


def build_parser(load: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The parser, with the full parsers of the commands in ``load`` (None: every command) and the
    others listed by name and help only."""
    parser = argparse.ArgumentParser(
        prog="tlora-analysis",
        description="Train, record and dissect tri-matrix low-rank adapters (TLoRA) next to LoRA and full fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {COMMANDS[name][0] for name in (COMMANDS if load is None else load)}
    registered: set[str] = set()
    for name, (module, help_text) in COMMANDS.items():
        if module in modules:
            if module not in registered:
                importlib.import_module(module).register(sub)
                registered.add(module)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` asks for: its first argument that is not an option, if a command."""
    first = next((arg for arg in argv if not arg.startswith("-")), None)
    return first if first in COMMANDS else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    try:
        parser = build_parser([] if command is None else [command])
    except ImportError as exc:  # the command's module needs an extra that is not installed
        extra = missing_extra(exc)
        if extra is None or command is None:
            raise
        return _unavailable(command, extra, exc.name)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ImportError as exc:
        extra = missing_extra(exc)
        if extra is None:
            raise
        return _unavailable(args.command, extra, exc.name)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # bad input, missing or full disk: say so, no traceback
        print(f"tlora-analysis {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
