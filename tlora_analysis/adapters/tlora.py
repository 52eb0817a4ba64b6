"""The TLoRA layer: h = W0 x + b + Dropout(α · ((x A) B) C)  (docs/paper.md).

This module is the definition: the config, the frozen random A and C, the trainable B and α, the
forward as the formula reads, and the spec with ΔW's factored form. The fused path (adapters/fused/) computes the same
function with fewer passes over memory; the layer asks it first (``impl``) and computes the
formula itself wherever it answers None.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

import torch
from torch import nn

from ..names import NameSelection
from . import fused
from .base import AdaptedLinear, layer_generator
from .config import AdapterConfig, check_bool, check_choice, check_finite
from .dropout import Dropout
from .spec import Factors, MethodSpec, RunnerOptions, StoredTensor, fingerprints

__all__ = ["DROPOUT_MASKS", "IMPLEMENTATIONS", "SPEC", "TLoRAConfig", "TLoRALinear", "init_frozen_factors"]

NAME = "tlora"  # the method's registered name (run.json's "method", --method)

INITS = ("paper", "gaussian", "orthogonal")


@dataclass(frozen=True)
class TLoRAConfig(AdapterConfig):
    """Tri-matrix LoRA: ΔW = α·(A B C)ᵀ with frozen random A, C and trainable B, α.

    init: "paper" (Kaiming normal a=√5 on the stored layouts: std_A = 1/√(3r),
    std_C = 1/√(3·out)), "gaussian" (std 1/√r on both), or "orthogonal" (orthonormal
    columns of A and rows of C). dropout_position: "output" (the paper's setup, after α) or
    "input" (LoRA-style, on x). train_alpha=False keeps α fixed at alpha_init.
    modules_to_save: None (default) trains the model's classification head (a top-level
    ``classifier`` or ``score``) next to the adapter, as PEFT does for sequence classification;
    ``()`` keeps it frozen (the paper's setup); a list names the modules to train.
    """

    method: str = field(init=False, default=NAME)
    rank: int = 32
    target_modules: NameSelection = ("query", "value")
    seed: int = 0
    alpha_init: float = 1.0
    dropout: float = 0.5
    init: Literal["paper", "gaussian", "orthogonal"] = "paper"
    dropout_position: Literal["output", "input"] = "output"
    train_alpha: bool = True
    modules_to_save: NameSelection | None = None

    def check(self) -> None:
        check_finite(self.alpha_init, "alpha_init")
        check_choice(self.init, INITS, "init")
        check_choice(self.dropout_position, ("output", "input"), "dropout_position")
        check_bool(self.train_alpha, "train_alpha")

IMPLEMENTATIONS = ("plain", "adapter", "fused", "merged")
DROPOUT_MASKS = ("auto", "redraw", "store")
_FUSED = ("fused", "merged")  # the implementations that fuse the base layer with the adapter


def init_frozen_factors(
    in_features: int, out_features: int, config: TLoRAConfig, layer_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen A (in × r) and C (r × out) in float32, from the (seed, layer name) generator."""
    g = layer_generator(config.seed, layer_name)
    r = config.rank
    a = torch.empty(in_features, r)
    c = torch.empty(r, out_features)
    if config.init == "paper":
        # kaiming_normal_(a=√5) on the stored layouts: fan_in = size(1), std = 1/√(3·fan_in)
        nn.init.kaiming_normal_(a, a=math.sqrt(5), generator=g)
        nn.init.kaiming_normal_(c, a=math.sqrt(5), generator=g)
    elif config.init == "gaussian":
        nn.init.normal_(a, std=1.0 / math.sqrt(r), generator=g)
        nn.init.normal_(c, std=1.0 / math.sqrt(r), generator=g)
    else:  # orthogonal: orthonormal columns of A, orthonormal rows of C
        nn.init.orthogonal_(a, generator=g)
        nn.init.orthogonal_(c, generator=g)
    return a, c


class TLoRALinear(AdaptedLinear):
    """A frozen linear layer plus α·(A B C)ᵀ with A, C frozen buffers and B, α trainable."""

    method = NAME

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: TLoRAConfig,
                 shared: dict[str, Any] | None = None) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        a, c = init_frozen_factors(base_layer.in_features, base_layer.out_features, config, layer_name)
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        a, c = a.to(dtype), c.to(dtype)
        # Fingerprints of the stored values, taken on the CPU (works for meta-device models too).
        self.fingerprints = fingerprints({"A": a, "C": c})
        self.register_buffer("tlora_A", a.to(w.device))
        self.register_buffer("tlora_C", c.to(w.device))
        self.tlora_B = nn.Parameter(torch.zeros(config.rank, config.rank, device=w.device, dtype=dtype))
        alpha = torch.tensor(float(config.alpha_init), device=w.device, dtype=dtype)
        if config.train_alpha:
            self.tlora_alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("tlora_alpha", alpha)
        self.dropout = Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.dropout_position = config.dropout_position
        self.rank = config.rank
        self.impl = "fused"
        self.dropout_mask = "auto"

    @property
    def impl(self) -> str:
        """How the layer computes its output: "fused" (default), "adapter", "plain" or "merged".

        All compute the same function. "plain" is the formula in :meth:`adapter_output`;
        "adapter" runs the adapter as one autograd Function, "fused" the base layer and the
        adapter as one (adapters/fused/), and both fall back to "plain" where they do not apply
        (autocast, mixed dtypes, a trainable or hooked base layer); "merged" (W0 + ΔW rounded to
        W0's dtype: opt-in) falls back to "fused" while dropout is active.
        """
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {value!r}")
        self._impl = value

    @property
    def dropout_mask(self) -> str:
        """Fast paths' dropout mask: "auto" (default), "redraw" (a torch mask recomputed in the
        backward: no memory, a second pass of random numbers) or "store" (the forward's one-byte
        mask). "auto" is the in-kernel mask, a hash of (seed, element), inside the fused layer's
        Triton GEMM and its backward where that kernel runs (output dropout; Hopper GPUs in half
        precision, eager mode; adapters/fused/kernel_mask.py): no memory and no extra pass over
        memory. Elsewhere "auto" redraws on CUDA, where memory binds, and stores on the CPU, where
        random numbers are expensive. The torch masks are adapters/dropout.py's (on the CPU the
        mask the plain formula's ``Dropout`` draws from the same seed). The in-kernel mask and the
        torch masks are different draws
        of Bernoulli(1 − p) (the in-kernel one with p rounded to a multiple of 2⁻¹⁶ and its kept
        elements scaled by the inverse of the rounded keep rate; a p below about 2⁻¹⁷ or above
        1 − 2⁻¹⁷, which 16 bits cannot resolve, takes the torch mask)."""
        return self._dropout_mask

    @dropout_mask.setter
    def dropout_mask(self, value: str) -> None:
        if value not in DROPOUT_MASKS:
            raise ValueError(f"dropout_mask must be one of {', '.join(map(repr, DROPOUT_MASKS))}, got {value!r}")
        self._dropout_mask = value

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """α·((x A) B) C with this layer's dropout on x ("input") or on the product ("output"), in
        A's dtype."""
        x = x.to(self.tlora_A.dtype)
        if self._impl != "plain":
            out = fused.adapter_output(self, x)
            if out is not None:
                return out
        a, b, c, alpha = self.tlora_A, self.tlora_B, self.tlora_C, self.tlora_alpha
        if self.dropout_position == "input":
            return alpha * (((self.dropout(x) @ a) @ b) @ c)
        return self.dropout(alpha * (((x @ a) @ b) @ c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """W0 x + b + :meth:`adapter_output` (x), through the fused path where it applies."""
        if not self.merged and self._impl in _FUSED:
            out = fused.forward(self, x)
            if out is not None:
                return out
        return super().forward(x)

    def layer_info(self) -> dict[str, Any]:
        return {"fingerprints": self.fingerprints}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, dropout_position={self.dropout_position}, "
                f"impl={self._impl}")


def tlora_factors(t: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Factors:
    """ΔW = α · (A B C)ᵀ = α · Cᵀ Bᵀ Aᵀ: (left = Cᵀ, core = Bᵀ, right = Aᵀ, scale = α)."""
    return Factors(t["tlora_C"].T, t["tlora_B"].T, t["tlora_A"].T, t["tlora_alpha"])


def _runner_config(o: RunnerOptions) -> TLoRAConfig:
    return TLoRAConfig(rank=o.rank, target_modules=o.targets, seed=o.seed,
                       dropout=0.5 if o.dropout is None else o.dropout, init=o.tlora_init or "paper",
                       modules_to_save=o.modules_to_save)


SPEC = MethodSpec(
    name=NAME, label="TLoRA", config_class=TLoRAConfig, layer_class=TLoRALinear,
    tensors=(StoredTensor("tlora_A", "A", True, lambda out, inn, r: (inn, r)),
             StoredTensor("tlora_B", "B", False, lambda out, inn, r: (r, r)),
             StoredTensor("tlora_C", "C", True, lambda out, inn, r: (r, out)),
             StoredTensor("tlora_alpha", "alpha", False, lambda out, inn, r: ())),
    factors=tlora_factors, runner_config=_runner_config, default_lr=2e-2, frozen_sides=("left", "right"),
)
