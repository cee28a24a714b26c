"""Classification metrics as pure, vectorised numpy functions over ``(n_images, n_labels)`` arrays.

Every function takes ``targets`` (0/1) and ``scores`` (probabilities) of shape ``(n, K)`` (or ``(n,)`` for one
label) and returns one value per label. A label whose targets hold a single class has no AUROC: it is NaN, and
macro averages skip it (as in the per-label tables of Wang et al., 2017, and Rajpurkar et al., 2017, CheXNet).
AUROC and AUPRC follow scikit-learn's definitions exactly (ties share their average rank; average precision is
the step-wise sum ``sum_k (R_k - R_{k-1}) P_k``), so results agree with ``sklearn.metrics`` to rounding error.
"""

from __future__ import annotations

import numpy as np


def as_matrix(targets: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and reshape ``targets``/``scores`` to 2-D ``(n, K)`` arrays (bool, float64).

    Raises ``ValueError`` on a shape mismatch, a non-finite score, or a target that is not 0/1.
    """
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    if targets.ndim == 1:
        targets, scores = targets[:, None], scores.reshape(scores.shape[0], -1)
    if targets.shape != scores.shape or targets.ndim != 2:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} must have the same (n, K) shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be 0 or 1")
    return targets.astype(bool), scores


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks of each column of ``scores`` (n, K); tied values share the average of their ranks."""
    n = scores.shape[0]
    order = np.argsort(scores, axis=0)
    ordered = np.take_along_axis(scores, order, axis=0)
    positions = np.arange(n)[:, None]
    # A tie group runs from its first to its last sorted position; every member gets the mean of the two.
    starts = np.ones_like(ordered, dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    ends = np.ones_like(starts)
    ends[:-1] = starts[1:]
    first = np.maximum.accumulate(np.where(starts, positions, 0), axis=0)
    last = np.minimum.accumulate(np.where(ends, positions, n - 1)[::-1], axis=0)[::-1]
    ranks = np.empty_like(scores)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, axis=0)
    return ranks


def auroc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label area under the ROC curve, ``(K,)``; NaN for a label with one class.

    The Mann-Whitney U statistic from average ranks: ``(sum of positive ranks - P(P+1)/2) / (P * N)``, which is
    the trapezoidal area ``sklearn.metrics.roc_auc_score`` computes, ties counting one half.
    """
    targets, scores = as_matrix(targets, scores)
    ranks = average_ranks(scores)
    n_pos = targets.sum(axis=0).astype(np.float64)
    n_neg = targets.shape[0] - n_pos
    rank_sum = np.where(targets, ranks, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), value, np.nan)


def operating_points(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For one label: every distinct threshold (descending) and the true/false positives at ``score >= t``.

    Returns ``(thresholds, tp, fp)``, each of length = number of distinct scores; the building block of the ROC
    and precision-recall curves and of threshold selection.
    """
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="stable")
    ordered, hits = score[order], np.asarray(target, dtype=bool)[order]
    # The last index of each run of equal scores is where a threshold at that score stops.
    group_ends = np.r_[np.flatnonzero(ordered[1:] != ordered[:-1]), ordered.size - 1]
    tp = np.cumsum(hits)[group_ends].astype(np.float64)
    fp = (group_ends + 1) - tp
    return ordered[group_ends], tp, fp


def roc_curve(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label's ROC curve ``(fpr, tpr)`` from (0, 0) to (1, 1); NaN arrays when a class is absent."""
    _, tp, fp = operating_points(target, score)
    n_pos, n_neg = tp[-1], fp[-1]
    if n_pos == 0 or n_neg == 0:
        return np.array([np.nan]), np.array([np.nan])
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos]


def pr_curve(target: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One label's precision-recall curve ``(recall, precision)`` by decreasing threshold (recall rising)."""
    _, tp, fp = operating_points(target, score)
    if tp[-1] == 0:
        return np.array([np.nan]), np.array([np.nan])
    return tp / tp[-1], tp / (tp + fp)


def auprc(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label average precision, ``(K,)``, as ``sklearn.metrics.average_precision_score`` defines it.

    ``AP = sum_k (R_k - R_{k-1}) * P_k`` over distinct thresholds, no interpolation; NaN for a label with no
    positive (undefined: recall has no denominator).
    """
    targets, scores = as_matrix(targets, scores)
    values = np.full(targets.shape[1], np.nan)
    for k in range(targets.shape[1]):
        recall, precision = pr_curve(targets[:, k], scores[:, k])
        if not np.isnan(recall[0]):
            values[k] = np.sum(np.diff(np.r_[0.0, recall]) * precision)
    return values


def prevalence(targets: np.ndarray) -> np.ndarray:
    """Fraction of positive images per label, ``(K,)``."""
    targets = np.asarray(targets, dtype=np.float64)
    return targets.reshape(targets.shape[0], -1).mean(axis=0)


def macro_average(values: np.ndarray) -> float:
    """Mean over labels, skipping NaN (labels with one class); NaN if every label is NaN."""
    values = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def micro_auroc(targets: np.ndarray, scores: np.ndarray) -> float:
    """AUROC over all (image, label) pairs pooled into one binary problem (sklearn's ``average="micro"``)."""
    targets, scores = as_matrix(targets, scores)
    return float(auroc(targets.reshape(-1), scores.reshape(-1))[0])


def brier_score(targets: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per-label mean squared error of the probabilities (Brier, 1950), ``(K,)``."""
    targets, scores = as_matrix(targets, scores)
    return np.mean((scores - targets) ** 2, axis=0)


def reliability(target: np.ndarray, score: np.ndarray, bins: int = 10) -> dict[str, list]:
    """One label's reliability curve over ``bins`` equal-width probability bins on [0, 1].

    Returns ``{"bin_lower", "bin_upper", "count", "mean_predicted", "observed"}`` (lists, one entry per bin;
    ``mean_predicted``/``observed`` are NaN in an empty bin). A probability of exactly 1 falls in the last bin.
    """
    score = np.asarray(score, dtype=np.float64)
    which = np.clip((score * bins).astype(np.int64), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(which, weights=score, minlength=bins) / count
        observed = np.bincount(which, weights=np.asarray(target, dtype=np.float64), minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "count": count.tolist(),
        "mean_predicted": mean_predicted.tolist(),
        "observed": observed.tolist(),
    }


def expected_calibration_error(targets: np.ndarray, scores: np.ndarray, bins: int = 10) -> np.ndarray:
    """Per-label ECE, ``(K,)``: ``sum_b (n_b / n) |mean predicted_b - observed_b|`` over equal-width bins.

    The binned estimator of Naeini et al. (2015) as used by Guo et al. (2017), "On Calibration of Modern
    Neural Networks".
    """
    targets, scores = as_matrix(targets, scores)
    values = np.empty(targets.shape[1])
    for k in range(targets.shape[1]):
        curve = reliability(targets[:, k], scores[:, k], bins)
        count = np.asarray(curve["count"], dtype=np.float64)
        gap = np.abs(np.asarray(curve["mean_predicted"]) - np.asarray(curve["observed"]))
        values[k] = np.sum(np.where(count > 0, gap * count, 0.0)) / count.sum()
    return values
