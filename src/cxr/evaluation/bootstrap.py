"""Patient-level bootstrap of AUROC, vectorised over labels and resamples, and paired run comparison.

NIH's official test set holds 25,596 images of 2,797 patients (~9 images each). Images of one patient are not
independent, so confidence intervals come from resampling *patients* with replacement (the cluster bootstrap;
Field & Welsh, 2007) — resampling images would understate the uncertainty. A resample is represented by how
many times each patient was drawn; every image then carries its patient's count as a weight, and the weighted
Mann-Whitney statistic of each label is computed for all resamples at once: scores are sorted once per label
(the order does not depend on the resample), and a cumulative sum of negative weights along that order gives,
for every positive, the weight of negatives ranked below it (ties count one half, as in
``sklearn.metrics.roc_auc_score`` with ``sample_weight``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cxr.evaluation.metrics import as_matrix, auroc

CHUNK_ELEMENTS = 1 << 19
"""Weights handled per step (resamples x images): enough to amortise Python overhead, few enough to stay in
cache (on 25,596 images x 14 labels, 16-32 resamples per step ran 2-3x faster than 128: 2.4 s -> 0.8 s)."""


def patient_codes(patient_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Map each image's patient id to ``0..P-1``; return ``(codes, P)``."""
    uniques, codes = np.unique(np.asarray(patient_ids), return_inverse=True)
    return codes.reshape(-1).astype(np.int64), len(uniques)


