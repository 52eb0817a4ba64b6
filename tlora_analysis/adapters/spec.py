"""One object per adapter method: what it stores, and the one definition of its update ΔW.

A :class:`MethodSpec` holds a method's config class, layer class, the tensors it stores per layer
(trainable ones in every snapshot, frozen ones once per run) with their shapes and the names
analyses give them, and ``factors``: the one function that turns those tensors into ΔW's factored
form. Everything else derives from it: the layer's ``delta_weight``/merge and ``factored_update``,
the recorder, the run reader (``Run.update``), the analysis loader and the parameter counts.
``methods.py`` registers the specs; a new method is one module defining a config, a layer and a
spec, plus one line there (docs/architecture.md, "Adding a method").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple

import torch
from torch import nn

from ..fileio import fingerprint
from ..lowrank import FactoredUpdate

if TYPE_CHECKING:
    from .config import AdapterConfig

__all__ = ["Factors", "StoredTensor", "MethodSpec", "RunnerOptions", "BASE_WEIGHT", "fingerprints"]

BASE_WEIGHT = "base_weight"  # W0's key among a layer's tensors and in frozen.safetensors

Shape = tuple[int, ...]


class Factors(NamedTuple):
    """ΔW = scale · left @ core @ right (out × in), None standing for an identity."""

    left: torch.Tensor | None
    core: torch.Tensor | None
    right: torch.Tensor | None
    scale: torch.Tensor | float

    def dense(self) -> torch.Tensor:
        """ΔW as one (out × in) tensor, in the factors' dtype and device."""
        out = None
        for m in (self.left, self.core, self.right):
            if m is not None:
                out = m if out is None else out @ m
        return self.scale * out


@dataclass(frozen=True)
class StoredTensor:
    """One tensor a method keeps per layer.

    key: its name on the layer and in the run's files ("tlora_B"); role: the method's own name
    for it in analysis tables ("B": ``fro_norm_B``, ``matrices=("B",)``; None: not a factor the
    analyses look at, as full fine-tuning's dense weight); frozen: stored once
    (frozen.safetensors) rather than in every snapshot; shape: its shape from the layer's
    (out, in) and the rank (() for a scalar).
    """

    key: str
    role: str | None
    frozen: bool
    shape: Callable[[int, int, int | None], Shape]


