"""Synthetic TLoRA and LoRA runs with known truth, for calibrating the claims report.

A :class:`SyntheticRun` has the reading interface every analyzer uses (name, method, layers,
shapes, steps, trainable / frozen tensors, W0, updates), built in memory from tensors the test
chooses; ``write(path)`` stores it as a real run directory through the store's writer so the
same data can be read back with :class:`tlora_analysis.Run`. The ``scenario_*`` builders make
replicate TLoRA/LoRA runs whose relation is known: independent, identical or partly aligned
updates; Gaussian or heavy-tailed B; stable or drifting norms; α with or without a layer effect.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tlora_analysis.adapters import MethodSpec, get_spec
from tlora_analysis.lowrank import FactoredUpdate
from tlora_analysis.store import Run
from tlora_analysis.store.format import RUN_FORMAT, SCHEMA_VERSION, tensor_key
from tlora_analysis.store.writer import RunWriter

__all__ = ["SyntheticRun", "Design", "tlora_run", "lora_run", "lora_copy_of", "orthonormal"]

STEPS = (0, 50, 100)


@dataclass(frozen=True)
class Design:
    """Shapes shared by the runs of one scenario: ``n_layers`` transformer layers × (query, value)."""

    n_layers: int = 3
    dim: int = 48
    rank: int = 4

    @property
    def names(self) -> list[str]:
        return [f"encoder.layer.{i}.attention.self.{m}" for i in range(self.n_layers) for m in ("query", "value")]


def orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A Haar-random matrix with orthonormal columns (rows × cols)."""
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


@dataclass
class SyntheticRun:
    """An in-memory run: tensors per (step, layer), frozen tensors per layer, W0 per layer."""

    name: str
    method: str
    rank: int
    seed: int
    shapes: dict[str, tuple[int, int]]
    snapshots: dict[int, dict[str, dict[str, torch.Tensor]]]
    frozen_tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    scaling: float = 1.0

    # ---------------------------------------------------------------- the Run interface
    @property
    def path(self) -> Path:
        return Path(self.name)

    @property
    def config(self) -> dict:
        return {"adapter_config": {"seed": self.seed, "rank": self.rank}, "rank": self.rank}

    @property
    def spec(self) -> MethodSpec:
        return get_spec(self.method)

    @property
    def layers(self) -> list[str]:
        return list(self.shapes)

    def layer_info(self, layer: str) -> dict:
        info = {"shape": list(self.shapes[layer]), "dtype": "float64"}
        if self.method == "lora":
            info.update(rank=self.rank, scaling=self.scaling)
        return info

    @property
    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        return dict(self.shapes)

    @property
    def steps(self) -> list[int]:
        return sorted(self.snapshots)

    @property
    def has_base_weights(self) -> bool:
        return bool(self.base)

    def snapshot_info(self, step: int) -> dict:
        return {"step": step, "epoch": None}

    def trainable(self, layer: str, step: int) -> dict[str, torch.Tensor]:
        return dict(self.snapshots[step][layer])

    def frozen(self, layer: str) -> dict[str, torch.Tensor]:
        return dict(self.frozen_tensors.get(layer, {}))

    def base_weight(self, layer: str) -> torch.Tensor:
        return self.base[layer]

    def update(self, layer: str, step: int) -> FactoredUpdate:
        t = self.snapshots[step][layer]
        if self.method == "tlora":
            f = self.frozen_tensors[layer]
            return FactoredUpdate(f["tlora_C"].T, t["tlora_B"].T, f["tlora_A"].T, t["tlora_alpha"])
        return FactoredUpdate(t["lora_B"], None, t["lora_A"], self.scaling)

    # ---------------------------------------------------------------- on disk
    def write(self, path: str | Path) -> Run:
        """Store this run as a run directory (run.json, frozen.safetensors, snapshots) and open it."""
        layers = {name: self.layer_info(name) for name in self.shapes}
        header = {"format": RUN_FORMAT, "schema_version": SCHEMA_VERSION, "name": Path(path).name,
                  "method": self.method, "adapter_config": {"method": self.method, "rank": self.rank, "seed": self.seed},
                  "rank": self.rank, "layers": layers, "store_base_weights": bool(self.base),
                  "parameters": {"trainable": 0, "frozen": 0, "total": 0, "adapter_buffers": 0}, "status": "complete"}
        frozen = {tensor_key(n, k): v for n, d in self.frozen_tensors.items() for k, v in d.items()}
        frozen.update({tensor_key(n, "base_weight"): w for n, w in self.base.items()})

        def flat(step: int) -> dict[str, torch.Tensor]:
            return {tensor_key(n, k): v for n, d in self.snapshots[step].items() for k, v in d.items()}

        steps = self.steps
        writer = RunWriter.create(path, header, frozen, (steps[0], flat(steps[0]), {"epoch": None, "wall_time": 0.0}))
        for step in steps[1:]:
            writer.write_snapshot(step, flat(step), {"epoch": None, "wall_time": float(step)})
        return Run(path)


