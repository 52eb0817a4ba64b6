"""``tlora-analysis figures RUN [RUN ...] [-o DIR]``: regenerate every figure the runs support.

Registering the command imports nothing heavy: matplotlib (the ``[figures]`` extra) is imported
when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from ..cli_types import add_base_model_flag

DEFAULT_OUTPUT = "figures"


def _run(args: argparse.Namespace) -> int:
    print("figures: opening the runs …", file=sys.stderr, flush=True)
    from .render import render
    from .runs import RunRoles

    roles = RunRoles.from_paths(args.runs, base_model=args.base_model)
    print(f"runs:\n{roles.describe()}", file=sys.stderr)
    result = render(roles.runs, args.output, only=args.only, progress=not args.quiet)
    print(f"wrote {len(result.written)} figures (PDF + PNG) to {result.out_dir}; "
          f"skipped {len(result.skipped)}; index: {result.index[-1]}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "figures", help="regenerate every paper figure and its corrected companion from recorded runs",
        description="Draw every figure the runs support (each run's method is read from its run.json) "
                    "as PDF + PNG, with index.md / index.html. Figures the runs cannot support are skipped "
                    "with the reason.")
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories of any method (TLoRA, LoRA, full, VeRA, LoRA-XS; more seeds allowed)")
    p.add_argument("-o", "--output", default=DEFAULT_OUTPUT, metavar="DIR",
                   help=f"folder for the figures and the index (default: ./{DEFAULT_OUTPUT})")
    p.add_argument("--only", nargs="+", metavar="NAME", help="draw only these figures (file stems, e.g. fig03_loss)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_base_model_flag(p)
    p.set_defaults(func=_run)
