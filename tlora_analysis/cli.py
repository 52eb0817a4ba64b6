"""The ``tlora-analysis`` command line: one subcommand per job.

Each subcommand lives in the module that does the work; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` (args → exit code). A command
whose optional dependencies are not installed (the ``[train]`` or ``[figures]`` extra) still
appears, and says which extra to install.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__

SUBCOMMAND_MODULES = {  # module → the commands it registers
    "tlora_analysis.params": ("params",),
    "tlora_analysis.experiments.cli": ("train",),
    "tlora_analysis.demo": ("demo",),
    "tlora_analysis.figures.cli": ("figures",),
    "tlora_analysis.report.cli": ("report",),
    "tlora_analysis.store.cli": ("inspect", "verify"),
}
# which extra installs a missing module (pyproject.toml's optional-dependencies)
EXTRA_OF = {"matplotlib": "figures", "seaborn": "figures", "tqdm": "train", "transformers": "train",
            "datasets": "train", "peft": "train", "tokenizers": "train"}


def missing_extra(exc: ImportError) -> str | None:
    """The extra that provides the module an ImportError is about, or None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    return EXTRA_OF.get(name)


def _unavailable(extra: str, module: str):
    def run(args: argparse.Namespace) -> int:
        print(f"tlora-analysis {args.command}: needs {module}, part of the [{extra}] extra: "
              f"pip install 'tlora-analysis[{extra}]' (or [all])", file=sys.stderr)
        return 1
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlora-analysis",
        description="Train, record and dissect tri-matrix low-rank adapters (TLoRA) next to LoRA and full fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in SUBCOMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            extra = missing_extra(exc)
            if extra is None:
                raise
            for command in commands:
                p = sub.add_parser(command, help=f"(needs the [{extra}] extra)", add_help=False)
                p.add_argument("args", nargs=argparse.REMAINDER)
                p.set_defaults(func=_unavailable(extra, exc.name))
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        return _unavailable(extra, exc.name)(args)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # bad input, missing or full disk: say so, no traceback
        print(f"tlora-analysis {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
