"""``render_all``: every figure the runs support, written as PDF + PNG with an index.

The index (``index.md`` and ``index.html``) leads with each run's headline numbers (trainable
parameters, final and best validation value of the task's metric, the majority-class baseline) and links
to the claims report and results table when they are in the folder, then lists each figure
with its caption, the command that regenerates the whole set and the Python call behind the
figure, and every skipped figure with the reason. A rerun replaces the files it owns and removes its own stale ones
(figures made last time that cannot be made now); other files in the folder are left alone.
"""

from __future__ import annotations

import html
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from ..fileio import atomic_write_bytes
from .catalog import CATALOG, FigureContext, FigureSpec
from .runs import RunLike, RunRoles, headline_table
from .style import save

__all__ = ["RenderResult", "render", "render_all", "figures_command"]


@dataclass
class RenderResult:
    """What :func:`render` wrote: figure files per name, skipped names with reasons, the index files."""

    out_dir: Path
    written: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    index: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [p for paths in self.written.values() for p in paths] + list(self.index)


def figures_command(runs: Sequence[RunLike], out_dir: str | os.PathLike) -> str:
    """The ``tlora-analysis figures`` command line that regenerates this figure set."""
    def path(r: RunLike) -> str:
        return str(getattr(r, "path", r))

    return shlex.join(["tlora-analysis", "figures", *map(path, runs), "-o", str(out_dir)])


def _select(only: Iterable[str] | None) -> list[FigureSpec]:
    if only is None:
        return list(CATALOG)
    names = {s.name: s for s in CATALOG}
    wanted = list(only)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"unknown figure name(s) {unknown}; choose from {list(names)}")
    return [names[n] for n in wanted]


def render(
    runs: Sequence[RunLike],
    out_dir: str | os.PathLike,
    only: Iterable[str] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
    see_also: Sequence[tuple[str, str]] = (),
) -> RenderResult:
    """Draw every catalog figure (or the ``only`` names) the runs support into ``out_dir``.

    A figure is skipped, with its reason, when the runs lack what it needs or when the
    analysis it draws raises a ValueError (e.g. no square layer, no eval metrics).
    ``log`` receives one line per skip (default: stderr). ``see_also``: (link, text) pairs the
    index lists after the claims report and results table found beside it.
    """
    roles = RunRoles.from_paths(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda line: print(line, file=sys.stderr))
    specs = _select(only)
    ctx = FigureContext(roles)
    result = RenderResult(out)
    bar = tqdm(specs, desc="figures", unit="fig", disable=not progress, file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(spec.name)
        reason = spec.missing(roles)
        if reason is None:
            try:
                fig = spec.draw(ctx)
            except ValueError as exc:
                reason = f"{type(exc).__name__}: {exc}"
            else:
                result.written[spec.name] = save(fig, out / spec.name)
        if reason is not None:
            result.skipped[spec.name] = reason
            for ext in ("pdf", "png"):  # a stale file from an earlier run would contradict the index
                (out / f"{spec.name}.{ext}").unlink(missing_ok=True)
            log(f"skipped {spec.name}: {reason}")
    cmd = command or figures_command(runs, out)
    result.index = _write_index(result, specs, roles, cmd, see_also)
    return result


def render_all(runs: Sequence[RunLike], out_dir: str | os.PathLike,
               see_also: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """Write every figure the runs support (PDF + PNG) and index.md / index.html; return the paths."""
    return render(runs, out_dir, see_also=see_also).paths


_COMPANIONS = (("report.html", "claims report"), ("report.md", "claims report (Markdown)"),
               ("results.md", "results table"))


def _headline_rows(roles: RunRoles) -> list[list[str]]:
    """Run, method, trainable parameters, final and best validation metric (step), majority baseline: text cells."""
    def num(v, fmt):
        return "–" if v is None or v != v else format(v, fmt)

    rows = []
    for _, r in headline_table(roles.runs).iterrows():
        best = num(r["best"], ".4f") + (f" (step {r['best_step']})" if r["best"] == r["best"] else "")
        final = f"{r['metric']} {num(r['final'], '.4f')}"
        rows.append([str(r["run"]), str(r["method"]), num(r["trainable"], ","), final, best,
                     num(r["majority_baseline"], ".4f")])
    return rows


def _write_index(result: RenderResult, specs: list[FigureSpec], roles: RunRoles, command: str,
                 see_also: Sequence[tuple[str, str]] = ()) -> list[Path]:
    made = [s for s in specs if s.name in result.written]
    runs_md = "\n".join(f"- `{r.method}` {r.name}: `{r.path}`" for r in roles.runs)
    header = ["run", "method", "trainable parameters", "final validation", "best (picked on validation)",
              "majority class"]
    rows = _headline_rows(roles)
    links = [(name, what) for name, what in _COMPANIONS if (result.out_dir / name).is_file()] + list(see_also)
    md = ["# Figures", ""]
    if links:
        md += ["See also: " + ", ".join(f"[{what}]({name})" for name, what in links) + ".", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in rows]
    md += ["", "Runs:", "", runs_md, "", "Regenerate all with:", "", f"    {command}", ""]
    for s in made:
        md += [f"## {s.title}", "", f"![{s.title}]({s.name}.png)", "", s.caption, "",
               f"Files: [{s.name}.pdf]({s.name}.pdf), [{s.name}.png]({s.name}.png). Drawn by: `{s.code}`", ""]
    if result.skipped:
        md += ["## Skipped", ""] + [f"- `{n}`: {why}" for n, why in result.skipped.items()] + [""]
    h = html.escape
    body = ["<h1>Figures</h1>"]
    if links:
        body.append("<p>See also: " + ", ".join(f"<a href='{h(name)}'>{h(what)}</a>" for name, what in links) + ".</p>")
    body.append("<table><tr>" + "".join(f"<th>{h(c)}</th>" for c in header) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{h(c)}</td>" for c in row) + "</tr>" for row in rows) + "</table>")
    body += ["<p>Runs:</p><ul>"
            + "".join(f"<li><code>{h(r.method)}</code> {h(r.name)}: <code>{h(str(r.path))}</code></li>" for r in roles.runs)
            + f"</ul><p>Regenerate all with:</p><pre>{h(command)}</pre>"]
    for s in made:
        body.append(f"<figure id='{h(s.name)}'><h2>{h(s.title)}</h2><img src='{h(s.name)}.png' alt='{h(s.title)}' "
                    f"style='max-width:100%'><figcaption>{h(s.caption)}<br>Files: <a href='{h(s.name)}.pdf'>PDF</a>, "
                    f"<a href='{h(s.name)}.png'>PNG</a>. Drawn by: <code>{h(s.code)}</code></figcaption></figure>")
    if result.skipped:
        body.append("<h2>Skipped</h2><ul>" + "".join(f"<li><code>{h(n)}</code>: {h(why)}</li>"
                                                      for n, why in result.skipped.items()) + "</ul>")
    page = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Figures</title><style>body{font-family:sans-serif;"
            "max-width:60em;margin:auto}figure{margin:2em 0}figcaption{font-size:.9em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style></head><body>"
            + "\n".join(body) + "</body></html>\n")
    md_path, html_path = result.out_dir / "index.md", result.out_dir / "index.html"
    atomic_write_bytes(md_path, "\n".join(md).encode("utf-8"))
    atomic_write_bytes(html_path, page.encode("utf-8"))
    return [md_path, html_path]
