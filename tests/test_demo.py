"""The main job's mechanics on the bundled default with a small budget, and one bundled training run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tlora_analysis.demo import DEMO_CONFIG, run_demo
from tlora_analysis.experiments.train import train
from tlora_analysis.store import Run


SMALL = DEMO_CONFIG.replace(max_steps=6, max_train_examples=192, max_eval_examples=64, eval_every=3,
                            max_length=32, snapshots="every:2", eval_test=False)


def test_bundled_default_trains_and_records(tmp_path):
    result = train(SMALL.replace(method="tlora", lr=2e-2, dropout=0.0, run_dir=str(tmp_path / "run"), progress=False))
    run = Run(result.run_dir)
    assert run.config["task"] == "rotten_tomatoes" and run.config["model"] == "bundled:all-MiniLM-L6-v2"
    assert len(run.layers) == 12 and run.rank == 8
    assert run.steps == [0, 2, 4, 6]
    evals = run.metrics.query("event == 'eval'")
    assert list(evals["step"]) == [3, 6] and evals["accuracy"].between(0, 1).all()
    assert result.parameters["trainable"] == 12 * (8 * 8 + 1) + 384 * 2 + 2


@pytest.mark.slow
def test_demo_writes_runs_figures_report_table_and_clears_stale_outputs(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    (figures / "stale_figure.png").write_text("old")
    (figures / ".demo-outputs.json").write_text(json.dumps(["stale_figure.png"]))
    (figures / "notes.md").write_text("not the demo's")
    study = tmp_path / "studies" / "minilm-glue"
    (study / "results").mkdir(parents=True)
    (study / "README.md").write_text("# study")
    (study / "results" / "summary.md").write_text("# summary")
    (tmp_path / "studies" / "minilm-rt-seeds").mkdir()
    (tmp_path / "studies" / "minilm-rt-seeds" / "README.md").write_text("# seeds")
    made = run_demo(tmp_path, quiet=True, config=SMALL)

    assert not (figures / "stale_figure.png").exists() and (figures / "notes.md").exists()
    assert [Run(p).method for p in made.runs] == ["tlora", "lora"]
    assert made.figures and all(p.is_file() for p in made.figures)
    assert (figures / "index.md").is_file() and made.report[0].is_file()
    table = pd.read_csv(tmp_path / "data" / "results.csv")
    assert list(table["method"]) == ["tlora", "lora"]
    assert table["steps"].tolist() == [6, 6] and table["rank"].tolist() == [8, 8]
    from tlora_analysis.experiments.data import load_rotten_tomatoes
    from tlora_analysis.experiments.encoding import subsample

    scored = subsample(load_rotten_tomatoes().splits["validation"], SMALL.max_eval_examples, SMALL.split_seed)["label"]
    assert table["val_majority_baseline"].iloc[0] == pytest.approx(max(scored.mean(), 1 - scored.mean()))
    index = (figures / "index.html").read_text()
    assert "href='report.html'" in index and "href='results.md'" in index
    assert "href='../studies/minilm-glue/results/summary.md'" in index  # the committed study, from the checkout
    results_md = (figures / "results.md").read_text()
    assert "| tlora |" in results_md and "[the study's findings](../studies/minilm-glue/README.md)" in results_md
    assert "[this pair over 3 seeds](../studies/minilm-rt-seeds/README.md)" in results_md
    listed = json.loads((figures / ".demo-outputs.json").read_text())
    assert "results.md" in listed and "stale_figure.png" not in listed
