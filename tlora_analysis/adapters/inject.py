"""Putting adapters on a model: target matching, trainability, counting, merging.

Targets are matched against the full dotted module names of ``model.named_modules()``:
a string is a regex that must match the whole name (PEFT's convention); a list entry
matches a name exactly or as a dotted suffix (``"query"`` matches
``encoder.layer.0.attention.self.query``); a list entry prefixed ``"re:"`` is a regex.
Everything is validated before the model is touched.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from .base import AdaptedLinear
from .config import AdapterConfig, FullConfig, LoRAConfig, TLoRAConfig
from .lora import LoRALinear
from .tlora import TLoRALinear

__all__ = [
    "apply_adapters",
    "adapted_layers",
    "tracked_linears",
    "adapter_config",
    "count_parameters",
    "ParameterCount",
    "merge_and_unload",
    "remove_adapters",
    "match_targets",
    "head_module_names",
    "HEAD_NAMES",
]

CONFIG_ATTR = "tlora_analysis_config"
HEAD_NAMES = ("classifier", "score")  # the classification heads of transformers' *ForSequenceClassification
_LAYER_CLASSES = {"tlora": TLoRALinear, "lora": LoRALinear}


def _matches(name: str, targets: str | tuple[str, ...]) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    for t in targets:
        if t.startswith("re:"):
            if re.fullmatch(t[3:], name):
                return True
        elif name == t or name.endswith("." + t):
            return True
    return False


def _suggestions(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    return f"nn.Linear suffixes in this model: {short[:limit]}; e.g. full names {names[:3]}"


def match_targets(model: nn.Module, targets: str | tuple[str, ...] | None) -> dict[str, nn.Module]:
    """Modules whose names match ``targets`` (all ``nn.Linear`` when targets is None)."""
    if targets is None:
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    found = {n: m for n, m in model.named_modules() if n and _matches(n, targets)}
    # An adapted layer's inner base_layer must not match a second time.
    return {n: m for n, m in found.items() if not n.endswith(".base_layer")}


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """Top-level names of the model's classification head (``classifier`` or ``score``)."""
    return tuple(n for n, _ in model.named_children() if n in HEAD_NAMES)


def _resolve_modules_to_save(model: nn.Module, config: AdapterConfig, targets: dict[str, nn.Module]) -> AdapterConfig:
    """The config with ``modules_to_save=None`` replaced by the model's head (not targeted)."""
    if config.modules_to_save is not None:
        return config
    heads = tuple(h for h in head_module_names(model)
                  if not any(n == h or n.startswith(h + ".") for n in targets))
    return dataclasses.replace(config, modules_to_save=heads)


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config :func:`apply_adapters` put on the model, or None."""
    return getattr(model, CONFIG_ATTR, None)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Name → adapted layer (TLoRA or LoRA), in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def tracked_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose update a recorder tracks: adapted layers, or full FT's targets."""
    config = adapter_config(model)
    if isinstance(config, FullConfig):
        chosen = config.target_modules if config.track_modules is None else config.track_modules
        return {n: m for n, m in match_targets(model, chosen).items() if isinstance(m, nn.Linear)}
    return dict(adapted_layers(model))


def _validate(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Module]:
    if not isinstance(config, (TLoRAConfig, LoRAConfig, FullConfig)):
        raise TypeError(f"config must be a TLoRAConfig, LoRAConfig or FullConfig, got {type(config).__name__}")
    if adapter_config(model) is not None or adapted_layers(model):
        raise ValueError(
            "this model already has adapters; apply_adapters changes a model once. "
            "Start from a fresh model, or call merge_and_unload(model) first"
        )
    targets = match_targets(model, config.target_modules)
    if config.target_modules is not None and not targets:
        raise ValueError(f"target_modules {config.target_modules!r} matched no module. {_suggestions(model)}")
    if config.target_modules is None and not targets:
        raise ValueError("this model has no nn.Linear layer to track")
    bad = {n: type(m).__name__ for n, m in targets.items() if not isinstance(m, nn.Linear)}
    if bad:
        raise TypeError(
            f"only nn.Linear layers can be targeted; {dict(list(bad.items())[:5])} are not. "
            f"Name the Linear layers instead. {_suggestions(model)}"
        )
    if isinstance(config, (TLoRAConfig, LoRAConfig)):
        for name, m in targets.items():
            limit = min(m.in_features, m.out_features)
            if config.rank > limit:
                raise ValueError(
                    f"rank {config.rank} exceeds min(in, out) = {limit} of {name} "
                    f"({m.in_features} → {m.out_features}): ΔW cannot have rank above {limit}. "
                    f"Use rank ≤ {limit} or leave that layer out of target_modules"
                )
    if isinstance(config, FullConfig) and config.track_modules is not None:
        tracked = match_targets(model, config.track_modules)
        if not tracked or any(not isinstance(m, nn.Linear) for m in tracked.values()):
            raise ValueError(f"track_modules {config.track_modules!r} must match nn.Linear layers only, and at least "
                             f"one. {_suggestions(model)}")
    modules = dict(model.named_modules())
    for name in config.modules_to_save or ():
        if name not in modules and not match_targets(model, (name,)):
            raise ValueError(f"modules_to_save entry {name!r} matches no module of the model")
        if not isinstance(config, FullConfig) and match_targets(model, (name,)).keys() & targets.keys():
            raise ValueError(f"{name!r} is both a target and in modules_to_save; choose one")
    return targets


