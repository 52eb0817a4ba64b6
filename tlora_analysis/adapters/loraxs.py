"""LoRA-XS (Bałazy et al., 2024): h = W0 x + b + A R B dropout(x), with A, B from W0's truncated SVD.

W0 (out × in) = U S Vᵀ; A = U_r S_r (out × r) and B = V_rᵀ (r × in) are frozen, R (r × r) trains:
ΔW = A R B, r² trainable numbers per layer. It is TLoRA's shape (a trained r × r core between
frozen outer factors, no trained scale) with W0's top-r singular vectors in place of random
projections, so ΔW always lies in W0's top-r singular subspaces: the arm that asks whether
TLoRA's random projections matter. R starts at zero (``init_std`` > 0 draws it from N(0, init_std²),
the authors' choice being 1e-5); the authors' fixed factor lora_alpha / r is left to the learning
rate. The SVD runs once per layer, in float32 (float64 for float64 weights) on W0's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..names import NameSelection
from .base import AdaptedLinear, layer_generator
from .config import AdapterConfig, check_finite
from .dropout import Dropout
from .spec import Factors, MethodSpec, RunnerOptions, StoredTensor, fingerprints

__all__ = ["LoRAXSConfig", "LoRAXSLinear", "SPEC", "svd_factors"]

NAME = "lora-xs"  # the method's registered name (run.json's "method", --method)


@dataclass(frozen=True)
class LoRAXSConfig(AdapterConfig):
    """LoRA-XS: frozen A = U_r S_r, B = V_rᵀ from W0's SVD, a trainable r × r R between them.

    seed: of R's initial draw when ``init_std`` > 0 (zero otherwise); dropout: on the input.
    modules_to_save: as for :class:`~tlora_analysis.adapters.tlora.TLoRAConfig`.
    """

    method: str = field(init=False, default=NAME)
    rank: int = 16
    target_modules: NameSelection = ("query", "value")
    seed: int = 0
    init_std: float = 0.0
    dropout: float = 0.0
    modules_to_save: NameSelection | None = None

    def check(self) -> None:
        if check_finite(self.init_std, "init_std") < 0:
            raise ValueError(f"init_std must be ≥ 0 (0 starts R at zero), got {self.init_std!r}")


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_r S_r, V_rᵀ) of a weight (out × in), in the weight's dtype and device."""
    work = torch.float64 if weight.dtype == torch.float64 else torch.float32
    u, s, vh = torch.linalg.svd(weight.detach().to(work), full_matrices=False)
    return (u[:, :rank] * s[:rank]).to(weight.dtype), vh[:rank].to(weight.dtype)


class LoRAXSLinear(AdaptedLinear):
    """A frozen linear layer plus A R B with A, B frozen (W0's top-r SVD) and R trainable."""

    method = NAME

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: LoRAXSConfig,
                 shared: dict[str, Any] | None = None) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        if not w.dtype.is_floating_point:
            raise TypeError(f"{layer_name} has {w.dtype} weights; LoRA-XS needs the SVD of a floating-point W0")
        a, b = svd_factors(w, config.rank)
        self.fingerprints = fingerprints({"A": a, "B": b})
        self.register_buffer("loraxs_A", a)
        self.register_buffer("loraxs_B", b)
        r = torch.zeros(config.rank, config.rank)
        if config.init_std > 0:
            nn.init.normal_(r, std=config.init_std, generator=layer_generator(config.seed, layer_name))
        self.loraxs_R = nn.Parameter(r.to(device=w.device, dtype=w.dtype))
        self.dropout = Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.rank = config.rank

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """A (R (B dropout(x))), in A's dtype."""
        x = self.dropout(x.to(self.loraxs_A.dtype))
        return ((x @ self.loraxs_B.T) @ self.loraxs_R.T) @ self.loraxs_A.T

    def layer_info(self) -> dict[str, Any]:
        return {"rank": self.rank, "fingerprints": self.fingerprints}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}"


def loraxs_factors(t: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Factors:
    """ΔW = A R B: (left = A, core = R, right = B, scale = 1)."""
    return Factors(t["loraxs_A"], t["loraxs_R"], t["loraxs_B"], 1.0)


def _runner_config(o: RunnerOptions) -> LoRAXSConfig:
    return LoRAXSConfig(rank=o.rank, target_modules=o.targets, seed=o.seed, dropout=o.dropout or 0.0,
                        modules_to_save=o.modules_to_save)


SPEC = MethodSpec(
    name=NAME, label="LoRA-XS", config_class=LoRAXSConfig, layer_class=LoRAXSLinear,
    tensors=(StoredTensor("loraxs_A", "A", True, lambda out, inn, r: (out, r)),
             StoredTensor("loraxs_R", "R", False, lambda out, inn, r: (r, r)),
             StoredTensor("loraxs_B", "B", True, lambda out, inn, r: (r, inn))),
    factors=loraxs_factors, runner_config=_runner_config, default_lr=2e-2, frozen_sides=("left", "right"),
)
