"""Turn class probabilities into emitted choices and a task score.

Emission: a class is emitted when its probability reaches its threshold. The exclusive class
("None" in the default config) is never decided by its own output: it is emitted exactly when
no other class passes its threshold, and never together with another class.

Score: for each class c with probability p and threshold t, the margin is how far p is from t,
as a fraction of the room on that side of t:

    margin_c = (p - t) / (1 - t)   when p >= t
    margin_c = (t - p) / t         when p <  t

The task score is the smallest margin over the non-exclusive classes, in 0..1. A score near 0
means that some class sits right at its threshold, so the model is unsure about that task.
Sorting by score ascending therefore puts the most uncertain tasks first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """The model's output for one image: emitted classes, all probabilities and the score."""

    choices: list[str]
    probabilities: dict[str, float]
    score: float


def class_margins(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Return each class's distance from its threshold, scaled to 0..1 (see the module docstring)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
    above = probabilities >= thresholds
    margins = np.where(
        above, (probabilities - thresholds) / (1 - thresholds), (thresholds - probabilities) / thresholds
    )
    return np.clip(margins, 0.0, 1.0)


def decide(
    probabilities: np.ndarray,
    classes: list[str] | tuple[str, ...],
    thresholds: np.ndarray,
    exclusive_class: str | None,
    allowed: set[str] | None = None,
) -> list[Decision]:
    """Apply thresholds to a batch of probabilities (n_images, n_classes).

    Args:
        probabilities: sigmoid outputs, one row per image, columns in ``classes`` order.
        classes: the model's class names.
        thresholds: one decision threshold per class.
        exclusive_class: the class emitted only alone, when nothing else passes; None if the
            model has no such class.
        allowed: the classes a project's labeling config offers, or None for all. Other
            classes are neither emitted nor counted in the score. When one of them passes
            its threshold the exclusive class is not emitted either, since something applies.
    """
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    classes = list(classes)
    if allowed is not None and exclusive_class not in allowed:
        exclusive_class_allowed = False
    else:
        exclusive_class_allowed = exclusive_class in classes
    offered = np.array([allowed is None or name in allowed for name in classes])
    regular = np.array([name != exclusive_class for name in classes])
    margins = class_margins(probabilities, thresholds)

    scored = regular & offered
    decisions = []
    for row, row_margins in zip(probabilities, margins):
        passing = (row >= thresholds) & regular
        choices = [name for name, flag, show in zip(classes, passing, offered) if flag and show]
        if not passing.any() and exclusive_class_allowed:
            choices = [exclusive_class]
        score = float(row_margins[scored].min()) if scored.any() else 1.0
        decisions.append(
            Decision(
                choices=choices,
                probabilities={name: float(p) for name, p in zip(classes, row)},
                score=round(score, 6),
            )
        )
    return decisions
