"""The notebooks run top to bottom (nbclient) on tiny runs they train themselves.

The test swaps each notebook's ``parameters`` cell for a tiny random BERT and a tiny local
sentiment task, so a notebook takes seconds; everything else runs exactly as a user sees it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_train_fixtures import make_local_task, make_tiny_model

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_paper_figures.ipynb", "03_compare_adapters.ipynb"]


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("nb")
    model = make_tiny_model(base / "model")
    task = make_local_task(base / "data", n_train=48, n_val=16)
    return base, model, task


def _tiny_parameters(work: Path, model: Path, task: dict) -> str:
    train = dict(model=str(model), rank=4, max_steps=6, batch_size=8, max_length=16, eval_every=3,
                 snapshots="every:2", log_every=1, **task)
    return f"WORK_DIR = {str(work)!r}\nTRAIN = {train!r}\n"


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


def test_notebooks_are_committed_without_outputs():
    for name in NAMES:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
