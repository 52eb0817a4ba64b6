"""``tlora-analysis study STUDY.toml``: run a comparison grid and write its tables, figures and claims."""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from ..cli_types import positive_float, positive_int
from .spec import StudyError


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train(args: argparse.Namespace, study, runs: list, deadline: float | None) -> list:
    """Train this shard's share of ``runs`` (or list it with --dry-run); the failed outcomes."""
    from .execute import execute
    from .plan import parse_shard, shard

    mine = shard(runs, *parse_shard(args.shard))
    if args.dry_run:
        print("\n".join(r.name for r in mine))
        return []
    return [o for o in execute(study, mine, jobs=args.jobs, report=_say, deadline=deadline) if o.status == "failed"]


def _tables(study, select: list, groups: set) -> int:
    """``--phase tables``: the tables and the metric figure again from results/results.csv (and
    contrasts_examples.csv where summarize wrote it), no run folder read."""
    from .outputs import write_tables
    from .plan import final_runs
    from .results import choose_learning_rates

    path = study.runs_dir.parent / "results" / "results.csv"
    if not path.is_file():
        raise StudyError(f"{path} does not exist; --phase tables redoes the tables of a summarised study "
                         "(run --phase summarize first)")
    results = pd.read_csv(path)
    results["rank"] = results["rank"].astype("Int64")
    chosen, selection = choose_learning_rates(results[results["phase"] == "select"], select)
    final = final_runs(study, chosen)
    complete = len(chosen) == len(groups) and {r.name for r in final} <= set(results["run"])
    examples = path.parent / "contrasts_examples.csv"  # made from the runs' outputs by summarize; kept
    write_tables(study, results, selection, complete, pd.read_csv(examples) if examples.is_file() else None)
    _say(f"wrote the tables under {path.parent}" + ("" if complete else " (incomplete: some runs have not finished)"))
    return 0


def _run(args: argparse.Namespace) -> int:
    from .outputs import write_outputs
    from .plan import final_runs, parse_shard, selection_runs
    from .results import check_recorded_lrs, choose_learning_rates, results_table
    from .spec import load_study

    study = load_study(args.study)
    parse_shard(args.shard)  # a bad --shard is reported before anything runs
    deadline = None if args.stop_after is None else time.time() + 60 * args.stop_after
    select = selection_runs(study)
    groups = {(t, a.name, r) for t in study.tasks for a in study.arms for r in a.ranks
              if len(a.lrs) > 1 and a.runs_on(t)}
    if args.phase == "tables":
        return _tables(study, select, groups)
    _say(f"study {study.name}: {len(study.tasks)} task(s), {len(study.arms)} arm(s), {len(select)} selection runs, "
         f"seeds {list(study.seeds)}; runs in {study.runs_dir}")
    failed = _train(args, study, select, deadline) if args.phase in ("all", "select") else []
    chosen, selection = choose_learning_rates(results_table(study.runs_dir, select), select)
    if len(chosen) < len(groups):
        _say(f"learning rates chosen for {len(chosen)} of {len(groups)} (task, arm, rank): the selection runs of the "
             "others are not all finished (other shards, or failed runs to run again); their replicate runs wait")
    final = final_runs(study, chosen)
    check_recorded_lrs(study.runs_dir, final)
    if args.phase in ("all", "final"):
        failed += _train(args, study, final, deadline)
    if args.phase in ("all", "summarize") and not args.dry_run:
        results = pd.concat([selection.drop(columns="chosen"), results_table(study.runs_dir, final)],
                            ignore_index=True)
        done = results[results["phase"] == "final"]
        complete = len(chosen) == len(groups) and len(done) == len(final)
        command = ["tlora-analysis", "study", args.study, "--phase", "summarize"]
        index_md = write_outputs(study, results, selection, complete, command,
                                 n_null=args.n_null, note=_say, jobs=args.jobs)
        _say(f"wrote {index_md}" + ("" if complete else " (incomplete: some runs have not finished)"))
    for outcome in failed:
        _say(f"FAILED {outcome.run.name}: {outcome.message}")
    return 1 if failed else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study", help="run a grid of tasks × methods × ranks × learning rates × seeds and summarise it",
        description="Choose each (task, method, rank)'s learning rate on a part of train held out, train the "
                    "chosen settings once per seed, then write results.csv, summary.md (mean and 95% interval over "
                    "seeds), figures and the claims reports under results/. Finished runs are skipped and "
                    "interrupted ones resumed, so the same command continues a study (docs/study.md).")
    p.add_argument("study", metavar="STUDY.toml", help="the study file (see studies/ for examples)")
    p.add_argument("--phase", choices=("all", "select", "final", "summarize", "tables"), default="all",
                   help="run only the learning-rate selection, the replicates, or the summary (default: all); "
                        "'tables' redoes the tables and the metric figure from results/results.csv alone")
    p.add_argument("--shard", metavar="i/n", help="run every n-th planned run starting at the i-th (1-based)")
    p.add_argument("--jobs", type=positive_int, default=1, help="runs trained (and claims reports written) at once, each in its own process (default 1)")
    p.add_argument("--n-null", type=positive_int, default=2000, help="null draws per layer in the claims reports")
    p.add_argument("--stop-after", type=positive_float, metavar="MINUTES",
                   help="start no run after this many minutes (running ones finish); run again to continue")
    p.add_argument("--dry-run", action="store_true", help="list the runs this call would train, train nothing")
    p.set_defaults(func=_run)
