"""The recorder: schedules, resume/overwrite, writer errors, Trainer callback, PEFT import."""

import numpy as np
import pytest
import torch

from helpers_runs import make_tiny_run, one_torch_thread, tiny_batch, tiny_config, tiny_model
from tlora_analysis import Run, SnapshotRecorder, apply_adapters
from tlora_analysis.recording import EveryN, Explicit, LogSpaced, RecorderWriteError, as_schedule
from tlora_analysis.store import RunExistsError


# ---------------------------------------------------------------------- schedules
def test_schedules():
    assert EveryN(3).steps_until(10) == [0, 3, 6, 9, 10]
    assert Explicit([2, 5]).steps_until(7) == [0, 2, 5, 7]
    log = LogSpaced(10, 1000)
    assert len(log.steps) == 10 and log.steps[0] == 0 and log.steps[-1] == 1000
    gaps = np.diff(log.steps)
    assert (gaps[1:] >= gaps[:-1]).all()  # dense early, sparse late
    assert LogSpaced(10, 4).steps == (0, 1, 2, 3, 4)
    assert as_schedule(4) == EveryN(4) and as_schedule([1, 2]) == Explicit([1, 2])
    assert LogSpaced(5).bind(100) == LogSpaced(5, 100)


@pytest.mark.parametrize("bad, err, match", [
    (lambda: Explicit([]), ValueError, "empty"),
    (lambda: Explicit([3, 3]), ValueError, "strictly increasing"),
    (lambda: Explicit([5, 2]), ValueError, "strictly increasing"),
    (lambda: Explicit([-1]), ValueError, "≥ 0"),
    (lambda: EveryN(0), ValueError, "≥ 1"),
    (lambda: as_schedule("often"), TypeError, "schedule must be"),
    (lambda: LogSpaced(5).steps, ValueError, "total_steps"),
])
def test_bad_schedules(bad, err, match):
    with pytest.raises(err, match=match):
        bad()


# ---------------------------------------------------------------------- recorder
def _model(method="tlora"):
    return apply_adapters(tiny_model(0), tiny_config(method)).train()


def _steps(model, opt, start, stop, rec=None):
    for s in range(start, stop):
        model(**tiny_batch(s)).loss.backward()
        opt.step()
        opt.zero_grad()
        if rec is not None:
            rec.log(s + 1, loss=1.0)


def test_schedule_with_initial_and_final_step(tmp_path):
    with one_torch_thread():
        model = _model()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        with SnapshotRecorder(model, tmp_path / "r", schedule=LogSpaced(4), total_steps=7) as rec:
            rec.attach(opt)
            _steps(model, opt, 0, 7)
    assert Run(tmp_path / "r").steps == list(LogSpaced(4, 7).steps) == [0, 1, 3, 7]
    with one_torch_thread():
        with SnapshotRecorder(_model(), tmp_path / "e", schedule=Explicit([2])) as rec:
            model = rec.model
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
            rec.attach(opt)
            _steps(model, opt, 0, 5)
    assert Run(tmp_path / "e").steps == [0, 2, 5]


def test_recorder_needs_adapters(tmp_path):
    with pytest.raises(ValueError, match="apply_adapters"):
        SnapshotRecorder(tiny_model(0), tmp_path / "r")


def test_recorder_refuses_existing_run_and_other_files(tmp_path):
    run = make_tiny_run(tmp_path, "tlora", steps=1)
    with pytest.raises(RunExistsError, match="resume=True"):
        SnapshotRecorder(_model(), run.path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunExistsError, match="other files"):
        SnapshotRecorder(_model(), tmp_path / "other")
    with pytest.raises(RunExistsError, match="'method' differs"):
        SnapshotRecorder(_model("lora"), run.path, resume=True)
    rec = SnapshotRecorder(_model("lora"), run.path, overwrite=True)
    rec.close()
    assert Run(run.path).method == "lora" and Run(run.path).steps == [0]
    assert not list(tmp_path.glob(".*"))  # no staging or trash folders left


