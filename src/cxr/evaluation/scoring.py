"""Scoring one set of predictions: the typed result (:class:`~cxr.evaluation.results.EvaluationResult`, the
``metrics.json`` of ``docs/architecture.md``) with patient-level CIs, thresholds chosen on validation, calibration;
and the variant for a set whose labels are unknown on some images (:func:`score_per_label`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from cxr.evaluation.bootstrap import bootstrap_auroc, percentile_interval
from cxr.evaluation.metrics import (
    auprc,
    brier_score,
    expected_calibration_error,
    macro_average,
    micro_auroc,
    prevalence,
    reliability,
)
from cxr.evaluation.predictions import ScoredSet, summary_labels
from cxr.evaluation.results import (
    BootstrapSettings,
    Calibration,
    EvaluationResult,
    LabelResult,
    OperatingPoint,
    Reliability,
)
from cxr.evaluation.thresholds import apply_thresholds, choose_thresholds


def score(
    data: ScoredSet,
    thresholds: dict[str, dict[str, float]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    bins: int = 10,
    level: float = 0.95,
) -> EvaluationResult:
    """The typed result (``metrics.json``, ``docs/architecture.md``) of one scored set.

    ``thresholds`` (``{label: {rule: value}}``) must come from validation; without them they are chosen on
    ``data`` itself and the result says so (``thresholds_chosen_on``), since such operating points are optimistic.
    """
    y, p = data.targets, data.probabilities
    summary = summary_labels(data.labels)
    mask = np.isin(data.labels, summary)
    boot = bootstrap_auroc(y, p, data.patient_ids, n_resamples, seed, summary=mask)
    chosen_on = "validation" if thresholds is not None else "evaluated set (optimistic: no validation predictions)"
    if thresholds is None:
        thresholds = choose_thresholds(y, p, data.labels)
    operating = apply_thresholds(y, p, data.labels, thresholds)
    area, precision, share = boot.point, auprc(y, p), prevalence(y)
    brier, ece = brier_score(y, p), expected_calibration_error(y, p, bins)
    intervals = boot.interval(level)
    findings = {
        label: LabelResult(
            auroc=float(area[k]),
            auprc=float(precision[k]),
            prevalence=float(share[k]),
            brier=float(brier[k]),
            ece=float(ece[k]),
            auroc_ci=intervals[k].tolist(),
            n_pos=int(y[:, k].sum()),
            n=int(y.shape[0]),
            thresholds={rule: OperatingPoint(**values) for rule, values in operating[label].items()},
            reliability=Reliability(**reliability(y[:, k], p[:, k], bins)),
        )  # fmt: skip
        for k, label in enumerate(data.labels)
    }
    pooled_y, pooled_p = y[:, mask].reshape(-1), p[:, mask].reshape(-1)
    return EvaluationResult(
        findings=findings,
        macro_auroc=macro_average(boot.point[mask]),
        macro_auroc_ci=percentile_interval(boot.macro_samples, level).tolist(),
        micro_auroc=micro_auroc(y[:, mask], p[:, mask]),
        micro_auroc_ci=percentile_interval(boot.micro_samples, level).tolist(),
        n_images=int(y.shape[0]),
        n_patients=int(len(np.unique(data.patient_ids))),
        labels=list(data.labels),
        macro_labels=summary,
        thresholds_chosen_on=chosen_on,
        bootstrap=BootstrapSettings(unit="patient", resamples=n_resamples, seed=seed, level=level, method="percentile"),
        calibration=pooled_calibration(pooled_y, pooled_p, bins),
    )


def pooled_calibration(targets: np.ndarray, scores: np.ndarray, bins: int = 10) -> Calibration:
    """ECE, Brier and the reliability curve over pooled (image, label) pairs."""
    return Calibration(
        bins=bins,
        ece=float(expected_calibration_error(targets, scores, bins)[0]),
        brier=float(brier_score(targets, scores)[0]),
        reliability=Reliability(**reliability(targets, scores, bins)),
    )


def chosen_thresholds(result: EvaluationResult) -> dict[str, dict[str, float]]:
    """The thresholds a result applied, ``{label: {rule: value}}`` (those chosen on the set when none were given)."""
    return {label: {rule: point.threshold for rule, point in entry.thresholds.items()}
            for label, entry in result.findings.items()}  # fmt: skip


def operating_thresholds(thresholds: dict[str, dict[str, float]], rule: str) -> tuple[dict[str, float], list[str]]:
    """One threshold per label for the model artifact; 0.5 (listed) where validation could not choose one."""
    chosen = {label: rules[rule] for label, rules in thresholds.items()}
    fallback = [label for label, value in chosen.items() if not math.isfinite(value)]
    return {label: 0.5 if label in fallback else value for label, value in chosen.items()}, fallback


def validation_thresholds(val: ScoredSet) -> dict[str, dict[str, float]]:
    """Thresholds per label chosen on the validation rows that give the label (NaN targets: a store that does not
    provide it, in a run trained on several stores)."""
    y = np.asarray(val.targets, dtype=np.float64)
    chosen = {}
    for k, label in enumerate(val.labels):
        provided = ~np.isnan(y[:, k])
        target = y[provided, k].astype(np.uint8)[:, None]
        chosen |= choose_thresholds(target, val.probabilities[provided, k][:, None], [label])
    return chosen


def score_per_label(
    data: ScoredSet, thresholds: dict[str, dict[str, float]], n_resamples: int, seed: int
) -> EvaluationResult:
    """:func:`score` for a set whose targets are unknown (NaN) on some rows: each label scored on the images that
    give it (its own ``n`` and patient-level CI). The macro AUROC is the mean of the labels' points; its CI and the
    micro AUROC would need one image set and are NaN (``per_label`` says so)."""
    findings, first = {}, None
    for k, label in enumerate(data.labels):
        known = ~np.isnan(data.targets[:, k])
        y, p = data.targets[known, k : k + 1].astype(np.uint8), data.probabilities[known, k : k + 1]
        part = ScoredSet([label], data.images[known], data.patient_ids[known], y, p)
        metrics = score(part, {label: thresholds[label]}, n_resamples, seed)
        findings[label], first = metrics.findings[label], first or metrics
    summary = summary_labels(data.labels)
    known = ~np.isnan(data.targets)
    pooled_y, pooled_p = data.targets[known].astype(np.uint8), data.probabilities[known]
    return replace(
        first,
        findings=findings,
        macro_auroc=macro_average(np.array([findings[label].auroc for label in summary])),
        macro_auroc_ci=[math.nan, math.nan],
        micro_auroc=math.nan,
        micro_auroc_ci=[math.nan, math.nan],
        n_images=len(data.images),
        n_patients=int(len(np.unique(data.patient_ids))),
        labels=list(data.labels),
        macro_labels=summary,
        per_label="labels scored on the images that give them (a blank or uncertain label is unknown, not negative)",
        calibration=pooled_calibration(pooled_y, pooled_p, first.calibration.bins),
    )
