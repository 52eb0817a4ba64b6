"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The safetensors file holds, per adapted layer, the trainable tensors the method's spec lists
(TLoRA's B and α, LoRA's A and B, ...), its frozen tensors (once per group for tensors that
layers share, e.g. VeRA's per-shape projections: ``<group>.<key>``), and the weights of
``modules_to_save``; for a method without layers (full fine-tuning) it holds every trainable
parameter. The JSON holds the config and each layer's record (shape, rank, fingerprints of the
frozen tensors), so a load can verify what it restores.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..fileio import CorruptFileError, fingerprint, load_tensors, read_json, save_tensors, write_json
from ..names import in_module
from .base import AdaptedLinear
from .config import config_from_dict
from .inject import adapted_layers, adapter_config, apply_adapters, match_targets, remove_adapters
from .methods import get_spec, spec_of
from .spec import MethodSpec, fingerprints

__all__ = ["save_adapter", "load_adapter", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FORMAT_VERSION", "frozen_prefix"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1


def frozen_prefix(layer: str, info: dict[str, Any]) -> str:
    """The key prefix of a layer's frozen tensors in a file: its shared group's name, else the layer's."""
    return info.get("frozen_group") or layer


def _layer_destinations(model: nn.Module) -> dict[str, torch.Tensor]:
    """File key → the adapter tensor it is (trainable per layer; frozen per layer or per shared group)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model).items():
        out.update({f"{name}.{k}": t for k, t in layer.trainable_state().items()})
        prefix = frozen_prefix(name, layer.layer_info())
        out.update({f"{prefix}.{k}": t for k, t in layer.frozen_state().items()})
    return out


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    config = adapter_config(model)
    if spec_of(config).layer_class is None:
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    tensors = _layer_destinations(model)
    for pattern in config.modules_to_save or ():
        for module_name in match_targets(model, (pattern,)):
            tensors.update({n: p for n, p in model.named_parameters() if in_module(n, module_name)})
    return tensors


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the model's adapter to ``directory`` (created if needed); returns the folder."""
    config = adapter_config(model)
    if config is None:
        raise ValueError("this model has no adapters; call apply_adapters(model, config) first")
    directory = Path(directory)
    layers = {name: {"in_features": layer.in_features, "out_features": layer.out_features, **layer.layer_info()}
              for name, layer in adapted_layers(model).items()}
    save_tensors(directory / ADAPTER_WEIGHTS, _adapter_tensors(model), {"format_version": FORMAT_VERSION})
    write_json(directory / ADAPTER_CONFIG, {
        "format": "tlora_analysis.adapter",
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": config.to_dict(),
        "layers": layers,
    })
    return directory


def _read(directory: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg_path, w_path = directory / ADAPTER_CONFIG, directory / ADAPTER_WEIGHTS
    for p in (cfg_path, w_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing: {directory} is not a saved adapter (save_adapter writes both files)")
    meta = read_json(cfg_path)
    if meta.get("format") != "tlora_analysis.adapter":
        raise ValueError(f"{cfg_path} was not written by tlora_analysis.save_adapter (for a PEFT adapter, open it with Run)")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{cfg_path} has format version {meta['format_version']}; this version reads ≤ {FORMAT_VERSION}. Upgrade tlora-analysis")
    tensors, _ = load_tensors(w_path, verify=True)
    return meta, tensors


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Restore a saved adapter into ``model`` bit-exactly and return it.

    A model without adapters gets them applied from the saved config first. Shapes and the
    fingerprints of the frozen tensors are verified before anything is copied; on error the model's
    weights are unchanged.
    """
    directory = Path(directory)
    meta, tensors = _read(directory)
    config = config_from_dict(meta["config"])
    _verify_frozen(directory, get_spec(config.method), meta["layers"], tensors)
    existing = adapter_config(model)
    if existing is None:
        trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        apply_adapters(model, config)  # validates targets, leaves the model unchanged on error
        try:
            return _copy_in(model, directory, meta, tensors, fresh=True)
        except Exception:
            remove_adapters(model)
            for n, p in model.named_parameters():
                p.requires_grad_(trainable.get(n, p.requires_grad))
            raise
    if existing.to_dict() != config.to_dict():
        raise ValueError(
            f"the model already carries a different adapter ({existing.method}, {existing.to_dict()}); "
            f"load into a fresh model instead"
        )
    return _copy_in(model, directory, meta, tensors, fresh=False)


def _verify_frozen(directory: Path, spec: MethodSpec, layers: dict[str, dict], tensors: dict[str, torch.Tensor]) -> None:
    """The file's frozen tensors against the fingerprints recorded beside them."""
    for name, info in layers.items():
        for role, fp in (info.get("fingerprints") or {}).items():
            key = f"{frozen_prefix(name, info)}.{spec.roles[role]}"
            t = tensors.get(key)
            if t is None or fingerprint(t) != fp:
                raise CorruptFileError(
                    f"{directory / ADAPTER_WEIGHTS}: {key} ({role} of {name}) does not match its fingerprint "
                    f"in {ADAPTER_CONFIG}; the adapter files are inconsistent or damaged"
                )


def _frozen_fingerprints(layer: AdaptedLinear) -> dict[str, Any]:
    spec = layer.spec
    return fingerprints({role: getattr(layer, spec.roles[role]) for role in spec.frozen_roles})


def _copy_in(model: nn.Module, directory: Path, meta: dict, tensors: dict[str, torch.Tensor], fresh: bool) -> nn.Module:
    destinations = {**dict(model.named_buffers()), **dict(model.named_parameters()), **_layer_destinations(model)}
    layers = adapted_layers(model)
    for name, info in meta["layers"].items():
        layer = layers.get(name)
        if layer is None:
            raise ValueError(f"the saved adapter has layer {name!r}, which this model lacks; load into the model it was trained on")
        if (layer.in_features, layer.out_features) != (info["in_features"], info["out_features"]):
            raise ValueError(
                f"{name} is {layer.in_features} → {layer.out_features} in this model but "
                f"{info['in_features']} → {info['out_features']} in the saved adapter: the models differ"
            )
        if not fresh and layer.layer_info().get("fingerprints") != info.get("fingerprints"):
            raise ValueError(
                f"{name}'s frozen tensors differ from the saved ones (fingerprint mismatch): the model's adapter "
                f"was built with another seed, init or base weight. Load into a model without adapters"
            )
    targets = {}
    for key, t in tensors.items():
        dest = destinations.get(key)
        if dest is None:
            raise ValueError(f"the saved adapter has tensor {key!r}, which this model lacks; load into the model it was trained on")
        if tuple(dest.shape) != tuple(t.shape):
            raise ValueError(f"{key} has shape {tuple(dest.shape)} in this model but {tuple(t.shape)} in the saved adapter")
        targets[key] = dest
    with torch.no_grad():
        for key, dest in targets.items():
            dest.copy_(tensors[key].to(device=dest.device, dtype=dest.dtype))
    for layer in layers.values():
        if layer.spec.frozen_roles:
            layer.fingerprints = _frozen_fingerprints(layer)
    return model
