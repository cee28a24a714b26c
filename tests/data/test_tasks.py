"""Tasks: rows, patient-wise splits and training-set sampling for every preset, on a store."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr.config import available_experiments, load_config
from cxr.data.tasks import build_split, seed_resampling_targets, targets
from cxr.errors import CxrError
from cxr.labels import ANY_FINDING, LABELS, NO_FINDING

PRESETS = [
    "binary-fibrosis",
    "binary-finding",
    "chexnet",
    "demo",
    "disease-only",
    "finetune-eva-x-small",
    "finetune-mae-vit-small",
    "modern-224",
    "modern-512",
    "multilabel-adam",
    "multilabel-balanced",
    "multilabel-sgd",
]


@pytest.fixture(scope="module")
def store_index(synth_store) -> pd.DataFrame:
    from cxr.data.store import Store

    return Store(synth_store).index


def test_every_preset_is_listed():
    assert available_experiments() == PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds_a_leak_free_split(preset, store_index):
    task = load_config(preset).task
    split = build_split(store_index, task)
    parts = {part: split.table.loc[split.rows(part)] for part in ("train", "val", "test")}
    for part, rows in parts.items():
        assert len(rows), part
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not set(parts[a]["image"]) & set(parts[b]["image"]), (a, b)
        assert not set(parts[a]["patient_id"]) & set(parts[b]["patient_id"]), (a, b)
    if task.drop_blacklisted:
        assert not split.table["blacklisted"].any()
    if task.drop_no_finding:
        assert (split.table[NO_FINDING] == 0).all()
    saved = split.split_table()
    assert list(saved.columns) == ["image", "patient_id", "part"] and not saved["image"].duplicated().any()
    if task.split == "official":  # the official test list is the test part, whole
        expected = set(store_index.loc[store_index["split"] == "test", "image"])
        if task.drop_blacklisted:
            expected -= set(store_index.loc[store_index["blacklisted"], "image"])
        assert set(parts["test"]["image"]) == expected


def test_seed_resampling_matches_the_seed_rule_scaled(store_index):
    split = build_split(store_index, load_config("multilabel-balanced").task)
    train = split.table[split.table["part"] == "train"]
    drawn = split.table.loc[split.rows("train")]
    class_targets, no_finding_target = seed_resampling_targets(len(train))
    scale = len(train) / 85690
    assert class_targets["Fibrosis"] == max(1, round(3500 * scale))
    assert class_targets["Hernia"] == max(1, round(2500 * scale))
    assert no_finding_target == max(1, round(35000 * scale))
    rare = list(class_targets)
    # Images holding none of the rare findings and not "No Finding" are kept exactly once.
    others = train[~train[rare].any(axis=1) & (train[NO_FINDING] == 0)]
    counts = drawn["image"].value_counts()
    assert (counts.reindex(others["image"]) == 1).all()
    pure = drawn[drawn[NO_FINDING] == 1]
    assert len(pure) == min(no_finding_target, int(train[NO_FINDING].sum()))
    assert not pure["image"].duplicated().any()  # drawn without replacement
    # Every rare-finding draw comes from that finding's pool: total rows = sum of class targets + pure + others.
    assert len(drawn) == sum(class_targets.values()) + len(pure) + len(others)
    assert set(drawn["image"]) <= set(train["image"])  # only the training part is resampled


def test_binary_tasks_balance_the_training_part(store_index):
    for preset, target in [("binary-fibrosis", "Fibrosis"), ("binary-finding", ANY_FINDING)]:
        split = build_split(store_index, load_config(preset).task)
        assert split.outputs == [target]
        train = split.table[split.table["part"] == "train"]
        y_all = targets(train, split.outputs)[:, 0]
        y = targets(split.table.loc[split.rows("train")], split.outputs)[:, 0]
        minority = int(min(y_all.sum(), len(y_all) - y_all.sum()))
        assert y.sum() == minority and len(y) == 2 * minority
        assert not split.table.loc[split.rows("train"), "image"].duplicated().any()


def test_targets_of_any_finding_and_findings(store_index):
    y = targets(store_index, [ANY_FINDING, "Mass"])
    assert np.array_equal(y[:, 0], 1 - store_index[NO_FINDING].to_numpy())
    assert np.array_equal(y[:, 1], store_index["Mass"].to_numpy())
    assert set(LABELS) <= set(store_index.columns)


def test_bad_tasks_are_user_errors(store_index):
    with pytest.raises(CxrError, match="task.target"):
        build_split(store_index, load_config(None, ["task.target=Pneumonitis"]).task)
    with pytest.raises(CxrError, match="binary task"):
        build_split(store_index, load_config(None, ["task.sampling=balanced"]).task)
