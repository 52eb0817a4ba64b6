"""Putting adapters on a model: target matching, trainability, counting, merging.

Targets, ``track_modules`` and ``modules_to_save`` are name selections matched against the full
dotted names of ``model.named_modules()`` by the package's one rule (:mod:`tlora_analysis.names`:
a name, a dotted suffix on whole components such as ``"query"``, or ``"re:REGEX"`` matching the
whole name). The method's spec builds each adapted layer. Everything is validated before the
model is touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from ..names import in_module, looks_like_regex, select_names
from .base import AdaptedLinear
from .config import AdapterConfig
from .methods import spec_of
from .spec import MethodSpec

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


def _suggestions(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    short = sorted({n.rsplit(".", 1)[-1] for n in names})
    return f"nn.Linear suffixes in this model: {short[:limit]}; e.g. full names {names[:3]}"


def _regex_hint(patterns: tuple[str, ...]) -> str:
    regexes = [p for p in patterns if looks_like_regex(p)]
    return f" To use {regexes[0]!r} as a regular expression, write 're:{regexes[0]}'." if regexes else ""


def match_targets(model: nn.Module, targets: tuple[str, ...] | None) -> dict[str, nn.Module]:
    """Modules whose names ``targets`` selects (all ``nn.Linear`` when targets is None)."""
    if targets is None:
        return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    modules = dict(model.named_modules())
    found = select_names((n for n in modules if n), targets)
    # An adapted layer's inner base_layer (or shared projections) must not match a second time.
    return {n: modules[n] for n in found if not isinstance(_parent(model, n), AdaptedLinear)}


def _parent(model: nn.Module, name: str) -> nn.Module | None:
    parent_name, _, _ = name.rpartition(".")
    return model.get_submodule(parent_name) if parent_name else None


def head_module_names(model: nn.Module) -> tuple[str, ...]:
    """Top-level names of the model's classification head (``classifier`` or ``score``)."""
    return tuple(n for n, _ in model.named_children() if n in HEAD_NAMES)


def _resolve_modules_to_save(model: nn.Module, config: AdapterConfig, targets: dict[str, nn.Module]) -> AdapterConfig:
    """The config with ``modules_to_save=None`` replaced by the model's head (not targeted)."""
    if config.modules_to_save is not None:
        return config
    heads = tuple(h for h in head_module_names(model) if not any(in_module(n, h) for n in targets))
    return dataclasses.replace(config, modules_to_save=heads)


def adapter_config(model: nn.Module) -> AdapterConfig | None:
    """The config :func:`apply_adapters` put on the model, or None."""
    return getattr(model, CONFIG_ATTR, None)


def adapted_layers(model: nn.Module) -> dict[str, AdaptedLinear]:
    """Name → adapted layer, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdaptedLinear)}


def _tracked_selection(config: AdapterConfig) -> tuple[str, ...] | None:
    """What a method without layers (full fine-tuning) records: its track_modules, else its targets."""
    track = getattr(config, "track_modules", None)
    return config.target_modules if track is None else track


def tracked_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The layers whose update a recorder tracks: the adapted layers, or for a method that adds no
    layer (full fine-tuning) its tracked ``nn.Linear`` modules."""
    config = adapter_config(model)
    if config is not None and spec_of(config).layer_class is None:
        return {n: m for n, m in match_targets(model, _tracked_selection(config)).items() if isinstance(m, nn.Linear)}
    return dict(adapted_layers(model))


def _check_targets(model: nn.Module, config: AdapterConfig, spec: MethodSpec) -> dict[str, nn.Module]:
    targets = match_targets(model, config.target_modules)
    if config.target_modules is not None and not targets:
        raise ValueError(f"target_modules {config.target_modules!r} matched no module. {_suggestions(model)}."
                         f"{_regex_hint(config.target_modules)}")
    if config.target_modules is None and not targets:
        raise ValueError("this model has no nn.Linear layer to track")
    bad = {n: type(m).__name__ for n, m in targets.items() if not isinstance(m, nn.Linear)}
    if bad:
        raise TypeError(
            f"only nn.Linear layers can be targeted; {dict(list(bad.items())[:5])} are not. "
            f"Name the Linear layers instead. {_suggestions(model)}"
        )
    if spec.has_rank and spec.rank_bounded:
        for name, m in targets.items():
            limit = min(m.in_features, m.out_features)
            if config.rank > limit:
                raise ValueError(
                    f"rank {config.rank} exceeds min(in, out) = {limit} of {name} "
                    f"({m.in_features} → {m.out_features}): ΔW cannot have rank above {limit}. "
                    f"Use rank ≤ {limit} or leave that layer out of target_modules"
                )
    return targets


