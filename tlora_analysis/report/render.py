"""Write the claims table as markdown and HTML: ``write_report(run_tlora, run_lora, out_dir)``."""

from __future__ import annotations

import html
import os
import shlex
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..fileio import atomic_write_bytes
from ..figures.runs import RunLike, as_run
from .claims import CLAIM_COLUMNS, evaluate_claims

__all__ = ["write_report", "report_markdown", "report_html"]

_HEADERS = {"claim": "Claim", "figure": "Paper fig.", "statistic": "Statistic", "value": "Ours",
            "null_baseline": "Null baseline", "verdict": "Verdict", "paper": "Paper's number"}
_INTRO = ("Each row takes one claim of the TLoRA paper (tri-matrix LoRA, arXiv 2504.18735), the statistic that "
          "tests it, our value on these runs, what a null baseline gives, and a plain verdict. Summaries are across "
          "adapted layers at the last step both runs recorded.")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(claims: pd.DataFrame, title: str, runs_text: str, command: str) -> str:
    """The claims table as a markdown document."""
    lines = [f"# {title}", "", _INTRO, "", runs_text, "", f"Regenerate with: `{command}`", "",
             "| " + " | ".join(_HEADERS[c] for c in CLAIM_COLUMNS) + " |",
             "|" + "---|" * len(CLAIM_COLUMNS)]
    for _, row in claims.iterrows():
        lines.append("| " + " | ".join(_md_cell(row[c]) for c in CLAIM_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def report_html(claims: pd.DataFrame, title: str, runs_text: str, command: str) -> str:
    """The claims table as a self-contained HTML page."""
    h = html.escape
    head = "".join(f"<th>{h(_HEADERS[c])}</th>" for c in CLAIM_COLUMNS)
    rows = "".join("<tr>" + "".join(f"<td>{h(str(row[c]))}</td>" for c in CLAIM_COLUMNS) + "</tr>"
                   for _, row in claims.iterrows())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{h(title)}</title><style>"
            "body{font-family:sans-serif;max-width:80em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:.3em .5em;vertical-align:top;font-size:.9em}th{background:#eee}"
            f"</style></head><body><h1>{h(title)}</h1><p>{h(_INTRO)}</p><p>{h(runs_text)}</p>"
            f"<p>Regenerate with: <code>{h(command)}</code></p><table><tr>{head}</tr>{rows}</table></body></html>\n")


def write_report(
    run_tlora: RunLike,
    run_lora: RunLike,
    out_dir: str | os.PathLike,
    null_runs: Sequence[RunLike] = (),
    n_null: int = 100,
    seed: int = 0,
) -> Path:
    """Evaluate the claims and write ``report.md``, ``report.html`` and ``claims.csv``; return report.md's path."""
    tlora, lora = as_run(run_tlora), as_run(run_lora)
    nulls = [as_run(r) for r in null_runs]
    claims = evaluate_claims(tlora, lora, nulls, n_null=n_null, seed=seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs_text = f"TLoRA run: {tlora.name} ({tlora.path}); LoRA run: {lora.name} ({lora.path})"
    if nulls:
        runs_text += "; null runs: " + ", ".join(r.name for r in nulls)
    parts = ["tlora-analysis", "report", str(tlora.path), str(lora.path)]
    if nulls:
        parts += ["--null", *(str(r.path) for r in nulls)]
    command = shlex.join(parts + ["-o", str(out)])
    title = "TLoRA paper claims, checked"
    md_path = out / "report.md"
    atomic_write_bytes(md_path, report_markdown(claims, title, runs_text, command).encode("utf-8"))
    atomic_write_bytes(out / "report.html", report_html(claims, title, runs_text, command).encode("utf-8"))
    atomic_write_bytes(out / "claims.csv", claims.to_csv(index=False).encode("utf-8"))
    return md_path
