"""Validation up front: TrainConfig, the recorder and the command line refuse bad values when they are made,
before any data or model loads, with a message naming the fix."""

from __future__ import annotations

import pytest
import torch

from helpers_runs import tiny_config, tiny_model
from tlora_analysis import SnapshotRecorder, apply_adapters
from tlora_analysis.cli import main
from tlora_analysis.experiments.config import TrainConfig


def test_strings_where_lists_are_expected_are_one_item():
    c = TrainConfig(targets="query", text_columns="sentence")
    assert c.targets == ("query",) and c.text_columns == ("sentence",)
    assert TrainConfig(targets=["query", "re:.*value"]).targets == ("query", "re:.*value")


@pytest.mark.parametrize("changes, exc, words", [
    ({"rank": 0}, ValueError, "rank must be a positive integer"),
    ({"rank": 2.5}, ValueError, "rank must be a positive integer"),
    ({"dropout": 5}, ValueError, "dropout must be a probability in \\[0, 1\\)"),
    ({"lora_alpha": -1}, ValueError, "lora_alpha must be positive"),
    ({"device": "tpu9"}, ValueError, "device 'tpu9' is not supported; use auto"),
    ({"progress": "no"}, TypeError, "progress must be True or False"),
    ({"resume": 1}, TypeError, "resume must be True or False"),
    ({"lr": "1e-3"}, ValueError, "lr must be positive"),
    ({"epochs": float("inf")}, ValueError, "epochs must be positive"),
    ({"warmup_ratio": 1.0}, ValueError, "warmup_ratio must be in \\[0, 1\\)"),
    ({"max_steps": 0}, ValueError, "max_steps must be a positive integer or None"),
    ({"snapshots": "log:0"}, ValueError, "bad snapshot schedule 'log:0'; use every:N"),
    ({"snapshots": "every"}, ValueError, "bad snapshot schedule"),
    ({"method": "dora"}, ValueError, "method must be one of .*'vera', 'lora-xs', 'peft-lora'"),
    ({"task": "mrcp"}, ValueError, "unknown task 'mrcp'"),
    ({"targets": []}, ValueError, "targets is an empty list"),
    ({"targets": "re:["}, ValueError, "not a valid regular expression"),
    ({"text_columns": ("a", "b", "c")}, ValueError, "one or two column names"),
    ({"seed": "0"}, TypeError, "seed must be an int"),
    ({"tlora_init": "xavier"}, ValueError, "tlora_init must be one of"),
    ({"overwrite": True, "resume": True}, ValueError, "not both"),
])
def test_train_config_refuses_bad_values_when_made(changes, exc, words):
    with pytest.raises(exc, match=words):
        TrainConfig(**changes)


def test_a_method_rejects_what_its_own_config_rejects():
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        TrainConfig(method="vera", rank=-3)
    TrainConfig(method="vera", rank=256)  # VeRA's shared rank may exceed a layer's size: checked with the model
    with pytest.raises(ValueError, match="dropout"):
        TrainConfig(method="lora-xs", dropout=1.5)


@pytest.fixture
def adapted():
    return apply_adapters(tiny_model(), tiny_config("tlora"))


@pytest.mark.parametrize("kwargs, exc, words", [
    ({"run_dir": 3}, TypeError, "run_dir must be a folder path"),
    ({"overwrite": "yes"}, TypeError, "overwrite must be True or False"),
    ({"store_base_weights": 1}, TypeError, "store_base_weights must be True, False or None"),
    ({"total_steps": 0}, ValueError, "total_steps must be None or an int ≥ 1"),
    ({"start_step": -1}, ValueError, "start_step must be None or an int ≥ 0"),
    ({"max_pending": 0}, ValueError, "max_pending must be an int ≥ 1"),
    ({"run_info": ["task"]}, TypeError, "run_info must be a mapping"),
    ({"run_info": {"method": "x"}}, ValueError, "may not set \\['method'\\]"),
    ({"schedule": "often"}, TypeError, "schedule must be"),
])
def test_the_recorder_refuses_bad_arguments_before_touching_disk(adapted, tmp_path, kwargs, exc, words):
    args = {"run_dir": tmp_path / "run", **kwargs}
    with pytest.raises(exc, match=words):
        SnapshotRecorder(adapted, **args)
    assert not (tmp_path / "run").exists()


def test_the_recorder_needs_an_adapted_model(tmp_path):
    with pytest.raises(ValueError, match="no adapters to record.*VeRAConfig"):
        SnapshotRecorder(torch.nn.Linear(2, 2), tmp_path / "run")


@pytest.mark.parametrize("flags, code, words", [
    (("--rank", "0"), 2, "argument --rank: 0 must be a positive integer"),
    (("--lr", "fast"), 2, "argument --lr: 'fast' is not a number"),
    (("--method", "dora"), 2, "invalid choice: 'dora'"),
    (("--dropout", "5"), 1, "dropout must be a probability in [0, 1)"),
    (("--snapshots", "log:x"), 1, "bad snapshot schedule 'log:x'"),
    (("--targets", "re:("), 1, "not a valid regular expression"),
])
def test_the_train_command_names_bad_values_before_loading_anything(tmp_path, capsys, flags, code, words):
    argv = ["train", "--run-dir", str(tmp_path / "run"), *flags]
    if code == 2:  # refused while parsing: argparse's usage message and exit status 2
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    else:
        assert main(argv) == 1
    assert words in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_docs_list_every_public_parameter():
    """docs/parameters.md names each field of TrainConfig and of every method's config, and each recorder argument."""
    import dataclasses
    import inspect
    from pathlib import Path

    from tlora_analysis.adapters import METHODS

    text = (Path(__file__).resolve().parents[1] / "docs" / "parameters.md").read_text()
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for spec in METHODS.values():
        fields |= {f.name for f in dataclasses.fields(spec.config_class) if f.init}
    fields |= set(inspect.signature(SnapshotRecorder).parameters)
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"docs/parameters.md does not list {missing}"
