"""Saving and loading adapters: ``adapter_config.json`` + ``adapter_model.safetensors``.

The safetensors file holds, per adapted layer, the trainable state (TLoRA's B and α, LoRA's
A and B), TLoRA's frozen A and C, and the weights of ``modules_to_save``; for full
fine-tuning it holds every trainable parameter. The JSON holds the config, the layer shapes
and the fingerprints of A and C, so a load can verify what it restores.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..fileio import CorruptFileError, fingerprint, load_tensors, read_json, save_tensors, write_json
from .config import FullConfig, config_from_dict
from .inject import adapted_layers, adapter_config, apply_adapters, remove_adapters
from .tlora import TLoRALinear

__all__ = ["save_adapter", "load_adapter", "ADAPTER_CONFIG", "ADAPTER_WEIGHTS", "FORMAT_VERSION"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1


def _adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    config = adapter_config(model)
    if isinstance(config, FullConfig):
        return {n: p for n, p in model.named_parameters() if p.requires_grad}
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model).items():
        for key, t in {**layer.trainable_state(), **layer.frozen_state()}.items():
            tensors[f"{name}.{key}"] = t
    for prefix in config.modules_to_save or ():
        for name, p in model.named_parameters():
            if name.startswith(prefix + ".") or ("." + prefix + ".") in ("." + name):
                tensors[name] = p
    return tensors


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the model's adapter to ``directory`` (created if needed); returns the folder."""
    config = adapter_config(model)
    if config is None:
        raise ValueError("this model has no adapters; call apply_adapters(model, config) first")
    directory = Path(directory)
    layers = {}
    for name, layer in adapted_layers(model).items():
        info = {"in_features": layer.in_features, "out_features": layer.out_features}
        if isinstance(layer, TLoRALinear):
            info["fingerprints"] = layer.fingerprints
        layers[name] = info
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
    fingerprints of A and C are verified before anything is copied; on error the model's
    weights are unchanged.
    """
    directory = Path(directory)
    meta, tensors = _read(directory)
    config = config_from_dict(meta["config"])
    # Verify the file's frozen factors against the fingerprints recorded beside them.
    for name, info in meta["layers"].items():
        for key, fp in info.get("fingerprints", {}).items():
            t = tensors.get(f"{name}.tlora_{key}")
            if t is None or fingerprint(t) != fp:
                raise CorruptFileError(
                    f"{directory / ADAPTER_WEIGHTS}: tlora_{key} of {name} does not match its fingerprint "
                    f"in {ADAPTER_CONFIG}; the adapter files are inconsistent or damaged"
                )
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


def _copy_in(model: nn.Module, directory: Path, meta: dict, tensors: dict[str, torch.Tensor], fresh: bool) -> nn.Module:
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
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
        if isinstance(layer, TLoRALinear) and not fresh and layer.fingerprints != info["fingerprints"]:
            raise ValueError(
                f"{name}'s frozen A/C differ from the saved ones (fingerprint mismatch): the model's adapter "
                f"was built with another seed or init. Load into a model without adapters"
            )
    targets = {}
    for key, t in tensors.items():
        dest = params.get(key, buffers.get(key))
        if dest is None:
            raise ValueError(f"the saved adapter has tensor {key!r}, which this model lacks; load into the model it was trained on")
        if tuple(dest.shape) != tuple(t.shape):
            raise ValueError(f"{key} has shape {tuple(dest.shape)} in this model but {tuple(t.shape)} in the saved adapter")
        targets[key] = dest
    with torch.no_grad():
        for key, dest in targets.items():
            dest.copy_(tensors[key].to(device=dest.device, dtype=dest.dtype))
    for layer in layers.values():
        if isinstance(layer, TLoRALinear):
            layer.fingerprints = {"A": fingerprint(layer.tlora_A), "C": fingerprint(layer.tlora_C)}
    return model
