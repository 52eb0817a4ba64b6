"""What every adapted linear layer shares: the wrapped base layer, merge/unmerge, ΔW."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..lowrank import FactoredUpdate

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

    Subclasses define :meth:`adapter_output` (the update applied to an input),
    :meth:`factored_update` and :meth:`trainable_state`. ``delta_weight`` is the single source
    of truth for ΔW in the (out × in) weight convention.
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

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def factored_update(self) -> FactoredUpdate:
        raise NotImplementedError

    def trainable_state(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.adapter_output(x).to(out.dtype)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """ΔW (out × in) in the base weight's dtype and device."""
        raise NotImplementedError

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
