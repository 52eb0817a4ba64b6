"""The runner's resume point: trainable weights, optimizer, scheduler and RNG state, no pickle.

Written atomically into ``<run_dir>/trainer_state/`` at every evaluation (safetensors for the
tensors, JSON for the rest), so ``--resume`` continues from the last evaluated step with the
same optimizer moments, learning-rate schedule and random streams.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..fileio import load_tensors, read_json, save_tensors, write_json

__all__ = ["save_trainer_state", "load_trainer_state", "STATE_DIR"]

STATE_DIR = "trainer_state"


def save_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                       step: int, extra: dict[str, Any]) -> None:
    folder = Path(run_dir) / STATE_DIR
    tensors = {f"param.{n}": p for n, p in model.named_parameters() if p.requires_grad}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_tensors(folder / "state.safetensors", tensors)
    write_json(folder / "state.json", {
        "step": step,
        "param_groups": opt["param_groups"],
        "scheduler": scheduler.state_dict(),
        "rng_numpy_pos": int(np_state[2]),
        "rng_python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        **extra,
    })


def load_trainer_state(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> dict[str, Any]:
    """Restore what :func:`save_trainer_state` wrote; returns its JSON (step, best, ...)."""
    folder = Path(run_dir) / STATE_DIR
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no saved trainer state: the run never reached an evaluation, so there is nothing "
            f"to resume from. Start again with --overwrite"
        )
    meta = read_json(folder / "state.json")
    tensors, _ = load_tensors(folder / "state.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith("param."):
                name = key.removeprefix("param.")
                if name not in params:
                    raise ValueError(f"the saved trainer state has parameter {name!r}, which this model lacks; "
                                     "resume with the same model and method")
                params[name].copy_(value.to(params[name].device))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng.torch"])
    np.random.set_state(("MT19937", tensors["rng.numpy"].numpy().astype(np.uint32), meta["rng_numpy_pos"], 0, 0.0))
    version, inner, gauss = meta["rng_python"]
    random.setstate((version, tuple(inner), gauss))
    return meta
