"""The claims report: one row per claim with the stated columns, values that are the stated
summaries of analysis tables, decisions from the stated rules, replicates as the run-to-run
null, files written, bad input refused with a clear message."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from helpers_runs import make_tiny_run
from tlora_analysis import analysis
from tlora_analysis.cli import main
from tlora_analysis.report import (
    CLAIM_COLUMNS, CLAIM_IDS, DECISIONS, LAYER_COLUMNS, ReplicateError, evaluate_claims, write_report,
)
from tlora_analysis.report.verdict import decide_effect, decide_sameness

N_NULL = 300
REQUIRED = ("claim_id", "statistic", "estimate", "ci_lo", "ci_hi", "p_value", "null", "decision", "paper")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    made = {f"{m}{s}": make_tiny_run(base, method=m, steps=6, seed=s) for m in ("tlora", "lora") for s in (0, 1)}
    made["no_w0"] = make_tiny_run(base, method="tlora", steps=6, store_base_weights=False, name="no-w0")
    return made


@pytest.fixture(scope="module")
def single(runs):
    return evaluate_claims(runs["tlora0"], runs["lora0"], n_null=N_NULL)


@pytest.fixture(scope="module")
def replicated(runs):
    return evaluate_claims([runs["tlora0"], runs["tlora1"]], [runs["lora0"], runs["lora1"]], n_null=N_NULL)


def _row(report, claim_id: str) -> pd.Series:
    return report.claims.set_index("claim_id").loc[claim_id]


def test_one_row_per_claim_with_the_machine_readable_columns(single):
    claims = single.claims
    assert tuple(claims.columns[: len(REQUIRED)]) == REQUIRED and tuple(claims.columns) == CLAIM_COLUMNS
    assert tuple(claims["claim_id"]) == CLAIM_IDS
    assert set(claims["decision"]) <= set(DECISIONS)
    assert claims[["statistic", "null", "paper", "claim", "test"]].map(bool).all().all()
    assert tuple(single.layers.columns) == LAYER_COLUMNS and len(single.layers) > 0
    assert _row(single, "cosine_merged_faithful")["paper"] == "0.91–0.99 per layer (merged weights)"


def test_alignment_claims_are_stouffer_combinations_of_the_analysis_tables(runs, single):
    sim = analysis.similarity(runs["tlora0"], runs["lora0"], steps="last", n_null=N_NULL,
                              seed=_pair_seed(0)).per_layer
    reach = analysis.reachable(runs["tlora0"], runs["lora0"], steps="last", n_null=N_NULL, seed=_pair_seed(0))
    for claim, frame, value, z in (("update_cosine", sim, "cosine_dW", "z_cosine_dW"),
                                   ("reachable_cosine", reach, "cosine_reachable", "z_cosine_reachable"),
                                   ("cosine_merged_faithful", sim, "cosine_merged_paper", "z_cosine_merged_paper")):
        row = _row(single, claim)
        zs = frame[z].to_numpy(float)
        assert row["p_value"] == pytest.approx(stats.norm.sf(zs.sum() / math.sqrt(zs.size)), rel=1e-9), claim
        assert row["estimate"] == pytest.approx(frame[value].mean(), rel=1e-9), claim
        lo, hi = stats.t.interval(0.95, zs.size - 1, loc=frame[value].mean(), scale=stats.sem(frame[value]))
        assert (row["ci_lo"], row["ci_hi"]) == pytest.approx((lo, hi), rel=1e-9), claim
        assert row["decision"] == ("supported" if row["p_value"] <= 0.05 else "not supported")
    ratio = reach["reachable_fraction"] / reach["null_mean_reachable_fraction"]
    assert _row(single, "reachable_fraction")["estimate"] == pytest.approx(ratio.mean(), rel=1e-9)
    overlap = pd.concat([reach["z_overlap_out"], reach["z_overlap_in"]])
    assert _row(single, "subspace_overlap")["p_value"] == pytest.approx(
        stats.norm.sf(overlap.sum() / math.sqrt(overlap.size)), rel=1e-9)


def test_subspace_overlap_calls_both_sides_as_one_holm_family():
    """Four (matrix, side) tests, one at p = 0.02: Holm over all four gives 0.08, not significant at
    0.05 (two families of two would give 0.04); the calls and the detail's count agree."""
    from tlora_analysis.report.alignment import subspace_overlap
    from tlora_analysis.stats import holm
    p_out, p_in = np.array([0.02, 0.9]), np.array([0.9, 0.9])
    reach = pd.DataFrame({"run_a": "t", "run_b": "l", "layer": ["q", "v"], "layer_index": [0, 0],
                          "module": ["query", "value"], "step": 6, "overlap_out": 0.2, "overlap_in": 0.1,
                          "null_mean_overlap_out": 0.1, "null_mean_overlap_in": 0.1, "p_overlap_out": p_out,
                          "p_overlap_in": p_in, "z_overlap_out": stats.norm.isf(p_out),
                          "z_overlap_in": stats.norm.isf(p_in)})
    result = subspace_overlap(reach, 0.05, 100)
    calls = pd.DataFrame(result.layers)
    assert list(calls["side"]) == ["out", "out", "in", "in"]
    assert calls["p_holm"].to_numpy() == pytest.approx(holm(np.r_[p_out, p_in]))
    assert not calls["significant"].any()
    assert "(Holm at α = 0.05): 0 of 4 above the null" in result.detail


