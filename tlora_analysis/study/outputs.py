"""Everything a finished study writes under ``<study>/results/``: tables, figures, claims reports.

    results.csv      one row per run (selection and replicate runs)
    selection.csv    every learning-rate candidate with its held-out value and the choice
    summary.csv/.md  per (task, arm, rank): mean, sd and 95% interval over seeds of the final and the
                     best validation value; summary.md also holds the differences between arms
    contrasts.csv    arms of equal rank, and every arm against full fine-tuning: difference of means,
                     95% interval and p-value (paired t over shared seeds), Holm-adjusted within the task
    contrasts_examples.csv   the same pairs tested over the seeds and the task's examples together, where
                     the runs kept their validation outputs (summary.md shows both)
    figures/         final metric vs trainable parameters; validation curves, TLoRA's α and ‖B‖_F, and
                     the reachable-set alignment over steps, each banded over seeds, with the tidy
                     table each curve figure draws (<name>.csv; band_curves redraws it)
    claims/<task>/<tlora arm>-vs-<lora arm>-r<rank>/   the claims report with the seeds as replicates
    index.md         what is where, with the command that made it
"""

from __future__ import annotations

import multiprocessing
import os
import shlex
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import pandas as pd

from ..fileio import atomic_write_bytes
from ..store import Run
from .contrasts import contrast_table, example_contrast_table
from .dynamics import reachable_dynamics, tlora_dynamics, validation_curves
from .spec import Study

__all__ = ["write_outputs", "summary_markdown"]


def _fmt(x, spec: str = ".3f") -> str:
    return "n/a" if x is None or pd.isna(x) else format(float(x), spec)


def _contrast_lines(contrasts: pd.DataFrame) -> list[str]:
    lines = ["Differences of the final value between arms (first − second; 95% interval and two-sided p over "
             "seeds, by the paired t over the seeds both arms ran, else Welch's; Holm-adjusted over this task's "
             "rows):", "",
             "| first | second | test | difference [95% CI] | p | p (Holm) |", "|---|---|---|---|---|---|"]
    for _, r in contrasts[contrasts["value"] == "last"].iterrows():
        lines.append(f"| {r['first']} | {r['second']} | {r['test']} | {_fmt(r['difference'])} [{_fmt(r['ci_lo'])}, "
                     f"{_fmt(r['ci_hi'])}] | {_fmt(r['p_value'], '.2g')} | {_fmt(r['p_holm'], '.2g')} |")
    return lines + [""]


def _example_contrast_lines(examples: pd.DataFrame) -> list[str]:
    lines = ["The same differences over the seeds and the task's examples together, the validation split being "
             "one sample of them (95% interval and two-sided p of the test over seeds × examples, Holm-adjusted "
             "over this task's rows; share: the examples' part of the difference's variance):", "",
             "| first | second | seeds × examples | difference [95% CI] | p | p (Holm) | examples' share |",
             "|---|---|---|---|---|---|---|"]
    for _, r in examples.iterrows():
        lines.append(f"| {r['first']} | {r['second']} | {int(r['seeds'])} × {int(r['examples'])} | "
                     f"{_fmt(r['difference'])} [{_fmt(r['ci_lo'])}, {_fmt(r['ci_hi'])}] | "
                     f"{_fmt(r['p_value'], '.2g')} | {_fmt(r['p_holm'], '.2g')} | {_fmt(r['example_share'], '.2f')} |")
    return lines + [""]


