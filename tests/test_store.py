"""The run directory reader: contents against the live model, laziness, damage, bad input."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_runs import make_tiny_run, one_torch_thread, tiny_batch, tiny_config, tiny_model
from tlora_analysis import Run, SnapshotRecorder, apply_adapters
from tlora_analysis.adapters import adapted_layers, tracked_linears
from tlora_analysis.fileio import CorruptFileError
from tlora_analysis.store import (
    NotARunError, SchemaVersionError, UnknownLayerError, UnknownStepError,
)
from tlora_analysis.store import reader as reader_module


def _train(tmp_path, method, steps=3, **kw):
    """Train a tiny model with a recorder; return (model, Run)."""
    with one_torch_thread():
        model = apply_adapters(tiny_model(0), tiny_config(method)).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        with SnapshotRecorder(model, tmp_path / method, **kw) as rec:
            rec.attach(opt)
            for s in range(steps):
                model(**tiny_batch(s)).loss.backward()
                opt.step()
                opt.zero_grad()
    return model, Run(tmp_path / method)


@pytest.mark.parametrize("method", ["tlora", "lora", "full"])
def test_update_at_last_step_equals_the_model_delta(tmp_path, method):
    model, run = _train(tmp_path, method)
    assert run.steps == [0, 1, 2, 3]
    assert run.method == method and run.layers == list(tracked_linears(model))
    for name, layer in tracked_linears(model).items():
        if method == "full":
            w0 = run.base_weight(name).double()
            expected = layer.weight.detach().double() - w0
        else:
            expected = layer.delta_weight().double()
        np.testing.assert_allclose(run.update(name, 3).dense(), expected.numpy(), atol=1e-6)
        assert run.update(name, 0).fro_norm() == 0.0
        assert run.layer_shapes[name] == (layer.out_features, layer.in_features)


def test_tlora_tensors_and_dense_update_by_hand(tmp_path):
    model, run = _train(tmp_path, "tlora")
    layers = adapted_layers(model)
    name = run.layers[1]
    t, f = run.trainable(name, 3), run.frozen(name)
    assert set(t) == {"tlora_B", "tlora_alpha"} and set(f) == {"tlora_A", "tlora_C"}
    torch.testing.assert_close(t["tlora_B"], layers[name].tlora_B.detach())
    torch.testing.assert_close(f["tlora_A"], layers[name].tlora_A)
    a, b, c = (x.double().numpy() for x in (f["tlora_A"], t["tlora_B"], f["tlora_C"]))
    dense = float(t["tlora_alpha"]) * (a @ b @ c).T  # ΔW = α (A B C)ᵀ, independently
    np.testing.assert_allclose(run.update(name, 3).dense(), dense, atol=1e-12)
    torch.testing.assert_close(run.base_weight(name), layers[name].base_layer.weight.detach())
    assert run.rank == 4 and run.adapter_config["method"] == "tlora"
    params = run.config["parameters"]
    assert set(params) == {"trainable", "frozen", "total", "adapter_buffers"} and params["trainable"] == 4 * (16 + 1)


def test_lora_scaling_and_keys(tmp_path):
    run = make_tiny_run(tmp_path, "lora", steps=2, rank=4)
    name = run.layers[0]
    t = run.trainable(name, 2)
    assert set(t) == {"lora_A", "lora_B"}
    assert run.frozen(name) == {}
    u = run.update(name, 2)
    assert u.scale == pytest.approx(2.0)  # lora_alpha = 2r
    np.testing.assert_allclose(u.dense(), 2.0 * (t["lora_B"].double() @ t["lora_A"].double()).numpy(), atol=1e-12)


def test_run_json_and_metrics_contract(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=3)
    cfg = run.config
    assert cfg["schema_version"] == 1 and cfg["status"] == "complete" and cfg["final_step"] == 3
    assert cfg["model"] == "tiny-bert" and cfg["hyperparameters"]["steps"] == 3
    assert run.name == "tlora-r4-s0"
    m = run.metrics
    assert list(m.columns[:4]) == ["step", "epoch", "event", "wall_time"]
    assert (m.event == "train").sum() == 3 and (m.event == "eval").sum() == 1
    assert {"loss", "lr", "examples_per_s", "split", "eval_loss", "accuracy"} <= set(m.columns)
    info = run.snapshot_info(2)
    assert info["step"] == 2 and info["epoch"] == pytest.approx(1 / 3) and info["wall_time"] >= 0


def test_run_files_are_as_readable_as_any_new_file(tmp_path):
    """Atomic writes go through a private temporary file; the renamed file gets the mode open() would give
    (0666 less the umask), so a shared run or a served report opens for everyone the umask allows."""
    mask = os.umask(0o022)
    os.umask(mask)
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    expected = 0o666 & ~mask
    modes = {p.name: p.stat().st_mode & 0o777 for p in run.path.rglob("*") if p.is_file()}
    assert modes and set(modes.values()) == {expected}, modes


def test_no_base_weights_error_names_the_flag(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=1, store_base_weights=False)
    assert not run.has_base_weights
    with pytest.raises(ValueError, match="store_base_weights=True"):
        run.base_weight(run.layers[0])


def test_opening_reads_no_tensor_even_with_10000_snapshots(tmp_path, monkeypatch):
    run = make_tiny_run(tmp_path, "tlora", steps=1)
    snap = run.snapshot_path(1)
    for step in range(2, 10_002):  # hard links: 10,000 more snapshot files at no disk cost
        os.link(snap, snap.parent / f"{step:09d}.safetensors")
    calls = []
    for name in ("load_tensors", "open_tensors"):
        real = getattr(reader_module, name)
        monkeypatch.setattr(reader_module, name, lambda *a, _real=real, **k: calls.append(a) or _real(*a, **k))
    opened = Run(run.path)
    assert len(opened.steps) == 10_002 and opened.layers == run.layers
    assert calls == []
    opened.trainable(opened.layers[0], 0)
    assert calls  # reading is what touches files


def _corrupt(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "flip_data":
        data[-3] ^= 0x40
        path.write_bytes(bytes(data))
    elif how == "flip_header":
        data[12] ^= 0x7F
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncate", "flip_data", "flip_header", "empty"])
def test_damaged_snapshot_is_named_and_others_still_read(tmp_path, how):
    run = make_tiny_run(tmp_path, "tlora", steps=3)
    bad = run.snapshot_path(2)
    _corrupt(bad, how)
    fresh = Run(run.path)
    with pytest.raises(CorruptFileError, match=bad.name):
        fresh.trainable(fresh.layers[0], 2)
    for step in (0, 1, 3):
        fresh.update(fresh.layers[0], step).fro_norm()
    report = fresh.verify()
    assert not report.ok
    assert [p.path for p in report.problems] == [str(bad)]


def test_renamed_snapshot_fails_its_step_check(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    os.replace(run.snapshot_path(1), run.path / "snapshots" / "000000007.safetensors")
    with pytest.raises(CorruptFileError, match="step 1, not 7"):
        Run(run.path).trainable(run.layers[0], 7)


def test_damaged_frozen_file_fails_verify(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=1)
    _corrupt(run.path / "frozen.safetensors", "flip_data")
    report = Run(run.path).verify()
    assert [p.path for p in report.problems] == [str(run.path / "frozen.safetensors")]
    with pytest.raises(CorruptFileError, match="frozen.safetensors"):
        Run(run.path).frozen(run.layers[0])


def test_metrics_torn_last_line_is_skipped_but_bad_middle_line_raises(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    path = run.path / "metrics.jsonl"
    good = path.read_bytes()
    path.write_bytes(good + b'{"step": 3, "ev')
    torn = Run(run.path)
    assert len(torn.metrics) == 3
    report = torn.verify()
    assert report.ok and any("torn" in c.message for c in report.checks)
    path.write_bytes(b'{"step": 1, "ev\n' + good)
    with pytest.raises(CorruptFileError, match="line 1"):
        Run(run.path).metrics


def test_unknown_layer_and_step_list_what_exists(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    with pytest.raises(UnknownLayerError, match="attention.self.query") as e:
        run.trainable("nope", 1)
    assert isinstance(e.value, KeyError)
    with pytest.raises(UnknownStepError, match=r"recorded steps: 0, 1, 2"):
        run.update(run.layers[0], 99)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        Run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotARunError, match="not a run"):
        Run(tmp_path / "empty")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotARunError, match="is a file"):
        Run(tmp_path / "file.txt")


@pytest.mark.parametrize("version, match", [(2, "upgrade"), ("x", r"reads versions \[1\]"), (None, r"reads versions \[1\]")])
def test_schema_versions(tmp_path, version, match):
    run = make_tiny_run(tmp_path, "tlora", steps=1)
    cfg = json.loads((run.path / "run.json").read_text())
    cfg["schema_version"] = version
    (run.path / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(SchemaVersionError, match=match):
        Run(run.path)


def test_cli_inspect_and_verify(tmp_path, capsys):
    from tlora_analysis.cli import main

    run = make_tiny_run(tmp_path, "tlora", steps=2)
    assert main(["inspect", str(run.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["method"] == "tlora" and info["steps"] == 3 and info["last_step"] == 2 and info["events"] == {"train": 2, "eval": 1}
    assert main(["verify", str(run.path)]) == 0
    assert "OK" in capsys.readouterr().out
    _corrupt(run.snapshot_path(1), "flip_data")
    assert main(["verify", str(run.path)]) == 1
    assert "000000001.safetensors" in capsys.readouterr().out
    assert main(["inspect", str(tmp_path / "missing")]) == 1


# ---------------------------------------------------------------- damage verify names (manifest, run id, values)

def _rewrite(path, change):
    """Rewrite a snapshot with ``change(tensors)`` applied and a valid checksum (damage a checksum cannot see)."""
    from tlora_analysis.fileio import load_tensors, save_tensors

    tensors, meta = load_tensors(path)
    meta.pop("sha256")
    change(tensors)
    save_tensors(path, tensors, meta)


def _problems(run_path):
    report = Run(run_path).verify()
    return {os.path.basename(p.path): p.message for p in report.problems}


def test_verify_catches_a_snapshot_deleted_from_the_middle(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=4)
    run.snapshot_path(2).unlink()
    assert "manifest lists step 2" in _problems(run.path)["000000002.safetensors"]


def test_verify_and_reader_catch_a_same_step_snapshot_from_another_run(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=3)
    other = make_tiny_run(tmp_path, "tlora", steps=3, seed=1, lr=5e-2)
    os.replace(other.snapshot_path(2), run.snapshot_path(2))
    assert "another run" in _problems(run.path)["000000002.safetensors"]
    with pytest.raises(ValueError, match="000000002.safetensors was written by another run"):
        Run(run.path).update(run.layers[0], 2)


def test_verify_and_reader_catch_frozen_factors_of_another_seed(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    other = make_tiny_run(tmp_path, "tlora", steps=2, seed=1)
    shutil.copy(other.path / "frozen.safetensors", run.path / "frozen.safetensors")
    assert "another run" in _problems(run.path)["frozen.safetensors"]
    with pytest.raises(ValueError, match="frozen.safetensors was written by another run"):
        Run(run.path).update(run.layers[0], 2)


def test_verify_catches_a_reshaped_and_a_nan_tensor_with_valid_checksums(tmp_path):
    from tlora_analysis.store import NonFiniteError

    run = make_tiny_run(tmp_path, "tlora", steps=3)
    key = f"{run.layers[1]}.tlora_B"
    _rewrite(run.snapshot_path(1), lambda t: t.__setitem__(key, t[key][:2].contiguous()))
    _rewrite(run.snapshot_path(2), lambda t: t[key].__setitem__((0, 0), float("nan")))
    problems = _problems(run.path)
    assert "has shape (2, 4)" in problems["000000001.safetensors"] and key in problems["000000001.safetensors"]
    assert "NaN" in problems["000000002.safetensors"] and key in problems["000000002.safetensors"]
    with pytest.raises(NonFiniteError, match="000000002.safetensors.*NaN"):
        Run(run.path).update(run.layers[1], 2)


def test_verify_catches_an_emptied_metrics_file_and_a_missing_manifest(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=3)
    (run.path / "metrics.jsonl").write_bytes(b"")
    assert "emptied or cut short" in _problems(run.path)["metrics.jsonl"]
    (run.path / "manifest.jsonl").unlink()
    assert "missing" in _problems(run.path)["manifest.jsonl"]


def test_verify_names_a_missing_or_looping_snapshot_folder_and_a_dangling_file(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=2)
    target = run.snapshot_path(1)
    os.replace(target, tmp_path / "elsewhere")
    os.symlink(tmp_path / "gone", target)
    assert "symbolic link" in _problems(run.path)["000000001.safetensors"]
    shutil.rmtree(run.path / "snapshots")
    os.symlink(run.path / "snapshots", run.path / "snapshots")  # a loop
    assert "loops" in _problems(run.path)["snapshots"]


def test_run_json_without_layers_or_with_an_unknown_method_is_named(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=1)
    cfg = json.loads((run.path / "run.json").read_text())
    (run.path / "run.json").write_text(json.dumps({**cfg, "method": "qlora"}))
    with pytest.raises(NotARunError, match="names method 'qlora'"):
        Run(run.path)
    del cfg["layers"]
    (run.path / "run.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match="no 'layers' record"):
        Run(run.path)


def test_every_snapshot_and_manifest_line_carries_the_run_id(tmp_path):
    """The frozen file does not (runs with the same frozen tensors share its bytes); its manifest line does."""
    from tlora_analysis.fileio import load_tensors

    run = make_tiny_run(tmp_path, "tlora", steps=2)
    assert len(run.run_id) == 32
    for path in map(run.snapshot_path, run.steps):
        assert load_tensors(path)[1]["run_id"] == run.run_id
    assert "run_id" not in load_tensors(run.path / "frozen.safetensors")[1]
    lines = [json.loads(x) for x in (run.path / "manifest.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [None, 0, 1, 2] and {x["run_id"] for x in lines} == {run.run_id}


# ---------------------------------------------------------------- schema 1, as written before the method specs
SCHEMA1 = Path(__file__).parent / "data" / "schema1_runs"  # tiny runs written by the code of commit ee839df


@pytest.mark.parametrize("method", ["tlora", "lora", "full"])
def test_runs_written_before_the_method_specs_still_read_verify_and_resume(tmp_path, method):
    run = Run(SCHEMA1 / method)
    assert run.config["schema_version"] == 1 and run.method == method and run.verify().ok, str(run.verify())
    step = run.steps[-1]
    for layer in run.layers:
        t = {k: v.double().numpy() for k, v in {**run.frozen(layer), **run.trainable(layer, step)}.items()}
        if method == "tlora":
            want = float(t["tlora_alpha"]) * (t["tlora_A"] @ t["tlora_B"] @ t["tlora_C"]).T
        elif method == "lora":
            want = run.layer_info(layer)["scaling"] * t["lora_B"] @ t["lora_A"]
        else:
            want = t["weight"] - run.trainable(layer, 0)["weight"].double().numpy()
        np.testing.assert_allclose(run.update(layer, step).dense(), want, rtol=1e-12, atol=1e-15)
    copy = shutil.copytree(SCHEMA1 / method, tmp_path / method)
    model = apply_adapters(tiny_model(), tiny_config(method, rank=2))
    with SnapshotRecorder(model, copy, resume=True, total_steps=2) as recorder:  # the same run to today's writer
        assert recorder.recorded_steps == run.steps
