"""What every adapted linear layer shares: the wrapped base layer, merge/unmerge, ΔW from the method's spec."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..lowrank import FactoredUpdate

if TYPE_CHECKING:
    from .spec import MethodSpec

__all__ = ["AdaptedLinear", "layer_generator"]


def layer_generator(seed: int, layer_name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, layer name): never the global RNG.

    The same pair always gives the same stream; different layers get independent streams.
    """
    digest = hashlib.sha256(f"{seed}\x00{layer_name}".encode()).digest()
    g = torch.Generator(device="cpu")
    g.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return g


class AdaptedLinear(nn.Module):
    """Wraps a frozen ``nn.Linear`` (kept as ``base_layer``, PEFT's name) and adds an update.

    Subclasses set ``method`` (their registered name), hold the tensors their spec lists under
    those keys, and define :meth:`adapter_output` (the update applied to an input) and, where the
    method records more than shape and dtype, :meth:`layer_info`. ΔW comes from the spec's one
    definition (:meth:`factored_update`, :meth:`delta_weight`), in the (out × in) weight convention.
    """

    method: str = ""

    def __init__(self, base_layer: nn.Linear, layer_name: str) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"{layer_name} is a {type(base_layer).__name__}, not nn.Linear")
        self.base_layer = base_layer
        self.layer_name = layer_name
        self.merged = False
        for p in base_layer.parameters():
            p.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    @property
    def weight(self) -> torch.Tensor:  # lets code that reads `.weight` keep working
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def spec(self) -> "MethodSpec":
        """The method's registered spec (what it stores, its ΔW)."""
        from .methods import get_spec

        return get_spec(self.method)

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def layer_info(self) -> dict[str, Any]:
        """What the run.json layer record holds besides shape and dtype (rank, scaling, fingerprints, ...)."""
        return {}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trainable tensors by key (what a snapshot holds for this layer)."""
        return self.spec.trainable_state(self)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The frozen adapter tensors by key (stored once per run)."""
        return self.spec.frozen_state(self)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {**self.trainable_state(), **self.frozen_state()}

    def factored_update(self) -> FactoredUpdate:
        """ΔW in factored form (float64), from the method's one definition."""
        return self.spec.factored_update(self._tensors(), self.layer_info())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.adapter_output(x).to(out.dtype)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in) in the base weight's dtype and device, from the method's one definition."""
        return self.spec.factors(self._tensors(), self.layer_info()).dense().to(self.base_layer.weight.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W0 ← W0 + ΔW; the adapter path is then skipped."""
        if self.merged:
            raise ValueError(f"{self.layer_name} is already merged; call unmerge() first")
        self.base_layer.weight.add_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W0 ← W0 − ΔW, restoring the separate adapter path."""
        if not self.merged:
            raise ValueError(f"{self.layer_name} is not merged; nothing to unmerge")
        self.base_layer.weight.sub_(self.delta_weight().to(self.base_layer.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, merged={self.merged}"
