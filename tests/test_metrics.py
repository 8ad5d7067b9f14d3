"""Average precision, threshold tuning, the exclusive-class rule and the uncertainty score."""

from __future__ import annotations

import numpy as np
import pytest

from model.decision import class_margins, decide
from model.metrics import average_precision, evaluate, precision_recall_f1, tune_thresholds

CLASSES = ["Face", "Text", "None"]


def test_average_precision_by_hand():
    # Ranked: pos, neg, pos, neg -> precision at the positives 1/1 and 2/3; AP = (1 + 2/3) / 2.
    labels = np.array([1, 0, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.1])
    assert average_precision(labels, scores) == pytest.approx((1 + 2 / 3) / 2)


def test_constant_predictor_scores_positive_rate():
    labels = np.array([1, 0, 0, 0, 1, 0, 0, 0, 0, 0], bool)
    assert average_precision(labels, np.full(10, 0.3)) == pytest.approx(0.2)


def test_average_precision_undefined_without_positives():
    assert average_precision(np.zeros(5, bool), np.linspace(0, 1, 5)) is None


def test_perfect_ranking_scores_one():
    labels = np.array([0, 1, 0, 1], bool)
    assert average_precision(labels, np.array([0.1, 0.9, 0.2, 0.8])) == pytest.approx(1.0)


def test_precision_recall_f1():
    precision, recall, f1 = precision_recall_f1(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool))
    assert (precision, recall, f1) == (0.5, 0.5, 0.5)


def test_tuned_threshold_separates_classes():
    labels = np.array([[1], [1], [0], [0]], bool)
    probabilities = np.array([[0.9], [0.6], [0.4], [0.1]])
    threshold = tune_thresholds(labels, probabilities)[0]
    assert 0.4 < threshold <= 0.6
    assert threshold == pytest.approx(0.5)


def test_threshold_default_without_positives():
    thresholds = tune_thresholds(np.zeros((3, 1), bool), np.array([[0.2], [0.7], [0.9]]), default=0.5)
    assert thresholds[0] == 0.5


def test_evaluate_reports_prior_baseline():
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]], bool)
    probabilities = np.array([[0.9, 0.1, 0.1], [0.8, 0.9, 0.1], [0.1, 0.2, 0.9], [0.2, 0.7, 0.2]])
    metrics = evaluate(labels, probabilities, CLASSES, np.full(3, 0.5))
    assert metrics["macro_ap"] == pytest.approx(1.0)
    assert metrics["prior_macro_ap"] == pytest.approx(np.mean([0.5, 0.5, 0.25]), abs=1e-4)
    assert [row["support"] for row in metrics["classes"]] == [2, 2, 1]


def test_none_emitted_only_alone():
    thresholds = np.array([0.5, 0.5, 0.5])
    decisions = decide(np.array([[0.9, 0.2, 0.95], [0.1, 0.2, 0.1], [0.6, 0.7, 0.3]]), CLASSES, thresholds, "None")
    assert decisions[0].choices == ["Face"]
    assert decisions[1].choices == ["None"]
    assert decisions[2].choices == ["Face", "Text"]


def test_without_exclusive_class_nothing_is_emitted():
    decisions = decide(np.array([[0.1, 0.2]]), ["Face", "Text"], np.array([0.5, 0.5]), None)
    assert decisions[0].choices == []


def test_margins_scaled_to_unit_range():
    margins = class_margins(np.array([0.0, 1.0, 0.2, 0.6]), np.array([0.2, 0.2, 0.2, 0.2]))
    assert margins.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.5])


def test_score_orders_uncertain_first():
    """Sorting by score ascending puts the image closest to a threshold first."""
    thresholds = np.array([0.5, 0.3, 0.5])
    probabilities = np.array([
        [0.99, 0.01, 0.0],   # sure on both classes
        [0.51, 0.05, 0.0],   # Face right at its threshold
        [0.80, 0.10, 0.0],   # fairly sure
    ])
    scores = [d.score for d in decide(probabilities, CLASSES, thresholds, "None")]
    assert sorted(range(3), key=lambda i: scores[i]) == [1, 2, 0]
    assert all(0.0 <= score <= 1.0 for score in scores)


def test_classes_outside_config_dropped():
    """A class the project does not offer is never emitted, and None is not emitted in its place."""
    thresholds = np.array([0.5, 0.5, 0.5])
    decisions = decide(np.array([[0.9, 0.1, 0.1], [0.1, 0.1, 0.1]]), CLASSES, thresholds, "None", allowed={"Text", "None"})
    assert decisions[0].choices == []
    assert decisions[1].choices == ["None"]


def test_score_ignores_classes_outside_config():
    thresholds = np.array([0.5, 0.5, 0.5])
    probabilities = np.array([[0.5, 0.99, 0.0]])
    full = decide(probabilities, CLASSES, thresholds, "None")[0].score
    subset = decide(probabilities, CLASSES, thresholds, "None", allowed={"Text"})[0].score
    assert full == 0.0
    assert subset > 0.9
