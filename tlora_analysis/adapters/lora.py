"""The LoRA layer: h = W0 x + b + scaling · B A dropout(x), the same function as PEFT's LoRA."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..names import NameSelection
from .base import AdaptedLinear, layer_generator
from .config import AdapterConfig, check_bool, check_finite
from .dropout import Dropout
from .spec import Factors, MethodSpec, RunnerOptions, StoredTensor

__all__ = ["LoRAConfig", "LoRALinear", "SPEC"]

NAME = "lora"  # the method's registered name (run.json's "method", --method)


@dataclass(frozen=True)
class LoRAConfig(AdapterConfig):
    """LoRA (Hu et al. 2021): ΔW = scaling · B A, PEFT's function and initialisation.

    lora_alpha=None means lora_alpha = rank (scaling 1). use_rslora divides by √r instead.
    modules_to_save: as for :class:`~tlora_analysis.adapters.tlora.TLoRAConfig` (None: the
    classification head trains).
    """

    method: str = field(init=False, default=NAME)
    rank: int = 8
    target_modules: NameSelection = ("query", "value")
    lora_alpha: float | None = None
    dropout: float = 0.0
    use_rslora: bool = False
    seed: int = 0
    modules_to_save: NameSelection | None = None

    def check(self) -> None:
        check_bool(self.use_rslora, "use_rslora")
        if self.lora_alpha is not None:
            check_finite(self.lora_alpha, "lora_alpha (None means lora_alpha = rank)", positive=True)

    @property
    def scaling(self) -> float:
        alpha = self.rank if self.lora_alpha is None else self.lora_alpha
        return alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


class LoRALinear(AdaptedLinear):
    """``lora_A`` (r × in, Kaiming-uniform a=√5 like PEFT) and ``lora_B`` (out × r, zeros)."""

    method = NAME

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: LoRAConfig,
                 shared: dict[str, Any] | None = None) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        a = torch.empty(config.rank, base_layer.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=layer_generator(config.seed, layer_name))
        self.lora_A = nn.Parameter(a.to(device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base_layer.out_features, config.rank, device=w.device, dtype=dtype))
        self.dropout = Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.scaling = config.scaling
        self.rank = config.rank

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x.to(self.lora_A.dtype))
        return (x @ self.lora_A.T) @ self.lora_B.T * self.scaling

    def layer_info(self) -> dict[str, Any]:
        return {"rank": self.rank, "scaling": self.scaling}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.scaling:g}"


def lora_factors(t: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Factors:
    """ΔW = scaling · B A: (left = B, core = identity, right = A, scale = scaling)."""
    return Factors(t["lora_B"], None, t["lora_A"], float(info["scaling"]))


def _runner_config(o: RunnerOptions) -> LoRAConfig:
    return LoRAConfig(rank=o.rank, target_modules=o.targets, lora_alpha=o.lora_alpha, dropout=o.dropout or 0.0,
                      seed=o.seed, modules_to_save=o.modules_to_save)


SPEC = MethodSpec(
    name=NAME, label="LoRA", config_class=LoRAConfig, layer_class=LoRALinear,
    tensors=(StoredTensor("lora_A", "A", False, lambda out, inn, r: (r, inn)),
             StoredTensor("lora_B", "B", False, lambda out, inn, r: (out, r))),
    factors=lora_factors, runner_config=_runner_config, default_lr=1e-3, fixed_scale=True,
)
