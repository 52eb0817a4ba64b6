"""Several processes: read the launcher's environment, start the process group, reduce values.

``torchrun --nproc_per_node N -m tlora_analysis train ...`` (or ``accelerate launch``) sets
RANK, WORLD_SIZE and LOCAL_RANK; the runner then wraps the model in DistributedDataParallel,
shards the training data with a DistributedSampler, and lets rank 0 alone write the run.
NCCL on CUDA, gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistContext", "init_distributed", "shutdown_distributed", "mean_across", "barrier", "pick_device"]


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """CUDA (this process's GPU) when present and asked for, the CPU otherwise."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r}; use auto (CUDA when present), cpu, cuda or cuda:N") from exc
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use auto (CUDA when present), cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but no CUDA device is available; use --device cpu or auto")
    return device


def init_distributed(device: str = "auto") -> DistContext:
    """The process group from the launcher's environment, or a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":  # device_id binds NCCL to this GPU (no guessing from the rank)
            torch.cuda.set_device(dev)
            dist.init_process_group(backend="nccl", device_id=dev)
        else:
            dist.init_process_group(backend="gloo")
    return DistContext(rank, world_size, local_rank, dev)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """The mean of a tensor over all processes (the tensor itself with one process)."""
    if not ctx.enabled:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()

