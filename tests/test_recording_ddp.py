"""Distributed recording: 2 DDP processes on gloo, one writer, snapshots equal to one process."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from helpers_runs import one_torch_thread, tiny_batch, tiny_config, tiny_model
from tlora_analysis import Run, SnapshotRecorder, apply_adapters

STEPS = 3

WORKER = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from helpers_runs import tiny_model, tiny_config, tiny_batch
    from tlora_analysis import apply_adapters, SnapshotRecorder
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = DistributedDataParallel(apply_adapters(tiny_model(0), tiny_config("tlora")).train())
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    with SnapshotRecorder(model, {run_dir!r}) as rec:
        rec.attach(opt)
        for step in range({steps}):
            batch = {{k: v[rank::2] for k, v in tiny_batch(step).items()}}  # half the batch each
            model(**batch).loss.backward()  # DDP averages: the full batch's mean gradient
            opt.step(); opt.zero_grad()
            rec.log(step + 1, loss=0.0)
    print(f"rank={{rank}} writer={{rec.is_writer}} step={{rec.step}}", flush=True)
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_one_writer_same_snapshots(tmp_path):
    run_dir = tmp_path / "ddp"
    code = WORKER.format(tests=str(Path(__file__).parent), run_dir=str(run_dir), steps=STEPS)
    env_base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": "2"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env_base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "rank=0 writer=True step=3" in outs[0][0] and "rank=1 writer=False step=3" in outs[1][0]
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # exactly one run, no leftovers of a second writer

    with one_torch_thread():  # the same training in one process, on the whole batch
        model = apply_adapters(tiny_model(0), tiny_config("tlora")).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        with SnapshotRecorder(model, tmp_path / "single") as rec:
            rec.attach(opt)
            for step in range(STEPS):
                model(**tiny_batch(step)).loss.backward()
                opt.step()
                opt.zero_grad()
    ddp, single = Run(run_dir), Run(tmp_path / "single")
    assert ddp.steps == single.steps == [0, 1, 2, 3] and ddp.layers == single.layers
    assert len(ddp.metrics) == STEPS  # one writer: no doubled events
    for layer in ddp.layers:
        for step in ddp.steps:
            a, b = ddp.trainable(layer, step), single.trainable(layer, step)
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert ddp.update(ddp.layers[0], STEPS).fro_norm() > 0