def resample_counts(n_patients: int, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """How many times each patient is drawn in each resample: ``(n_resamples, n_patients)`` int32.

    Each resample draws ``n_patients`` patients uniformly with replacement (seeded, so paired comparisons that
    pass the same seed and patients see identical resamples).
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients))
    flat = draws + (np.arange(n_resamples) * n_patients)[:, None]
    return (
        np.bincount(flat.ravel(), minlength=n_resamples * n_patients).reshape(n_resamples, n_patients).astype(np.int32)
    )


@dataclass(frozen=True)
class _LabelPlan:
    """One label's sorted layout: patients of negatives and positives, and each positive's rank among negatives."""

    neg_codes: np.ndarray  # patient code of every negative, in increasing score order
    pos_codes: np.ndarray  # patient code of every positive, in increasing score order
    below: np.ndarray  # per positive: number of negatives with a strictly lower score
    through: np.ndarray  # per positive: number of negatives with a lower or equal score


def _plan(target: np.ndarray, score: np.ndarray, codes: np.ndarray) -> _LabelPlan:
    order = np.argsort(score, kind="stable")
    ordered, positive, ordered_codes = score[order], target[order], codes[order]
    negative = ~positive
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.r_[first[1:] - 1, ordered.size - 1]
    negatives_through = np.cumsum(negative)
    below_group = negatives_through[first] - negative[first]
    return _LabelPlan(
        neg_codes=ordered_codes[negative],
        pos_codes=ordered_codes[positive],
        below=below_group[group[positive]],
        through=negatives_through[last][group[positive]],
    )


def _weighted_auroc_label(plan: _LabelPlan, counts: np.ndarray) -> np.ndarray:
    """AUROC of one label under each row of ``counts`` (per-patient weights): ``(B,)``."""
    negative_weights = counts[:, plan.neg_codes]
    cumulative = np.zeros((counts.shape[0], plan.neg_codes.size + 1), dtype=np.int64)
    np.cumsum(negative_weights, axis=1, out=cumulative[:, 1:])
    positive_weights = counts[:, plan.pos_codes]
    # Twice the weighted U statistic: a negative below a positive counts 2, a tied one counts 1.
    if np.array_equal(plan.below, plan.through):
        twice_u = 2.0 * np.einsum("ij,ij->i", positive_weights, cumulative[:, plan.below], dtype=np.float64)
    else:
        around = cumulative[:, plan.below] + cumulative[:, plan.through]
        twice_u = np.einsum("ij,ij->i", positive_weights, around, dtype=np.float64)
    pairs = positive_weights.sum(axis=1, dtype=np.float64) * cumulative[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, twice_u / (2.0 * pairs), np.nan)


def weighted_auroc(targets: np.ndarray, scores: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUROC per resample and label, ``(B, K)``, image ``i`` weighted by ``counts[b, codes[i]]``.

    ``codes`` (n,) maps images to groups (patients) and ``counts`` (B, G) holds each group's weight per resample;
    for plain per-image weights pass ``codes = arange(n)``. NaN where a resample leaves a label one class.
    """
    targets, scores = as_matrix(targets, scores)
    codes = np.asarray(codes, dtype=np.int64)
    counts = np.atleast_2d(counts)
    result = np.empty((counts.shape[0], targets.shape[1]))
    plans = [_plan(targets[:, k], scores[:, k], codes) for k in range(targets.shape[1])]
    step = max(1, CHUNK_ELEMENTS // max(1, targets.shape[0]))
    for start in range(0, counts.shape[0], step):
        chunk = counts[start : start + step]
        for k, plan in enumerate(plans):
            result[start : start + step, k] = _weighted_auroc_label(plan, chunk)
    return result


@dataclass(frozen=True)
class BootstrapAuroc:
    """Point AUROC per label, macro and micro, and their values in every patient-level resample."""

    point: np.ndarray  # (K,)
    samples: np.ndarray  # (B, K); NaN where a resample left a label with one class
    macro_samples: np.ndarray  # (B,) mean over labels, skipping NaN
    micro_samples: np.ndarray | None  # (B,) pooled AUROC, when requested

    def interval(self, level: float = 0.95) -> np.ndarray:
        """Per-label percentile interval, ``(K, 2)``."""
        return percentile_interval(self.samples, level)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """Percentile bootstrap interval over axis 0, skipping NaN: shape ``samples.shape[1:] + (2,)``."""
    samples = np.asarray(samples, dtype=np.float64)
    flat = samples.reshape(samples.shape[0], -1)
    tail = (1.0 - level) / 2.0 * 100.0
    bounds = np.full((flat.shape[1], 2), np.nan)
    usable = np.isfinite(flat).any(axis=0)  # an all-NaN column (label never two-class) has no interval
    if usable.any():
        bounds[usable] = np.nanpercentile(flat[:, usable], [tail, 100.0 - tail], axis=0).T
    return bounds.reshape(samples.shape[1:] + (2,))


def bootstrap_auroc(
    targets: np.ndarray,
    scores: np.ndarray,
    patient_ids: np.ndarray,
    n_resamples: int = 1000,
    seed: int = 0,
    summary: np.ndarray | None = None,
    micro: bool = True,
    counts: np.ndarray | None = None,
) -> BootstrapAuroc:
    """Patient-level bootstrap of per-label AUROC, and of macro and (optionally) micro AUROC over ``summary``.

    ``summary`` (bool, K) selects the labels averaged into macro/micro (default: all). ``counts`` (B, P), from
    :func:`resample_counts` over :func:`patient_codes`, overrides ``n_resamples``/``seed``: pass the same counts for
    two runs scored on the same images to get a paired bootstrap.
    """
    targets, scores = as_matrix(targets, scores)
    codes, n_patients = patient_codes(patient_ids)
    if codes.size != targets.shape[0]:
        raise ValueError(f"{codes.size} patient ids for {targets.shape[0]} images")
    if counts is None:
        counts = resample_counts(n_patients, n_resamples, seed)
    summary = np.ones(targets.shape[1], dtype=bool) if summary is None else np.asarray(summary, dtype=bool)
    samples = weighted_auroc(targets, scores, codes, counts)
    finite = np.isfinite(samples[:, summary])
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(finite, samples[:, summary], 0.0).sum(axis=1) / finite.sum(axis=1)
    micro_samples = None
    if micro:
        pooled_targets, pooled_scores = targets[:, summary].reshape(-1), scores[:, summary].reshape(-1)
        pooled_codes = np.repeat(codes, int(summary.sum()))
        micro_samples = weighted_auroc(pooled_targets, pooled_scores, pooled_codes, counts)[:, 0]
    return BootstrapAuroc(
        point=auroc(targets, scores), samples=samples, macro_samples=macro, micro_samples=micro_samples
    )


def paired_p_value(differences: np.ndarray) -> np.ndarray:
    """Two-sided bootstrap p-value that a difference is zero, per column of ``differences`` (B, ...).

    Twice the smaller tail mass of the resampled differences on either side of zero, with the ``+1`` correction
    of Davison & Hinkley (1997) so that a p-value is never exactly 0; capped at 1; NaN where no resample is finite.
    """
    differences = np.asarray(differences, dtype=np.float64)
    finite = np.isfinite(differences)
    n = finite.sum(axis=0)
    at_most = (np.where(finite, differences, np.inf) <= 0).sum(axis=0)
    at_least = (np.where(finite, differences, -np.inf) >= 0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2.0 * (np.minimum(at_most, at_least) + 1.0) / (n + 1.0)
    return np.where(n > 0, np.minimum(p, 1.0), np.nan)
