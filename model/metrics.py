"""Multi-label metrics: average precision, precision/recall/F1 at a threshold, threshold tuning.

Binary accuracy is not reported on purpose: with Text on 71% of images and Adult content on
0.7%, predicting the label prior scores well on it while detecting nothing. Average precision
(AP) does not depend on a threshold, and the prior baseline's AP equals the class frequency,
which makes "better than the prior" a clear bar.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def precision_recall_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (recall, precision) at each distinct score, highest score first.

    Tied scores are one threshold, so each group of ties gives one point. Returns None when
    ``labels`` has no positive.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        return None
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    true_positives = np.cumsum(labels)
    # Evaluate only at the last index of each group of tied scores.
    last_of_group = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]
    tp = true_positives[last_of_group]
    return tp / positives, tp / (last_of_group + 1)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Return the area under the precision-recall curve as a step sum over the curve's points.

    Tied scores are handled as one threshold, so a constant predictor gets exactly the
    positive rate. Returns None when ``labels`` has no positive (AP is undefined).
    """
    points = precision_recall_points(labels, scores)
    if points is None:
        return None
    recall, precision = points
    recall_steps = np.diff(np.r_[0.0, recall])
    return float(np.sum(recall_steps * precision))


@dataclass(frozen=True)
class ClassReport:
    """Metrics of one class on one labelled set."""

    name: str
    support: int
    threshold: float
    precision: float
    recall: float
    f1: float
    average_precision: float | None
    prior_average_precision: float | None


def precision_recall_f1(labels: np.ndarray, predicted: np.ndarray) -> tuple[float, float, float]:
    """Return precision, recall and F1 of boolean predictions (0.0 where undefined)."""
    labels = np.asarray(labels, dtype=bool)
    predicted = np.asarray(predicted, dtype=bool)
    tp = int(np.sum(labels & predicted))
    precision = tp / int(predicted.sum()) if predicted.any() else 0.0
    recall = tp / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def tune_thresholds(labels: np.ndarray, probabilities: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Pick, per class, the threshold that maximises F1 on a labelled set.

    The threshold is placed halfway between the chosen probability and the next lower one,
    so that small numeric differences between runtimes do not flip decisions at the edge.
    Classes without a positive example keep ``default``.
    """
    labels = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.full(labels.shape[1], default, dtype=np.float64)
    for column in range(labels.shape[1]):
        truth, scores = labels[:, column], probabilities[:, column]
        positives = int(truth.sum())
        if positives == 0:
            continue
        order = np.argsort(-scores, kind="mergesort")
        sorted_scores = scores[order]
        tp = np.cumsum(truth[order])
        predicted = np.arange(1, scores.size + 1)
        f1 = 2 * tp / (predicted + positives)
        # Only cut between distinct scores: a cut inside a tie is not a real threshold.
        valid = np.r_[sorted_scores[:-1] > sorted_scores[1:], True]
        best = int(np.argmax(np.where(valid, f1, -1.0)))
        lower = sorted_scores[best + 1] if best + 1 < scores.size else 0.0
        thresholds[column] = float((sorted_scores[best] + lower) / 2)
    return thresholds


def evaluate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: list[str] | tuple[str, ...],
    thresholds: np.ndarray,
    prior: np.ndarray | None = None,
) -> dict:
    """Compute per-class and macro metrics of a multi-label model on a labelled set.

    Args:
        labels: boolean (n_images, n_classes).
        probabilities: model outputs, same shape.
        classes: class names in column order.
        thresholds: per-class decision thresholds.
        prior: per-class positive rate of the training set, the baseline that always predicts
            it. AP of a constant equals the evaluation set's positive rate, so only whether a
            prior is given matters for AP; it is kept for the record.

    Returns:
        A JSON-ready dict: ``classes`` (list of ClassReport dicts), ``macro_ap`` and
        ``prior_macro_ap`` (mean over classes with at least one positive), ``count``.
    """
    labels = np.asarray(labels, dtype=bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if prior is None:
        prior = labels.mean(axis=0) if labels.size else np.zeros(len(classes))
    reports = []
    for column, name in enumerate(classes):
        truth = labels[:, column]
        predicted = probabilities[:, column] >= thresholds[column]
        precision, recall, f1 = precision_recall_f1(truth, predicted)
        constant = np.full(truth.shape, float(prior[column]))
        reports.append(
            ClassReport(
                name=name,
                support=int(truth.sum()),
                threshold=round(float(thresholds[column]), 6),
                precision=round(precision, 4),
                recall=round(recall, 4),
                f1=round(f1, 4),
                average_precision=_round(average_precision(truth, probabilities[:, column])),
                prior_average_precision=_round(average_precision(truth, constant)),
            )
        )
    defined = [r for r in reports if r.average_precision is not None]
    return {
        "count": int(labels.shape[0]),
        "macro_ap": _round(float(np.mean([r.average_precision for r in defined]))) if defined else None,
        "prior_macro_ap": (
            _round(float(np.mean([r.prior_average_precision for r in defined]))) if defined else None
        ),
        "classes": [asdict(r) for r in reports],
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


def format_report(metrics: dict) -> str:
    """Format ``evaluate``'s result as a fixed-width table for the terminal."""
    lines = [f"{'class':<16}{'support':>8}{'thresh':>8}{'prec':>7}{'recall':>7}{'F1':>7}{'AP':>7}{'prior':>7}"]
    for row in metrics["classes"]:
        ap = "-" if row["average_precision"] is None else f"{row['average_precision']:.3f}"
        prior = "-" if row["prior_average_precision"] is None else f"{row['prior_average_precision']:.3f}"
        lines.append(
            f"{row['name']:<16}{row['support']:>8}{row['threshold']:>8.3f}{row['precision']:>7.3f}"
            f"{row['recall']:>7.3f}{row['f1']:>7.3f}{ap:>7}{prior:>7}"
        )
    macro = metrics["macro_ap"]
    prior_macro = metrics["prior_macro_ap"]
    lines.append(
        f"macro-AP {macro if macro is not None else '-'} (prior baseline "
        f"{prior_macro if prior_macro is not None else '-'}) on {metrics['count']} images"
    )
    return "\n".join(lines)
