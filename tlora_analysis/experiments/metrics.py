"""Evaluation metrics: accuracy, F1 and MCC for classification; Pearson and Spearman for regression.

F1 is binary F1 of class 1 for two classes (GLUE's MRPC/QQP convention) and macro F1 otherwise;
MCC is the multiclass Matthews correlation (Gorodkin 2004), equal to the binary formula for
two classes. Both come from one confusion matrix; correlations come from ``scipy.stats``.

Each task has one selection metric, the one its "best" evaluation is chosen by and figures and
tables lead with (GLUE's own: MCC for CoLA, Pearson for STS-B, accuracy otherwise), and a
majority baseline: the scores of always predicting the evaluated split's most frequent class.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = ["classification_metrics", "regression_metrics", "compute_metrics", "confusion_matrix",
           "selection_metric", "majority_baseline", "constant_predictions", "leave_one_out", "LOSS_NAMES"]

_TASK_METRIC = {"cola": "mcc", "stsb": "pearson"}
LOSS_NAMES = {False: "cross_entropy", True: "mse"}  # what transformers' sequence classifiers optimise


def selection_metric(task: str, is_regression: bool) -> str:
    """The metric a task's best evaluation is chosen by: mcc (CoLA), pearson (STS-B, any regression), else accuracy."""
    if is_regression:
        return "pearson"
    return _TASK_METRIC.get(task, "accuracy")


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> np.ndarray:
    """counts[i, j] = number of examples of true class i predicted as class j."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels and predictions differ in length: {labels.shape} vs {predictions.shape}")
    return np.bincount(labels * num_labels + predictions, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _f1(cm: np.ndarray, cls: int) -> float:
    tp = cm[cls, cls]
    denom = 2 * tp + (cm[:, cls].sum() - tp) + (cm[cls, :].sum() - tp)
    return float(2 * tp / denom) if denom else 0.0


def _mcc(cm: np.ndarray) -> float:
    c = np.trace(cm)
    s = cm.sum()
    p = cm.sum(axis=0).astype(np.float64)  # predicted per class
    t = cm.sum(axis=1).astype(np.float64)  # true per class
    denom = math.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom else 0.0


def _metrics_of_counts(cm: np.ndarray, num_labels: int) -> dict[str, float]:
    """accuracy, f1 and mcc of a confusion matrix (classification_metrics states the conventions)."""
    present = np.flatnonzero(cm.sum(axis=0) + cm.sum(axis=1))
    f1 = _f1(cm, 1) if num_labels == 2 else float(np.mean([_f1(cm, k) for k in present]))
    return {"accuracy": float(np.trace(cm) / cm.sum()), "f1": f1, "mcc": _mcc(cm)}


def _counts(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> np.ndarray:
    """The confusion matrix, widened to any class the labels or predictions name beyond ``num_labels``."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    size = max([num_labels] + [int(a.max()) + 1 for a in (labels, predictions) if a.size])
    return confusion_matrix(labels, predictions, size)


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], num_labels: int) -> dict[str, float]:
    """accuracy, f1 and mcc for a task of ``num_labels`` classes.

    f1: of class 1 when the task has two classes; otherwise the macro average over the classes
    that occur in the labels or the predictions (a class absent from both has no F1, as in
    scikit-learn). Predictions may name classes beyond the task's (a kept head with more outputs,
    such as an MNLI head scoring a binary task): they count as errors.
    """
    cm = _counts(labels, predictions, num_labels)
    if cm.sum() == 0:
        raise ValueError("no examples to evaluate")
    return _metrics_of_counts(cm, num_labels)


