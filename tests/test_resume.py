"""Resuming the runner: SIGKILLed at several points (just after an evaluation, between evaluations,
while the resume point is written), ``--resume`` ends bit-identical to an uninterrupted run on the
CPU; the resume point is one file bound to its run; the recorder's own resume keeps every metrics line.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch

from helpers_runs import one_torch_thread, tiny_batch, tiny_config, tiny_model
from test_train_fixtures import make_local_task, make_tiny_model
from tlora_analysis import Run, SnapshotRecorder, apply_adapters
from tlora_analysis.experiments.config import TrainConfig
from tlora_analysis.experiments.train import train
from tlora_analysis.fileio import CorruptFileError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills fork a child from the test process")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return {"model": str(make_tiny_model(root / "model")), **make_local_task(root / "data")}


def _config(tiny, run_dir, **kw):
    # TLoRA dropout on: the resumed run must also continue the dropout stream exactly; loss windows of 3 steps
    # across evaluations every 4
    base = dict(method="tlora", rank=4, epochs=3, batch_size=16, lr=1e-2, dropout=0.1, log_every=3, eval_every=4,
                snapshots="every:2", max_length=16, progress=False, verbose=False, run_dir=str(run_dir), **tiny)
    return TrainConfig(**{**base, **kw})


def _die():
    os.kill(os.getpid(), signal.SIGKILL)


def _child(config: TrainConfig, where: str, at: int) -> None:
    """Train in a forked child that SIGKILLs itself at ``where`` / step ``at``."""
    import tlora_analysis.experiments.checkpoint as checkpoint
    import tlora_analysis.experiments.train as runner

    torch.set_num_threads(1)
    real_save = runner.save_trainer_state
    if where == "after_eval":  # the evaluation and its resume point are written, nothing after
        def save(run_dir, model, optimizer, scheduler, step, extra, **kw):
            real_save(run_dir, model, optimizer, scheduler, step, extra, **kw)
            if step == at:
                _die()
        runner.save_trainer_state = save
    elif where == "mid_interval":  # optimizer step `at` done, its snapshot taken, before the next evaluation
        real_advance = SnapshotRecorder.advance

        def advance(self):
            real_advance(self)
            if self.step == at:
                _die()
        SnapshotRecorder.advance = advance
    elif where == "writing_state":  # the resume point of step `at` is being written: its file is not renamed in
        real_tensors = checkpoint.save_tensors

        def save_tensors(path, tensors, metadata=None):
            if '"step": %d,' % at in metadata["state"]:
                _die()
            return real_tensors(path, tensors, metadata)
        checkpoint.save_tensors = save_tensors
    train(config)
    os._exit(3)  # not killed: the test fails on the exit code


@pytest.mark.parametrize("where, at, resumed_from", [("after_eval", 8, 8), ("mid_interval", 10, 8),
                                                     ("writing_state", 12, 8)])
def test_killed_run_resumes_bit_identical(tiny, tmp_path, where, at, resumed_from):
    with one_torch_thread():
        straight = train(_config(tiny, tmp_path / "straight"))
    run_dir = tmp_path / "killed"
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(_config(tiny, run_dir), where, at))
    proc.start()
    proc.join(timeout=300)
    assert proc.exitcode == -signal.SIGKILL
    assert Run(run_dir).verify().ok, str(Run(run_dir).verify())
    with one_torch_thread():
        resumed = train(_config(tiny, run_dir, resume=True))
    run, ref = Run(run_dir), Run(straight.run_dir)
    assert run.config["resumed_at_steps"] == [resumed_from]
    assert run.steps == ref.steps and run.verify().ok
    for step in ref.steps:
        for layer in ref.layers:
            for key, t in ref.trainable(layer, step).items():
                assert torch.equal(run.trainable(layer, step)[key], t), (step, layer, key)
    assert resumed.evals == straight.evals and resumed.train_losses == straight.train_losses
    for kind in ("train", "eval"):
        a, b = run.metrics.query(f"event == '{kind}'"), ref.metrics.query(f"event == '{kind}'")
        assert a.step.tolist() == b.step.tolist()
        cols = ["loss"] if kind == "train" else ["eval_loss", "accuracy", "mcc"]
        assert a[cols].to_numpy().tolist() == b[cols].to_numpy().tolist()


def test_resume_point_is_one_file_bound_to_its_run(tiny, tmp_path):
    with one_torch_thread():
        a = train(_config(tiny, tmp_path / "a", epochs=1))
        train(_config(tiny, tmp_path / "b", epochs=1))
    assert sorted(p.name for p in (a.run_dir / "trainer_state").iterdir()) == ["state.safetensors"]
    shutil.copy(tmp_path / "b" / "trainer_state" / "state.safetensors", a.run_dir / "trainer_state")
    with pytest.raises(CorruptFileError, match="belongs to another run"):
        train(_config(tiny, tmp_path / "a", epochs=1, resume=True))


def test_a_resume_with_other_settings_is_refused_before_anything_changes(tiny, tmp_path):
    with one_torch_thread():
        run = train(_config(tiny, tmp_path / "a", epochs=1)).run_dir
    before = (run / "run.json").read_bytes()
    with pytest.raises(ValueError, match=r"batch_size \(recorded 16, now 4\); lr \(recorded 0.01, now 0.05\)\. .*--overwrite"):
        train(_config(tiny, run, epochs=1, resume=True, lr=5e-2, batch_size=4, progress=True))
    assert (run / "run.json").read_bytes() == before
    with one_torch_thread():  # how the run is shown is free to change
        train(_config(tiny, run, epochs=1, resume=True, verbose=True))


def _record_until_killed(run_dir: str, kill_at: int) -> None:
    """A training loop that logs every step; killed inside ``log`` of step ``kill_at``, after its snapshot was taken."""
    torch.set_num_threads(1)
    model = apply_adapters(tiny_model(0), tiny_config("tlora")).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    rec = SnapshotRecorder(model, run_dir, schedule=1, total_steps=100).attach(opt)
    for step in range(100):
        model(**tiny_batch(step)).loss.backward()
        opt.step()
        opt.zero_grad()
        if step + 1 == kill_at:
            rec._thread.flush()  # what was queued before this step is on disk (step 7's snapshot is not queued yet)
            _die()
        rec.log(step + 1, loss=float(step))


def test_recorder_resume_after_a_kill_keeps_every_metrics_line(tmp_path):
    run_dir = tmp_path / "run"
    proc = multiprocessing.get_context("fork").Process(target=_record_until_killed, args=(str(run_dir), 7))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == -signal.SIGKILL
    killed = Run(run_dir)
    assert killed.verify().ok and killed.steps[-1] == 6  # step 7's snapshot waited for its metrics line
    with one_torch_thread():
        model = apply_adapters(tiny_model(0), tiny_config("tlora")).train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        with SnapshotRecorder(model, run_dir, schedule=1, total_steps=10, resume=True) as rec:
            rec.attach(opt)
            for step in range(rec.step, 10):
                model(**tiny_batch(step)).loss.backward()
                opt.step()
                opt.zero_grad()
                rec.log(step + 1, loss=float(step))
    run = Run(run_dir)
    assert run.metrics.step.tolist() == list(range(1, 11))
    assert run.steps == list(range(11)) and run.verify().ok


def test_verify_reads_the_resume_point_and_the_final_adapter(tiny, tmp_path):
    """A truncated trainer state or adapter weights, or an adapter config that is not JSON, is a problem that
    `verify` names; the intact run verifies with both files read."""
    with one_torch_thread():
        run_dir = train(_config(tiny, tmp_path / "run", epochs=1)).run_dir
    report = Run(run_dir).verify()
    checked = {Path(c.path).relative_to(run_dir).as_posix(): c for c in report.checks}
    assert report.ok and {"trainer_state/state.safetensors", "adapter/adapter_model.safetensors",
                          "adapter/adapter_config.json"} <= set(checked)
    for name, damage in (("trainer_state/state.safetensors", b"\x00" * 40), ("adapter/adapter_model.safetensors",
                                                                             b"\x00" * 40),
                         ("adapter/adapter_config.json", b"{")):
        path = run_dir / name
        kept = path.read_bytes()
        path.write_bytes(damage)
        problems = {Path(c.path).relative_to(run_dir).as_posix() for c in Run(run_dir).verify().problems}
        assert problems == {name}, (name, problems)
        path.write_bytes(kept)


def _small_training_state():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_the_resume_point_keeps_the_fp16_loss_scale(tmp_path):
    from tlora_analysis.experiments.checkpoint import load_trainer_state, save_trainer_state

    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict({"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 7})  # where a run's scale had got to
    save_trainer_state(tmp_path, *_small_training_state(), step=4, extra={}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu")
    load_trainer_state(tmp_path, *_small_training_state(), scaler=fresh)
    assert fresh.state_dict() == scaler.state_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA generator needs a GPU")
def test_the_resume_point_continues_the_cuda_generator(tmp_path):
    from tlora_analysis.experiments.checkpoint import load_trainer_state, save_trainer_state

    torch.cuda.manual_seed_all(3)
    torch.rand(5, device="cuda")
    save_trainer_state(tmp_path, *_small_training_state(), step=4, extra={})
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed_all(3)  # what a resumed run's seeding does
    load_trainer_state(tmp_path, *_small_training_state())
    assert torch.equal(torch.rand(5, device="cuda"), expected)