def summary_markdown(summary: pd.DataFrame, study: Study, complete: bool, contrasts: pd.DataFrame | None = None,
                     examples: pd.DataFrame | None = None) -> str:
    """The summary table as markdown, one section per task, each followed by its contrasts (over seeds, and over
    seeds and examples) when given."""
    lines = [f"# {study.name}: summary over seeds", ""]
    if not complete:
        lines += ["**Incomplete**: some planned runs have not finished; the table covers the finished ones.", ""]
    chosen = sum(len(arm.lrs) > 1 for arm in study.arms)
    rates = ("learning rates chosen on a part of train held out (selection.csv)" if chosen == len(study.arms) else
             "learning rates as the study file sets them (one per arm)" if not chosen else
             "learning rates chosen on a part of train held out (selection.csv) where an arm lists several")
    lines += ["Mean over seeds of the task's metric on the validation split at the end of training, with a 95% "
              f"Student-t interval over seeds; {rates}. "
              "The best value over evaluations is beside it: its evaluation is picked on the same validation data, "
              "so it is optimistic. Intervals over seeds hold the validation examples fixed.", ""]
    for task, part in summary.groupby("task", sort=False):
        metric = part["metric"].iloc[0]
        lines += [f"## {task} ({metric}; majority class {_fmt(part['majority_baseline'].iloc[0])})", "",
                  "| arm | rank | lr | trainable | seeds | final, mean [95% CI] | best (optimistic) | s / step "
                  "| peak GiB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for _, r in part.iterrows():
            rank = "" if pd.isna(r["rank"]) else str(int(r["rank"]))
            lines.append(
                f"| {r['arm']} | {rank} | {r['lr']:g} | {int(r['trainable_params']):,} | {int(r['seeds'])} | "
                f"{_fmt(r['last_value_mean'])} [{_fmt(r['last_value_ci_lo'])}, {_fmt(r['last_value_ci_hi'])}] | "
                f"{_fmt(r['best_value_mean'])} [{_fmt(r['best_value_ci_lo'])}, {_fmt(r['best_value_ci_hi'])}] | "
                f"{_fmt(r['step_seconds_median'], '.4f')} | {_fmt(r['peak_memory_gib_max'], '.2f')} |")
        lines.append("")
        if contrasts is not None and (contrasts["task"] == task).any():
            lines += _contrast_lines(contrasts[contrasts["task"] == task])
        if examples is not None and (examples["task"] == task).any():
            lines += _example_contrast_lines(examples[examples["task"] == task])
    return "\n".join(lines)


def _one_report(tlora: list[Path], lora: list[Path], base_model: str | None, folder: Path, n_null: int,
                threads: int | None) -> Path:
    """One claims report from run folders (a process pool's task, so it takes paths, not Run objects)."""
    import torch

    from ..report import write_report

    if threads is not None:
        torch.set_num_threads(threads)
    return write_report([Run(p, base_model=base_model) for p in tlora], [Run(p, base_model=base_model) for p in lora],
                        folder, n_null=n_null)


def _claims(study: Study, final: pd.DataFrame, out: Path, n_null: int, note: Callable[[str], None],
            jobs: int = 1) -> list[Path]:
    """One claims report per (task, TLoRA arm, LoRA arm, rank) with the replicate seeds of both; ``jobs`` reports
    at a time, each in its own process with an equal share of the CPU threads."""
    reports: dict[Path, tuple] = {}  # each report's folder → _one_report's arguments but the threads
    done = final.dropna(subset=["best_value"])
    for (task, rank), part in done.groupby(["task", "rank"], sort=True):
        for t_arm in part[part["method"] == "tlora"]["arm"].unique():
            for l_arm in part[part["method"] == "lora"]["arm"].unique():
                paths = {arm: [study.runs_dir / name for name in part[part["arm"] == arm]["run"]] for arm in (t_arm, l_arm)}
                folder = out / str(task) / f"{t_arm}-vs-{l_arm}-r{int(rank)}"
                reports[folder] = (paths[t_arm], paths[l_arm], study.base_model, folder, n_null)
    if jobs == 1 or len(reports) < 2:
        written = []
        for folder, arguments in reports.items():
            note(f"claims: {folder.relative_to(out)}")
            written.append(_one_report(*arguments, None))
        return written
    workers = min(jobs, len(reports))
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")  # no forked torch state
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(_one_report, *arguments, threads): folder for folder, arguments in reports.items()}
        for future in as_completed(futures):
            note(f"claims: {futures[future].relative_to(out)}")
        return [future.result() for future in futures]


def _write_index(study: Study, out: Path, command: list[str], figures: list[str], reports: list[Path] | None) -> None:
    """results/index.md; ``reports`` None while the claims reports are still being written."""
    index = [f"# {study.name}: results", "", f"Made by: `{shlex.join(command)}`", "",
             "- [summary.md](summary.md), [summary.csv](summary.csv): mean and 95% interval over seeds",
             "- [contrasts.csv](contrasts.csv): differences between arms (paired t over shared seeds, Holm-adjusted p)",
             "- [contrasts_examples.csv](contrasts_examples.csv): the same over seeds and the task's examples, where "
             "the runs kept their validation outputs",
             "- [results.csv](results.csv): every run; [selection.csv](selection.csv): the learning-rate choice", ""]
    index += [f"![{name}](figures/{name}.png)" for name in figures] + [""]
    index += ["Claims reports (TLoRA vs LoRA, seeds as replicates):", ""]
    if reports is None:
        index += ["Being written (claims/); this list is complete once the summary finishes.", ""]
    else:
        index += [f"- [{p.parent.relative_to(out)}]({p.relative_to(out)})" for p in reports] + [""]
    atomic_write_bytes(out / "index.md", "\n".join(index).encode("utf-8"))


