"""What every adapter configuration shares: JSON round-trip and validation up front.

Each method's config (``TLoRAConfig`` in tlora.py, ``LoRAConfig`` in lora.py, ...) is a frozen
dataclass derived from :class:`AdapterConfig`. When it is made, the options most methods share
(``rank``, ``seed``, ``dropout``, ``target_modules``, ``modules_to_save``, those it has) are
checked here and its own in its :meth:`~AdapterConfig.check`, so a bad value fails at
construction with a message naming the fix, before a model is touched. ``config_from_dict``
rebuilds any registered method's config from ``to_dict``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Sequence

from ..names import NameSelection, as_patterns

__all__ = ["AdapterConfig", "config_from_dict", "check_rank", "check_dropout", "check_seed", "check_bool",
           "check_choice", "check_finite", "target_patterns", "module_patterns"]


def check_rank(rank: Any, name: str = "rank") -> int:
    if isinstance(rank, bool) or not isinstance(rank, int):
        raise TypeError(f"{name} must be an int, got {type(rank).__name__} {rank!r}")
    if rank <= 0:
        raise ValueError(f"{name} must be a positive integer, got {rank}; e.g. 8 (the paper uses 32)")
    return rank


def check_dropout(p: Any, name: str = "dropout") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1), got {p!r}; 0 turns dropout off")
    return float(p)


def check_seed(seed: Any, name: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {type(seed).__name__} {seed!r}")
    return seed


def check_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def check_choice(value: Any, choices: Sequence[str], name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_finite(value: Any, name: str, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def target_patterns(targets: NameSelection | None, name: str = "target_modules",
                    allow_none: bool = False) -> tuple[str, ...] | None:
    """Targets as a tuple of name patterns (tlora_analysis.names); None only where ``allow_none``."""
    if targets is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required: e.g. ['query', 'value'] (names, dotted suffixes or 're:REGEX')")
    return as_patterns(targets, name)


def module_patterns(modules: NameSelection | None) -> tuple[str, ...] | None:
    """``modules_to_save``: None (the model's classification head), () (nothing) or name patterns."""
    if modules is None:
        return None
    if not isinstance(modules, str) and not list(modules):
        return ()
    return as_patterns(modules, "modules_to_save")


@dataclass(frozen=True)
class AdapterConfig:
    """Base of every method's config: ``method`` (set by the subclass), the shared checks, JSON round-trip."""

    method: str = field(init=False, default="")
    targets_required: ClassVar[bool] = True  # False: target_modules=None means every parameter (full fine-tuning)

    def __post_init__(self) -> None:
        names = {f.name for f in fields(self)}
        if "rank" in names:
            check_rank(self.rank)
        if "seed" in names:
            check_seed(self.seed)
        if "dropout" in names:
            check_dropout(self.dropout)
        if "target_modules" in names:
            self._set("target_modules", target_patterns(self.target_modules, allow_none=not self.targets_required))
        if "modules_to_save" in names:
            self._set("modules_to_save", module_patterns(self.modules_to_save))
        self.check()

    def check(self) -> None:
        """The method's own checks (its other options); raise TypeError / ValueError naming the fix."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def _set(self, name: str, value: Any) -> None:
        """Store a normalised value on the frozen dataclass (for ``__post_init__``)."""
        object.__setattr__(self, name, value)


def config_from_dict(d: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config from :meth:`AdapterConfig.to_dict` output (unknown keys are an error)."""
    from .methods import get_spec

    d = dict(d)
    cls = get_spec(d.pop("method", None)).config_class
    known = {f.name for f in fields(cls) if f.init}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {sorted(unknown)}; known: {sorted(known)}")
    return cls(**d)
