"""A dataset read by a reader, shaped for ``cxr prepare`` (a :class:`~cxr.data.store.StoreSource`: the metadata
table with unique ``image`` keys, the image files found on disk, boxes) with the common vocabulary's index columns.
A reader whose store needs another shape (NIH's own labels) or none (Google's labels of NIH images) says so with its
own ``Reader.store``.

The index of such a store has the common vocabulary's labels as float32 columns, NaN where the dataset cannot
provide a label (NIH stores keep their uint8 columns). The split is the dataset's official one when it has both a
training and a test part (CheXpert ``train``/``valid``, MIMIC ``train``+``validate``/``test``), else a seeded
patient-wise split (each image its own patient where the dataset names none); ``official_split`` keeps the
dataset's own word either way.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from cxr.data.attributes import harmonise_age, harmonise_sex
from cxr.data.datasets.base import LabelledDataset
from cxr.data.splits import assert_patient_disjoint
from cxr.data.store import StoreSource
from cxr.errors import CxrError
from cxr.labels import COMMON_LABELS

INDEX_COLUMNS: tuple[str, ...] = (
    "image", "row", "patient_id", "split", "official_split", "blacklisted", "view", "sex", "age", "source_width",
    "source_height", *COMMON_LABELS,
)  # fmt: skip
"""index.parquet of a store prepared from a non-NIH dataset (``image`` is the path relative to the folder;
``blacklisted`` is False throughout, kept so that NIH's task filters apply unchanged; ``sex`` ``F``/``M``/``""`` and
``age`` in years or NaN, harmonised by :mod:`cxr.data.attributes` for subgroup evaluation)."""

OFFICIAL = {"train": "train_val", "validate": "train_val", "valid": "test", "test": "test"}
"""Official split names -> the store's ``train_val`` / ``test``."""


def seeded_split(patients: pd.Series, test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """``train_val``/``test`` per row, whole patients on one side, about ``test_fraction`` of the images in test."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(pd.unique(patients))
    sizes = patients.value_counts().reindex(order).to_numpy()
    in_test = set(order[np.cumsum(sizes) <= round(test_fraction * len(patients))])
    return np.where(patients.isin(in_test), "test", "train_val")


def store_source(dataset: LabelledDataset, seed: int = 0, test_fraction: float = 0.2) -> StoreSource:
    """Shape a read dataset for ``cxr prepare``; only images present on disk will get store rows."""
    images = dataset.images
    official = images["split"].astype(str)
    mapped = official.map(OFFICIAL)
    patients = images["patient_id"].where(images["patient_id"] != "", images["image"]) if dataset.patients_known \
        else images["image"]  # fmt: skip
    if mapped.notna().all() and {"train_val", "test"} <= set(mapped):
        split = mapped.to_numpy()
    else:
        split = seeded_split(patients, test_fraction, seed)
    assert_patient_disjoint(patients[split == "train_val"], patients[split == "test"], names=["train_val", "test"])
    metadata = pd.DataFrame({
        "image": images["image"].astype(str), "patient_id": patients.astype(str), "split": split,
        "official_split": official, "blacklisted": False, "view": images["view"].astype(str),
        "sex": harmonise_sex(images["sex"] if "sex" in images else pd.Series("", index=images.index)).to_numpy(),
        "age": harmonise_age(images["age"] if "age" in images else pd.Series(np.nan, index=images.index)).to_numpy(),
    })  # fmt: skip
    metadata = pd.concat([metadata, dataset.harmonised.astype("float32")], axis=1)
    repeated = metadata["image"][metadata["image"].duplicated()]
    if len(repeated):
        raise CxrError(f"{dataset.root}: image {repeated.iat[0]!r} is listed twice")
    found = {name: dataset.root / name for name in metadata["image"] if os.path.isfile(dataset.root / name)}
    files = {"metadata": next(path for path in dataset.files.values() if path)} | dict(dataset.files)
    files["boxes"] = None
    return StoreSource(dataset.name, dataset.root, metadata, found, files, INDEX_COLUMNS, dataset.boxes)
