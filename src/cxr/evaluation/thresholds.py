"""Operating thresholds chosen on validation and the binary metrics they give on test.

The original project picked its thresholds on the test set (flaw 4 in ``docs/experiments.md``), which makes test
sensitivity and specificity optimistic. Here every rule sees only validation predictions; the thresholds are then
frozen and applied to test. Three rules per label, all predicting positive when ``probability >= threshold``:

- ``youden``: maximise Youden's J = sensitivity + specificity - 1 (Youden, 1950);
- ``f1_max``: maximise F1, the harmonic mean of PPV and sensitivity;
- ``sensitivity_90``: the highest threshold whose sensitivity is at least 0.90 — a screening operating point,
  the one with the best specificity among those that miss at most 10% of positives.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

from cxr.evaluation.metrics import as_matrix, operating_points


class ThresholdRule(StrEnum):
    """The rules above, in report order (``cxr evaluate --rule`` takes their values)."""

    YOUDEN = "youden"
    F1_MAX = "f1_max"
    SENSITIVITY_90 = "sensitivity_90"


RULES: tuple[str, ...] = tuple(ThresholdRule)

TARGET_SENSITIVITY = 0.90


def choose_threshold(target: np.ndarray, score: np.ndarray, rule: str) -> float:
    """The threshold one ``rule`` picks for one label from (validation) targets and scores; NaN for one class.

    Candidate thresholds are the distinct scores; ties between candidates go to the highest threshold (the
    most specific one).
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r} (known: {', '.join(RULES)})")
    thresholds, tp, fp = operating_points(target, score)
    n_pos, n_neg = tp[-1], fp[-1]
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sensitivity = tp / n_pos
    if rule == "youden":
        best = np.argmax(sensitivity - fp / n_neg)
    elif rule == "f1_max":
        best = np.argmax(2 * tp / (tp + fp + n_pos))
    else:
        # Sensitivity rises as the threshold falls; the first candidate reaching the target is the highest one.
        best = np.argmax(sensitivity >= TARGET_SENSITIVITY - 1e-12)
    return float(thresholds[best])


def choose_thresholds(
    targets: np.ndarray, scores: np.ndarray, labels: list[str], rules: tuple[str, ...] = RULES
) -> dict[str, dict[str, float]]:
    """Thresholds per label and rule, ``{label: {rule: threshold}}``, chosen on the given (validation) data."""
    targets, scores = as_matrix(targets, scores)
    return {
        label: {rule: choose_threshold(targets[:, k], scores[:, k], rule) for rule in rules}
        for k, label in enumerate(labels)
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def binary_metrics(target: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and F1 of one label at ``score >= threshold``, with the counts.

    A ratio whose denominator is zero (e.g. PPV when nothing is called positive) is NaN; a NaN threshold gives
    NaN for all of them.
    """
    target = np.asarray(target, dtype=bool)
    predicted = np.asarray(score, dtype=np.float64) >= threshold
    tp = int(np.sum(predicted & target))
    fp = int(np.sum(predicted & ~target))
    fn = int(np.sum(~predicted & target))
    tn = int(target.size - tp - fp - fn)
    nan = np.isnan(threshold)
    return {
        "threshold": float(threshold),
        "sensitivity": float("nan") if nan else _ratio(tp, tp + fn),
        "specificity": float("nan") if nan else _ratio(tn, tn + fp),
        "ppv": float("nan") if nan else _ratio(tp, tp + fp),
        "npv": float("nan") if nan else _ratio(tn, tn + fn),
        "f1": float("nan") if nan else _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def apply_thresholds(
    targets: np.ndarray, scores: np.ndarray, labels: list[str], thresholds: dict[str, dict[str, float]]
) -> dict[str, dict[str, dict[str, float]]]:
    """Binary metrics on (test) data at previously chosen thresholds: ``{label: {rule: metrics}}``."""
    targets, scores = as_matrix(targets, scores)
    return {
        label: {
            rule: binary_metrics(targets[:, k], scores[:, k], threshold)
            for rule, threshold in thresholds[label].items()
        }
        for k, label in enumerate(labels)
    }
