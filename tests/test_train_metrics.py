"""Evaluation metrics against hand-computed cases and independent formulas."""

from __future__ import annotations

import numpy as np
import pytest

from tlora_analysis.experiments.evaluation import is_better
from tlora_analysis.experiments.metrics import (
    classification_metrics,
    compute_metrics,
    confusion_matrix,
    leave_one_out,
    regression_metrics,
)


def test_binary_hand_computed():
    # TP=2 FN=1 FP=1 TN=1
    m = classification_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1], 2)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert m["mcc"] == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))


def test_multiclass_hand_computed():
    labels, preds = [0, 1, 2, 0, 1, 2], [0, 2, 1, 0, 1, 2]
    assert confusion_matrix(labels, preds, 3).tolist() == [[2, 0, 0], [0, 1, 1], [0, 1, 1]]
    m = classification_metrics(labels, preds, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["mcc"] == pytest.approx((4 * 6 - 12) / np.sqrt((36 - 12) * (36 - 12)))


def test_constant_prediction_has_zero_mcc_and_perfect_is_one():
    assert classification_metrics([0, 1, 1], [1, 1, 1], 2)["mcc"] == 0.0
    perfect = classification_metrics([0, 1, 2, 1], [0, 1, 2, 1], 3)
    assert perfect == {"accuracy": 1.0, "f1": 1.0, "mcc": pytest.approx(1.0)}


def test_binary_mcc_equals_pearson_of_indicators():
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    assert classification_metrics(y, p, 2)["mcc"] == pytest.approx(np.corrcoef(y, p)[0, 1])


def test_regression_metrics():
    x = np.linspace(0, 1, 20)
    m = regression_metrics(x, x**3)
    assert m["spearman"] == pytest.approx(1.0)
    assert m["pearson"] == pytest.approx(np.corrcoef(x, x**3)[0, 1])
    assert np.isnan(regression_metrics(x, np.ones(20))["pearson"])


def test_compute_metrics_from_logits():
    logits = np.array([[2.0, -1.0], [0.0, 3.0], [1.0, 0.5]])
    assert compute_metrics(np.array([0, 1, 1]), logits, False)["accuracy"] == pytest.approx(2 / 3)
    reg = compute_metrics(np.array([1.0, 2.0, 3.0]), np.array([[0.1], [0.2], [0.4]]), True)
    assert reg["spearman"] == pytest.approx(1.0)


def test_a_binary_task_scored_by_a_head_with_more_outputs_stays_binary():
    """A kept 3-way (MNLI) head on a binary task: F1 of class 1 over the task's two classes, a
    prediction of the third class an error; the same numbers as a 2-way head making those errors."""
    labels = np.array([0, 1, 1, 0, 1, 1])
    logits = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [0, 3, 0], [0, 3, 0], [0, 3, 0]], dtype=float)
    m = compute_metrics(labels, logits, False, num_labels=2)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))  # TP 3, FP 1 (a 0 called 1), FN 1 (a 1 called 2)
    as_binary = classification_metrics(labels, [0, 1, 0, 1, 1, 1], 2)  # the 2 read as "not 1" for the F1
    assert m["f1"] == pytest.approx(as_binary["f1"])
    assert compute_metrics(labels, logits, False)["f1"] != pytest.approx(m["f1"])  # 3 classes: a macro F1


def test_macro_f1_averages_the_classes_that_occur():
    """Labels {1, 2} of a three-class head (class 0 in neither labels nor predictions), all right: 1."""
    assert classification_metrics([1, 2, 1, 2], [1, 2, 1, 2], 3)["f1"] == 1.0
    m = classification_metrics([0, 1, 2, 0], [0, 2, 2, 0], 4)  # class 3 absent: mean of 1, 0, 2/3
    assert m["f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)


def test_best_moves_past_a_nan_first_evaluation():
    best: dict = {}
    for pearson in (float("nan"), 0.42, 0.61, float("nan"), 0.5):
        if is_better({"pearson": pearson}, best, "pearson"):
            best = {"pearson": pearson}
    assert best == {"pearson": 0.61}


def test_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [0], 2)
    with pytest.raises(ValueError, match="no examples"):
        classification_metrics([], [], 2)
    with pytest.raises(ValueError, match="differ in length"):
        classification_metrics([0, 1], [], 2)


@pytest.mark.parametrize("metric,classes", [("accuracy", 2), ("f1", 2), ("mcc", 2), ("accuracy", 3), ("f1", 3),
                                            ("mcc", 3), ("pearson", 0), ("spearman", 0)])
def test_leave_one_out_is_the_metric_recomputed_without_each_example(metric, classes):
    """Against recomputing the metric on the n − 1 examples left, for every example (random data, ties in
    Spearman's ranks, a class that vanishes when its one example is left out)."""
    rng = np.random.default_rng(classes + len(metric))
    n = 40
    if classes:
        labels, logits = rng.integers(0, classes, n), rng.normal(size=(n, classes))
        if classes == 3:  # class 2 only in example 0, labelled and predicted: leaving it out removes the class
            labels = np.where(labels == 2, 1, labels)
            labels[0], logits[0, 2], logits[1:, 2] = 2, 10.0, -10.0
    else:
        labels = rng.normal(size=n)
        logits = np.round(labels + rng.normal(size=n), 1)[:, None]
    fast = leave_one_out(labels, logits, classes == 0, metric, classes or None)
    keep = ~np.eye(n, dtype=bool)
    dense = [compute_metrics(labels[k], logits[k], classes == 0, classes or None)[metric] for k in keep]
    np.testing.assert_allclose(fast, dense, rtol=1e-12, atol=1e-14)


def test_leave_one_out_by_hand_and_bad_input():
    # labels 1 1 0 0, predictions 1 0 0 0: accuracy 3/4; without a right example 2/3, without the wrong one 1
    logits = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(leave_one_out(np.array([1, 1, 0, 0]), logits, False, "accuracy"),
                               [2 / 3, 1.0, 2 / 3, 2 / 3])
    with pytest.raises(ValueError, match="at least 3 examples"):
        leave_one_out(np.array([1, 0]), logits[:2], False, "accuracy")
    with pytest.raises(ValueError, match="unknown classification metric 'pearson'"):
        leave_one_out(np.array([1, 1, 0, 0]), logits, False, "pearson")
