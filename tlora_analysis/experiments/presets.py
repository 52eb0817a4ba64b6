"""Named presets: bundles of hyperparameters that flags given on top of them override.

``paper`` is the TLoRA paper's setup (docs/paper.md): rank 32 on attention query and
value, AdamW lr 1e-3 with weight decay 0.01 (applied to B and α too), 6% linear warmup then
linear decay, batch 32, 30 epochs, adapter dropout 0.5, the checkpoint's head kept frozen,
fp32, tokenizer maximum length with dynamic padding. LoRA under the preset uses lora_alpha 16
(scale 0.5 at rank 32) and no dropout, the paper's baseline.
"""

from __future__ import annotations

from typing import Any, Mapping

from .config import TrainConfig

__all__ = ["PRESETS", "apply_preset"]

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "rank": 32,
        "targets": ("query", "value"),
        "lr": 1e-3,
        "weight_decay": 0.01,
        "warmup_ratio": 0.06,
        "batch_size": 32,
        "epochs": 30.0,
        "head": "frozen",
        "lora_alpha": 16.0,
        "max_length": 512,
        "precision": "fp32",
    },
}

# Method-specific preset values (the paper's TLoRA dropout; its LoRA baseline has none).
_METHOD_PRESETS = {"paper": {"tlora": {"dropout": 0.5}, "lora": {"dropout": 0.0}, "peft-lora": {"dropout": 0.0}}}


def apply_preset(preset: str | None, overrides: Mapping[str, Any]) -> TrainConfig:
    """A TrainConfig from defaults, then the preset, then ``overrides`` (given flags win)."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {sorted(PRESETS)}")
        values.update(PRESETS[preset])
        method = overrides.get("method", TrainConfig.method)
        values.update(_METHOD_PRESETS[preset].get(method, {}))
    values.update({k: v for k, v in overrides.items()})
    return TrainConfig().replace(**values)
