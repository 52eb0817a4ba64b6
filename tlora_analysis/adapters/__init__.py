"""Adapters on any torch model (PEFT-style config/layer/model): TLoRA, LoRA, full fine-tuning, VeRA, LoRA-XS.

Each method is one module (its config, its layer, its :class:`MethodSpec`) registered in
``methods.py``; ``apply_adapters`` and everything downstream work from the spec.
"""

from .base import AdaptedLinear, layer_generator
from .config import AdapterConfig, config_from_dict
from .full import FullConfig
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
from .lora import LoRAConfig, LoRALinear
from .loraxs import LoRAXSConfig, LoRAXSLinear
from .methods import METHODS, get_spec, method_names, spec_of
from .spec import Factors, MethodSpec
from .tlora import TLoRAConfig, TLoRALinear
from .vera import VeRAConfig, VeRALinear

__all__ = [
    "AdaptedLinear", "AdapterConfig", "Factors", "FullConfig", "LoRAConfig", "LoRALinear", "LoRAXSConfig",
    "LoRAXSLinear", "METHODS", "MethodSpec", "ParameterCount", "TLoRAConfig", "TLoRALinear", "VeRAConfig",
    "VeRALinear", "adapted_layers", "adapter_config", "apply_adapters", "config_from_dict", "count_parameters",
    "get_spec", "layer_generator", "load_adapter", "match_targets", "merge_and_unload", "method_names",
    "remove_adapters", "save_adapter", "spec_of", "tracked_linears",
]
