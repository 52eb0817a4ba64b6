"""The runs a report compares: replicate TLoRA and LoRA runs, checked and paired.

Replicates of one method (independent seeds, same model, targets, rank and schedule) are what
the report's run-to-run nulls are made of. Pairs for the cross-method statistics are disjoint
(TLoRA run i with LoRA run i), so that their tests are independent; extra runs of the larger
arm still count for the single-method claims.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..analysis.select import SelectionError, check_same_setting, common_steps

__all__ = ["Arms", "ReplicateError", "find_runs"]


class ReplicateError(ValueError):
    """The runs given to the report cannot be compared as replicates (named in the message)."""


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Each path that is a run, or every run (folder with run.json) below a folder that is not one."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give run directories or a folder that holds them")
        if (path / "run.json").is_file() or not path.is_dir():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("run.json") if not any(part.startswith(".") for part in p.parts))
        if not below:
            found.append(path)  # let the reader say what it is (a PEFT folder, or not a run)
        found.extend(below)
    return found


def _seed(run: Any) -> Any:
    return (run.config.get("adapter_config") or {}).get("seed")


def _check_arm(runs: list[Any], method: str) -> None:
    first = runs[0]
    for run in runs[1:]:
        if list(run.layers) != list(first.layers) or run.layer_shapes != first.layer_shapes:
            raise ReplicateError(f"{method} runs {first.name!r} and {run.name!r} adapted different layers or shapes; "
                                 "replicates must share the model and targets")
        if run.rank != first.rank:
            raise ReplicateError(f"{method} runs {first.name!r} (rank {first.rank}) and {run.name!r} (rank {run.rank}) "
                                 "differ in rank; report one rank at a time")
    seeds = [_seed(r) for r in runs]
    known = [s for s in seeds if s is not None]
    if len(set(known)) < len(known):
        dup = next(s for s in known if known.count(s) > 1)
        names = [r.name for r, s in zip(runs, seeds) if s == dup]
        raise ReplicateError(f"{method} runs {names} share seed {dup}: replicates must differ in seed "
                             "(same-seed runs are copies, not run-to-run variation)")


@dataclass
class Arms:
    """TLoRA and LoRA replicates, the step they are compared at, and the disjoint pairs."""

    tlora: list[Any]
    lora: list[Any]
    step: int

    @classmethod
    def from_runs(cls, tlora: Sequence[Any], lora: Sequence[Any]) -> "Arms":
        """Check the runs and pick the last step every run recorded."""
        tlora, lora = list(tlora), list(lora)
        if not tlora or not lora:
            raise ReplicateError(f"the report needs at least one TLoRA run and one LoRA run; got {len(tlora)} TLoRA "
                                 f"and {len(lora)} LoRA")
        for runs, method in ((tlora, "tlora"), (lora, "lora")):
            wrong = [f"{r.name} ({r.method})" for r in runs if r.method != method]
            if wrong:
                raise ReplicateError(f"runs given as {method} are not {method} runs: {', '.join(wrong)}")
            _check_arm(runs, method)
        try:
            check_same_setting([*tlora, *lora])
        except ValueError as exc:
            raise ReplicateError(str(exc)) from None
        shared = [n for n in tlora[0].layers if n in set(lora[0].layers)]
        if not shared:
            raise ReplicateError(f"TLoRA run {tlora[0].name!r} and LoRA run {lora[0].name!r} have no layer in common; "
                                 "compare runs that adapted the same modules")
        try:
            step = common_steps([*tlora, *lora], "last")[0]
        except SelectionError as exc:
            raise ReplicateError(str(exc)) from None
        return cls(tlora, lora, step)

    @property
    def pairs(self) -> list[tuple[Any, Any]]:
        """(TLoRA run i, LoRA run i) for i < min(#TLoRA, #LoRA): disjoint, hence independent."""
        return list(zip(self.tlora, self.lora))

    @property
    def layers(self) -> list[str]:
        """The layers both methods adapted, in model order."""
        other = set(self.lora[0].layers)
        return [n for n in self.tlora[0].layers if n in other]

    def square_layers(self) -> list[str]:
        shapes = self.tlora[0].layer_shapes
        return [n for n in self.layers if shapes[n][0] == shapes[n][1]]

    def not_learned(self) -> list[str]:
        """"name (metric value against the majority class's)" for each run whose last validation value of its
        selection metric does not beat always answering the majority class (runs that record both)."""
        out = []
        for run in [*self.tlora, *self.lora]:
            metric = run.config.get("selection_metric") or "accuracy"
            base = (run.config.get("majority_baseline") or {}).get(metric)
            events = run.validation_evals()
            values = events[metric].dropna() if metric in events else events.iloc[:0]
            if base is not None and len(values) and float(values.iloc[-1]) <= float(base):
                out.append(f"{run.name} ({metric} {float(values.iloc[-1]):.4f} against {float(base):.4f})")
        return out

    def describe(self) -> str:
        def names(runs: list[Any]) -> str:
            return ", ".join(f"{r.name} (seed {_seed(r)})" for r in runs)

        return (f"{len(self.tlora)} TLoRA run(s): {names(self.tlora)}; {len(self.lora)} LoRA run(s): "
                f"{names(self.lora)}; compared at step {self.step}, {len(self.pairs)} disjoint pair(s)")
