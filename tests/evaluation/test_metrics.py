"""Metrics, patient-level bootstrap and thresholds: hand-computed cases, scikit-learn on random data, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score, roc_curve

from cxr.evaluation.bootstrap import (
    bootstrap_auroc,
    paired_p_value,
    patient_codes,
    percentile_interval,
    resample_counts,
    weighted_auroc,
)
from cxr.evaluation.metrics import (
    auprc,
    auroc,
    average_ranks,
    brier_score,
    expected_calibration_error,
    macro_average,
    micro_auroc,
    prevalence,
    reliability,
)
from cxr.evaluation.thresholds import apply_thresholds, binary_metrics, choose_threshold, choose_thresholds


def random_scores(seed: int, n: int = 500, labels: int = 6, decimals: int = 2):
    """Targets with varied prevalence and informative scores rounded so that many ties occur."""
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, labels)) < np.linspace(0.02, 0.5, labels)).astype(np.uint8)
    scores = np.round(np.clip(rng.normal(0.3 + 0.25 * targets, 0.2), 0, 1), decimals)
    return targets, scores


# ------------------------------------------------------------------------------------------ hand-computed cases


def test_auroc_hand_computed_with_ties():
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered -> 0.75 (sklearn's documented example).
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])[0] == pytest.approx(0.75)
    # Pairs: (.5 vs .5) tie = 1/2, (.5 vs .2) = 1, (.9 vs both) = 2  -> 3.5 / 4.
    assert auroc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9])[0] == pytest.approx(0.875)


def test_auprc_hand_computed():
    # Descending: .8 (pos) P=1 R=.5; .4 (neg); .35 (pos) P=2/3 R=1 -> AP = .5*1 + .5*2/3.
    assert auprc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])[0] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_single_class_label_is_nan_and_macro_skips_it():
    targets = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
    scores = np.array([[0.2, 0.3], [0.9, 0.4], [0.1, 0.5], [0.8, 0.6]])
    values = auroc(targets, scores)
    assert values[0] == 1.0 and math.isnan(values[1])
    assert macro_average(values) == 1.0
    assert math.isnan(macro_average([np.nan, np.nan]))
    assert math.isnan(auprc([0, 0, 0], [0.1, 0.2, 0.3])[0])  # no positive: recall undefined


def test_invalid_inputs_are_rejected():
    with pytest.raises(ValueError, match="same"):
        auroc(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError, match="0 or 1"):
        auroc([0, 2], [0.5, 0.6])


def test_prevalence_and_average_ranks():
    assert prevalence(np.array([[1, 0], [0, 0], [1, 1], [1, 0]])).tolist() == [0.75, 0.25]
    _, scores = random_scores(3)
    np.testing.assert_array_equal(average_ranks(scores), rankdata(scores, axis=0))


# --------------------------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_auprc_micro_match_sklearn(seed):
    targets, scores = random_scores(seed)
    ours_roc, ours_ap = auroc(targets, scores), auprc(targets, scores)
    for k in range(targets.shape[1]):
        assert abs(ours_roc[k] - roc_auc_score(targets[:, k], scores[:, k])) < 1e-9
        assert abs(ours_ap[k] - average_precision_score(targets[:, k], scores[:, k])) < 1e-9
    assert abs(micro_auroc(targets, scores) - roc_auc_score(targets, scores, average="micro")) < 1e-9
    assert abs(macro_average(ours_roc) - roc_auc_score(targets, scores, average="macro")) < 1e-9
    np.testing.assert_allclose(
        brier_score(targets, scores), [brier_score_loss(t, s) for t, s in zip(targets.T, scores.T, strict=True)]
    )


def test_weighted_auroc_matches_sklearn_sample_weight():
    targets, scores = random_scores(4, n=300, labels=3, decimals=1)
    patients = np.random.default_rng(4).integers(0, 40, 300)
    codes, n_patients = patient_codes(patients)
    counts = resample_counts(n_patients, 7, seed=11)
    ours = weighted_auroc(targets, scores, codes, counts)
    for b in range(7):
        for k in range(3):
            expected = roc_auc_score(targets[:, k], scores[:, k], sample_weight=counts[b, codes])
            assert abs(ours[b, k] - expected) < 1e-12


def test_resample_counts_draw_each_patient_set_once_per_resample():
    counts = resample_counts(50, 200, seed=5)
    assert counts.shape == (200, 50) and (counts.sum(axis=1) == 50).all()
    assert counts.mean() == pytest.approx(1.0) and 0.2 < (counts == 0).mean() < 0.5  # ~1/e never drawn
    np.testing.assert_array_equal(counts, resample_counts(50, 200, seed=5))
    assert not np.array_equal(counts, resample_counts(50, 200, seed=6))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 6)), min_size=2, max_size=40))
def test_auroc_properties(pairs):
    targets = np.array([t for t, _ in pairs], dtype=np.uint8)
    scores = np.array([s for _, s in pairs], dtype=np.float64) / 6
    value = auroc(targets, scores)[0]
    if targets.min() == targets.max():
        assert math.isnan(value)
        return
    assert abs(value - roc_auc_score(targets, scores)) < 1e-12
    assert auroc(targets, 1 - scores)[0] == pytest.approx(1 - value)  # reversing the ranking mirrors the area
    assert auroc(targets, scores**3)[0] == pytest.approx(value)  # only the order matters


# ----------------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_with_unit_weights_is_the_point_estimate():
    targets, scores = random_scores(5, n=200, labels=4)
    ones = np.ones((1, 200), dtype=np.int32)
    np.testing.assert_allclose(weighted_auroc(targets, scores, np.arange(200), ones)[0], auroc(targets, scores))


def clustered_dataset(rng, patients: int, effect: float = 1.0, separation: float = 1.0, max_images: int = 9):
    """Patients with 2..max_images images; a patient effect shifts all their scores; the true AUROC is known."""
    sizes = rng.integers(2, max_images + 1, patients)
    patient_ids = np.repeat(np.arange(patients), sizes)
    n = patient_ids.size
    patient_prevalence = rng.beta(1.0, 2.0, patients)  # findings cluster by patient too
    targets = (rng.random(n) < patient_prevalence[patient_ids]).astype(np.uint8)
    scores = separation * targets + effect * rng.normal(size=patients)[patient_ids] + rng.normal(size=n)
    # For images of different patients, the score difference is N(separation, 2 * (effect^2 + 1)).
    true_auroc = 0.5 * (1 + math.erf(separation / math.sqrt(2 * (effect**2 + 1)) / math.sqrt(2)))
    return targets[:, None], scores[:, None], patient_ids, true_auroc


def test_patient_bootstrap_covers_the_true_auroc_and_image_bootstrap_does_not():
    """95% patient-level CIs cover the truth ~95% of the time on clustered data; image-level ones fall short."""
    rng = np.random.default_rng(2024)
    covered = {"patient": 0, "image": 0}
    replicates = 150
    for replicate in range(replicates):
        targets, scores, patient_ids, truth = clustered_dataset(rng, patients=40, effect=2.0, max_images=16)
        for unit, ids in (("patient", patient_ids), ("image", np.arange(patient_ids.size))):
            lo, hi = bootstrap_auroc(targets, scores, ids, 300, seed=replicate, micro=False).interval()[0]
            covered[unit] += lo <= truth <= hi
    # Seeded, so deterministic; measured 0.91 and 0.69 (a binomial SD of ~0.03 at 150 replicates).
    assert covered["patient"] / replicates >= 0.88
    assert covered["image"] / replicates <= 0.80  # what resampling images instead of patients would give


def test_bootstrap_groups_images_by_patient():
    """Copying every image of a patient k times adds no information: the patient-level CI must not move, while
    an image-level bootstrap (each copy its own unit) shrinks by about sqrt(k)."""
    rng = np.random.default_rng(8)
    targets, scores, patient_ids, _ = clustered_dataset(rng, patients=80)
    k = 4
    copies = (np.repeat(targets, k, axis=0), np.repeat(scores, k, axis=0), np.repeat(patient_ids, k))
    once = bootstrap_auroc(targets, scores, patient_ids, 500, seed=1).interval()[0]
    repeated = bootstrap_auroc(*copies, 500, seed=1).interval()[0]
    np.testing.assert_allclose(repeated, once, atol=1e-12)
    by_image_once = bootstrap_auroc(targets, scores, np.arange(len(scores)), 500, seed=1).interval()[0]
    by_image_copies = bootstrap_auroc(*copies[:2], np.arange(len(copies[1])), 500, seed=1).interval()[0]
    assert np.diff(by_image_copies)[0] < 0.7 * np.diff(by_image_once)[0]


def test_bootstrap_macro_micro_and_nan_resamples():
    targets, scores = random_scores(6, n=400, labels=3)
    targets[:, 2] = 0
    targets[0, 2] = 1  # one positive: most resamples lose it -> NaN there, skipped by the macro
    patients = np.arange(400) // 4
    boot = bootstrap_auroc(targets, scores, patients, 200, seed=0)
    assert np.isnan(boot.samples[:, 2]).any() and np.isfinite(boot.samples[:, :2]).all()
    finite = np.isfinite(boot.samples)
    expected_macro = np.where(finite, boot.samples, 0).sum(1) / finite.sum(1)
    np.testing.assert_allclose(boot.macro_samples, expected_macro)
    lo, hi = percentile_interval(boot.micro_samples)
    assert lo < micro_auroc(targets, scores) < hi
    assert percentile_interval(np.full((10, 2), np.nan)).shape == (2, 2)


def test_paired_p_value():
    assert paired_p_value(np.linspace(0.01, 0.05, 99)) == pytest.approx(2 / 100)  # all above 0: +1 correction
    assert paired_p_value(np.linspace(-1, 1, 101)) == 1.0
    assert paired_p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(2 * 2 / 5)
    assert math.isnan(paired_p_value(np.array([np.nan, np.nan])))


# ---------------------------------------------------------------------------------------------- thresholds


def test_thresholds_hand_computed():
    target = np.array([0, 0, 0, 1, 0, 1, 1, 1])
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    # >= .6: sens 3/4, spec 4/4 -> J .75 (best); >= .4: sens 1, spec 3/4 -> J .75 too: the higher one wins.
    assert choose_threshold(target, score, "youden") == 0.6
    # F1 at .6: 2*3/(6+0+1) = .857; at .4: 2*4/(8+1+0) = .889 -> .4
    assert choose_threshold(target, score, "f1_max") == 0.4
    assert choose_threshold(target, score, "sensitivity_90") == 0.4  # highest with sens >= .9
    assert math.isnan(choose_threshold(np.zeros(4), score[:4], "youden"))
    with pytest.raises(ValueError, match="unknown"):
        choose_threshold(target, score, "accuracy")


def test_binary_metrics_counts():
    at = binary_metrics(np.array([1, 1, 0, 0, 0]), np.array([0.9, 0.2, 0.8, 0.1, 0.3]), 0.5)
    assert (at["tp"], at["fn"], at["fp"], at["tn"]) == (1, 1, 1, 2)
    assert at["sensitivity"] == 0.5 and at["specificity"] == pytest.approx(2 / 3)
    assert at["ppv"] == 0.5 and at["npv"] == pytest.approx(2 / 3) and at["f1"] == 0.5
    nothing = binary_metrics(np.array([1, 0]), np.array([0.1, 0.2]), 0.9)
    assert math.isnan(nothing["ppv"]) and nothing["specificity"] == 1.0


def test_youden_is_the_best_roc_point_and_thresholds_transfer():
    targets, scores = random_scores(9, n=600, labels=3)
    for k in range(3):
        fpr, tpr, cut = roc_curve(targets[:, k], scores[:, k])
        threshold = choose_threshold(targets[:, k], scores[:, k], "youden")
        assert threshold in cut[np.isclose(tpr - fpr, np.max(tpr - fpr))]
        sensitive = choose_threshold(targets[:, k], scores[:, k], "sensitivity_90")
        assert tpr[cut == sensitive][0] >= 0.9 and sensitive == cut[np.argmax(tpr >= 0.9)]
    labels = ["A", "B", "C"]
    chosen = choose_thresholds(targets, scores, labels)
    test_targets, test_scores = random_scores(10, n=600, labels=3)
    applied = apply_thresholds(test_targets, test_scores, labels, chosen)
    assert applied["B"]["youden"]["threshold"] == chosen["B"]["youden"]
    assert applied["B"]["youden"] == binary_metrics(test_targets[:, 1], test_scores[:, 1], chosen["B"]["youden"])


# --------------------------------------------------------------------------------------------- calibration


def test_calibration_hand_computed():
    target = np.array([0, 1, 1, 0, 1])
    score = np.array([0.05, 0.15, 0.95, 0.9, 1.0])
    curve = reliability(target, score, bins=2)
    assert curve["count"] == [2, 3]  # 1.0 falls in the last bin
    assert curve["observed"] == pytest.approx([0.5, 2 / 3])
    assert curve["mean_predicted"] == pytest.approx([0.1, 2.85 / 3])
    expected = (2 * abs(0.1 - 0.5) + 3 * abs(2.85 / 3 - 2 / 3)) / 5
    assert expected_calibration_error(target, score, bins=2)[0] == pytest.approx(expected)
    empty = reliability(target, score, bins=10)
    assert sum(empty["count"]) == 5 and math.isnan(empty["observed"][5])
    perfect = expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]))[0]
    assert perfect == 0.0
