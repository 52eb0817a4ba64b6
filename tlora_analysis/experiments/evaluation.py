"""Scoring a model on a split, the precision contexts training runs in, and which evaluation is best."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from .metrics import compute_metrics, constant_predictions

__all__ = ["evaluate", "autocast_factory", "check_precision", "matmul_precision", "is_better"]


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, is_regression: bool, autocast, progress: bool = False,
             desc: str = "evaluate", num_labels: int | None = None,
             outputs: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """eval_loss, the task's metrics and whether every prediction was the same, over a whole split
    (``num_labels``: the task's classes, when the head has more outputs). ``outputs``, when given, receives
    the per-example ``logits`` and ``labels`` in the loader's order."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    losses, logits_all, labels_all, n = 0.0, [], [], 0
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast():
            out = model(**batch)
        size = batch["labels"].shape[0]
        losses += float(out.loss) * size
        n += size
        logits_all.append(out.logits.float().cpu().numpy())
        labels_all.append(batch["labels"].cpu().numpy())
    model.train(was_training)
    logits, labels = np.concatenate(logits_all), np.concatenate(labels_all)
    if outputs is not None:
        outputs.update(logits=logits, labels=labels)
    metrics = compute_metrics(labels, logits, is_regression, num_labels)
    return {"eval_loss": losses / max(n, 1), **metrics, "constant_predictions": constant_predictions(logits, is_regression)}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse fp16 off CUDA (its gradient scaler needs CUDA): the runner checks this before loading anything."""
    if precision == "fp16" and device.type != "cuda":
        raise ValueError(f"fp16 training needs a CUDA device and this run is on {device}; use --precision bf16 or "
                         "fp32 on the CPU")


def autocast_factory(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of the autocast context for ``precision`` ("fp32", "tf32": autocast off)."""
    if precision in ("fp32", "tf32"):
        return lambda: torch.autocast(device.type, enabled=False)
    check_precision(precision, device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Within the block, float32 matrix products on a CUDA device use TF32 tensor cores where ``precision`` is
    "tf32" (fp32 storage and sums, products of 10-bit mantissas); every other case keeps full fp32 products."""
    if precision != "tf32" or device.type != "cuda":
        yield
        return
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(saved)


def is_better(metrics: dict[str, Any], best: dict[str, Any], metric: str) -> bool:
    """Whether an evaluation beats the best so far on ``metric`` (the first always does; NaN never,
    and any number beats a NaN best)."""
    new, old = metrics.get(metric), best.get(metric)
    return not best or (new is not None and not math.isnan(new) and (old is None or math.isnan(old) or new > old))