def _pair_seed(index: int, seed: int = 0) -> int:
    from tlora_analysis.report.claims import _pair_seed as pair_seed
    return pair_seed(seed, index)


def test_gaussian_b_is_fisher_over_shapiro_wilk(runs, single):
    table = analysis.distributions(runs["tlora0"], matrices=("B",), steps="last").stats
    row = _row(single, "gaussian_B")
    assert row["p_value"] == pytest.approx(stats.combine_pvalues(table["shapiro_pvalue"], method="fisher").pvalue)
    assert row["estimate"] == pytest.approx(table["excess_kurtosis"].mean())
    assert row["decision"] == ("not supported" if row["p_value"] <= 0.05 else "supported")
    calls = single.layers[single.layers["claim_id"] == "gaussian_B"]
    assert (calls["p_holm"] >= calls["p_value"]).all() and len(calls) == len(table)


def test_one_run_per_method_leaves_the_run_to_run_claims_inconclusive(single):
    for claim in ("stable_norms", "alpha_varies"):
        row = _row(single, claim)
        assert row["decision"] == "inconclusive" and "Needs replicate TLoRA runs" in row["detail"]
        assert math.isnan(row["p_value"])
    assert not math.isnan(_row(single, "stable_norms")["estimate"])


def test_replicates_decide_the_run_to_run_claims(replicated, runs):
    assert len(replicated.arms.pairs) == 2
    for claim in ("stable_norms", "alpha_varies"):
        row = _row(replicated, claim)
        assert row["decision"] in ("supported", "not supported") and 0 < row["p_value"] <= 1
    row = _row(replicated, "alpha_varies")
    a = np.array([[analysis.scaling(r, steps="last").per_layer.set_index("layer")["alpha"][n]
                   for r in (runs["tlora0"], runs["tlora1"])] for n in runs["tlora0"].layers])
    ms_layer = a.shape[1] * np.var(a.mean(axis=1), ddof=1)
    resid = a - a.mean(axis=1, keepdims=True) - a.mean(axis=0, keepdims=True) + a.mean()
    f = ms_layer / (np.sum(resid**2) / ((a.shape[0] - 1) * (a.shape[1] - 1)))
    assert f"F = {f:.3g}" in row["test"]
    assert 0 <= row["ci_lo"] <= row["estimate"] <= row["ci_hi"] <= 1  # an intraclass correlation
    assert "over 2 replicates" in _row(replicated, "update_cosine")["test"]


