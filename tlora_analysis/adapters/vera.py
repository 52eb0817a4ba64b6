"""VeRA (Kopiczko et al., ICLR 2024): h = W0 x + b + Λ_b B Λ_d A dropout(x), docs/paper.md.

A (r × in) and B (out × r) are frozen random matrices shared by every adapted layer of the same
shape; each layer trains only two vectors, d (r, on the rank side) and b (out, on the output
side): ΔW = diag(b) B diag(d) A, r + out trainable numbers per layer. d starts at ``d_initial``
and b at zero, so ΔW starts at zero. A and B are Kaiming-uniform (gain √2, fan-in), drawn from a
generator seeded by (seed, shape): the same seed gives the same projections in every run. PEFT's
``VeraConfig`` computes the same function for the same A and B (it slices one pair of the largest
shape for every layer; here each shape has its own pair, stored once per run).
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

__all__ = ["VeRAConfig", "VeRALinear", "VeRAProjections", "SPEC"]

NAME = "vera"  # the method's registered name (run.json's "method", --method)


@dataclass(frozen=True)
class VeRAConfig(AdapterConfig):
    """VeRA: frozen random A, B shared per layer shape; trainable vectors d (r) and b (out).

    rank may exceed a layer's size (the method's rank is that of the shared projections; the
    authors use 256 to 1024). seed: of the shared projections (PEFT's ``projection_prng_key``).
    d_initial: the value every entry of d starts at (the authors' 0.1). dropout: on the input, as
    PEFT's ``vera_dropout``. modules_to_save: as for :class:`~tlora_analysis.adapters.tlora.TLoRAConfig`.
    """

    method: str = field(init=False, default=NAME)
    rank: int = 256
    target_modules: NameSelection = ("query", "value")
    seed: int = 0
    d_initial: float = 0.1
    dropout: float = 0.0
    modules_to_save: NameSelection | None = None

    def check(self) -> None:
        check_finite(self.d_initial, "d_initial")


def group_name(out: int, inn: int) -> str:
    """The key prefix of a shape's shared projections in frozen.safetensors and adapter files."""
    return f"vera_shared.{out}x{inn}"


class VeRAProjections(nn.Module):
    """The frozen A (r × in) and B (out × r) every VeRA layer of one shape shares (one module, many parents,
    so moving the model keeps one copy)."""

    def __init__(self, out: int, inn: int, rank: int, seed: int, like: torch.Tensor) -> None:
        super().__init__()
        self.group = group_name(out, inn)
        g = layer_generator(seed, self.group)
        a, b = torch.empty(rank, inn), torch.empty(out, rank)
        nn.init.kaiming_uniform_(a, generator=g)
        nn.init.kaiming_uniform_(b, generator=g)
        dtype = like.dtype if like.dtype.is_floating_point else torch.float32
        a, b = a.to(dtype), b.to(dtype)
        self.fingerprints = fingerprints({"A": a, "B": b})
        self.register_buffer("vera_A", a.to(like.device))
        self.register_buffer("vera_B", b.to(like.device))


class VeRALinear(AdaptedLinear):
    """A frozen linear layer plus diag(b) B diag(d) A, with A, B shared per shape and d, b trainable."""

    method = NAME

    def __init__(self, base_layer: nn.Linear, layer_name: str, config: VeRAConfig,
                 shared: dict[str, Any] | None = None) -> None:
        super().__init__(base_layer, layer_name)
        w = base_layer.weight
        out, inn = base_layer.out_features, base_layer.in_features
        shared = {} if shared is None else shared
        key = group_name(out, inn)
        if key not in shared:
            shared[key] = VeRAProjections(out, inn, config.rank, config.seed, w)
        self.vera_shared = shared[key]
        dtype = self.vera_shared.vera_A.dtype
        self.vera_lambda_d = nn.Parameter(torch.full((config.rank,), float(config.d_initial), device=w.device,
                                                     dtype=dtype))
        self.vera_lambda_b = nn.Parameter(torch.zeros(out, device=w.device, dtype=dtype))
        self.dropout = Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.rank = config.rank

    @property
    def fingerprints(self) -> dict[str, Any]:
        """Fingerprints of the shared A and B (held by the shared module)."""
        return self.vera_shared.fingerprints

    @fingerprints.setter
    def fingerprints(self, value: dict[str, Any]) -> None:
        self.vera_shared.fingerprints = value

    @property
    def vera_A(self) -> torch.Tensor:
        return self.vera_shared.vera_A

    @property
    def vera_B(self) -> torch.Tensor:
        return self.vera_shared.vera_B

    def adapter_output(self, x: torch.Tensor) -> torch.Tensor:
        """b ⊙ (B (d ⊙ (A dropout(x)))), in A's dtype."""
        x = self.dropout(x.to(self.vera_A.dtype))
        return self.vera_lambda_b * ((self.vera_lambda_d * (x @ self.vera_A.T)) @ self.vera_B.T)

    def layer_info(self) -> dict[str, Any]:
        return {"rank": self.rank, "frozen_group": self.vera_shared.group, "fingerprints": self.fingerprints}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, shared={self.vera_shared.group}"


def vera_factors(t: Mapping[str, torch.Tensor], info: Mapping[str, Any]) -> Factors:
    """ΔW = diag(b) B diag(d) A: (left = diag(b) B, core = diag(d), right = A, scale = 1)."""
    return Factors(t["vera_lambda_b"][:, None] * t["vera_B"], torch.diag(t["vera_lambda_d"]), t["vera_A"], 1.0)


def _runner_config(o: RunnerOptions) -> VeRAConfig:
    return VeRAConfig(rank=o.rank, target_modules=o.targets, seed=o.seed, dropout=o.dropout or 0.0,
                      modules_to_save=o.modules_to_save)


SPEC = MethodSpec(
    name=NAME, label="VeRA", config_class=VeRAConfig, layer_class=VeRALinear,
    tensors=(StoredTensor("vera_A", "A", True, lambda out, inn, r: (r, inn)),
             StoredTensor("vera_B", "B", True, lambda out, inn, r: (out, r)),
             StoredTensor("vera_lambda_d", "d", False, lambda out, inn, r: (r,)),
             StoredTensor("vera_lambda_b", "b", False, lambda out, inn, r: (out,))),
    factors=vera_factors, runner_config=_runner_config, default_lr=1e-2, frozen_sides=("right",),
    rank_bounded=False,
)
