"""When to snapshot: every N steps, log-spaced (dense early, sparse late), or an explicit list.

A schedule answers ``includes(step)`` for optimizer steps; step 0 (the initial state) and the
final step are recorded by the recorder whatever the schedule says.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import numpy as np

__all__ = ["Schedule", "EveryN", "LogSpaced", "Explicit", "as_schedule"]


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {value}")
    return int(value)


class Schedule:
    """Base class: ``includes(step)``, ``steps_until(total)`` and a JSON description."""

    def includes(self, step: int) -> bool:
        raise NotImplementedError

    def steps_until(self, total: int) -> list[int]:
        """Every scheduled step in [0, total], ascending (0 and total included)."""
        return sorted({0, total, *(s for s in range(total + 1) if self.includes(s))})

    def bind(self, total_steps: int | None) -> "Schedule":
        """The schedule with a known run length (only LogSpaced needs it)."""
        return self

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True)
class EveryN(Schedule):
    """Steps 0, n, 2n, …"""

    n: int

    def __post_init__(self) -> None:
        _check_int("EveryN's n", self.n, 1)

    def includes(self, step: int) -> bool:
        return step % self.n == 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "every_n", "n": self.n}


@dataclass(frozen=True)
class Explicit(Schedule):
    """Exactly the listed steps (strictly increasing, ≥ 0)."""

    steps: tuple[int, ...]

    def __init__(self, steps: Iterable[int]) -> None:
        steps = tuple(_check_int("a scheduled step", s, 0) for s in steps)
        if not steps:
            raise ValueError("Explicit schedule is empty; list at least one step, e.g. Explicit([10, 100])")
        bad = [(a, b) for a, b in zip(steps, steps[1:]) if b <= a]
        if bad:
            raise ValueError(f"Explicit schedule steps must be strictly increasing; {bad[0][1]} follows {bad[0][0]}")
        object.__setattr__(self, "steps", steps)

    def includes(self, step: int) -> bool:
        return step in self._step_set

    @cached_property
    def _step_set(self) -> frozenset[int]:
        return frozenset(self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "explicit", "steps": list(self.steps)}


@dataclass(frozen=True)
class LogSpaced(Schedule):
    """``count`` distinct steps in [0, total_steps], geometrically spaced: dense early, sparse late.

    total_steps may be left out and supplied by the recorder (``total_steps=``) or the Trainer
    (its max_steps). The steps always include 0 and total_steps; fewer than ``count`` when
    the run is shorter than ``count`` steps.
    """

    count: int
    total_steps: int | None = None

    def __post_init__(self) -> None:
        _check_int("LogSpaced's count", self.count, 2)
        if self.total_steps is not None:
            _check_int("LogSpaced's total_steps", self.total_steps, 1)

    @cached_property
    def steps(self) -> tuple[int, ...]:
        if self.total_steps is None:
            raise ValueError("LogSpaced needs total_steps: give LogSpaced(count, total_steps) or SnapshotRecorder(total_steps=...)")
        total, want = self.total_steps, min(self.count, self.total_steps + 1)
        found: set[int] = {0, total}
        points = want
        while len(found) < want:  # rounding merges early points; ask for more until enough are distinct
            found = {0, *np.unique(np.round(np.geomspace(1, total, points - 1)).astype(int)).tolist()}
            points += 1
        ordered = sorted(found - {total})[: want - 1]  # rounding can overshoot by a step or two
        return (*ordered, total)

    def includes(self, step: int) -> bool:
        return step in self._step_set

    @cached_property
    def _step_set(self) -> frozenset[int]:
        return frozenset(self.steps)

    def bind(self, total_steps: int | None) -> "LogSpaced":
        if self.total_steps is not None or total_steps is None:
            return self
        return LogSpaced(self.count, total_steps)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "log_spaced", "count": self.count, "total_steps": self.total_steps}


def as_schedule(spec: Schedule | int | Iterable[int]) -> Schedule:
    """A Schedule from a Schedule, an int (every N steps) or a list of steps."""
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return EveryN(int(spec))
    if isinstance(spec, (list, tuple, range)):
        return Explicit(spec)
    raise TypeError(f"schedule must be EveryN, LogSpaced, Explicit, an int or a list of steps; got {spec!r}")