def write_tables(study: Study, results: pd.DataFrame, selection: pd.DataFrame, complete: bool,
                 examples: pd.DataFrame | None = None) -> pd.DataFrame:
    """Write results.csv, selection.csv, summary.csv/.md, contrasts.csv, contrasts_examples.csv (when
    ``examples``, the example-level contrasts, is given) and the metric figure; return the summary.

    Everything here comes from the tables alone, so ``--phase tables`` redoes it from a committed results.csv
    (and a committed contrasts_examples.csv).
    """
    from ..figures import save
    from ..figures.study import metric_vs_parameters
    from .results import summary_table

    out = study.runs_dir.parent / "results"
    (out / "figures").mkdir(parents=True, exist_ok=True)
    final = results[results["phase"] == "final"]
    summary, contrasts = summary_table(final), contrast_table(final)
    tables = {"results.csv": results, "selection.csv": selection, "summary.csv": summary, "contrasts.csv": contrasts}
    if examples is not None:
        tables["contrasts_examples.csv"] = examples
    for name, table in tables.items():
        atomic_write_bytes(out / name, table.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(out / "summary.md",
                       summary_markdown(summary, study, complete, contrasts, examples).encode("utf-8"))
    if len(summary):
        save(metric_vs_parameters(summary), out / "figures" / "metric_vs_parameters")
    return summary


def write_outputs(study: Study, results: pd.DataFrame, selection: pd.DataFrame, complete: bool, command: list[str],
                  n_null: int = 2000, note: Callable[[str], None] = lambda _: None, jobs: int = 1) -> Path:
    """Write the tables, figures and claims reports (``jobs`` reports at a time); return results/index.md."""
    from ..figures import save
    from ..figures.study import band_curves

    out = study.runs_dir.parent / "results"
    final = results[results["phase"] == "final"]
    summary = write_tables(study, results, selection, complete, example_contrast_table(final, study.runs_dir))
    figures, data = {}, {}
    metric = str(final["metric"].iloc[0]) if len(final) else "metric"
    curves = validation_curves(final, study.runs_dir)
    if len(curves):
        data["validation_curves"] = curves
        figures["validation_curves"] = band_curves(curves, f"validation {metric}",
                                                   "Validation metric over training: mean over seeds, band min–max")
    for name, frame in tlora_dynamics(final, study.runs_dir).items():
        label = {"alpha": "α (mean over matrices)", "fro_norm_B": "‖B‖_F (mean over matrices)"}[name]
        data[f"tlora_{name}"] = frame
        figures[f"tlora_{name}"] = band_curves(frame, label, f"TLoRA's {label} over training, band over seeds")
    for name, frame in reachable_dynamics(final, study.runs_dir).items():
        label = {"enrichment": "LoRA's reachable fraction f / E f", "cosine_reachable": "cosine inside the set c_S"}[name]
        data[f"reachable_{name}"] = frame
        figures[f"reachable_{name}"] = band_curves(frame, label, f"TLoRA's reachable set over training: {label} "
                                                                 "(mean over matrices), band over seeds")
    for name, fig in figures.items():
        note(f"figure: {name}")
        save(fig, out / "figures" / name)
        # the tidy table it draws, so it can be redrawn without the runs (summary.csv for metric_vs_parameters)
        atomic_write_bytes(out / "figures" / f"{name}.csv", data[name].to_csv(index=False).encode("utf-8"))
    names = (["metric_vs_parameters"] if len(summary) else []) + list(figures)
    _write_index(study, out, command, names, None)  # current even if the claims step is cut short
    reports = _claims(study, final, out / "claims", n_null, note, jobs)
    _write_index(study, out, command, names, reports)
    return out / "index.md"
