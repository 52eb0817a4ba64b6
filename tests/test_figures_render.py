"""render_all and the ``figures`` CLI on real tiny recorded runs: every figure written as
PDF + PNG, an index with captions and the command, skips with reasons, clean reruns."""

from __future__ import annotations

import pytest

from helpers_runs import make_tiny_run
from tlora_analysis.cli import main
from tlora_analysis.figures import RunRoles, difference_table, render, render_all
from tlora_analysis.figures.catalog import catalog_names


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    made = {m: make_tiny_run(base, method=m, steps=4) for m in ("tlora", "lora", "full", "vera", "lora-xs")}
    made["no_w0"] = make_tiny_run(base, method="tlora", steps=4, store_base_weights=False, name="tlora-no-w0")
    made["lora_s1"] = make_tiny_run(base, method="lora", steps=4, seed=1)
    return made


@pytest.fixture(scope="module")
def rendered(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("figs")
    paths = render_all([runs["tlora"], runs["lora"], runs["full"], runs["vera"], runs["lora-xs"]], out)
    return out, paths


def test_every_figure_is_written_as_pdf_and_png(rendered):
    out, paths = rendered
    for name in catalog_names():
        pdf, png = out / f"{name}.pdf", out / f"{name}.png"
        assert pdf.read_bytes().startswith(b"%PDF"), name
        assert png.read_bytes().startswith(b"\x89PNG"), name
        assert pdf in paths and png in paths
    assert out / "index.md" in paths and out / "index.html" in paths


def test_index_lists_caption_command_and_runs(rendered, runs):
    out, _ = rendered
    md = (out / "index.md").read_text()
    html = (out / "index.html").read_text()
    assert f"tlora-analysis figures {runs['tlora'].path}" in md
    assert f"{runs['lora-xs'].path} -o {out}" in md and "Skipped" not in md
    for name in catalog_names():
        assert f"]({name}.png)" in md and f"src='{name}.png'" in html
    assert "paper-faithful" in md and "Paper Fig. 10" in md
    assert "<!DOCTYPE html>" in html and "<code>tlora</code> tlora-r4-s0" in html


def test_roles_come_from_run_json(runs):
    roles = RunRoles([runs["lora"], runs["full"], runs["tlora"], runs["lora_s1"]])
    assert (roles.tlora, roles.lora, roles.full) == (runs["tlora"], runs["lora"], runs["full"])
    assert roles.extra == [runs["lora_s1"]]
    assert "[extra]" in roles.describe()
    with pytest.raises(ValueError, match="at least one run"):
        RunRoles([])


def test_skips_say_why_and_reruns_remove_stale_figures(runs, tmp_path):
    messages = []
    names = ["fig05_fro_norm_B", "fig10_cosine", "method_curves"]
    render([runs["tlora"], runs["lora"]], tmp_path, progress=False, log=messages.append, only=names)
    assert (tmp_path / "fig10_cosine.png").exists()
    result = render([runs["tlora"]], tmp_path, progress=False, log=messages.append, only=names)
    assert "fig10_cosine" in result.skipped and "LoRA run" in result.skipped["fig10_cosine"]
    assert "method_curves" in result.skipped and "two methods" in result.skipped["method_curves"]
    assert not (tmp_path / "fig10_cosine.png").exists()  # stale figure from the first call removed
    assert (tmp_path / "fig05_fro_norm_B.png").exists()
    assert any(m.startswith("skipped fig10_cosine: needs a LoRA run") for m in messages)
    md = (tmp_path / "index.md").read_text()
    assert "## Skipped" in md and "`fig10_cosine`: needs a LoRA run" in md


def test_runs_without_base_weights_skip_only_what_needs_w0(runs, tmp_path):
    result = render([runs["no_w0"], runs["lora"]], tmp_path, progress=False, log=lambda _: None,
                    only=["fig04_entry_histograms", "fig08_eigenvalues", "fig10_cosine"])
    assert set(result.written) == {"fig04_entry_histograms", "fig08_eigenvalues", "fig10_cosine"}
    assert not result.skipped


def test_bad_arguments_are_rejected(runs, tmp_path):
    with pytest.raises(ValueError, match="unknown figure"):
        render([runs["tlora"]], tmp_path, only=["fig99"], progress=False)
    with pytest.raises(TypeError, match="Run or a run directory"):
        render([42], tmp_path, progress=False)


def test_difference_table_constructions(runs):
    table = difference_table(runs["lora"], runs["tlora"], layer="layer.0.attention.self.query")
    assert set(table["construction"]) == {"paper_faithful", "corrected"}
    name = "bert.encoder.layer.0.attention.self.query"
    step = runs["tlora"].steps[-1]
    lora, tlora = runs["lora"].update(name, step), runs["tlora"].update(name, step)
    corrected = table[table["construction"] == "corrected"].sort_values(["out_index", "in_index"])
    expected = lora.dense() - tlora.dense()
    assert corrected["difference"].to_numpy() == pytest.approx(expected.ravel())
    paper = table[table["construction"] == "paper_faithful"].sort_values(["out_index", "in_index"])
    expected_paper = (lora.dense() / lora.scale).T - tlora.dense().T  # transposed, LoRA scale dropped
    assert paper["difference"].to_numpy() == pytest.approx(expected_paper.ravel())
    with pytest.raises(ValueError, match="layer .nope. matches 0 layers"):
        difference_table(runs["lora"], runs["tlora"], layer="nope")


def test_cli_figures(runs, tmp_path, capsys):
    code = main(["figures", str(runs["tlora"].path), str(runs["lora"].path), "-o", str(tmp_path), "-q",
                 "--only", "fig02_trainable_parameters", "fig10_cosine"])
    assert code == 0
    assert "wrote 2 figures" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fig02_trainable_parameters.pdf", "fig02_trainable_parameters.png", "fig10_cosine.pdf", "fig10_cosine.png",
        "index.html", "index.md"]
    assert main(["figures", str(tmp_path / "missing"), "-o", str(tmp_path)]) == 1


