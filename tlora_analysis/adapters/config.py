"""Adapter configurations: what to adapt and how, validated up front.

Each config is a frozen dataclass that serialises to JSON (``to_dict``/``config_from_dict``)
so it can be written beside a saved adapter or a run.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Sequence

__all__ = ["TLoRAConfig", "LoRAConfig", "FullConfig", "AdapterConfig", "config_from_dict"]

TargetSpec = str | Sequence[str]


def _targets_tuple(targets: TargetSpec | None, allow_none: bool = False) -> str | tuple[str, ...] | None:
    if targets is None:
        if allow_none:
            return None
        raise ValueError("target_modules is required: e.g. ['query', 'value'] or a regex string")
    if isinstance(targets, str):
        _check_regex(targets, targets)
        return targets
    targets = tuple(targets)
    if not targets or not all(isinstance(t, str) and t for t in targets):
        raise ValueError(f"target_modules must be a regex string or a non-empty list of names, got {targets!r}")
    for t in targets:
        if t.startswith("re:"):
            _check_regex(t[3:], t)
    return targets


def _check_regex(pattern: str, entry: str) -> None:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"target {entry!r} is not a valid regular expression ({exc}); fix the pattern, or give "
                         "module names such as ['query', 'value']") from exc


def _check_rank(rank: Any) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"rank must be an int, got {type(rank).__name__} {rank!r}")
    if rank <= 0:
        raise ValueError(f"rank must be a positive integer, got {rank}; the paper uses 32")


def _modules_tuple(modules: Sequence[str] | None) -> tuple[str, ...] | None:
    if modules is None:
        return None
    if isinstance(modules, str):
        return (modules,)
    return tuple(modules)


def _check_dropout(p: Any) -> None:
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout must be a probability in [0, 1), got {p!r}")


@dataclass(frozen=True)
class _Base:
    method: str = field(init=False, default="")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


@dataclass(frozen=True)
class TLoRAConfig(_Base):
    """Tri-matrix LoRA: ΔW = α·(A B C)ᵀ with frozen random A, C and trainable B, α.

    init: "paper" (Kaiming normal a=√5 on the stored layouts: std_A = 1/√(3r),
    std_C = 1/√(3·out)), "gaussian" (std 1/√r on both), or "orthogonal" (orthonormal
    columns of A and rows of C). dropout_position: "output" (the paper's setup, after α) or
    "input" (LoRA-style, on x). train_alpha=False keeps α fixed at alpha_init.
    modules_to_save: None (default) trains the model's classification head (a top-level
    ``classifier`` or ``score``) next to the adapter, as PEFT does for sequence classification;
    ``()`` keeps it frozen (the paper's setup); a list names the modules to train.
    """

    rank: int = 32
    target_modules: TargetSpec = ("query", "value")
    seed: int = 0
    alpha_init: float = 1.0
    dropout: float = 0.5
    init: Literal["paper", "gaussian", "orthogonal"] = "paper"
    dropout_position: Literal["output", "input"] = "output"
    train_alpha: bool = True
    modules_to_save: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", "tlora")
        _check_rank(self.rank)
        _check_dropout(self.dropout)
        object.__setattr__(self, "target_modules", _targets_tuple(self.target_modules))
        object.__setattr__(self, "modules_to_save", _modules_tuple(self.modules_to_save))
        if self.init not in ("paper", "gaussian", "orthogonal"):
            raise ValueError(f"init must be 'paper', 'gaussian' or 'orthogonal', got {self.init!r}")
        if self.dropout_position not in ("output", "input"):
            raise ValueError(f"dropout_position must be 'output' or 'input', got {self.dropout_position!r}")
        if not isinstance(self.seed, int):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if not math.isfinite(float(self.alpha_init)):
            raise ValueError(f"alpha_init must be finite, got {self.alpha_init!r}")


@dataclass(frozen=True)
class LoRAConfig(_Base):
    """LoRA (Hu et al. 2021): ΔW = scaling · B A, PEFT's function and initialisation.

    lora_alpha=None means lora_alpha = rank (scaling 1). use_rslora divides by √r instead.
    modules_to_save: as for :class:`TLoRAConfig` (None: the classification head trains).
    """

    rank: int = 8
    target_modules: TargetSpec = ("query", "value")
    lora_alpha: float | None = None
    dropout: float = 0.0
    use_rslora: bool = False
    seed: int = 0
    modules_to_save: Sequence[str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", "lora")
        _check_rank(self.rank)
        _check_dropout(self.dropout)
        object.__setattr__(self, "target_modules", _targets_tuple(self.target_modules))
        object.__setattr__(self, "modules_to_save", _modules_tuple(self.modules_to_save))
        if self.lora_alpha is not None and not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"lora_alpha must be a positive number or None, got {self.lora_alpha!r}")

    @property
    def scaling(self) -> float:
        alpha = self.rank if self.lora_alpha is None else self.lora_alpha
        return alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


@dataclass(frozen=True)
class FullConfig(_Base):
    """Full fine-tuning: every parameter trains (target_modules=None) or only the selected modules.

    The tracked layers (for snapshots and ΔW = W_t − W0) are the ``track_modules`` when given
    (e.g. the layers the adapters of the runs compared with it adapt: a dense snapshot of every
    layer is large), else the targeted ``nn.Linear`` modules, or every ``nn.Linear`` when
    target_modules is None. modules_to_save: as for :class:`TLoRAConfig`.
    """

    target_modules: TargetSpec | None = None
    modules_to_save: Sequence[str] | None = None
    track_modules: TargetSpec | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", "full")
        object.__setattr__(self, "target_modules", _targets_tuple(self.target_modules, allow_none=True))
        object.__setattr__(self, "track_modules", _targets_tuple(self.track_modules, allow_none=True))
        object.__setattr__(self, "modules_to_save", _modules_tuple(self.modules_to_save))


AdapterConfig = TLoRAConfig | LoRAConfig | FullConfig

_BY_METHOD = {"tlora": TLoRAConfig, "lora": LoRAConfig, "full": FullConfig}


def config_from_dict(d: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from :meth:`to_dict` output (unknown keys are an error)."""
    d = dict(d)
    method = d.pop("method", None)
    if method not in _BY_METHOD:
        raise ValueError(f"unknown adapter method {method!r}; expected one of {sorted(_BY_METHOD)}")
    cls = _BY_METHOD[method]
    known = {f.name for f in fields(cls) if f.init}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {method} config field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)
