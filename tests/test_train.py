"""The training runner on a tiny random BERT: every method, recording, determinism, resume, errors."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from test_train_fixtures import make_local_task, make_tiny_model
from tlora_analysis import analysis
from tlora_analysis.experiments.config import TrainConfig
from tlora_analysis.experiments.models import LabelRangeError, UnknownModelError, UnknownTargetError
from tlora_analysis.experiments.train import DiskFullError, train
from tlora_analysis.store import Run, RunExistsError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": str(make_tiny_model(root / "model")), **make_local_task(root / "data")}


def _config(tiny, tmp_path, **kw):
    base = dict(rank=4, epochs=2, batch_size=16, lr=1e-2, log_every=1, progress=False, snapshots="every:3",
                max_length=16, run_dir=str(tmp_path / "run"), **tiny)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("method", ["tlora", "lora", "full", "vera", "lora-xs", "peft-lora"])
def test_every_method_writes_a_readable_run(tiny, tmp_path, method):
    result = train(_config(tiny, tmp_path, method=method))
    run = Run(result.run_dir)
    assert run.method == ("lora" if method == "peft-lora" else method)
    assert result.steps == 12 and run.steps[0] == 0 and run.steps[-1] == 12
    assert run.config["status"] == "complete"
    assert run.config["hyperparameters"]["method"] == method
    assert run.config["parameters"]["trainable"] == result.parameters["trainable"]
    events = run.metrics
    train_ev, eval_ev = events[events.event == "train"], events[events.event == "eval"]
    assert {"step", "epoch", "event", "wall_time", "loss", "lr", "examples_per_s"} <= set(train_ev.columns)
    assert len(train_ev) == 12 and np.isfinite(train_ev["loss"]).all()
    assert list(eval_ev["step"]) == [6, 12] and set(eval_ev["split"]) == {"validation"}
    tiny_labels = pd.read_csv(tiny["validation_file"])["label"]  # in the validation file's order
    assert run.prediction_steps == [6, 12]
    for step, accuracy in zip(eval_ev["step"], eval_ev["accuracy"]):  # every evaluation's per-example outputs
        outputs = run.predictions(step)
        logits, labels = outputs["logits"].numpy(), outputs["labels"].numpy()
        assert logits.shape == (len(labels), 2) and labels.tolist() == list(tiny_labels)
        assert np.mean(logits.argmax(1) == labels) == pytest.approx(accuracy)
    snap_epochs = analysis.norms(run).groupby("step")["epoch"].first().drop(0)  # 6 steps an epoch
    np.testing.assert_allclose(snap_epochs.to_numpy(float), snap_epochs.index.to_numpy() / 6)
    np.testing.assert_allclose(train_ev["epoch"], train_ev["step"] / 6)
    assert eval_ev[["eval_loss", "accuracy", "f1", "mcc"]].notna().all().all()
    assert (result.run_dir / "adapter").is_dir()
    if method != "full":
        assert run.layers == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
        assert run.has_base_weights
    update = run.update(run.layers[0], 12)
    assert np.linalg.norm(np.asarray(update.dense())) > 0


def test_kept_validation_outputs_that_were_moved_or_copied_are_named(tiny, tmp_path):
    from tlora_analysis.fileio import CorruptFileError
    from tlora_analysis.store.format import ForeignFileError, UnknownStepError

    first = train(_config(tiny, tmp_path, method="tlora", epochs=1))
    other = train(_config(tiny, tmp_path, method="tlora", epochs=1, run_dir=str(tmp_path / "other")))
    run, folder = Run(first.run_dir), first.run_dir / "predictions"
    with pytest.raises(UnknownStepError, match="no validation outputs at step 5; steps with outputs: 6"):
        run.predictions(5)
    shutil.copy(folder / f"{6:09d}.safetensors", folder / f"{3:09d}.safetensors")
    with pytest.raises(CorruptFileError, match="holds step 6, not 3"):
        Run(first.run_dir).predictions(3)
    shutil.copy(other.run_dir / "predictions" / f"{6:09d}.safetensors", folder / f"{6:09d}.safetensors")
    with pytest.raises(ForeignFileError, match="written by another run"):
        Run(first.run_dir).predictions(6)


def test_peft_lora_snapshots_are_peft_parameters(tiny, tmp_path):
    result = train(_config(tiny, tmp_path, method="peft-lora", epochs=1))
    run = Run(result.run_dir)
    saved = load_file(result.run_dir / "adapter" / "adapter_model.safetensors")  # written by PEFT
    key = next(k for k in saved if "layer.0.attention.self.query.lora_B" in k)
    assert torch.equal(run.trainable("bert.encoder.layer.0.attention.self.query", run.steps[-1])["lora_B"], saved[key])
    assert run.lora_scaling(run.layers[0]) == pytest.approx(16 / 4)


def test_loss_falls_and_learns_the_easy_task(tiny, tmp_path):
    result = train(_config(tiny, tmp_path, method="tlora", epochs=6, lr=3e-2, dropout=0.0))
    losses = [loss for _, loss in result.train_losses]
    assert np.mean(losses[-6:]) < np.mean(losses[:6]) - 0.05
    assert result.best["accuracy"] > 0.8
    assert result.best["accuracy"] >= result.last["accuracy"] or result.best["step"] == result.last["step"]


def test_logged_train_loss_is_the_mean_over_the_logging_window(tiny, tmp_path):
    every = train(_config(tiny, tmp_path, run_dir=str(tmp_path / "every"), log_every=1)).train_losses
    windowed = train(_config(tiny, tmp_path, run_dir=str(tmp_path / "win"), log_every=4)).train_losses
    per_step = [loss for _, loss in every]
    assert [s for s, _ in windowed] == [4, 6, 8, 12]  # a window also ends at each evaluation (epoch ends: 6, 12)
    assert [loss for _, loss in windowed] == pytest.approx([np.mean(per_step[a:b]) for a, b in
                                                            ((0, 4), (4, 6), (6, 8), (8, 12))], rel=1e-6)


def test_logged_lr_is_the_rate_each_step_used(tiny, tmp_path):
    """Linear warmup then decay to 0 over T steps: step k (1-based) runs at lr·λ(k − 1)."""
    result = train(_config(tiny, tmp_path, warmup_ratio=0.25))
    logged = result.run.metrics.query("event == 'train'")[["step", "lr"]]
    total, warmup = int(logged["step"].max()), round(0.25 * int(logged["step"].max()))
    ramp = [k / warmup if k < warmup else (total - k) / (total - warmup) for k in range(total)]
    assert list(logged["step"]) == list(range(1, total + 1))
    assert logged["lr"].to_numpy() == pytest.approx(1e-2 * np.array(ramp), abs=1e-12)


def test_same_command_twice_gives_the_same_metrics(tiny, tmp_path):
    a = train(_config(tiny, tmp_path, run_dir=str(tmp_path / "a")))
    b = train(_config(tiny, tmp_path, run_dir=str(tmp_path / "b")))
    assert a.evals == b.evals and a.train_losses == b.train_losses
    ra, rb = Run(a.run_dir), Run(b.run_dir)
    for layer in ra.layers:
        for key, t in ra.trainable(layer, 12).items():
            assert torch.equal(t, rb.trainable(layer, 12)[key])
    c = train(_config(tiny, tmp_path, run_dir=str(tmp_path / "c"), seed=1))
    assert c.train_losses != a.train_losses


def test_paper_preset_and_head_modes(tiny, tmp_path):
    result = train(_config(tiny, tmp_path, method="tlora", head="frozen", epochs=1))
    assert result.parameters["trainable"] == 4 * (4 * 4 + 1)  # r² + 1 per adapted matrix, head frozen
    fresh = train(_config(tiny, tmp_path, method="tlora", epochs=1, run_dir=str(tmp_path / "fresh")))
    assert fresh.parameters["trainable"] == 4 * 17 + (32 * 2 + 2)


def test_loading_a_model_prints_nothing_and_leaves_transformers_logging_as_it_was(tiny, capfd):
    """transformers' loading bar and its report of the new head stay quiet (--quiet means it); its verbosity
    and progress-bar switch are the caller's again afterwards."""
    from transformers.utils import logging as hf_logging

    from tlora_analysis.experiments.models import load_model

    before = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    load_model(tiny["model"], 2)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()) == before


