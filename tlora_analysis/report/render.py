"""Write the claims report: claims.csv (the machine-readable table), claims_layers.csv (per-layer
calls), and report.md / report.html rendered from them."""

from __future__ import annotations

import html
import os
import shlex
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..fileio import atomic_write_bytes
from ..store import Run
from .claims import ClaimsReport, Progress, evaluate_claims
from .verdict import fmt

__all__ = ["write_report", "report_markdown", "report_html", "report_command"]

RunLike = Run | str | os.PathLike

TITLE = "TLoRA paper claims, tested"


def _intro(report: ClaimsReport) -> list[str]:
    a = report.alpha
    return [
        f"Each claim of the TLoRA paper (tri-matrix LoRA, arXiv 2504.18735) is a test with a stated null, decided at "
        f"one level α = {a:g}. Runs: {report.arms.describe()}. Null draws and permutations: {report.n_null} per "
        f"test; seed {report.seed}.",
        f"Decisions. A claim of an effect (updates aligned, α varying) is *supported* when its null is rejected at "
        f"α = {a:g} and *not supported* otherwise. A claim of sameness (Gaussian B, stable norms, resembling "
        "spectra) is the null of its test: *not supported* when rejected, *supported* when not (consistent with the "
        "claim at the resolution its interval shows). *Inconclusive*: no test could be run or reach α; the detail "
        "says what would settle it. Intervals are 95%.",
        "Fixed by construction. TLoRA's update α·Cᵀ Bᵀ Aᵀ lies in the r²-dimensional set S = {Q_C M Q_Aᵀ} spanned "
        "by its frozen random factors, whatever training does: its singular subspaces are col(Cᵀ) and col(A) from "
        "initialisation on, and the largest cosine any TLoRA update can have with another update X is √f(X), "
        "f(X) = ‖P_C X P_A‖²/‖X‖². The claims below test what is not fixed.",
    ] + ([f"Runs that learned nothing usable: {'; '.join(stale)} do not beat always answering the majority "
          "class on validation. Their updates are what training did without learning the task, so the decisions "
          "below say little about the methods; train longer or at another learning rate first."]
         if (stale := report.arms.not_learned()) else [])


def _estimate(row: pd.Series) -> str:
    text = fmt(row["estimate"])
    if pd.notna(row["ci_lo"]) and pd.notna(row["ci_hi"]):
        text += f" [{fmt(row['ci_lo'])}, {fmt(row['ci_hi'])}]"
    return text


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def report_markdown(report: ClaimsReport, command: str) -> str:
    """The report as a markdown document: the summary table, then one section per claim."""
    lines = [f"# {TITLE}", ""]
    for paragraph in _intro(report):
        lines += [paragraph, ""]
    lines += ["| Claim | Paper fig. | Decision | Estimate [95% CI] | p | Paper's number |", "|---|---|---|---|---|---|"]
    for _, row in report.claims.iterrows():
        lines.append(f"| `{row['claim_id']}`: {_md(row['claim'])} | {_md(row['figure'])} | **{row['decision']}** | "
                     f"{_estimate(row)} | {fmt(row['p_value'])} | {_md(row['paper'])} |")
    for _, row in report.claims.iterrows():
        lines += ["", f"## `{row['claim_id']}`: {row['claim']} ({row['decision']})", "",
                  f"- Statistic: {row['statistic']}.", f"- Test: {row['test']}.", f"- Null: {row['null']}.",
                  f"- Estimate {_estimate(row)}; p = {fmt(row['p_value'])}; {row['n_units']} units.",
                  *([f"- {row['detail']}"] if row["detail"] else []), f"- Paper: {row['paper']}."]
    lines += ["", "Per-layer calls (Holm-adjusted at α): `claims_layers.csv`; this table: `claims.csv`.", "",
              f"Regenerate with: `{command}`", ""]
    return "\n".join(lines)


def report_html(report: ClaimsReport, command: str) -> str:
    """The same content as a self-contained HTML page."""
    h = html.escape
    intro = "".join(f"<p>{h(p)}</p>" for p in _intro(report))
    rows = "".join(
        f"<tr><td><code>{h(r['claim_id'])}</code>: {h(r['claim'])}</td><td>{h(str(r['figure']))}</td>"
        f"<td class='{r['decision'].replace(' ', '-')}'><b>{h(r['decision'])}</b></td><td>{h(_estimate(r))}</td>"
        f"<td>{h(fmt(r['p_value']))}</td><td>{h(r['paper'])}</td></tr>" for _, r in report.claims.iterrows())
    sections = "".join(
        f"<h2><code>{h(r['claim_id'])}</code>: {h(r['claim'])} ({h(r['decision'])})</h2><ul>"
        f"<li>Statistic: {h(r['statistic'])}.</li><li>Test: {h(r['test'])}.</li><li>Null: {h(r['null'])}.</li>"
        f"<li>Estimate {h(_estimate(r))}; p = {h(fmt(r['p_value']))}; {r['n_units']} units.</li>"
        + (f"<li>{h(r['detail'])}</li>" if r["detail"] else "") + f"<li>Paper: {h(r['paper'])}.</li></ul>"
        for _, r in report.claims.iterrows())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{h(TITLE)}</title><style>"
            "body{font-family:sans-serif;max-width:80em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #bbb;padding:.3em .5em;vertical-align:top;font-size:.9em}th{background:#eee}"
            ".supported{background:#e3f2e1}.not-supported{background:#fbe3e1}.inconclusive{background:#f1f1f1}"
            f"</style></head><body><h1>{h(TITLE)}</h1>{intro}<table><tr><th>Claim</th><th>Paper fig.</th>"
            f"<th>Decision</th><th>Estimate [95% CI]</th><th>p</th><th>Paper's number</th></tr>{rows}</table>"
            f"{sections}<p>Per-layer calls (Holm-adjusted at α): <code>claims_layers.csv</code>; this table: "
            f"<code>claims.csv</code>.</p><p>Regenerate with: <code>{h(command)}</code></p></body></html>\n")


def report_command(report: ClaimsReport, out_dir: str | os.PathLike) -> str:
    """The shell command that regenerates this report."""
    parts = ["tlora-analysis", "report", "--tlora", *(str(r.path) for r in report.arms.tlora),
             "--lora", *(str(r.path) for r in report.arms.lora), "--alpha", f"{report.alpha:g}",
             "--n-null", str(report.n_null), "--seed", str(report.seed), "-o", str(out_dir)]
    return shlex.join(parts)


def write_report(tlora: RunLike | Sequence[RunLike], lora: RunLike | Sequence[RunLike], out_dir: str | os.PathLike,
                 alpha: float = 0.05, n_null: int = 2000, seed: int = 0,
                 progress: Progress | None = None) -> Path:
    """Evaluate the claims and write report.md, report.html, claims.csv and claims_layers.csv; return report.md."""
    def runs(x: RunLike | Sequence[RunLike]) -> list[Run]:
        return [r if isinstance(r, Run) else Run(r) for r in (x if isinstance(x, (list, tuple)) else [x])]

    report = evaluate_claims(runs(tlora), runs(lora), alpha=alpha, n_null=n_null, seed=seed, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    command = report_command(report, out)
    md_path = out / "report.md"
    atomic_write_bytes(md_path, report_markdown(report, command).encode("utf-8"))
    atomic_write_bytes(out / "report.html", report_html(report, command).encode("utf-8"))
    atomic_write_bytes(out / "claims.csv", report.claims.to_csv(index=False).encode("utf-8"))
    atomic_write_bytes(out / "claims_layers.csv", report.layers.to_csv(index=False).encode("utf-8"))
    return md_path
