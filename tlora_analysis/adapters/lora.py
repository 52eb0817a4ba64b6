"""The LoRA layer: h = W0 x + b + scaling · B A dropout(x), the same function as PEFT's LoRA."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..lowrank import FactoredUpdate
from .base import AdaptedLinear, layer_generator
from .config import LoRAConfig

__all__ = ["LoRALinear"]


class LoRALinear(AdaptedLinear):
    """``lora_A`` (r × in, Kaiming-uniform a=√5 like PEFT) and ``lora_B`` (out × r, zeros)."""

    method = "lora"

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: LoRAConfig) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        a = torch.empty(config.rank, base_layer.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=layer_generator(config.seed, layer_name))
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, config.rank, device=w.device, dtype=dtype))
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        self.rank = config.rank

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.T) @ self.lora_B.T * self.scaling

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW = scaling · B A  (out × in)."""
        return (self.scaling * (self.lora_B @ self.lora_A)).to(self.base_layer.weight.dtype)

    def factored_update(self) -> FactoredUpdate:
        return FactoredUpdate(self.lora_B, None, self.lora_A, self.scaling)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"lora_A": self.lora_A, "lora_B": self.lora_B}

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return {}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"