# ---------------------------------------------------------------- bad input

def test_fp16_off_cuda_is_refused_before_anything_loads(tiny, tmp_path):
    """The model path does not exist: the fp16 error comes first, so nothing was loaded before it."""
    with pytest.raises(ValueError, match="fp16 training needs a CUDA device and this run is on cpu"):
        train(_config(tiny, tmp_path, precision="fp16", device="cpu", model=str(tmp_path / "no-model")))
    assert not (tmp_path / "run").exists()

def test_existing_run_dir_needs_resume_or_overwrite(tiny, tmp_path):
    train(_config(tiny, tmp_path, epochs=1))
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        train(_config(tiny, tmp_path, epochs=1))
    again = train(_config(tiny, tmp_path, epochs=1, overwrite=True))
    assert Run(again.run_dir).config["status"] == "complete"
    with pytest.raises(FileNotFoundError, match="drop --resume"):
        train(_config(tiny, tmp_path, epochs=1, resume=True, run_dir=str(tmp_path / "never")))


def test_unknown_target_lists_close_names(tiny, tmp_path):
    with pytest.raises(UnknownTargetError, match=r"'quer'.*close names: \['query'\]"):
        train(_config(tiny, tmp_path, targets=("quer", "value")))


def test_rank_rejected(tiny, tmp_path):
    with pytest.raises(ValueError, match="rank 64 exceeds min"):
        train(_config(tiny, tmp_path, rank=64))
    with pytest.raises(ValueError, match="rank 64 exceeds min"):
        train(_config(tiny, tmp_path, rank=64, method="peft-lora"))
    with pytest.raises(ValueError, match="positive integer"):
        train(_config(tiny, tmp_path, rank=0))