def _t(x: np.ndarray | float) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _w0(design: Design, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    return {n: _t(rng.standard_normal((design.dim, design.dim)) / math.sqrt(design.dim)) for n in design.names}


def tlora_run(name: str, seed: int, design: Design, b_at: Callable[[int, str], np.ndarray],
              alpha_at: Callable[[int, str], float] | None = None, w0: dict[str, torch.Tensor] | None = None,
              frozen: Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None) -> SyntheticRun:
    """A TLoRA run: Gaussian A (in × r), C (r × out) per layer from ``seed``; B and α per (step, layer)."""
    rng = np.random.default_rng([seed, 1])
    d, r = design.dim, design.rank
    factors = {}
    for n in design.names:
        a, c = frozen(rng) if frozen else (rng.standard_normal((d, r)) / math.sqrt(3 * r),
                                            rng.standard_normal((r, d)) / math.sqrt(3 * d))
        factors[n] = {"tlora_A": _t(a), "tlora_C": _t(c)}
    snaps = {}
    for step in STEPS:
        snaps[step] = {n: {"tlora_B": _t(np.zeros((r, r)) if step == 0 else b_at(step, n)),
                           "tlora_alpha": _t(1.0 if step == 0 or alpha_at is None else alpha_at(step, n))}
                       for n in design.names}
    return SyntheticRun(name, "tlora", r, seed, {n: (d, d) for n in design.names}, snaps, factors,
                        w0 if w0 is not None else _w0(design, np.random.default_rng([seed, 2])))


def lora_run(name: str, seed: int, design: Design, factors_at: Callable[[int, str], tuple[np.ndarray, np.ndarray]],
             w0: dict[str, torch.Tensor] | None = None, rank: int | None = None, scaling: float = 1.0) -> SyntheticRun:
    """A LoRA run: ``factors_at(step, layer)`` gives (lora_A r × in, lora_B out × r) for steps after 0."""
    d = design.dim
    r = rank or design.rank
    rng = np.random.default_rng([seed, 3])
    a0 = {n: rng.standard_normal((r, d)) / math.sqrt(d) for n in design.names}
    snaps = {}
    for step in STEPS:
        snaps[step] = {}
        for n in design.names:
            a, b = (a0[n], np.zeros((d, r))) if step == 0 else factors_at(step, n)
            snaps[step][n] = {"lora_A": _t(a), "lora_B": _t(b)}
    return SyntheticRun(name, "lora", r, seed, {n: (d, d) for n in design.names}, snaps, {},
                        w0 if w0 is not None else _w0(design, np.random.default_rng([seed, 2])), scaling)


def lora_copy_of(tl: SyntheticRun, name: str, seed: int, design: Design, noise: float = 0.0,
                 rng: np.random.Generator | None = None, weight: float = 1.0) -> SyntheticRun:
    """A LoRA run whose update is TLoRA's (``noise`` = 0) or ``weight`` times TLoRA's plus an independent rank-r
    update with ``noise`` times TLoRA's Frobenius norm (rank 2r then)."""
    rng = rng or np.random.default_rng([seed, 4])
    extra = {(s, n): (rng.standard_normal((design.rank, design.dim)), rng.standard_normal((design.dim, design.rank)))
             for s in STEPS[1:] for n in design.names}

    def factors_at(step: int, layer: str) -> tuple[np.ndarray, np.ndarray]:
        u = tl.update(layer, step)
        left, right = u.scale * u.left @ u.core, u.right  # ΔW = left @ right, left out × r, right r × in
        if noise == 0.0:
            return right, weight * left
        a2, b2 = extra[(step, layer)]
        b2 = b2 * (noise * np.linalg.norm(left @ right) / np.linalg.norm(b2 @ a2))
        return np.vstack([right, a2]), np.hstack([weight * left, b2])

    return lora_run(name, seed, design, factors_at, w0=tl.base, rank=design.rank * (2 if noise else 1))