def test_run_info_may_not_override_recorder_fields(tmp_path):
    with pytest.raises(ValueError, match="run_info may not set"):
        SnapshotRecorder(_model(), tmp_path / "r", run_info={"method": "x"})


def test_resume_continues_without_duplicates_or_gaps(tmp_path):
    with one_torch_thread():
        model = _model()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        rec = SnapshotRecorder(model, tmp_path / "r").attach(opt)
        _steps(model, opt, 0, 5, rec)
        rec.flush()  # a crash now: no close, final step 5 already recorded by the schedule
        # restart from a checkpoint taken at step 3: steps 4, 5 and their metrics are redone
        rec2 = SnapshotRecorder(model, tmp_path / "r", resume=True, start_step=3)
        assert Run(tmp_path / "r").steps == [0, 1, 2, 3]
        opt2 = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        with rec2:
            rec2.attach(opt2)
            _steps(model, opt2, 3, 6, rec2)
    run = Run(tmp_path / "r")
    assert run.steps == [0, 1, 2, 3, 4, 5, 6]
    assert run.metrics.step.tolist() == [1, 2, 3, 4, 5, 6]
    assert run.config["resumed_at_steps"] == [3] and run.config["status"] == "complete"
    assert run.verify().ok


def test_writer_error_surfaces_at_next_call(tmp_path, monkeypatch):
    with one_torch_thread():
        model = _model()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        rec = SnapshotRecorder(model, tmp_path / "r").attach(opt)

        def fail(*a, **k):
            raise OSError("disk full")

        monkeypatch.setattr(rec._writer, "write_snapshot", fail)
        _steps(model, opt, 0, 1)  # step 1 is queued; the thread fails writing it
        with pytest.raises(RecorderWriteError, match="disk full"):
            rec.flush()
        with pytest.raises(RecorderWriteError, match="disk full"):
            rec.log(1, loss=0.0)
        with pytest.raises(RecorderWriteError):
            rec.close()


def test_inline_writer_matches_background(tmp_path):
    runs = []
    for background in (True, False):
        with one_torch_thread():
            model = _model()
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
            with SnapshotRecorder(model, tmp_path / f"r{background}", background=background, max_pending=1) as rec:
                rec.attach(opt)
                _steps(model, opt, 0, 3, rec)
        runs.append(Run(tmp_path / f"r{background}"))
    a, b = runs
    assert a.steps == b.steps == [0, 1, 2, 3]
    for layer in a.layers:
        torch.testing.assert_close(a.trainable(layer, 3), b.trainable(layer, 3), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned-memory copy path needs CUDA")
def test_cuda_snapshots_match_the_device_state(tmp_path):
    model = _model().cuda()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with SnapshotRecorder(model, tmp_path / "r") as rec:
        rec.attach(opt)
        for s in range(3):
            model(**{k: v.cuda() for k, v in tiny_batch(s).items()}).loss.backward()
            opt.step()
            opt.zero_grad()
    run = Run(tmp_path / "r")
    layer = run.layers[0]
    torch.testing.assert_close(run.trainable(layer, 3)["tlora_B"], model.get_submodule(layer).tlora_B.detach().cpu())


# ---------------------------------------------------------------------- Hugging Face
class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        b = tiny_batch(i, batch_size=1)
        return {"input_ids": b["input_ids"][0], "labels": b["labels"][0]}


def _trainer(model, out, max_steps, callbacks=(), save_steps=None):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
                             logging_steps=1, save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
                             eval_strategy="steps", eval_steps=max_steps, report_to=[], use_cpu=True,
                             dataloader_num_workers=0, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=_Data(), eval_dataset=_Data(), callbacks=list(callbacks))