def test_labels_outside_frozen_head(tiny, tmp_path):
    three = {**tiny, "model": str(make_tiny_model(tmp_path / "two", num_labels=2))}
    train_csv = tmp_path / "three.csv"
    train_csv.write_text("sentence,label\ngood movie,0\nbad movie,1\nthe plot,2\n")
    with pytest.raises(LabelRangeError, match="0..2.*2 outputs.*head='fresh'"):
        train(_config(three, tmp_path, head="frozen", train_file=str(train_csv), validation_file=str(train_csv)))


def test_unknown_model_and_task(tiny, tmp_path):
    with pytest.raises(UnknownModelError, match="does not exist"):
        train(_config(tiny, tmp_path, model="./no/such/model"))
    with pytest.raises(ValueError, match="unknown task"):
        train(TrainConfig(task="nonsense", model=tiny["model"], run_dir=str(tmp_path / "x"), progress=False))


def test_missing_column(tiny, tmp_path):
    with pytest.raises(ValueError, match="no column"):
        train(_config(tiny, tmp_path, text_columns=("review",)))


def test_no_space_left_keeps_the_run_readable(tiny, tmp_path, monkeypatch):
    import tlora_analysis.store.writer as writer

    real, calls = writer.save_tensors, {"n": 0}

    def filling_disk(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] > 4:  # frozen + step 0 + two snapshots succeed, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors, metadata)

    monkeypatch.setattr(writer, "save_tensors", filling_disk)
    with pytest.raises(DiskFullError, match="no space left.*readable up to step 6.*--resume"):
        train(_config(tiny, tmp_path, snapshots="every:3"))
    run = Run(tmp_path / "run")
    assert run.steps == [0, 3, 6]
    assert run.trainable(run.layers[0], 6)["tlora_B"].abs().sum() > 0


# ---------------------------------------------------------------- task-aware metrics end to end

def _glue_folder(folder, task):
    """A tiny GLUE folder of ``task`` in its original layout, learnable by the tiny model's vocabulary."""
    from test_train_fixtures import sentiment_frame

    folder.mkdir(parents=True, exist_ok=True)
    for name, seed, n in (("train.tsv", 1, 96), ("dev.tsv", 2, 32)):
        frame = sentiment_frame(n, seed)
        if task == "cola":  # headerless: source, label, original mark, sentence
            text = "".join(f"src\t{y}\t{'' if y else '*'}\t{s}\n" for s, y in zip(frame["sentence"], frame["label"]))
        else:  # STS-B: a score in [0, 5] that the positive words raise
            head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
            text = head + "".join(f"{i}\tg\tf\t2012\t{i}\ts\ts\t{s}\tthe movie\t{4.5 * y + 0.25 * (i % 3):.2f}\n"
                                  for i, (s, y) in enumerate(zip(frame["sentence"], frame["label"])))
        (folder / name).write_text(text)
    return folder


def test_cola_is_judged_by_mcc_and_stsb_by_pearson_with_an_mse_loss(tiny, tmp_path):
    from tlora_analysis.figures.catalog import FigureContext
    from tlora_analysis.figures import RunRoles

    common = {k: v for k, v in tiny.items() if k == "model"}
    cola = train(_config(common, tmp_path, task="cola", data_dir=str(_glue_folder(tmp_path / "CoLA", "cola")),
                         run_dir=str(tmp_path / "cola"), epochs=4, lr=3e-2, dropout=0.0))
    run = Run(cola.run_dir)
    assert run.config["selection_metric"] == "mcc" and cola.selection_metric == "mcc"
    assert cola.best["mcc"] == max(e["mcc"] for e in cola.evals)
    assert run.config["regression"] is False and run.config["loss"] == "cross_entropy"
    assert run.config["majority_baseline"]["mcc"] == 0.0
    assert FigureContext(RunRoles([run])).eval_metric() == "mcc"
    stsb = train(_config(common, tmp_path, task="stsb", data_dir=str(_glue_folder(tmp_path / "STS-B", "stsb")),
                         run_dir=str(tmp_path / "stsb"), epochs=2))
    run = Run(stsb.run_dir)
    assert run.config["regression"] is True and run.config["hyperparameters"]["regression"] is True
    assert run.config["loss"] == "mse" and run.config["selection_metric"] == "pearson"
    assert "majority_baseline" not in run.config
    ctx = FigureContext(RunRoles([run]))
    assert ctx.eval_metric() == "pearson" and ctx.loss() == "MSE loss"
    assert stsb.best.get("pearson") is not None


def test_a_frozen_head_that_had_to_be_made_up_is_announced(tiny, tmp_path):
    from transformers import BertModel

    from tlora_analysis.experiments.models import load_model

    headless = tmp_path / "headless"
    BertModel.from_pretrained(tiny["model"]).save_pretrained(headless)
    for f in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(tiny["model"]) / f).is_file():
            shutil.copy(Path(tiny["model"]) / f, headless / f)
    with pytest.warns(UserWarning, match="no trained classification head.*--head fresh"):
        loaded = load_model(str(headless), 2, head="frozen")
    assert loaded.head_note and "random" in loaded.head_note