def test_stable_norms_is_a_paired_t_test_over_runs(replicated, runs):
    """Each run's mean over matrices of log(‖ΔW‖ end / ‖ΔW‖ mid), from the norms computed densely;
    Student's t of those means against 0; the estimate and interval are exp − 1 of the t interval."""
    row = _row(replicated, "stable_norms")
    end, mid = runs["tlora0"].steps[-1], 3  # 6 steps recorded: 3 is the step nearest half-way
    per_run = []
    for run in (runs["tlora0"], runs["tlora1"]):
        changes = [math.log(np.linalg.norm(run.update(n, end).dense(), "fro")
                            / np.linalg.norm(run.update(n, mid).dense(), "fro")) for n in run.layers]
        per_run.append(np.mean(changes))
    assert row["p_value"] == pytest.approx(stats.ttest_1samp(per_run, 0.0).pvalue, rel=1e-9)
    lo, hi = stats.t.interval(0.95, 1, loc=np.mean(per_run), scale=stats.sem(per_run))
    assert (row["estimate"], row["ci_lo"], row["ci_hi"]) == pytest.approx(np.expm1([np.mean(per_run), lo, hi]))
    assert row["decision"] == ("not supported" if row["p_value"] <= 0.05 else "supported")
    assert f"step {mid})" in row["statistic"]


def test_without_base_weights_the_merged_claims_are_inconclusive(runs):
    report = evaluate_claims(runs["no_w0"], runs["lora0"], n_null=N_NULL)
    for claim in ("eigen_merged_faithful", "cosine_merged_faithful"):
        row = _row(report, claim)
        assert row["decision"] == "inconclusive" and "store_base_weights=True" in row["detail"]


def test_decision_rules():
    assert decide_effect(0.01, 0.05) == "supported" and decide_effect(0.2, 0.05) == "not supported"
    assert decide_effect(0.01, 0.05, min_p=0.1) == "inconclusive" and decide_effect(math.nan, 0.05) == "inconclusive"
    assert decide_sameness(0.01, 0.05) == "not supported" and decide_sameness(0.2, 0.05) == "supported"
    assert decide_sameness(0.5, 0.05, min_p=0.125) == "inconclusive"
    assert decide_sameness(0.05, 0.05) == "not supported"  # p ≤ α rejects


def test_write_report_files(runs, tmp_path):
    path = write_report([runs["tlora0"], runs["tlora1"]], runs["lora0"].path, tmp_path / "rep", n_null=N_NULL)
    assert path == tmp_path / "rep" / "report.md"
    md = path.read_text()
    assert "| Claim | Paper fig. | Decision | Estimate [95% CI] | p | Paper's number |" in md
    assert all(f"## `{c}`" in md for c in CLAIM_IDS) and "α = 0.05" in md and "Fixed by construction" in md
    assert f"--tlora {runs['tlora0'].path} {runs['tlora1'].path} --lora {runs['lora0'].path}" in md
    html = (tmp_path / "rep" / "report.html").read_text()
    assert html.count("<h2>") == len(CLAIM_IDS) and "‖ΔW‖_F" in html
    claims = pd.read_csv(tmp_path / "rep" / "claims.csv")
    assert tuple(claims.columns) == CLAIM_COLUMNS and len(claims) == len(CLAIM_IDS)
    assert tuple(pd.read_csv(tmp_path / "rep" / "claims_layers.csv").columns) == LAYER_COLUMNS


def test_bad_input_is_named(runs):
    with pytest.raises(ReplicateError, match="not tlora runs"):
        evaluate_claims(runs["lora0"], runs["tlora0"])
    with pytest.raises(ReplicateError, match="share seed 0"):
        evaluate_claims([runs["tlora0"], runs["no_w0"]], runs["lora0"])
    with pytest.raises(ReplicateError, match="at least one TLoRA run and one LoRA run"):
        evaluate_claims([], runs["lora0"])
    with pytest.raises(ValueError, match="alpha must be"):
        evaluate_claims(runs["tlora0"], runs["lora0"], alpha=1.5)
    with pytest.raises(ValueError, match="n_null must be"):
        evaluate_claims(runs["tlora0"], runs["lora0"], n_null=10)


