"""Hugging Face Trainer log entries as metrics events (the contract's event schema).

Trainer logs ``{"loss", "learning_rate", "grad_norm", "epoch"}`` during training and
``{"eval_loss", "eval_accuracy", ...}`` after evaluation; the final summary
(``train_runtime``, ...) is not an event and is left out.
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["trainer_log_to_event"]

_SUMMARY_KEYS = ("train_runtime", "train_loss", "train_samples_per_second")


def trainer_log_to_event(logs: Mapping[str, Any], split: str = "validation") -> dict[str, Any] | None:
    """One event dict (step, epoch, event, metrics), or None for the end-of-training summary."""
    if any(k in logs for k in _SUMMARY_KEYS):
        return None
    event: dict[str, Any] = {"step": logs.get("step"), "epoch": logs.get("epoch")}
    if any(k.startswith("eval_") for k in logs):
        event.update({"event": "eval", "split": split})
        for k, v in logs.items():
            if k.startswith("eval_"):
                name = k.removeprefix("eval_")
                event["eval_loss" if name == "loss" else name] = v
        return event
    if "loss" not in logs:
        return None
    event["event"] = "train"
    for k, v in logs.items():
        if k not in ("step", "epoch"):
            event["lr" if k == "learning_rate" else k] = v
    return event