def test_recorder_callback_with_a_real_trainer(tmp_path):
    from tlora_analysis.recording import RecorderCallback

    with one_torch_thread():
        model = _model()
        cb = RecorderCallback(tmp_path / "run", schedule=2)
        _trainer(model, tmp_path / "out", max_steps=5, callbacks=[cb]).train()
    run = Run(tmp_path / "run")
    assert run.steps == [0, 2, 4, 5]
    name = run.layers[0]
    np.testing.assert_allclose(run.update(name, 5).dense(), model.get_submodule(name).delta_weight().double().numpy(), atol=1e-6)
    m = run.metrics
    assert m[m.event == "train"].step.tolist() == [1, 2, 3, 4, 5]
    assert {"loss", "lr"} <= set(m.columns)
    ev = m[m.event == "eval"]
    assert len(ev) == 1 and ev.split.iloc[0] == "validation" and np.isfinite(ev.eval_loss.iloc[0])
    assert run.config["hyperparameters"]["max_steps"] == 5 and run.config["total_steps"] == 5


def _peft_model():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_model(0), LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                                    alpha_pattern={"value": 4}))


def _peft_delta(module):
    return (module.lora_B["default"].weight @ module.lora_A["default"].weight).double() * module.scaling["default"]


def test_peft_save_pretrained_opens_as_a_lora_run(tmp_path):
    with one_torch_thread():
        model = _peft_model()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        _steps(model, opt, 0, 2)
    model.save_pretrained(tmp_path / "adapter")
    run = Run(tmp_path / "adapter")
    assert run.kind == "peft_adapter" and run.method == "lora" and run.steps == [0] and run.rank == 4
    assert len(run.layers) == 4 and run.layers[0] == "bert.encoder.layer.0.attention.self.query"
    for name in run.layers:
        module = model.base_model.model.get_submodule(name)
        np.testing.assert_allclose(run.update(name, 0).dense(), _peft_delta(module).detach().numpy(), atol=1e-6)
    assert run.lora_scaling(run.layers[1]) == 1.0 and run.lora_scaling(run.layers[0]) == 2.0
    assert run.verify().ok and not run.has_base_weights


def test_trainer_checkpoints_open_as_one_snapshot_each(tmp_path):
    with one_torch_thread():
        model = _peft_model()
        _trainer(model, tmp_path / "out", max_steps=4, save_steps=2).train()
    run = Run(tmp_path / "out")
    assert run.kind == "trainer_checkpoints" and run.steps == [2, 4]
    name = run.layers[2]
    module = model.base_model.model.get_submodule(name)
    np.testing.assert_allclose(run.update(name, 4).dense(), _peft_delta(module).detach().numpy(), atol=1e-6)
    assert run.snapshot_info(4)["epoch"] == pytest.approx(1.0)
    m = run.metrics
    assert m[m.event == "train"].step.tolist() == [1, 2, 3, 4] and "lr" in m.columns
    assert (m.event == "eval").sum() == 1


def test_log_spaced_without_length_fails_at_creation(tmp_path):
    with pytest.raises(ValueError, match="total_steps"):
        SnapshotRecorder(_model(), tmp_path / "r", schedule=LogSpaced(5))
    assert not (tmp_path / "r").exists()


def test_recorder_callback_resumes_with_the_trainer(tmp_path):
    from tlora_analysis.recording import RecorderCallback

    with one_torch_thread():
        model = _model()
        _trainer(model, tmp_path / "out", max_steps=4, save_steps=2,
                 callbacks=[RecorderCallback(tmp_path / "run")]).train()
        first = Run(tmp_path / "run")
        final = {layer: first.trainable(layer, 4) for layer in first.layers}
        # a crash after step 4, then a restart from checkpoint-2: steps 3 and 4 are redone
        again = _model()
        _trainer(again, tmp_path / "out", max_steps=4, save_steps=2,
                 callbacks=[RecorderCallback(tmp_path / "run")]).train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    run = Run(tmp_path / "run")
    assert run.steps == [0, 1, 2, 3, 4] and run.config["resumed_at_steps"] == [2]
    train = run.metrics[run.metrics.event == "train"]
    assert train.step.tolist() == [1, 2, 3, 4]
    for layer in run.layers:
        torch.testing.assert_close(run.trainable(layer, 4), final[layer], rtol=1e-5, atol=1e-6)
