"""The notebooks run top to bottom (nbclient) on tiny runs they train themselves, and every run learns.

The test swaps each notebook's ``parameters`` cell for a tiny random BERT and a tiny local
sentiment task, so a notebook takes seconds; everything else runs exactly as a user sees it.
Every run a notebook trains must beat the majority class of its validation split (run.json's
``majority_baseline``) on the task's metric, and leave no resume state or final weights behind
(for full fine-tuning those are several copies of the model).
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_train_fixtures import make_local_task, make_tiny_model
from tlora_analysis import Run

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_paper_figures.ipynb", "03_compare_adapters.ipynb"]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("nb")
    model = make_tiny_model(base / "model")
    task = make_local_task(base / "data", n_train=96, n_val=32)
    return base, model, task


def _tiny_parameters(work: Path, model: Path, task: dict) -> str:
    train = dict(model=str(model), rank=4, max_steps=24, batch_size=16, max_length=16, eval_every=12,
                 snapshots="every:4", log_every=2, save_weights=False, **task)
    method = {"tlora": dict(lr=3e-2, dropout=0.0), "lora": dict(lr=2e-2), "full": dict(lr=2e-3, snapshots="every:8")}
    return f"WORK_DIR = {str(work)!r}\nTRAIN = {train!r}\nMETHOD = {method!r}\n"


def _check_runs_learned(work: Path) -> list[Run]:
    runs = [Run(p.parent) for p in sorted(work.rglob("run.json"))]
    assert runs, f"no run under {work}"
    for run in runs:
        metric = run.config["selection_metric"]
        evals = run.metrics.query("event == 'eval' and split == 'validation'")
        best, base = evals[metric].max(), run.config["majority_baseline"][metric]
        assert best > base + 0.1, f"{run.name}: best {metric} {best} does not clear the majority class {base}"
        assert not evals["constant_predictions"].iloc[-1], run.name
        assert not (run.path / "trainer_state").exists() and not (run.path / "adapter").exists(), run.name
    return runs


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, tiny_setup, tmp_path):
    base, model, task = tiny_setup
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{name} needs exactly one cell tagged 'parameters'"
    params[0].source = _tiny_parameters(tmp_path, model, task)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert images >= 3, f"{name} showed only {images} figures"
    runs = _check_runs_learned(tmp_path)
    for run in runs:
        if run.method == "full":
            assert len(run.steps) <= 5 and len(run.layers) == 4  # sparse, and only the adapters' layers
    printed = json.dumps([o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs])
    assert printed.count("baseline majority class") == len(runs)  # each run's summary, with its baseline


def test_notebooks_are_committed_without_outputs():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
