"""``tlora-analysis demo`` (``make demo``): the README's main job, offline, in minutes on 2 CPU cores.

Trains TLoRA and LoRA on the bundled default (all-MiniLM-L6-v2 on Rotten Tomatoes) with the
same seed, rank, targets, step budget and learning-rate schedule, then writes every figure the
two runs support into ``figures/``, the claims report, and a results table
(``figures/results.md`` and ``data/results.csv``). Every rerun trains from scratch
(``overwrite``) and first deletes what the previous demo wrote, so nothing stale survives.

Budget choices (docs/training.md gives the measurements behind them): both methods train a
fresh head, rank 8 on query and value, max length 64, 150 steps of batch 32 (about 0.47 epoch)
with the same warmup/decay schedule and seed. TLoRA trains r² + 1 = 65 numbers per matrix through
fixed random projections, so on this short budget it gets a higher learning rate (2e-2, LoRA
1e-3) and no adapter dropout (the paper's 0.5 output dropout slows learning on this budget).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .experiments.config import TrainConfig
from .experiments.train import TrainResult, train
from .fileio import read_json, write_json

__all__ = ["DEMO_CONFIG", "DEMO_METHOD_SETTINGS", "DemoOutputs", "run_demo", "results_table"]

DEMO_CONFIG = TrainConfig(
    task="rotten_tomatoes", rank=8, targets=("query", "value"), seed=0, head="fresh", max_length=64,
    batch_size=32, max_steps=150, warmup_ratio=0.06, weight_decay=0.01, eval_every=75, eval_test=True,
    snapshots="log:16", log_every=10,
)
DEMO_METHOD_SETTINGS = {"tlora": {"lr": 2e-2, "dropout": 0.0}, "lora": {"lr": 1e-3}}
_MANIFEST = ".demo-outputs.json"
_STUDY = Path("studies") / "minilm-glue"  # the committed 3-seed study, in a checkout of the repository
_SEEDS = Path("studies") / "minilm-rt-seeds"  # this job's pair over 3 seeds


@dataclass
class DemoOutputs:
    """What the main job made, and the results table."""

    runs: list[Path]
    figures: list[Path]
    report: list[Path]
    tables: list[Path]
    results: pd.DataFrame
    elapsed_s: float


def results_table(results: dict[str, TrainResult], majority: float) -> pd.DataFrame:
    """One row per method: budget, trainable parameters, best/last validation and test metrics."""
    rows = []
    for method, r in results.items():
        rows.append({
            "method": method, "rank": r.config.rank, "lr": r.config.lr, "steps": r.steps,
            "trainable_params": r.parameters["trainable"], "train_seconds": round(r.wall_time, 1),
            "best_val_accuracy": r.best.get("accuracy"), "best_val_step": r.best.get("step"),
            "last_val_accuracy": r.last.get("accuracy"), "last_val_f1": r.last.get("f1"),
            "last_val_mcc": r.last.get("mcc"), "test_accuracy": r.last.get("test_accuracy"),
            "val_majority_baseline": majority, "run_dir": str(r.run_dir),
        })
    return pd.DataFrame(rows)


def _study_links(root: Path, figures_dir: Path) -> list[tuple[str, str]]:
    """(link from figures_dir, text) to the committed studies' READMEs and summary, where the checkout has them."""
    study = root / _STUDY
    files = [(study / "README.md", "the study's findings"), (study / "results" / "summary.md", "its summary over seeds"),
             (root / _SEEDS / "README.md", "this pair over 3 seeds")]
    return [(Path(os.path.relpath(p, figures_dir)).as_posix(), text) for p, text in files if p.is_file()]


