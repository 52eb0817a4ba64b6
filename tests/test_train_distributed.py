"""Two processes on gloo (CPU) through torchrun: one run directory, falling loss, identical adapters."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import torch
from safetensors.torch import load_file

from test_train_fixtures import make_local_task, make_tiny_model
from tlora_analysis.store import Run

SCRIPT = textwrap.dedent('''
    import os, sys, torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from tlora_analysis.adapters import adapted_layers
    from tlora_analysis.experiments.train import train
    model_dir, train_csv, val_csv, run_dir, out_dir = sys.argv[1:6]
    result = train(model=model_dir, task="local", train_file=train_csv, validation_file=val_csv,
                   text_columns=("sentence",), method="tlora", rank=4, epochs=6, batch_size=8, lr=3e-2,
                   dropout=0.0, max_length=16, log_every=1, progress=False, snapshots="every:6", run_dir=run_dir)
    state = {f"{n}.{k}": t.detach().clone() for n, l in adapted_layers(result.model).items()
             for k, t in l.trainable_state().items()}
    save_file(state, os.path.join(out_dir, f"rank{os.environ['RANK']}.safetensors"))
''')


def test_two_processes_gloo(tmp_path):
    model_dir = make_tiny_model(tmp_path / "model")
    task = make_local_task(tmp_path / "data")
    (tmp_path / "ddp.py").write_text(SCRIPT)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(tmp_path / "ddp.py"), str(model_dir), task["train_file"], task["validation_file"],
           str(runs / "ddp"), str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    assert [p.name for p in runs.iterdir()] == ["ddp"]  # rank 0 alone wrote, into one folder
    run = Run(runs / "ddp")
    assert run.config["hyperparameters"]["world_size"] == 2
    assert run.config["status"] == "complete"
    # 96 examples, 48 per process, batch 8: 6 steps an epoch, 36 in all
    assert run.steps == [0, 6, 12, 18, 24, 30, 36]
    losses = run.metrics.query("event == 'train'")["loss"].to_numpy()
    assert len(losses) == 36 and losses[-6:].mean() < losses[:6].mean() - 0.1

    rank0, rank1 = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    layer = "bert.encoder.layer.0.attention.self.query"
    assert torch.equal(run.trainable(layer, 36)["tlora_B"], rank0[f"{layer}.tlora_B"])
    assert np.abs(rank0[f"{layer}.tlora_B"].numpy()).sum() > 0
