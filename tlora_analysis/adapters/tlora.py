"""The TLoRA layer: h = W0 x + b + Dropout(α · ((x A) B) C)  (docs/paper.md)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..fileio import fingerprint
from ..lowrank import FactoredUpdate
from .base import AdaptedLinear, layer_generator
from .config import TLoRAConfig
from .fast import (
    IMPLEMENTATIONS,
    TLoRAAdapterFunction,
    TLoRALinearFunction,
    TLoRAMergedFunction,
    plain_adapter_output,
)
from .shared_projection import shared_projection

__all__ = ["TLoRALinear", "init_frozen_factors"]


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

    method = "tlora"

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: TLoRAConfig) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        a, c = init_frozen_factors(base_layer.in_features, base_layer.out_features, config, layer_name)
        dtype = w.dtype if w.dtype.is_floating_point else torch.float32
        a, c = a.to(dtype), c.to(dtype)
        # Fingerprints of the stored values, taken on the CPU (works for meta-device models too).
        self.fingerprints = {"A": fingerprint(a), "C": fingerprint(c)}
        self.register_buffer("tlora_A", a.to(w.device))
        self.register_buffer("tlora_C", c.to(w.device))
        self.tlora_B = nn.Parameter(torch.zeros(config.rank, config.rank, device=w.device, dtype=dtype))
        alpha = torch.tensor(float(config.alpha_init), device=w.device, dtype=dtype)
        if config.train_alpha:
            self.tlora_alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("tlora_alpha", alpha)
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.dropout_position = config.dropout_position
        self.rank = config.rank
        self.impl = "fused"
        self.dropout_mask = "auto"

    @property
    def impl(self) -> str:
        """How the layer computes its output: "fused" (default), "adapter", "plain" or "merged".

        All compute the same function (adapters/fast.py); the fast ones fall back to "plain" where
        they do not apply (autocast, mixed dtypes, a trainable or hooked base layer), and
        "merged" (W0 + ΔW rounded to W0's dtype: opt-in) to "fused" while dropout is active.
        """
        return self._impl

    @impl.setter
    def impl(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {value!r}")
        self._impl = value

    @property
    def dropout_mask(self) -> str:
        """Fast paths' dropout mask: "redraw" (recomputed in the backward: no memory, a second pass of
        random numbers), "store" (nn.Dropout's one-byte mask) or "auto" (default: redraw on CUDA,
        where memory binds; store on the CPU, where random numbers are expensive)."""
        return self._dropout_mask

    @dropout_mask.setter
    def dropout_mask(self, value: str) -> None:
        if value not in ("auto", "redraw", "store"):
            raise ValueError(f"dropout_mask must be 'auto', 'redraw' or 'store', got {value!r}")
        self._dropout_mask = value

    def _store_mask(self, x: torch.Tensor) -> bool:
        return self._dropout_mask == "store" or (self._dropout_mask == "auto" and x.device.type != "cuda")

    def _dropout_probabilities(self) -> tuple[float, float]:
        dropout = self._modules["dropout"]
        p = dropout.p if isinstance(dropout, nn.Dropout) and dropout.training else 0.0
        return (p, 0.0) if self.dropout_position == "input" else (0.0, p)

    def _fast_factors(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """(A, B, C, α) when a fast path applies to ``x`` (not "plain", CPU or CUDA, no autocast, one
        dtype, A and C frozen buffers), else None.

        Read from the module's registries directly: ``nn.Module.__getattr__`` costs the host about
        half a microsecond a name, which a large model's step, issued layer by layer from Python,
        adds up (docs/benchmarks.md, "Idea 17"). A or C made a parameter (to train
        them) is not in the buffers: the plain path then gives it its gradient.
        """
        if self._impl == "plain":
            return None
        device = x.device.type
        if device not in ("cpu", "cuda") or torch.is_autocast_enabled(device):
            return None
        buffers, params = self._buffers, self._parameters
        a, b, c = buffers.get("tlora_A"), params.get("tlora_B"), buffers.get("tlora_C")
        alpha = params["tlora_alpha"] if "tlora_alpha" in params else buffers.get("tlora_alpha")
        if a is None or b is None or c is None or alpha is None or a.requires_grad or c.requires_grad:
            return None
        dtype = a.dtype
        return (a, b, c, alpha) if x.dtype == b.dtype == c.dtype == alpha.dtype == dtype else None

    def _fusable_base(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """(W0, bias) when the base layer can join the fused Function: a plain, frozen, hook-free
        nn.Linear in the adapter's dtype; else None."""
        base = self._modules["base_layer"]
        if type(base) is not nn.Linear or base._forward_hooks or base._forward_pre_hooks:
            return None
        weight, bias = base._parameters["weight"], base._parameters["bias"]
        if weight.requires_grad or (bias is not None and bias.requires_grad) or weight.dtype != dtype:
            return None
        return weight, bias

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """α·((x A) B) C with this layer's dropout, in A's dtype."""
        x = x.to(self.tlora_A.dtype)
        factors = self._fast_factors(x)
        if factors is not None:
            p_in, p_out = self._dropout_probabilities()
            return TLoRAAdapterFunction.apply(x, *factors, p_in, p_out, self._store_mask(x))
        return plain_adapter_output(x, self.tlora_A, self.tlora_B, self.tlora_C, self.tlora_alpha,
                                    self.dropout, self.dropout_position)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self._impl
        factors = None if self.merged or (impl != "fused" and impl != "merged") else self._fast_factors(x)
        base = None if factors is None else self._fusable_base(factors[0].dtype)
        if base is not None:
            p_in, p_out = self._dropout_probabilities()
            if impl == "merged" and p_in == p_out == 0:
                return TLoRAMergedFunction.apply(x, *base, *factors)
            u = shared_projection(self, x, factors[0]) if p_in == 0 else None
            store = self._store_mask(x) if p_in or p_out else False
            return TLoRALinearFunction.apply(x, *base, *factors, p_in, p_out, store, u)
        return super().forward(x)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW = α · (A B C)ᵀ  (out × in)."""
        return (self.tlora_alpha * (self.tlora_A @ self.tlora_B @ self.tlora_C)).T.to(self.base_layer.weight.dtype)

    def factored_update(self) -> FactoredUpdate:
        """ΔW = α · Cᵀ Bᵀ Aᵀ as (left = Cᵀ, core = Bᵀ, right = Aᵀ, scale = α)."""
        return FactoredUpdate(self.tlora_C.T, self.tlora_B.T, self.tlora_A.T, self.tlora_alpha)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {"tlora_B": self.tlora_B, "tlora_alpha": self.tlora_alpha}

    def frozen_state(self) -> dict[str, torch.Tensor]:
        return {"tlora_A": self.tlora_A, "tlora_C": self.tlora_C}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, rank={self.rank}, dropout_position={self.dropout_position}, "
                f"impl={self._impl}")