def _markdown(table: pd.DataFrame, study: list[tuple[str, str]]) -> str:
    cols = ["method", "rank", "lr", "steps", "trainable_params", "best_val_accuracy", "last_val_accuracy",
            "last_val_f1", "last_val_mcc", "test_accuracy", "train_seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = [f"{row[c]:.4f}" if isinstance(row[c], float) and c not in ("lr", "train_seconds") else str(row[c])
                 for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    majority = table["val_majority_baseline"].iloc[0]
    return "\n".join([
        "# Main job results: TLoRA vs LoRA on the bundled default", "",
        "all-MiniLM-L6-v2 on Rotten Tomatoes snippets (Pang & Lee 2005), fresh head, same seed, rank, targets "
        "(query, value), step budget and warmup/decay schedule; TLoRA at a higher learning rate (2e-2 vs 1e-3) "
        "and without adapter dropout (docs/training.md says why).", "",
        *lines, "", f"Validation majority-class baseline: {majority:.4f}.", "",
        "One seed and half an epoch per method: a first look, not a comparison. The repository's study in "
        f"{_STUDY.as_posix()}/ compares TLoRA, LoRA, LoRA-XS, VeRA and full fine-tuning over 3 seeds with learning "
        f"rates chosen on held-out data, and {_SEEDS.as_posix()}/ repeats this pair over 3 seeds, testing the "
        "difference over the seeds and the validation examples (`tlora-analysis study`, docs/study.md)"
        + (": " + ", ".join(f"[{text}]({link})" for link, text in study) if study else "") + ".", "",
    ])


def _clear_previous(out_dirs: list[Path]) -> None:
    """Delete the files the previous demo listed in its manifest (nothing else)."""
    for folder in out_dirs:
        manifest = folder / _MANIFEST
        if manifest.is_file():
            for name in read_json(manifest):
                target = folder / name
                if target.is_file():
                    target.unlink()
            manifest.unlink()


def run_demo(root: str | Path = ".", quiet: bool = False, config: TrainConfig = DEMO_CONFIG,
             method_settings: dict[str, dict] | None = None) -> DemoOutputs:
    """Train both runs, render figures and the report, write the results table; return what was made.

    ``config`` and ``method_settings`` (per-method overrides, default DEMO_METHOD_SETTINGS) exist so
    a test can run the same job on a smaller budget.
    """
    from .figures import render_all
    from .report import write_report

    root = Path(root)
    runs_dir, figures_dir, data_dir = root / "runs" / "demo", root / "figures", root / "data"
    _clear_previous([figures_dir, data_dir])
    start = time.time()
    results = {}
    for method, settings in (method_settings or DEMO_METHOD_SETTINGS).items():
        results[method] = train(config.replace(method=method, run_dir=str(runs_dir / method), overwrite=True,
                                                progress=not quiet, **settings))
    majority = results["tlora"].baseline["accuracy"]  # the validation split's majority class, from run.json
    table = results_table(results, majority)
    figures_dir.mkdir(parents=True, exist_ok=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(data_dir / "results.csv", index=False)
    study = _study_links(root, figures_dir)
    (figures_dir / "results.md").write_text(_markdown(table, study))
    runs = [results["tlora"].run_dir, results["lora"].run_dir]
    print("report: checking the paper's claims …", flush=True)
    report = write_report(runs[0], runs[1], figures_dir)
    figures = render_all(runs, figures_dir, see_also=study)  # last: its index links the report, table and study
    report_files = [*figures_dir.glob("report.*"), figures_dir / "claims.csv"]
    made = DemoOutputs(
        runs=runs, figures=[Path(p) for p in figures],
        report=[Path(report), *[p for p in report_files if p.is_file() and p != Path(report)]],
        tables=[figures_dir / "results.md", data_dir / "results.csv"], results=table, elapsed_s=time.time() - start,
    )
    in_figures = {p.relative_to(figures_dir).as_posix() for p in [*made.figures, *made.report, *made.tables]
                  if p.is_relative_to(figures_dir)}
    write_json(figures_dir / _MANIFEST, sorted(in_figures))
    write_json(data_dir / _MANIFEST, ["results.csv"])
    return made


def _print_made(made: DemoOutputs) -> None:
    print(f"\nMain job finished in {made.elapsed_s:.0f} s. It made:")
    print(f"  runs     {', '.join(str(p) for p in made.runs)}")
    print(f"  figures  {len(made.figures)} files in {made.figures[0].parent if made.figures else 'figures/'}"
          " (start with index.html there)")
    print(f"  report   {', '.join(str(p) for p in made.report)}")
    print(f"  tables   {', '.join(str(p) for p in made.tables)}\n")
    print(made.tables[0].read_text())


def _run(args: argparse.Namespace) -> int:
    _print_made(run_demo(args.root, quiet=args.quiet))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the main job: train TLoRA and LoRA on the bundled default, write every figure",
                       description="Train TLoRA and LoRA on the bundled default (MiniLM on Rotten Tomatoes), then write "
                                   "every figure, the claims report and a results table. Minutes on 2 CPU cores, offline.")
    p.add_argument("--root", default=".", help="folder that receives runs/demo, figures/ and data/ (default: here)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)
