"""`tlora-analysis train`: presets, flag overrides, the command end to end, snapshot schedules."""

from __future__ import annotations

import pytest

from test_train_fixtures import make_local_task, make_tiny_model
from tlora_analysis.cli import build_parser, main
from tlora_analysis.experiments.cli import config_from_args
from tlora_analysis.experiments.train import parse_snapshot_schedule
from tlora_analysis.recording import EveryN, Explicit, LogSpaced
from tlora_analysis.store import Run


def _config(*flags):
    return config_from_args(build_parser().parse_args(["train", *flags]))


def test_defaults_without_preset():
    c = _config()
    assert (c.method, c.rank, c.head, c.lr, c.epochs, c.dropout) == ("tlora", 8, "fresh", None, 3.0, None)
    assert c.learning_rate == 2e-2 and c.to_dict()["lr"] == 2e-2  # the method's, recorded as used


def test_learning_rate_defaults_to_the_method_s_and_follows_a_changed_method():
    rates = {m: _config("--method", m).learning_rate for m in ("tlora", "lora", "peft-lora", "lora-xs", "vera", "full")}
    assert rates == {"tlora": 2e-2, "lora": 1e-3, "peft-lora": 1e-3, "lora-xs": 2e-2, "vera": 1e-2, "full": 1e-4}
    assert _config().replace(method="lora").learning_rate == 1e-3  # None stays None until used
    assert _config("--lr", "3e-4", "--method", "vera").learning_rate == 3e-4


def test_paper_preset_matches_paper_section_2():
    c = _config("--preset", "paper")
    assert (c.rank, c.targets, c.lr, c.weight_decay, c.warmup_ratio, c.batch_size, c.epochs) == \
        (32, ("query", "value"), 1e-3, 0.01, 0.06, 32, 30.0)
    assert (c.dropout, c.head, c.max_length, c.precision, c.lora_alpha) == (0.5, "frozen", 512, "fp32", 16.0)
    assert _config("--preset", "paper", "--method", "lora").dropout == 0.0


def test_flags_override_the_preset():
    c = _config("--preset", "paper", "--rank", "4", "--epochs", "1", "--head", "fresh", "--dropout", "0.1",
                "--targets", "query", "key")
    assert (c.rank, c.epochs, c.head, c.dropout, c.targets) == (4, 1.0, "fresh", 0.1, ("query", "key"))
    assert c.lr == 1e-3  # not given: still the preset's


def test_bad_flag_values():
    with pytest.raises(ValueError, match="give --overwrite or --resume"):
        _config("--overwrite", "--resume")
    with pytest.raises(ValueError, match="warmup_ratio"):
        _config("--warmup-ratio", "1.5")
    with pytest.raises(ValueError, match="needs --train-file"):
        _config("--task", "local")


def test_train_command_end_to_end(tmp_path, capsys):
    model = make_tiny_model(tmp_path / "model")
    task = make_local_task(tmp_path / "data")
    argv = ["train", "--model", str(model), "--task", "local", "--train-file", task["train_file"],
            "--validation-file", task["validation_file"], "--text-columns", "sentence", "--rank", "4",
            "--epochs", "1", "--batch-size", "16", "--max-length", "16", "--run-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"run      {tmp_path / 'run'}" in out and "trainable 134" in out
    assert Run(tmp_path / "run").config["status"] == "complete"
    assert main(argv) == 1
    assert "already exists; pass --resume" in capsys.readouterr().err
    assert main(["train", "--model", str(tmp_path / "nowhere"), "--run-dir", str(tmp_path / "r2")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_snapshot_schedules():
    assert parse_snapshot_schedule("every:5", 100) == EveryN(5)
    assert isinstance(parse_snapshot_schedule("log:8", 100), LogSpaced)
    explicit = parse_snapshot_schedule("10,20,50", 100)
    assert isinstance(explicit, Explicit) and explicit.includes(20) and not explicit.includes(30)
    for bad in ("every:x", "sometimes", "log:"):
        with pytest.raises(ValueError, match="snapshot schedule"):
            parse_snapshot_schedule(bad, 100)


def _tiny_argv(tmp_path, *extra):
    model = make_tiny_model(tmp_path / "model")
    task = make_local_task(tmp_path / "data")
    return ["train", "--model", str(model), "--task", "local", "--train-file", task["train_file"],
            "--validation-file", task["validation_file"], "--text-columns", "sentence", "--rank", "4",
            "--epochs", "1", "--batch-size", "16", "--max-length", "16", *extra]


def test_no_progress_still_prints_data_sizes_first_and_the_summary(tmp_path, capsys):
    assert main(_tiny_argv(tmp_path, "--no-progress", "--run-dir", str(tmp_path / "run"))) == 0
    out = capsys.readouterr().out
    assert out.index("train 96, validation 32; majority class: accuracy") < out.index("best     step")
    assert "baseline majority class: accuracy" in out and "time " in out
    assert main(["inspect", str(tmp_path / "run")]) == 0
    shown = capsys.readouterr().out
    assert "best" in shown and "accuracy" in shown and "majority" in shown


@pytest.mark.parametrize("flags, message", [
    (("--targets", "re:["), "not a valid regular expression"),
    (("--device", "tpu"), "device 'tpu' is not supported"),
    (("--data-dir", "."), "needs --task"),
])
def test_bad_flags_are_named_without_a_traceback(tmp_path, capsys, flags, message):
    assert main(_tiny_argv(tmp_path, *flags, "--run-dir", str(tmp_path / "run"))) == 1
    assert message in capsys.readouterr().err


def test_a_model_folder_with_only_pickled_weights_is_refused(tmp_path, capsys):
    import torch
    from safetensors.torch import load_file

    model = make_tiny_model(tmp_path / "model")
    torch.save(load_file(model / "model.safetensors"), model / "pytorch_model.bin")
    (model / "model.safetensors").unlink()
    argv = _tiny_argv(tmp_path / "x", "--run-dir", str(tmp_path / "run"))
    argv[argv.index("--model") + 1] = str(model)
    assert main(argv) == 1
    assert "only pickled weights (pytorch_model.bin)" in capsys.readouterr().err


def test_tf32_precision_is_scoped_to_cuda_runs():
    import torch

    from tlora_analysis.experiments.evaluation import matmul_precision

    before = torch.get_float32_matmul_precision()
    with matmul_precision("tf32", torch.device("cpu")):
        assert torch.get_float32_matmul_precision() == before  # the CPU keeps full fp32 products
    with pytest.raises(RuntimeError), matmul_precision("tf32", torch.device("cuda")):
        assert torch.get_float32_matmul_precision() == "high"
        raise RuntimeError("a failing run")
    assert torch.get_float32_matmul_precision() == before  # restored even when the run fails
    with matmul_precision("fp32", torch.device("cuda")):
        assert torch.get_float32_matmul_precision() == before