@dataclass(frozen=True)
class RunnerOptions:
    """What ``tlora-analysis train`` knows when it builds an adapter config (None: the method's default)."""

    rank: int
    targets: tuple[str, ...]
    seed: int
    dropout: float | None
    modules_to_save: tuple[str, ...]
    lora_alpha: float | None = None
    tlora_init: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    """An adapter method: its classes, its stored tensors and the one definition of its ΔW.

    ``factors(tensors, info)`` maps the layer's tensors by key (trainable and frozen, plus
    ``base_weight`` (W0) when the method has a ``weight_key``) and its run.json layer record
    ``info`` (rank, scaling, ...) to :class:`Factors`. ``frozen_sides`` names the factors ("left", "right") built
    from frozen tensors alone: analyses decompose them once per layer, and a method with both is
    confined to the fixed set {Q_L M Q_Rᵀ} (``fixed_subspaces``: the ``reachable`` analysis).
    ``rank_bounded``: the rank may not exceed min(in, out) of an adapted layer (VeRA's shared
    projections may). ``fixed_scale``: the scale is a set hyperparameter (LoRA's lora_alpha / r), which the paper's
    merged-weight figures left out. ``weight_key``: the trained tensor that is the layer's weight itself
    (full fine-tuning's "weight"): ΔW = W_t − W0 needs W0, which is that tensor at step 0.
    ``runner_config`` builds the method's config from the runner's options. ``default_lr``: the
    runner's AdamW learning rate when none is given, the one held-out selection chose for the method
    at rank 8 on the bundled MiniLM (docs/training.md): methods with few parameters behind fixed
    projections need far larger steps than LoRA to learn in a few epochs.
    """

    name: str
    label: str
    config_class: type
    layer_class: type[nn.Module] | None
    tensors: tuple[StoredTensor, ...]
    factors: Callable[[Mapping[str, torch.Tensor], Mapping[str, Any]], Factors]
    runner_config: Callable[[RunnerOptions], "AdapterConfig"]
    default_lr: float
    frozen_sides: tuple[str, ...] = ()
    rank_bounded: bool = True
    fixed_scale: bool = False
    weight_key: str | None = None

    # ------------------------------------------------------------------ what is stored
    @property
    def base_weight_key(self) -> str:
        """W0's key among a layer's tensors (given to ``factors`` when the method has a ``weight_key``)."""
        return BASE_WEIGHT

    @property
    def trainable_keys(self) -> tuple[str, ...]:
        """Per-layer tensor names in a snapshot file."""
        return tuple(t.key for t in self.tensors if not t.frozen)

    @property
    def frozen_keys(self) -> tuple[str, ...]:
        """Per-layer tensor names in frozen.safetensors (besides W0)."""
        return tuple(t.key for t in self.tensors if t.frozen)

    @property
    def roles(self) -> dict[str, str]:
        """Role (the method's letter: "A", "B", "alpha", ...) → tensor key, for the factors analyses read."""
        return {t.role: t.key for t in self.tensors if t.role is not None}

    @property
    def matrix_roles(self) -> tuple[str, ...]:
        """The roles of matrices and vectors (not scalars such as α): what histograms and norms look at."""
        return tuple(t.role for t in self.tensors if t.role is not None and t.shape(2, 2, 2) != ())

    @property
    def frozen_roles(self) -> tuple[str, ...]:
        return tuple(t.role for t in self.tensors if t.frozen and t.role is not None)

    @property
    def has_rank(self) -> bool:
        """Whether the method's config has a rank (full fine-tuning has none)."""
        return "rank" in getattr(self.config_class, "__dataclass_fields__", {})

    @property
    def fixed_subspaces(self) -> bool:
        """ΔW always lies in {Q_L M Q_Rᵀ} with Q_L, Q_R fixed by frozen tensors (both sides frozen)."""
        return set(self.frozen_sides) == {"left", "right"}

    def shapes(self, out: int, inn: int, rank: int | None) -> dict[str, Shape]:
        """Key → shape of every stored tensor of a layer of shape (out, in)."""
        return {t.key: tuple(t.shape(out, inn, rank)) for t in self.tensors}

    def trainable_shapes(self, out: int, inn: int, rank: int | None) -> dict[str, Shape]:
        shapes = self.shapes(out, inn, rank)
        return {k: shapes[k] for k in self.trainable_keys}

    # ------------------------------------------------------------------ the update
    def factored_update(self, tensors: Mapping[str, torch.Tensor], info: Mapping[str, Any] | None = None,
                        qr: tuple[Any, Any] | None = None) -> FactoredUpdate:
        """ΔW of one layer from its tensors as a :class:`FactoredUpdate` (float64, exact algebra)."""
        return FactoredUpdate(*self.factors(tensors, info or {}), qr=qr)

    # ------------------------------------------------------------------ a model's modules
    def build_layer(self, module: nn.Module, name: str, config: "AdapterConfig", shared: dict[str, Any]) -> nn.Module:
        """The adapted layer that replaces ``module`` (``shared``: one dict per model, for frozen tensors
        that layers share, e.g. VeRA's per-shape projections)."""
        if self.layer_class is None:
            raise TypeError(f"{self.name} puts no layer on a model")
        return self.layer_class(module, name, config, shared=shared)

    def trainable_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The tensors a snapshot holds for this (adapted) module, by key."""
        return {k: getattr(module, k) for k in self.trainable_keys}

    def frozen_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """The frozen tensors stored once per run for this module, by key."""
        return {k: getattr(module, k) for k in self.frozen_keys}

    def layer_info(self, module: nn.Module) -> dict[str, Any]:
        """The module's run.json ``layers`` record: shape, dtype, and what the method adds."""
        info: dict[str, Any] = {"shape": [module.out_features, module.in_features],
                                "dtype": str(module.weight.dtype).removeprefix("torch.")}
        return {**info, **module.layer_info()} if hasattr(module, "layer_info") else info


def fingerprints(tensors: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """Role → fingerprint (shape, dtype, SHA-256) of frozen tensors, taken on the CPU; empty for tensors
    on the meta device (a model built to count parameters has no values to fingerprint)."""
    if any(t.is_meta for t in tensors.values()):
        return {}
    return {k: fingerprint(t.detach().cpu()) for k, t in tensors.items()}
