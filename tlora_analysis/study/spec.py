"""A study's TOML file, read and checked before anything trains (docs/study.md gives the schema).

    name = "minilm-glue"            # optional; the folder name of the TOML by default
    runs = "runs"                   # where run directories go, relative to the TOML file
    keep_weights = false            # keep each run's resume point and final adapter after it ends
    base_model = "/models/minilm"   # optional: W0 for the summary (default: the model each run names)

    [train]                         # TrainConfig fields shared by every run
    batch_size = 32

    [tasks.mrpc]                    # one table per task: TrainConfig fields (the key is the task name
    data_dir = "${GLUE_DIR}/MRPC"   # unless `task` is given); ${VAR} expands from the environment
    epochs = 10

    [[arms]]                        # one method setting: a grid over ranks × learning rates
    method = "tlora"                # name = "tlora" by default; other keys are TrainConfig fields
    ranks = [8, 16, 32]
    lrs = [5e-3, 1e-2, 2e-2]
    dropout = 0.0
    tasks = ["mrpc"]                # optional: the tasks this arm runs on (default: every task)

    [selection]                     # learning rates are chosen on a part of *train* held out
    holdout = 0.1
    seed = 0

    [replicates]
    seeds = [0, 1, 2]
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["Arm", "Study", "StudyError", "load_study"]

_TOP = {"name", "runs", "keep_weights", "base_model", "train", "tasks", "arms", "selection", "replicates"}
_RESERVED = {"method", "rank", "lr", "seed", "run_dir", "overwrite", "resume", "holdout", "progress", "verbose",
             "eval_test"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StudyError(ValueError):
    """The study file is wrong; the message names the key and the fix."""


@dataclass(frozen=True)
class Arm:
    """One method setting of the grid: ``name`` (its label), ``method``, ranks, learning rates, other fields,
    and the tasks it runs on (None: every task)."""

    name: str
    method: str
    ranks: tuple[int | None, ...]
    lrs: tuple[float, ...]
    fields: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[str, ...] | None = None

    def runs_on(self, task: str) -> bool:
        return self.tasks is None or task in self.tasks


@dataclass(frozen=True)
class Study:
    """A parsed study: where it lives, its shared settings, tasks, arms, selection and replicates."""

    path: Path
    name: str
    runs_dir: Path
    keep_weights: bool
    train: dict[str, Any]
    tasks: dict[str, dict[str, Any]]
    arms: tuple[Arm, ...]
    holdout: float
    selection_seed: int
    seeds: tuple[int, ...]
    base_model: str | None = None  # where the summary reads W0 of runs that reference it (None: each run's model)


def _expand(value: Any, where: str) -> Any:
    """${VAR} in strings from the environment; an unset variable is an error naming it."""
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name = match.group(1)
            if name not in os.environ:
                raise StudyError(f"{where} uses ${{{name}}}, which is not set: export {name}=... (e.g. a folder "
                                 "in GLUE's TSV layout) before running the study")
            return os.environ[name]
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, where) for v in value]
    return value


def _train_fields() -> set[str]:
    from ..experiments.config import TrainConfig

    return {f.name for f in fields(TrainConfig)}


def _check_fields(table: dict[str, Any], where: str, known: set[str]) -> dict[str, Any]:
    for key in table:
        if key in _RESERVED:
            raise StudyError(f"{where}.{key} is set by the study itself (the grid, the selection or the replicates); "
                             "remove it")
        if key not in known:
            raise StudyError(f"{where}.{key} is not a training setting; known: {', '.join(sorted(known - _RESERVED))}")
    return {k: _expand(v, f"{where}.{k}") for k, v in table.items()}


def _base_model(value: Any, folder: Path) -> str | None:
    """The study's ``base_model``: a model folder (relative to the TOML file when it exists there) or a name."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise StudyError(f"base_model must be a model folder or name (the model the runs were trained from), got "
                         f"{value!r}")
    value = _expand(value, "base_model")
    local = folder / value
    return str(local.resolve()) if local.is_dir() else value


def _numbers(value: Any, where: str, kind: type) -> tuple:
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) for v in items):
        raise StudyError(f"{where} must be a non-empty list of {'numbers' if kind is float else 'integers'}, "
                         f"got {value!r}")
    if len(set(items)) != len(items):
        raise StudyError(f"{where} lists a value twice: {value!r}")
    return tuple(kind(v) for v in items)