def regression_metrics(labels: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (NaN when either side is constant)."""
    labels = np.asarray(labels, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    if len(labels) < 2:
        raise ValueError("need at least two examples for a correlation")
    if np.ptp(labels) == 0 or np.ptp(predictions) == 0:
        return {"pearson": float("nan"), "spearman": float("nan")}
    return {"pearson": float(stats.pearsonr(labels, predictions).statistic),
            "spearman": float(stats.spearmanr(labels, predictions).statistic)}


def compute_metrics(labels: np.ndarray, logits: np.ndarray, is_regression: bool,
                    num_labels: int | None = None) -> dict[str, float]:
    """Metrics from raw model outputs: argmax for classification, the single output for regression.

    ``num_labels``: the task's classes (default: the model's outputs; give it when a kept head has
    more outputs than the task has classes, so that a binary task is scored as binary).
    """
    if is_regression:
        return regression_metrics(labels, np.asarray(logits).reshape(-1))
    logits = np.asarray(logits)
    return classification_metrics(labels, logits.argmax(axis=-1), num_labels or logits.shape[-1])


def leave_one_out(labels: np.ndarray, logits: np.ndarray, is_regression: bool, metric: str,
                  num_labels: int | None = None) -> np.ndarray:
    """``metric`` on the split without example i, for every i: the input of a jackknife over examples.

    Exact and in O(n) for every metric: a classification metric depends on the confusion matrix only,
    so removing an example of true class k predicted as l gives one of at most K² values; Pearson's
    r comes from the centred sums less one example's terms; Spearman's ρ is recomputed without each
    example. Needs at least 3 examples (two are left, the fewest a correlation takes)."""
    labels, logits = np.asarray(labels), np.asarray(logits)
    if len(labels) < 3:
        raise ValueError(f"leaving one example out needs at least 3 examples, got {len(labels)}")
    if is_regression:
        y, x = labels.astype(np.float64), logits.reshape(-1).astype(np.float64)
        if metric == "spearman":
            keep = ~np.eye(len(y), dtype=bool)
            return np.array([regression_metrics(y[k], x[k])["spearman"] for k in keep])
        if metric != "pearson":
            raise ValueError(f"unknown regression metric {metric!r}; choose pearson or spearman")
        x, y = x - x.mean(), y - y.mean()
        n = len(x)
        # sums over the n - 1 examples left, centred at their own mean (each sum less example i's term,
        # corrected for the shift of the mean, which is x_i / (n - 1) since the full sums of x and y are 0)
        sxy = x @ y - x * y - x * y / (n - 1)
        sxx = x @ x - x * x - x * x / (n - 1)
        syy = y @ y - y * y - y * y / (n - 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = sxy / np.sqrt(sxx * syy)
        return np.where((sxx > 0) & (syy > 0), r, np.nan)
    predictions = logits.argmax(axis=-1)
    num_labels = num_labels or logits.shape[-1]
    cm = _counts(labels, predictions, num_labels)
    if metric not in ("accuracy", "f1", "mcc"):
        raise ValueError(f"unknown classification metric {metric!r}; choose accuracy, f1 or mcc")
    without = np.full(cm.shape, np.nan)
    for k, l in zip(*np.nonzero(cm)):
        less = cm.copy()
        less[k, l] -= 1
        without[k, l] = _metrics_of_counts(less, num_labels)[metric]
    return without[labels.astype(np.int64), predictions]


def majority_baseline(labels: Sequence[int], num_labels: int) -> dict[str, float]:
    """Scores of always predicting the most frequent class of ``labels`` (the split being evaluated).

    The best accuracy any constant prediction reaches on that split; its MCC is 0 by definition.
    A run that does no better has learned nothing about the inputs.
    """
    labels = np.asarray(labels, dtype=np.int64)
    majority = int(np.bincount(labels, minlength=num_labels).argmax())
    return {"majority_class": majority, **classification_metrics(labels, np.full_like(labels, majority), num_labels)}


def constant_predictions(logits: np.ndarray, is_regression: bool) -> bool:
    """Whether a model gave every example the same prediction (one class, or one score to 6 digits)."""
    logits = np.asarray(logits)
    if is_regression:
        values = logits.reshape(-1)
        return bool(np.ptp(values) <= 1e-6 * max(1.0, float(np.abs(values).max(initial=0.0))))
    return len(np.unique(logits.argmax(axis=-1))) <= 1
