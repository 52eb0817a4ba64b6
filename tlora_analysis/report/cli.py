"""``tlora-analysis report RUN_TLORA RUN_LORA [--null RUN ...] -o DIR``: the claims table."""

from __future__ import annotations

import argparse

from .render import write_report


def _run(args: argparse.Namespace) -> int:
    path = write_report(args.tlora, args.lora, args.output, null_runs=args.null, n_null=args.n_null, seed=args.seed)
    print(path.read_text(encoding="utf-8"))
    print(f"wrote {path}, {path.with_name('report.html')} and {path.with_name('claims.csv')}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="the paper's claims as a table: statistic, our value, null baseline, verdict",
        description="Check the TLoRA paper's claims (Gaussian-like B, stable norms, α varying across layers, "
                    "eigenvalue resemblance, cosine of updates, subspace overlap) on a TLoRA run and a LoRA run, "
                    "each against a null baseline; writes report.md, report.html and claims.csv.")
    p.add_argument("tlora", metavar="RUN_TLORA", help="the TLoRA run directory")
    p.add_argument("lora", metavar="RUN_LORA", help="the LoRA run directory")
    p.add_argument("--null", nargs="+", default=[], metavar="RUN",
                   help="two or more independent-seed runs for the null baseline (default: random norm-matched updates)")
    p.add_argument("-o", "--output", default="report", metavar="DIR", help="output folder (default: ./report)")
    p.add_argument("--n-null", type=int, default=100, help="random null draws when no null runs are given")
    p.add_argument("--seed", type=int, default=0, help="seed of the random null")
    p.set_defaults(func=_run)
