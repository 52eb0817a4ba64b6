"""The reference arm: PEFT's own LoRA (``peft.get_peft_model``), recorded as a LoRA run.

PEFT's layers are not this package's adapter classes, so the recorder gets a *view*: a
module tree whose :class:`~tlora_analysis.adapters.LoRALinear` layers share PEFT's
``lora_A``/``lora_B`` parameters (the same tensors, no copies) under the bare model's
layer names, next to the PEFT model itself so parameter counts are PEFT's. The view is
never run forward; it only tells the recorder what to snapshot.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..adapters.inject import CONFIG_ATTR
from ..adapters.lora import LoRAConfig, LoRALinear

__all__ = ["apply_peft_lora", "peft_recording_view"]

_PEFT_PREFIX = "base_model.model."


def apply_peft_lora(model: nn.Module, rank: int, targets: Sequence[str], lora_alpha: float, dropout: float,
                    modules_to_save: Sequence[str]) -> nn.Module:
    """``peft.get_peft_model`` with a LoraConfig for sequence classification."""
    import peft

    config = peft.LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=list(targets),
                             modules_to_save=list(modules_to_save) or None, task_type="SEQ_CLS")
    peft_model = peft.get_peft_model(model, config)
    if not modules_to_save:  # PEFT's SEQ_CLS task type adds the classifier to modules_to_save; undo for a frozen head
        for name, p in peft_model.named_parameters():
            if "modules_to_save" in name:
                p.requires_grad_(False)
    return peft_model


def _set_nested(root: nn.Module, name: str, module: nn.Module) -> None:
    parent = root
    *path, leaf = name.split(".")
    for part in path:
        if not hasattr(parent, part):
            parent.add_module(part, nn.Module())
        parent = getattr(parent, part)
    parent.add_module(leaf, module)


def peft_recording_view(peft_model: nn.Module, rank: int, targets: Sequence[str], lora_alpha: float,
                        modules_to_save: Sequence[str]) -> nn.Module:
    """A module the recorder reads as a LoRA-adapted model, sharing PEFT's parameters."""
    from peft.tuners.lora import LoraLayer

    config = LoRAConfig(rank=rank, target_modules=tuple(targets), lora_alpha=lora_alpha,
                        modules_to_save=tuple(modules_to_save))
    view = nn.Module()
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        bare = name.removeprefix(_PEFT_PREFIX)
        layer = LoRALinear(module.get_base_layer(), bare, config)
        layer.lora_A = module.lora_A["default"].weight
        layer.lora_B = module.lora_B["default"].weight
        layer.scaling = module.scaling["default"]
        _set_nested(view, bare, layer)
    view.add_module("peft_model", peft_model)  # after the views: shared tensors count as adapter parameters
    setattr(view, CONFIG_ATTR, config)
    return view