def apply_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Adapt ``model`` in place as ``config`` says and return it.

    TLoRA and LoRA wrap each targeted ``nn.Linear``; only the adapter parameters (and
    ``modules_to_save``) stay trainable. FullConfig leaves the modules as they are and makes
    all parameters (or the targets' parameters, plus ``modules_to_save``) trainable.
    ``modules_to_save=None`` (the default) means the model's classification head, so a head
    that ``from_pretrained(..., num_labels=K)`` initialised fresh is trained, not left random.
    The model keeps the resolved config (``adapter_config(model)``). On any error the model is
    left unchanged.
    """
    targets = _validate(model, config)
    config = _resolve_modules_to_save(model, config, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    if isinstance(config, FullConfig):
        trainable = model.parameters() if config.target_modules is None else (
            p for m in targets.values() for p in m.parameters())
        for p in trainable:
            p.requires_grad_(True)
    else:
        cls = _LAYER_CLASSES[config.method]
        for name, module in targets.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            layer = cls(module, name, config)
            layer.train(module.training)  # an eval-mode model stays in eval mode
            setattr(parent, child, layer)
    for name in config.modules_to_save:
        for module in match_targets(model, (name,)).values():
            for p in module.parameters():
                p.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    return model


@dataclass
class ParameterCount:
    """Parameter counts; ``groups`` maps adapter / head / base to trainable and frozen counts.

    ``adapter_buffers`` counts frozen adapter tensors stored as buffers (TLoRA's A and C):
    they cost memory like LoRA's A and B but have no gradients or optimizer state.
    """

    trainable: int
    frozen: int
    adapter_buffers: int
    groups: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.trainable + self.frozen

    def __str__(self) -> str:
        return (f"trainable {self.trainable:,} / total {self.total:,} "
                f"({100 * self.trainable / max(self.total, 1):.4f}%), frozen adapter buffers {self.adapter_buffers:,}")


def _group_of(name: str, head_prefixes: tuple[str, ...]) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith(("tlora_", "lora_")):
        return "adapter"
    if any(name == h or name.startswith(h + ".") or ("." + h + ".") in ("." + name) for h in head_prefixes):
        return "head"
    return "base"


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and frozen parameters, by group (adapter, head, base)."""
    config = adapter_config(model)
    heads = tuple(config.modules_to_save) if config is not None else ()
    groups = {g: {"trainable": 0, "frozen": 0} for g in ("adapter", "head", "base")}
    for name, p in model.named_parameters():
        groups[_group_of(name, heads)]["trainable" if p.requires_grad else "frozen"] += p.numel()
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in ("tlora_A", "tlora_C"))
    return ParameterCount(
        trainable=sum(g["trainable"] for g in groups.values()),
        frozen=sum(g["frozen"] for g in groups.values()),
        adapter_buffers=buffers,
        groups=groups,
    )


def _iter_parents(model: nn.Module) -> Iterator[tuple[nn.Module, str, AdaptedLinear]]:
    for name, layer in list(adapted_layers(model).items()):
        parent_name, _, child = name.rpartition(".")
        yield (model.get_submodule(parent_name) if parent_name else model), child, layer


@torch.no_grad()
def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back."""
    for parent, child, layer in _iter_parents(model):
        if not layer.merged:
            layer.merge()
        setattr(parent, child, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def remove_adapters(model: nn.Module) -> nn.Module:
    """Put the plain base layers back without merging (drops the adapters' updates)."""
    for parent, child, layer in _iter_parents(model):
        if layer.merged:
            layer.unmerge()
        setattr(parent, child, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model