def test_index_leads_with_headline_numbers_and_links_report_and_results(runs, tmp_path):
    (tmp_path / "report.html").write_text("<html></html>")
    (tmp_path / "results.md").write_text("# results")
    render([runs["tlora"], runs["lora"]], tmp_path, only=["fig02_trainable_parameters"], progress=False,
           see_also=[("../study/summary.md", "a study")])
    md, html = (tmp_path / "index.md").read_text(), (tmp_path / "index.html").read_text()
    assert "[claims report](report.html)" in md and "[results table](results.md)" in md
    assert "<a href='report.html'>" in html and "<a href='results.md'>" in html
    assert md.index("[results table](results.md)") < md.index("[a study](../study/summary.md)")
    assert "<a href='../study/summary.md'>a study</a>" in html
    assert "| tlora-r4-s0 | tlora | 68 | accuracy 0.5000 | 0.5000 (step 4) |" in md  # the tiny runs log accuracy 0.5


def test_a_run_given_twice_or_without_snapshots_is_refused(runs, tmp_path, capsys):
    with pytest.raises(ValueError, match="given twice"):
        RunRoles.from_paths([runs["tlora"].path, runs["tlora"].path])
    assert main(["figures", str(runs["tlora"].path), str(runs["tlora"].path), "-o", str(tmp_path)]) == 1
    assert "given twice" in capsys.readouterr().err
    empty = make_tiny_run(tmp_path, method="tlora", steps=1, name="emptied")
    for snap in (empty.path / "snapshots").iterdir():
        snap.unlink()
    assert main(["figures", str(empty.path), "-o", str(tmp_path / "f")]) == 1
    assert "no readable snapshot" in capsys.readouterr().err


def test_figures_output_defaults_to_a_figures_folder(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["figures", str(runs["tlora"].path), "--only", "fig06_alpha", "-q"]) == 0
    assert (tmp_path / "figures" / "fig06_alpha.png").is_file() and (tmp_path / "figures" / "index.html").is_file()


def test_a_peft_folder_counts_its_parameters_from_the_adapter_tensors(tmp_path):
    from peft import LoraConfig, get_peft_model

    from helpers_runs import tiny_model
    from tlora_analysis.figures import parameter_table

    model = get_peft_model(tiny_model(0), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    model.save_pretrained(tmp_path / "adapter")
    table = parameter_table([tmp_path / "adapter"])
    assert table["trainable"].tolist() == [sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)]
    result = render([tmp_path / "adapter"], tmp_path / "figs", only=["fig02_trainable_parameters"], progress=False)
    assert "fig02_trainable_parameters" in result.written and not result.skipped


def test_headline_leads_with_the_final_value_and_keeps_the_best_beside_it():
    """On a committed study run whose best evaluation came before its last, the two stay apart and match
    the study's results table (read from the same metrics.jsonl by another path)."""
    from pathlib import Path

    import pandas as pd

    from tlora_analysis.figures import headline_table

    study = Path(__file__).resolve().parents[1] / "studies" / "minilm-glue"
    row = headline_table([study / "runs" / "final" / "mrpc" / "tlora-r8-s0"]).iloc[0]
    results = pd.read_csv(study / "results" / "results.csv").set_index("run").loc["final/mrpc/tlora-r8-s0"]
    assert row["final"] == pytest.approx(results["last_value"]) and row["best"] == pytest.approx(results["best_value"])
    assert row["best_step"] == results["best_step"] and row["final"] < row["best"]


def test_headline_of_a_run_without_its_metric_is_empty_not_an_error(runs):
    """A run that logged no value of its selection metric (here: asked for MCC, logged accuracy only)."""
    from tlora_analysis.figures import headline_table

    run = runs["tlora"]
    assert "selection_metric" not in run.config  # the tiny runs name none: accuracy
    run.config["selection_metric"] = "mcc_that_was_never_logged"
    try:
        row = headline_table([run]).iloc[0]
    finally:
        del run.config["selection_metric"]
    assert row["final"] is None and row["best"] is None
