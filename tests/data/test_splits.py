"""Patient-wise splits: never a patient on two sides, sizes near the ratios, findings stratified, seeded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxr.data.splits import PatientOverlapError, assert_patient_disjoint, carve_validation, official_split, ratio_split
from cxr.errors import CxrError
from cxr.labels import FINDINGS


def make_table(seed: int, patients: int, max_images: int, prevalence: float = 0.2) -> pd.DataFrame:
    """Random patients with 1..max_images images each, random findings, a shuffled non-default index."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, max_images + 1, patients)
    patient_id = np.repeat(rng.choice(10**6, patients, replace=False), sizes)
    labels = (rng.random((len(patient_id), len(FINDINGS))) < rng.random(len(FINDINGS)) * prevalence).astype(np.uint8)
    table = pd.DataFrame(labels, columns=list(FINDINGS))
    table.insert(0, "patient_id", patient_id)
    table.index = rng.permutation(len(table)) + 1000
    return table


def check_partition(table: pd.DataFrame, parts, ratios) -> None:
    """Every row in exactly one part, no patient in two, and each part within (k-1) largest patients of its ratio."""
    rows = np.concatenate(parts)
    assert len(rows) == len(table) and set(rows) == set(table.index)
    patients = [set(table.loc[part, "patient_id"]) for part in parts]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            assert not patients[i] & patients[j]
    largest = table["patient_id"].value_counts().max()
    for part, ratio in zip(parts, ratios, strict=True):
        assert abs(len(part) - ratio * len(table)) <= (len(parts) - 1) * largest


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    patients=st.integers(1, 60),
    max_images=st.integers(1, 8),
    fraction=st.sampled_from([0.05, 0.1, 0.25, 0.5]),
    stratify=st.booleans(),
)
def test_carve_validation_is_patient_disjoint_and_sized(seed, patients, max_images, fraction, stratify):
    table = make_table(seed, patients, max_images)
    train, val = carve_validation(table, fraction=fraction, seed=seed % 7, stratify=stratify)
    check_partition(table, [train, val], [1 - fraction, fraction])
    # Returned in table order, as index labels.
    assert list(train) == [i for i in table.index if i in set(train)]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), patients=st.integers(3, 60), max_images=st.integers(1, 6))
def test_ratio_split_is_patient_disjoint_and_sized(seed, patients, max_images):
    table = make_table(seed, patients, max_images)
    parts = ratio_split(table, (0.7, 0.1, 0.2), seed=seed % 5)
    check_partition(table, parts, (0.7, 0.1, 0.2))


def test_carve_validation_is_seeded():
    table = make_table(1, 300, 5)
    first = carve_validation(table, seed=3)
    again = carve_validation(table, seed=3)
    other = carve_validation(table, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


def test_stratification_spreads_rare_findings_better_than_chance():
    """Few positives per finding: a stratified carve-out gives validation its share of every finding's positives
    to within one patient's images (4 here); patient-wise random carve-outs, over the same seeds, do not."""
    table = make_table(5, 1500, 4, prevalence=0.05)
    positives = table[list(FINDINGS)].sum()
    deviation = {True: [], False: []}
    for seed in range(6):
        for stratify in (True, False):
            _, val = carve_validation(table, fraction=0.2, seed=seed, stratify=stratify)
            deviation[stratify].append(float((table.loc[val, list(FINDINGS)].sum() - 0.2 * positives).abs().max()))
    assert max(deviation[True]) <= 4
    assert np.mean(deviation[False]) > 4


def test_assert_patient_disjoint_names_the_overlap():
    assert_patient_disjoint(pd.DataFrame({"patient_id": [1, 2]}), pd.Series([3, 4]), np.array([5]))
    with pytest.raises(PatientOverlapError, match=r"1 patients are in both train and val \(e\.g\. 2\)"):
        assert_patient_disjoint(pd.DataFrame({"patient_id": [1, 2, 2]}), [2, 3], names=["train", "val"])


def test_official_split_from_lists_and_from_a_column():
    table = pd.DataFrame({"image": ["a.png", "b.png", "c.png", "d.png"], "patient_id": [1, 1, 2, 3]})
    split = official_split(table, train_val=["a.png", "b.png", "x.png"], test=["c.png"])
    assert split.tolist() == ["train_val", "train_val", "test", ""]
    assert official_split(table.assign(split=split)).tolist() == split.tolist()
    with pytest.raises(PatientOverlapError):
        official_split(table, train_val=["a.png"], test=["b.png"])  # patient 1 on both sides
    with pytest.raises(CxrError, match="in both train_val_list.txt and test_list.txt"):
        official_split(table, train_val=["a.png", "c.png"], test=["c.png"])
    with pytest.raises(CxrError, match="unknown split values"):
        official_split(table.assign(split=["train", "", "", ""]))
    with pytest.raises(CxrError, match="no 'split' column"):
        official_split(table)


@pytest.mark.parametrize("ratios", [(0.5, 0.6), (1.0,), (0.5, 0.5, 0.0), (1.2, -0.2)])
def test_bad_ratios_are_rejected(ratios):
    with pytest.raises(CxrError, match="ratios"):
        ratio_split(make_table(0, 10, 2), ratios)


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_bad_fraction_is_rejected(fraction):
    with pytest.raises(CxrError, match="fraction"):
        carve_validation(make_table(0, 10, 2), fraction=fraction)