def _validate(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Module]:
    spec = spec_of(config)
    if adapter_config(model) is not None or adapted_layers(model):
        raise ValueError(
            "this model already has adapters; apply_adapters changes a model once. "
            "Start from a fresh model, or call merge_and_unload(model) first"
        )
    targets = _check_targets(model, config, spec)
    track = getattr(config, "track_modules", None)
    if track is not None:
        tracked = match_targets(model, track)
        if not tracked or any(not isinstance(m, nn.Linear) for m in tracked.values()):
            raise ValueError(f"track_modules {track!r} must match nn.Linear layers only, and at least "
                             f"one. {_suggestions(model)}")
    for name in config.modules_to_save or ():
        saved = match_targets(model, (name,))
        if not saved:
            raise ValueError(f"modules_to_save entry {name!r} matches no module of the model")
        if spec.layer_class is not None and saved.keys() & targets.keys():
            raise ValueError(f"{name!r} is both a target and in modules_to_save; choose one")
    return targets


def _replace_targets(model: nn.Module, spec: MethodSpec, config: AdapterConfig, targets: dict[str, nn.Module]) -> None:
    """Swap each target for the method's adapted layer (layers of one model share ``shared``)."""
    shared: dict[str, Any] = {}
    for name, module in targets.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = spec.build_layer(module, name, config, shared)
        layer.train(module.training)  # an eval-mode model stays in eval mode
        setattr(parent, child, layer)


def apply_adapters(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Adapt ``model`` in place as ``config`` says and return it.

    An adapter method wraps each targeted ``nn.Linear`` in its layer; only the adapter
    parameters (and ``modules_to_save``) stay trainable. A method without a layer (FullConfig)
    leaves the modules as they are and makes all parameters (or the targets' parameters, plus
    ``modules_to_save``) trainable. ``modules_to_save=None`` (the default) means the model's
    classification head, so a head that ``from_pretrained(..., num_labels=K)`` initialised fresh is
    trained, not left random. The model keeps the resolved config (``adapter_config(model)``).
    On any error the model is left unchanged.
    """
    spec = spec_of(config)
    targets = _validate(model, config)
    config = _resolve_modules_to_save(model, config, targets)
    for p in model.parameters():
        p.requires_grad_(False)
    if spec.layer_class is None:
        trainable = model.parameters() if config.target_modules is None else (
            p for m in targets.values() for p in m.parameters())
        for p in trainable:
            p.requires_grad_(True)
    else:
        _replace_targets(model, spec, config, targets)
    for name in config.modules_to_save:
        for module in match_targets(model, (name,)).values():
            for p in module.parameters():
                p.requires_grad_(True)
    setattr(model, CONFIG_ATTR, config)
    return model


@dataclass
class ParameterCount:
    """Parameter counts; ``groups`` maps adapter / head / base to trainable and frozen counts.

    ``adapter_buffers`` counts the adapters' frozen tensors (TLoRA's A and C, VeRA's shared A and
    B once per shape, LoRA-XS's A and B): they cost memory but have no gradients or optimizer state.
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


def _adapter_tensor_ids(model: nn.Module) -> tuple[set[int], set[int]]:
    """Ids of the adapters' own parameters and of their frozen buffers (shared ones once)."""
    params, buffers = set(), set()
    for layer in adapted_layers(model).values():
        base = {id(t) for t in layer.base_layer.parameters()} | {id(t) for t in layer.base_layer.buffers()}
        params |= {id(p) for p in layer.parameters()} - base
        buffers |= {id(b) for b in layer.frozen_state().values()} - base
    return params, buffers


def count_parameters(model: nn.Module) -> ParameterCount:
    """Trainable and frozen parameters, by group (adapter, head, base)."""
    config = adapter_config(model)
    heads = tuple(config.modules_to_save) if config is not None else ()
    head_modules = select_names((n for n, _ in model.named_modules() if n), heads)
    adapter_params, adapter_buffers = _adapter_tensor_ids(model)
    groups = {g: {"trainable": 0, "frozen": 0} for g in ("adapter", "head", "base")}
    for name, p in model.named_parameters():
        group = "adapter" if id(p) in adapter_params else (
            "head" if any(in_module(name, h) for h in head_modules) else "base")
        groups[group]["trainable" if p.requires_grad else "frozen"] += p.numel()
    buffers = sum(b.numel() for b in model.buffers() if id(b) in adapter_buffers)
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
