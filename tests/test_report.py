"""The claims report: values are the stated summaries of analysis tables, verdicts follow the
null baselines, files are written, bad input is refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from figure_checks import similarity_frames
from helpers_runs import make_tiny_run
from tlora_analysis import analysis
from tlora_analysis.cli import main
from tlora_analysis.report import CLAIM_COLUMNS, evaluate_claims, write_report
from tlora_analysis.report.claims import cosine_claims


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    return {"tlora": make_tiny_run(base, method="tlora", steps=4),
            "lora": make_tiny_run(base, method="lora", steps=4),
            "no_w0": make_tiny_run(base, method="tlora", steps=4, store_base_weights=False, name="no-w0")}


@pytest.fixture(scope="module")
def claims(runs):
    return evaluate_claims(runs["tlora"], runs["lora"], n_null=20)


def _row(claims: pd.DataFrame, start: str) -> pd.Series:
    return claims[claims["claim"].str.startswith(start)].iloc[0]


def test_one_row_per_claim_with_every_column(claims):
    assert list(claims.columns) == list(CLAIM_COLUMNS)
    assert len(claims) == 8
    assert not claims.isna().any().any()
    assert _row(claims, "TLoRA and LoRA weights are similar")["paper"] == "0.91–0.99 per layer (merged weights)"


def test_values_are_the_stated_summaries_of_analysis_tables(runs, claims):
    step = runs["tlora"].steps[-1]
    sim = analysis.similarity(runs["tlora"], runs["lora"], steps=[step], n_null=20)
    assert _row(claims, "TLoRA and LoRA learn similar")["value"].startswith(
        f"{np.median(sim.per_layer['cosine_dW']):.3f},")
    assert _row(claims, "TLoRA and LoRA updates span")["value"].startswith(f"{np.median(sim.per_layer['phi_rr']):.3f},")
    stats = analysis.distributions(runs["tlora"], matrices=("B",), steps=[step]).stats
    assert _row(claims, "B's entries")["value"].startswith(f"D = {np.median(stats['ks_stat']):.3f}")
    across = analysis.scaling(runs["tlora"], steps=[step]).across_layers
    cv = across.loc[across["module"] == "all", "alpha_cv"].iloc[0]
    assert _row(claims, "α differs")["value"].startswith(f"CV {cv:.3f}")


def test_merged_eigenvalue_claim_compares_with_w0(claims):
    row = _row(claims, "eigenvalue spectra resemble (paper-faithful")
    assert "W0 alone (step 0)" in row["null_baseline"]
    assert row["value"].startswith("D = ")


def test_verdicts_follow_the_null_band():
    per, _ = similarity_frames(n_layers=4)
    per["n_null"] = 100
    aligned = per.assign(cosine_dW=0.9, null_hi_cosine_dW=0.1, phi_rr=0.05, null_hi_phi_rr=0.2)
    rows = {c.claim: c for c in cosine_claims(SimpleNamespace(per_layer=aligned))}
    assert rows["TLoRA and LoRA learn similar updates (corrected cosine)"].verdict.startswith(
        "the updates point in similar directions: 8/8")
    assert "chance level" in rows["TLoRA and LoRA updates span overlapping subspaces"].verdict
    merged = rows["TLoRA and LoRA weights are similar (paper-faithful cosine)"]
    assert merged.verdict.startswith("above the null") or "says nothing" in merged.verdict
    unrelated = per.assign(cosine_dW=0.0, null_hi_cosine_dW=0.1, cosine_merged_paper=0.97,
                           null_hi_cosine_merged_paper=0.99, n_null=2)
    rows = {c.claim: c for c in cosine_claims(SimpleNamespace(per_layer=unrelated))}
    assert "no more aligned than the null" in rows["TLoRA and LoRA learn similar updates (corrected cosine)"].verdict
    assert "says nothing about the updates" in rows["TLoRA and LoRA weights are similar (paper-faithful cosine)"].verdict
    assert "too few for a band" in rows["TLoRA and LoRA learn similar updates (corrected cosine)"].verdict


def test_without_base_weights_merged_claims_are_marked(runs):
    table = evaluate_claims(runs["no_w0"], runs["lora"], n_null=10)
    assert "store_base_weights=True" in _row(table, "eigenvalue spectra resemble (paper-faithful")["verdict"]
    assert "store_base_weights=True" in _row(table, "TLoRA and LoRA weights are similar")["verdict"]


def test_write_report_files(runs, tmp_path):
    path = write_report(runs["tlora"], runs["lora"].path, tmp_path / "rep", n_null=10)
    assert path == tmp_path / "rep" / "report.md"
    md = path.read_text()
    assert md.count("\n| ") == 9  # header + 8 claims
    assert "| Claim | Paper fig. | Statistic | Ours | Null baseline | Verdict | Paper's number |" in md
    assert "tlora-analysis report" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("<tr>") == 9 and "‖ΔW‖_F" in html
    assert len(pd.read_csv(tmp_path / "rep" / "claims.csv")) == 8


def test_bad_input(runs, tmp_path):
    with pytest.raises(ValueError, match="first run must be a TLoRA run"):
        evaluate_claims(runs["lora"], runs["tlora"])
    with pytest.raises(ValueError, match="at least two null runs"):
        evaluate_claims(runs["tlora"], runs["lora"], null_runs=[runs["lora"]])
    assert main(["report", str(runs["lora"].path), str(runs["tlora"].path), "-o", str(tmp_path)]) == 1


def test_cli_report(runs, tmp_path, capsys):
    assert main(["report", str(runs["tlora"].path), str(runs["lora"].path), "-o", str(tmp_path), "--n-null", "5"]) == 0
    out = capsys.readouterr().out
    assert "TLoRA paper claims, checked" in out and (tmp_path / "report.html").exists()


def test_stability_compares_with_the_step_half_way_through_training(tmp_path):
    from tlora_analysis.recording import Explicit

    # Snapshots crowd the start (as log-spaced schedules do): the median snapshot is step 2,
    # the step nearest half-way through 16 steps is 8.
    run = make_tiny_run(tmp_path, method="tlora", steps=16, schedule=Explicit([1, 2, 3, 8, 16]))
    row = _row(evaluate_claims(run, make_tiny_run(tmp_path, method="lora", steps=16), n_null=5),
               "update norms are stable")
    assert "(step 16) − ‖ΔW‖_F(step 8)" in row["statistic"]