def _arm_tasks(value: Any, where: str, tasks: dict[str, Any]) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise StudyError(f"{where}.tasks must be a non-empty list of task names, got {value!r}")
    unknown = [v for v in value if v not in tasks]
    if unknown:
        raise StudyError(f"{where}.tasks names {unknown}, which the study has no [tasks.NAME] table for; "
                         f"its tasks: {sorted(tasks)}")
    return tuple(dict.fromkeys(value))


def _arm(raw: Any, index: int, known: set[str], tasks: dict[str, Any]) -> Arm:
    where = f"arms[{index}]"
    if not isinstance(raw, dict) or "method" not in raw:
        raise StudyError(f"{where} needs at least `method = ...` and `lrs = [...]`")
    raw = dict(raw)
    method, name = raw.pop("method"), raw.pop("name", None)
    arm_tasks = _arm_tasks(raw.pop("tasks", None), where, tasks)
    lrs = _numbers(raw.pop("lrs", None), f"{where}.lrs", float)
    if any(lr <= 0 for lr in lrs):
        raise StudyError(f"{where}.lrs must be positive, got {list(lrs)}")
    ranks_raw = raw.pop("ranks", None)
    ranks: tuple[int | None, ...] = (None,) if ranks_raw is None else _numbers(ranks_raw, f"{where}.ranks", int)
    if method == "full" and ranks_raw is not None:
        raise StudyError(f"{where}: full fine-tuning has no rank; remove `ranks`")
    if method != "full" and ranks_raw is None:
        raise StudyError(f"{where}: a {method} arm needs `ranks = [...]`")
    return Arm(str(name or method), str(method), ranks, lrs, _check_fields(raw, where, known), arm_tasks)


def _check_shared_names(arms: tuple[Arm, ...], tasks: dict[str, Any], path: Path) -> None:
    """Arms may share a name (one setting, e.g. more ranks on one task) only when they are the same method
    and fields and never plan the same (task, rank)."""
    seen: dict[str, Arm] = {}
    covered: set[tuple[str, str, int | None]] = set()
    for arm in arms:
        first = seen.setdefault(arm.name, arm)
        if (first.method, first.fields) != (arm.method, arm.fields):
            raise StudyError(f"{path}: two arms named {arm.name!r} differ in method or settings; give each its own "
                             "`name` (arms share a name only to add ranks or tasks to one setting)")
        for task in filter(arm.runs_on, tasks):
            for rank in arm.ranks:
                if (task, arm.name, rank) in covered:
                    raise StudyError(f"{path}: arm {arm.name!r} plans {task} at rank {rank} twice; give each arm "
                                     "its own `name`, or its own `ranks` / `tasks`")
                covered.add((task, arm.name, rank))


def _table(raw: dict[str, Any], name: str, keys: set[str], path: Path) -> dict[str, Any]:
    """The [name] table (empty when absent), refusing keys it does not have."""
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise StudyError(f"{path}: `{name}` must be a table ([{name}]), got {table!r}")
    unknown = set(table) - keys
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {sorted(unknown)} in [{name}]; it has {sorted(keys)}")
    return table


def load_study(path: str | os.PathLike) -> Study:
    """Read and check a study file; every planned run's TrainConfig is built here, so a bad value fails now."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a study TOML file (see studies/ for examples)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - _TOP
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {sorted(unknown)}; a study has {sorted(_TOP)}")
    known = _train_fields()
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, dict) or not tasks_raw:
        raise StudyError(f"{path} has no [tasks.NAME] table; add one per task (e.g. [tasks.rotten_tomatoes])")
    tasks = {name: {"task": name, **_check_fields(table, f"tasks.{name}", known | {"task"})}
             for name, table in tasks_raw.items()}
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise StudyError(f"{path} has no [[arms]]; add one per method setting")
    arms = tuple(_arm(a, i, known, tasks) for i, a in enumerate(arms_raw))
    _check_shared_names(arms, tasks, path)
    selection = _table(raw, "selection", {"holdout", "seed"}, path)
    holdout = selection.get("holdout", 0.1)
    seeds = _numbers(_table(raw, "replicates", {"seeds"}, path).get("seeds", [0, 1, 2]), "replicates.seeds", int)
    study = Study(path=path.resolve(), name=str(raw.get("name", path.parent.name)),
                  runs_dir=(path.parent / str(raw.get("runs", "runs"))).resolve(),
                  keep_weights=bool(raw.get("keep_weights", False)),
                  train=_check_fields(raw.get("train", {}), "train", known), tasks=tasks, arms=arms,
                  holdout=holdout, selection_seed=int(selection.get("seed", 0)), seeds=seeds,
                  base_model=_base_model(raw.get("base_model"), path.parent))
    from .plan import check_configs

    check_configs(study)
    return study
