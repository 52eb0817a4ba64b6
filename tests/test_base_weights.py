"""W0 by reference: run.json's base_weights entry, W0 read back from the base model, verify, the CLI, studies."""

import json
import os

import numpy as np
import pytest
import torch

from helpers_runs import make_tiny_run, tiny_model
from tlora_analysis import Run, analysis, open_run
from tlora_analysis.cli import build_parser, main
from tlora_analysis.experiments.cli import config_from_args
from tlora_analysis.store import BaseModelError, BaseWeightsMismatchError, ForeignFileError
from tlora_analysis.store.base_weights import base_weights_hash, load_base_weights, resolve_model_folder
from tlora_analysis.study.execute import FrozenFiles
from tlora_analysis.study.plan import selection_runs
from tlora_analysis.study.spec import StudyError, load_study


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A TLoRA run storing W0, the same run referencing it, and the tiny base models of seeds 0 and 1."""
    root = tmp_path_factory.mktemp("base")
    stored = make_tiny_run(root, "tlora", steps=3, name="stored")
    referenced = make_tiny_run(root, "tlora", steps=3, store_base_weights=False, name="referenced")
    for seed in (0, 1):
        tiny_model(seed).save_pretrained(root / f"model{seed}")
    return stored, referenced, root / "model0", root / "model1"


def _w0(model, layers):
    return [(name, model.get_submodule(name).weight) for name in layers]


def test_reference_is_recorded_and_its_hash_is_the_documented_one(runs):
    stored, referenced, _, _ = runs
    ref, ref2 = stored.config["base_weights"], referenced.config["base_weights"]
    assert ref["stored"] is True and ref2["stored"] is False and ref["model"] == "tiny-bert"
    assert ref["sha256"] == ref2["sha256"] == base_weights_hash(_w0(tiny_model(0), stored.layers))
    assert stored.has_base_weights and not referenced.has_base_weights  # "tiny-bert" is no model on this machine


def test_hash_covers_names_order_and_shapes():
    a, b = torch.randn(4, 6), torch.randn(6, 4)
    base = base_weights_hash([("x", a), ("y", b)])
    assert base_weights_hash([("x", a.to(torch.float64)), ("y", b)]) == base  # values, not the dtype held
    assert base_weights_hash([("y", b), ("x", a)]) != base
    assert base_weights_hash([("x", a), ("z", b)]) != base
    assert base_weights_hash([("x", a.reshape(6, 4)), ("y", b)]) != base
    assert base_weights_hash([("x", a)]) != base


def test_attached_base_model_gives_the_stored_w0_bit_for_bit(runs):
    stored, referenced, model0, _ = runs
    run = open_run(referenced.path, base_model=model0)
    assert run.has_base_weights
    for layer in stored.layers:
        w = run.base_weight(layer)
        assert w.dtype == stored.base_weight(layer).dtype and torch.equal(w, stored.base_weight(layer))
    late = Run(referenced.path).attach_base_model(str(model0))
    assert torch.equal(late.base_weight(stored.layers[0]), stored.base_weight(stored.layers[0]))


def test_wrong_or_missing_base_model_is_refused_by_name(runs, tmp_path):
    _, referenced, _, model1 = runs
    with pytest.raises(BaseWeightsMismatchError) as err:
        Run(referenced.path, base_model=model1)
    text = str(err.value)
    assert referenced.config["base_weights"]["sha256"] in text and "--base-model" in text and str(model1) in text
    assert len([w for w in text.split() if len(w.strip(",;:")) == 64]) == 2  # both hashes, in full
    with pytest.raises(BaseModelError, match="not a local folder|neither a local folder"):
        Run(referenced.path, base_model=str(tmp_path / "absent"))
    with pytest.raises(ValueError, match="--base-model"):
        Run(referenced.path).base_weight(referenced.layers[0])


def test_merged_eigenvalues_equal_on_stored_and_referenced_runs(runs):
    stored, referenced, model0, _ = runs
    a = analysis.merged_eigenvalues(stored)
    b = analysis.merged_eigenvalues(Run(referenced.path, base_model=model0))
    cols = [c for c in a.columns if c.startswith("eig") or c in ("real", "imag", "modulus")]
    assert cols and len(a) == len(b)
    np.testing.assert_array_equal(a[cols].to_numpy(), b[cols].to_numpy())
    with pytest.raises(analysis.MissingBaseWeightError, match="base_model"):
        analysis.merged_eigenvalues(Run(referenced.path))


def test_verify_checks_the_entry_and_the_base_model(runs, tmp_path):
    stored, referenced, model0, model1 = runs
    assert stored.verify().ok and referenced.verify().ok
    assert referenced.verify(base_model=model0).ok
    bad = referenced.verify(base_model=model1)
    assert not bad.ok and "is not the one run" in bad.problems[0].message
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(referenced.path, copy)
    header = json.loads((copy / "run.json").read_text())
    header["base_weights"]["sha256"] = "abc123"
    (copy / "run.json").write_text(json.dumps(header))
    report = Run(copy).verify()
    assert not report.ok and "64 lowercase hex digits" in report.problems[0].message


def test_stored_w0_of_another_base_model_is_caught(runs, tmp_path):
    stored, _, _, _ = runs
    other = make_tiny_run(tmp_path, "lora", steps=1, model_seed=1, name="other")  # LoRA: no fingerprints, only W0
    lora = make_tiny_run(tmp_path, "lora", steps=1, seed=0, name="lora")
    os.replace(other.path / "frozen.safetensors", lora.path / "frozen.safetensors")
    with pytest.raises(ForeignFileError, match="W0 hashes to"):
        Run(lora.path).base_weight(lora.layers[0])
    assert not Run(lora.path).verify().ok


def test_cli_base_model_flag(runs, capsys):
    _, referenced, model0, model1 = runs
    assert main(["verify", str(referenced.path), "--base-model", str(model0)]) == 0
    assert main(["verify", str(referenced.path), "--base-model", str(model1)]) == 1
    capsys.readouterr()
    assert main(["inspect", str(referenced.path), "--json", "--base-model", str(model0)]) == 0
    assert json.loads(capsys.readouterr().out)["base_weights"] is True
    assert main(["inspect", str(referenced.path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base_weights"] is False
    parse = build_parser().parse_args
    assert config_from_args(parse(["train", "--base-weights", "reference"])).store_base_weights is False
    assert config_from_args(parse(["train", "--base-weights", "stored"])).store_base_weights is True
    assert config_from_args(parse(["train", "--no-base-weights"])).store_base_weights is False
    with pytest.raises(SystemExit):
        parse(["train", "--base-weights", "none"])
    assert "stored (W0 in frozen.safetensors) or reference" in capsys.readouterr().err
    for command in (["report", "x"], ["figures", "x"]):
        assert parse([*command, "--base-model", "m"]).base_model == "m"


def test_bundled_model_resolves_and_maps_the_task_models_layer_names():
    folder = resolve_model_folder("bundled:all-MiniLM-L6-v2")
    assert folder is not None and resolve_model_folder("all-MiniLM-L6-v2") == folder
    name = "bert.encoder.layer.0.attention.self.query"  # the checkpoint holds encoder.layer.0..., no "bert."
    w = load_base_weights(folder, {name: {"shape": [384, 384], "dtype": "float32"}})[name]
    assert w.shape == (384, 384) and w.dtype == torch.float32
    with pytest.raises(BaseModelError, match="has no weight for layer"):
        load_base_weights(folder, {"bert.nothing.here": {"shape": [1, 1], "dtype": "float32"}})


_STUDY = """
{extra}
[train]
max_steps = 4
{train}
[tasks.rotten_tomatoes]
[[arms]]
method = "tlora"
ranks = [4]
lrs = [1e-2, 2e-2]
"""


def test_study_references_w0_by_default(tmp_path):
    path = tmp_path / "study.toml"
    path.write_text(_STUDY.format(extra="", train=""))
    assert all(r.fields["store_base_weights"] is False for r in selection_runs(load_study(path)))
    path.write_text(_STUDY.format(extra="", train="store_base_weights = true"))
    assert all(r.fields["store_base_weights"] is True for r in selection_runs(load_study(path)))
    (tmp_path / "base").mkdir()
    path.write_text(_STUDY.format(extra='base_model = "base"', train=""))
    assert load_study(path).base_model == str((tmp_path / "base").resolve())
    path.write_text(_STUDY.format(extra="base_model = 3", train=""))
    with pytest.raises(StudyError, match="base_model must be"):
        load_study(path)


def test_identical_frozen_files_become_hard_links_and_still_verify(tmp_path):
    runs_dir = tmp_path / "runs"
    a = make_tiny_run(runs_dir, "tlora", steps=1, store_base_weights=False, name="a", lr=1e-2)
    b = make_tiny_run(runs_dir, "tlora", steps=1, store_base_weights=False, name="b", lr=2e-2)
    c = make_tiny_run(runs_dir, "tlora", steps=1, seed=1, store_base_weights=False, name="c")
    assert (a.path / "frozen.safetensors").read_bytes() == (b.path / "frozen.safetensors").read_bytes()
    frozen = FrozenFiles(runs_dir)
    assert frozen.linked == 1 and frozen.saved_bytes == (a.path / "frozen.safetensors").stat().st_size
    assert os.path.samefile(a.path / "frozen.safetensors", b.path / "frozen.safetensors")
    assert not os.path.samefile(a.path / "frozen.safetensors", c.path / "frozen.safetensors")
    assert all(Run(r.path).verify().ok for r in (a, b, c))
    assert FrozenFiles(runs_dir).linked == 0  # already shared
