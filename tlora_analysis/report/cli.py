"""``tlora-analysis report [RUN_OR_FOLDER ...] [--tlora RUN ...] [--lora RUN ...]``: the claims report."""

from __future__ import annotations

import argparse
import sys

from ..cli_types import add_base_model_flag, positive_int, unit_interval
from ..store import Run
from .render import write_report
from .replicates import find_runs


def _runs(args: argparse.Namespace) -> tuple[list[Run], list[Run]]:
    tlora = [Run(p, base_model=args.base_model) for p in find_runs(args.tlora)]
    lora = [Run(p, base_model=args.base_model) for p in find_runs(args.lora)]
    for run in (Run(p, base_model=args.base_model) for p in find_runs(args.runs)):
        if run.method == "tlora":
            tlora.append(run)
        elif run.method == "lora":
            lora.append(run)
        else:
            print(f"report: leaving out {run.name} ({run.method}: the claims compare TLoRA with LoRA)", file=sys.stderr)
    return tlora, lora


def _run(args: argparse.Namespace) -> int:
    tlora, lora = _runs(args)
    progress = None if args.quiet else (lambda what: print(f"report: {what} …", file=sys.stderr, flush=True))
    path = write_report(tlora, lora, args.output, alpha=args.alpha, n_null=args.n_null, seed=args.seed,
                        progress=progress)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}, {path.with_name('report.html')}, {path.with_name('claims.csv')} and "
          f"{path.with_name('claims_layers.csv')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="the paper's claims, each a stated test at one level α, with a decision",
        description="Test the TLoRA paper's claims (Gaussian B, stable norms, α varying across layers, resembling "
                    "spectra, similar updates, overlapping subspaces, and TLoRA's reachable set) on TLoRA and LoRA "
                    "runs: one run each, or replicates with independent seeds (which the run-to-run claims need). "
                    "Writes report.md, report.html, claims.csv and claims_layers.csv.")
    p.add_argument("runs", nargs="*", metavar="RUN_OR_FOLDER",
                   help="run directories, or folders holding runs (e.g. a study); sorted by their recorded method")
    p.add_argument("--tlora", nargs="+", default=[], metavar="RUN", help="TLoRA runs (replicates with different seeds)")
    p.add_argument("--lora", nargs="+", default=[], metavar="RUN", help="LoRA runs (replicates with different seeds)")
    p.add_argument("--alpha", type=unit_interval, default=0.05, help="the one level every decision is made at (default 0.05)")
    p.add_argument("-o", "--output", default="report", metavar="DIR", help="output folder (default: ./report)")
    p.add_argument("--n-null", type=positive_int, default=2000, help="exact null draws per layer and permutations (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the null draws and permutations")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_base_model_flag(p)
    p.set_defaults(func=_run)