def test_cli_report_sorts_runs_by_method_and_reads_folders(runs, tmp_path, capsys):
    folder = runs["tlora0"].path.parent
    out = tmp_path / "from-folder"
    code = main(["report", str(runs["tlora0"].path), str(runs["lora0"].path), "-o", str(out), "--n-null", "200"])
    assert code == 0
    captured = capsys.readouterr()
    assert "TLoRA paper claims, tested" in captured.out and "report: gaussian_B …" in captured.err
    assert (out / "claims.csv").exists()
    # a folder of runs is split by method; same-seed TLoRA runs in it are refused by name
    assert main(["report", str(folder), "-o", str(tmp_path / "all"), "--quiet"]) == 1
    assert "share seed 0" in capsys.readouterr().err
    code = main(["report", "--tlora", str(runs["tlora0"].path), str(runs["tlora1"].path), "--lora",
                 str(runs["lora1"].path), "--alpha", "0.01", "--n-null", "200", "-o", str(tmp_path / "flags"), "--quiet"])
    assert code == 0 and "α = 0.01" in (tmp_path / "flags" / "report.md").read_text()
    assert main(["report", str(runs["lora0"].path), "-o", str(tmp_path / "x")]) == 1
    assert "at least one TLoRA run" in capsys.readouterr().err


def test_runs_of_different_base_models_or_tasks_are_not_compared(tmp_path, capsys):
    """Same layer shapes but another base model (its W0 hash in run.json), or another task: the claims report
    and the figure set refuse, naming both runs; the analyzers still compare any two runs."""
    import json

    from tlora_analysis import Run
    from tlora_analysis.figures import RunRoles
    from tlora_analysis.report.replicates import Arms

    tlora = make_tiny_run(tmp_path, "tlora", steps=2)
    other_model = make_tiny_run(tmp_path, "lora", steps=2, model_seed=1, name="lora-other-model")
    with pytest.raises(ReplicateError, match="different base models"):
        Arms.from_runs([tlora], [other_model])
    with pytest.raises(ValueError, match="different base models"):
        RunRoles([tlora, other_model])
    assert main(["report", str(tlora.path), str(other_model.path), "-o", str(tmp_path / "r")]) == 1
    assert "different base models" in capsys.readouterr().err
    analysis.similarity(tlora, other_model, n_null=20)  # a question the analyzers may still ask
    lora = make_tiny_run(tmp_path, "lora", steps=2)
    header = json.loads((lora.path / "run.json").read_text())
    (lora.path / "run.json").write_text(json.dumps({**header, "task": "another"}))
    with pytest.raises(ReplicateError, match="different tasks"):
        Arms.from_runs([tlora], [Run(lora.path)])


def test_the_report_says_which_runs_learned_nothing(tmp_path):
    """A run whose last validation accuracy does not beat the majority class it recorded is named at the top
    of the report (markdown and HTML); runs that beat it, or record no baseline, are not."""
    import json

    from tlora_analysis.report import write_report

    tlora, lora = make_tiny_run(tmp_path, "tlora", steps=2), make_tiny_run(tmp_path, "lora", steps=2)
    for run, base in ((tlora, 0.6), (lora, 0.4)):  # the tiny runs log accuracy 0.5
        header = json.loads((run.path / "run.json").read_text())
        (run.path / "run.json").write_text(json.dumps({**header, "majority_baseline": {"accuracy": base}}))
    md = write_report(tlora.path, lora.path, tmp_path / "report", n_null=100)
    text, html = md.read_text(), (md.parent / "report.html").read_text()
    assert "learned nothing usable: tlora-r4-s0 (accuracy 0.5000 against 0.6000)" in text
    assert "lora-r4-s0 (accuracy" not in text.replace("tlora-r4-s0 (accuracy", "") and "learned nothing usable" in html
