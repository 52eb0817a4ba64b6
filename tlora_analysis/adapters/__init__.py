"""Adapters: TLoRA, LoRA and full fine-tuning on any torch model (PEFT-style config/layer/model)."""

from .base import AdaptedLinear, layer_generator
from .config import AdapterConfig, FullConfig, LoRAConfig, TLoRAConfig, config_from_dict
from .inject import (
    ParameterCount,
    adapted_layers,
    adapter_config,
    apply_adapters,
    count_parameters,
    match_targets,
    merge_and_unload,
    remove_adapters,
    tracked_linears,
)
from .io import load_adapter, save_adapter
from .lora import LoRALinear
from .tlora import TLoRALinear

__all__ = [
    "AdaptedLinear", "AdapterConfig", "FullConfig", "LoRAConfig", "LoRALinear", "ParameterCount",
    "TLoRAConfig", "TLoRALinear", "adapted_layers", "adapter_config", "apply_adapters",
    "config_from_dict", "count_parameters", "layer_generator", "load_adapter", "match_targets",
    "merge_and_unload", "remove_adapters", "save_adapter", "tracked_linears",
]
