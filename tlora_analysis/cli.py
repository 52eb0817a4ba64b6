"""The ``tlora-analysis`` command line: one subcommand per job.

Each subcommand lives in the module that does the work; that module exposes
``register(subparsers)``, which adds its parser and sets ``func`` (args → exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from . import __version__

SUBCOMMAND_MODULES = (
    "tlora_analysis.params",
    "tlora_analysis.experiments.cli",
    "tlora_analysis.demo",
    "tlora_analysis.figures.cli",
    "tlora_analysis.report.cli",
    "tlora_analysis.store.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlora-analysis",
        description="Train, record and dissect tri-matrix low-rank adapters (TLoRA) next to LoRA and full fine-tuning.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, KeyError, OSError) as exc:  # bad input, missing or full disk: say so, no traceback
        print(f"tlora-analysis {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
