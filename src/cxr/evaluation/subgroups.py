"""Performance by patient group (``cxr evaluate --subgroups sex,age,view``), with gaps and patient-level CIs.

Seyyed-Kalantari et al. ("Underdiagnosis bias of artificial intelligence algorithms applied to chest radiographs
in under-served patient populations", Nature Medicine 2021) and CheXclusion (Seyyed-Kalantari et al., PSB 2021)
report what a clinical reviewer asks for: per group, AUROC, the true- and false-positive rates at the model's
operating thresholds, and the gaps between groups. Here:

- groups come from harmonised attributes (:mod:`cxr.data.attributes`): ``sex`` ``F``/``M``, ``age`` in bins
  (default 0-20, 20-40, 40-60, 60-80, 80+ as in the Nature Medicine study), ``view``, any column of a
  ``--subgroup-file`` joined by image or patient id, and intersections such as ``sex*age`` (``F*80+``);
- the **TPR gap** of a finding is the group's TPR minus the median TPR over the attribute's groups (CheXclusion);
  for ``sex`` with groups F and M it is F - M (and M - F for M);
- **underdiagnosis** is, among images with at least one finding, the share the model calls normal: the
  false-positive rate of a "No Finding" output at its threshold where the model has one (the Nature Medicine
  definition), else "every finding below its threshold" (the result says which);
- every interval comes from one patient-level bootstrap: each replicate draws patients once
  (:func:`cxr.evaluation.bootstrap.resample_counts`) and every group is scored on that same draw, so a gap's
  replicate is the difference of two groups seen in the same resampled population. A gap is flagged where its
  95% interval excludes 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.evaluation.bootstrap import patient_codes, percentile_interval, resample_counts, weighted_auroc
from cxr.evaluation.groups import DEFAULT_AGE_BINS, SubgroupRequest, attribute_groups
from cxr.evaluation.metrics import auroc
from cxr.evaluation.predictions import ScoredSet, summary_labels
from cxr.evaluation.results import (
    EvaluationResult,
    FindingInGroup,
    GroupResult,
    SubgroupSettings,
    Underdiagnosis,
)
from cxr.labels import NO_FINDING

GAP_RULE = "TPR gap = group TPR - median TPR over the attribute's groups (CheXclusion); sex: F - M"


def underdiagnosis_inputs(data: ScoredSet, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """Per image: sick (at least one finding), called normal by the model, and the definition used."""
    findings = [k for k, label in enumerate(data.labels) if label != NO_FINDING]
    if NO_FINDING in data.labels:
        k = data.labels.index(NO_FINDING)
        sick, normal = data.targets[:, k] == 0, predicted[:, k]
        return sick, normal, ("FPR of the No Finding output: among images with at least one finding (No Finding = 0),"
                              " the share whose No Finding probability is at or above its threshold")  # fmt: skip
    sick = data.targets[:, findings].astype(bool).any(axis=1)
    normal = ~predicted[:, findings].any(axis=1)
    return sick, normal, ("every finding below its threshold (the model has no No Finding output): among images "
                          "with at least one finding, the share with no output at or above its threshold")  # fmt: skip


def _per_patient(values: np.ndarray, codes: np.ndarray, n_patients: int) -> np.ndarray:
    """Column sums per patient, ``(P, K)``: multiplied by a replicate's counts they give its weighted totals."""
    values = values.reshape(values.shape[0], -1).astype(np.float64)
    return np.stack([np.bincount(codes, weights=values[:, k], minlength=n_patients) for k in range(values.shape[1])], 1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


@dataclass
class _Group:
    """One group's point values and replicates, before the gaps (which need every group of the attribute)."""

    mask: np.ndarray
    tpr: np.ndarray  # (K,)
    fpr: np.ndarray  # (K,)
    tpr_samples: np.ndarray  # (B, K)
    under: float
    under_samples: np.ndarray  # (B,)


def _group(data: ScoredSet, mask: np.ndarray, predicted: np.ndarray, sick: np.ndarray, normal: np.ndarray,
           codes: np.ndarray, counts: np.ndarray) -> _Group:  # fmt: skip
    n_patients = counts.shape[1]
    y = data.targets[mask].astype(bool)
    hit = predicted[mask]
    positives, true_pos = _per_patient(y, codes[mask], n_patients), _per_patient(y & hit, codes[mask], n_patients)
    sick_here = sick[mask]
    missed = _per_patient(sick_here & normal[mask], codes[mask], n_patients)
    ill = _per_patient(sick_here, codes[mask], n_patients)
    negatives, false_pos = y.shape[0] - y.sum(axis=0), (~y & hit).sum(axis=0)
    return _Group(
        mask=mask,
        tpr=_ratio(true_pos.sum(axis=0), positives.sum(axis=0)),
        fpr=_ratio(false_pos.astype(np.float64), negatives.astype(np.float64)),
        tpr_samples=_ratio(counts @ true_pos, counts @ positives),
        under=float(_ratio(missed.sum(axis=0), ill.sum(axis=0))[0]),
        under_samples=_ratio(counts @ missed, counts @ ill)[:, 0],
    )


def gaps(values: np.ndarray, names: list[str], attribute: str) -> np.ndarray:
    """Gap of each group along axis 0 of ``values`` (groups first): minus the other group for ``sex`` F/M, else
    minus the median over groups (NaN groups skipped)."""
    if attribute == "sex" and sorted(names) == ["F", "M"]:
        return values - values[::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: a finding no group has positives of
        return values - np.nanmedian(values, axis=0, keepdims=True)


MIN_DEFINED = 0.9
"""A gap is flagged only where at least this share of replicates define it (its groups drew patients with the
finding): a group of one or two patients gives a degenerate interval that would otherwise "exclude 0"."""


def _interval(samples: np.ndarray, level: float) -> tuple[list[float], bool]:
    """A gap's percentile interval and whether it excludes 0 (a well-defined, non-degenerate interval only)."""
    bounds = percentile_interval(samples, level)
    defined = np.isfinite(samples).mean() >= MIN_DEFINED and bounds[0] < bounds[1]
    return bounds.tolist(), bool(defined and (bounds[0] > 0 or bounds[1] < 0))


def score_attribute(data: ScoredSet, groups: pd.Series, order: list[str], thresholds: dict[str, float],
                    counts: np.ndarray, codes: np.ndarray, summary: list[str], level: float, attribute: str,
                    ) -> dict[str, GroupResult]:  # fmt: skip
    """Every group of one attribute (``groups``: the group name of each image, ``""`` = not placed)."""
    limits = np.array([thresholds[label] for label in data.labels])
    predicted = data.probabilities >= limits
    sick, normal, definition = underdiagnosis_inputs(data, predicted)
    names = [name for name in order if (groups == name).any()]
    if not names:  # every image's attribute unknown: subgroup_settings.missing says so
        return {}
    parts = [_group(data, (groups == name).to_numpy(), predicted, sick, normal, codes, counts) for name in names]
    tpr_gap = gaps(np.stack([p.tpr for p in parts]), names, attribute)
    tpr_gap_samples = gaps(np.stack([p.tpr_samples for p in parts]), names, attribute)
    under_gap = gaps(np.array([p.under for p in parts]), names, attribute)
    under_gap_samples = gaps(np.stack([p.under_samples for p in parts]), names, attribute)
    in_macro = np.isin(data.labels, summary)
    result = {}
    for g, (name, part) in enumerate(zip(names, parts, strict=True)):
        y, p = data.targets[part.mask], data.probabilities[part.mask]
        point = auroc(y, p)
        samples = weighted_auroc(y, p, codes[part.mask], counts)
        usable = in_macro & np.isfinite(point)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            macro_samples = np.nanmean(samples[:, usable], axis=1) if usable.any() else np.full(len(counts), np.nan)
        findings = {}
        for k, label in enumerate(data.labels):
            gap_ci, excludes = _interval(tpr_gap_samples[g, :, k], level)
            findings[label] = FindingInGroup(
                auroc=float(point[k]), auroc_ci=percentile_interval(samples[:, k], level).tolist(),
                tpr=float(part.tpr[k]), fpr=float(part.fpr[k]), tpr_gap=float(tpr_gap[g, k]), tpr_gap_ci=gap_ci,
                gap_excludes_0=excludes, prevalence=float(y[:, k].mean()), n_pos=int(y[:, k].sum()),
            )  # fmt: skip
        under_ci, under_excludes = _interval(under_gap_samples[g], level)
        result[name] = GroupResult(
            n_images=int(part.mask.sum()),
            n_patients=int(len(np.unique(codes[part.mask]))),
            macro_auroc=float(point[usable].mean()) if usable.any() else float("nan"),
            macro_auroc_ci=percentile_interval(macro_samples, level).tolist(),
            macro_n_findings=int(usable.sum()),
            findings=findings,
            underdiagnosis=Underdiagnosis(
                rate=part.under,
                ci=percentile_interval(part.under_samples, level).tolist(),
                definition=definition,
                n_sick=int((sick & part.mask).sum()),
                gap=float(under_gap[g]),
                gap_ci=under_ci,
                gap_excludes_0=under_excludes,
            ),  # fmt: skip
        )
    return result


def add_subgroups(result: EvaluationResult, data: ScoredSet, metadata: pd.DataFrame | None,
                  request: SubgroupRequest, thresholds: dict[str, float], rule: str) -> EvaluationResult:  # fmt: skip
    """Score ``request``'s attributes on ``data`` into ``result.subgroups`` (and ``subgroup_settings``), with the
    bootstrap settings ``result`` used; ``metadata`` (image, sex, age, view, ...) is the labels' table or the store's
    index, ``thresholds`` one per label (the run's validation-chosen ones at ``rule``)."""
    table, order, sources = attribute_groups(data, metadata, request)
    boot = result.bootstrap
    codes, n_patients = patient_codes(data.patient_ids)
    counts = resample_counts(n_patients, boot.resamples, boot.seed)
    summary = summary_labels(data.labels)
    result.subgroups = {
        attribute: score_attribute(
            data, table[attribute], order[attribute], thresholds, counts, codes, summary, boot.level, attribute
        )  # fmt: skip
        for attribute in request.attributes
    }
    result.subgroup_settings = SubgroupSettings(
        rule=rule, thresholds={label: float(thresholds[label]) for label in data.labels},
        thresholds_chosen_on=result.thresholds_chosen_on, age_bins=[float(edge) for edge in request.age_bins],
        gap=GAP_RULE, missing={attribute: int((table[attribute] == "").sum()) for attribute in request.attributes},
        sources=sources,
    )  # fmt: skip
    return result


__all__ = ["DEFAULT_AGE_BINS", "GAP_RULE", "SubgroupRequest", "add_subgroups", "score_attribute"]
