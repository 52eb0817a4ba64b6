"""The runner's resume point: trainable weights, optimizer, scheduler and RNG state in one file, no pickle.

``<run_dir>/trainer_state/state.safetensors`` holds the tensors (trainable parameters, AdamW
moments, torch's CPU and CUDA and NumPy's RNG states) and, in its metadata, the JSON rest (step,
scheduler, fp16 gradient scaler, parameter groups, Python RNG, best and past evaluations) plus the
run id of the run it belongs to. The CUDA generators are the writing process's (one process: the
run's; under DDP the other ranks' dropout streams restart from their seed). One file written atomically: a process killed at any instant leaves the previous resume
point or the new one, never a mixture of two steps.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import CorruptFileError, load_tensors, save_tensors
from ..store.format import STATE_DIR, STATE_FILE

__all__ = ["save_trainer_state", "load_trainer_state", "STATE_DIR", "STATE_FILE"]


def save_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       step: int, extra: dict[str, Any], run_id: str | None = None, scaler: Any = None) -> None:
    """Write the resume point of ``step`` (``extra``: JSON values kept with it, e.g. best and evals; ``scaler``:
    the fp16 gradient scaler, whose loss scale would otherwise restart at its initial value)."""
    tensors = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng.cuda.{i}": t for i, t in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_state = random.getstate()
    state = {
        "step": step,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_numpy_pos": int(np_state[2]),
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "scaler": None if scaler is None else scaler.state_dict(),
        **extra,
    }
    save_tensors(Path(run_dir) / STATE_DIR / STATE_FILE, tensors,
                 {"format": "tlora_analysis.trainer_state", "run_id": run_id or "", "state": json.dumps(state)})


def load_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       run_id: str | None = None, scaler: Any = None) -> dict[str, Any]:
    """Restore what :func:`save_trainer_state` wrote; returns its JSON part (step, best, ...).

    ``run_id``: the run's id from run.json; a resume point written for another run is refused.
    """
    path = Path(run_dir) / STATE_DIR / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.parent} has no saved trainer state: the run never reached an evaluation, so there is nothing "
            f"to resume from. Start again with --overwrite"
        )
    tensors, meta = load_tensors(path)
    if "state" not in meta:
        raise CorruptFileError(f"{path} has no 'state' record in its metadata: it was not written by this runner, "
                               "or is damaged. Start again with --overwrite")
    if run_id and meta.get("run_id") != run_id:
        raise CorruptFileError(f"{path} belongs to another run (run id {meta.get('run_id')!r}, this run's is "
                               f"{run_id!r}): it was copied in from elsewhere. Remove it and start again with --overwrite")
    state = json.loads(meta["state"])
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                name = key.removeprefix("param.")
                if name not in params:
                    raise ValueError(f"the saved trainer state has parameter {name!r}, which this model lacks; "
                                     "resume with the same model and method")
                params[name].copy_(value.to(params[name].device))
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            optim_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": optim_state, "param_groups": state["param_groups"]})
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]
    if cuda and torch.cuda.is_available():
        for i, generator_state in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(generator_state, i)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), state["rng_numpy_pos"], 0, 0.0))
    version, inner, gauss = state["rng_python"]
    random.setstate((version, tuple(inner), gauss))
    return state
