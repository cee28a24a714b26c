"""``cxr prepare`` on datasets other than NIH: PadChest's 16-bit PNGs and RSNA's DICOMs (generated at the paths the
real metadata excerpts list) become the same store, with the common labels NaN where the dataset cannot give them,
a patient-wise split, the boxes, and the dataset named in the manifest."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data.datasets import read_dataset
from cxr.data.datasets.source import INDEX_COLUMNS, seeded_split
from cxr.data.prepare import prepare_store
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.imaging.decode import load
from cxr.labels import COMMON_LABELS
from source_images import gradient, write_dicom

DATA = Path(__file__).resolve().parents[1] / "fixtures"


@pytest.fixture
def padchest_folder(tmp_path) -> Path:
    folder = tmp_path / "padchest"
    shutil.copytree(DATA / "padchest", folder)
    for k, image in enumerate(read_dataset(folder).images["image"]):
        if k == 2:
            continue  # one listed image missing on disk
        (folder / image).parent.mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(folder / image), gradient(k))
    return folder


def test_padchest_16bit_store(padchest_folder, tmp_path):
    dataset = read_dataset(padchest_folder)
    manifest = prepare_store(padchest_folder, tmp_path / "store", size=32, crop=1.0, workers=1, progress=False)
    store = Store(tmp_path / "store")
    index = store.index
    assert manifest.dataset == "padchest" and manifest.counts.missing == 1
    assert list(index.columns) == list(INDEX_COLUMNS)
    assert len(index) == len(dataset.images) - 1
    assert index[list(COMMON_LABELS)].dtypes.eq(np.float32).all()
    assert index["Lung Opacity"].isna().all()  # PadChest cannot provide it: missing, not negative
    expected = dataset.harmonised.set_index(dataset.images["image"]).loc[index["image"]]
    np.testing.assert_array_equal(index[list(COMMON_LABELS)].to_numpy(), expected.to_numpy())
    for _, row in index.iloc[:3].iterrows():  # the pixels are the one decode path's, 16 bits mapped by range
        np.testing.assert_array_equal(store.image(row["row"]), load(padchest_folder / row["image"], 32, 1.0))
    assert store.image(index["row"].iat[0]).max() == 255
    train, test = index[index["split"] == "train_val"], index[index["split"] == "test"]
    assert len(test) and len(train) and not set(train["patient_id"]) & set(test["patient_id"])
    rejects = pd.read_csv(tmp_path / "store" / "rejects.csv")
    assert rejects["reason"].str.startswith("missing").tolist() == [True]


def test_rsna_dicom_store_with_boxes(tmp_path):
    folder = tmp_path / "rsna"
    shutil.copytree(DATA / "rsna", folder)
    dataset = read_dataset(folder)
    for k, image in enumerate(dataset.images["image"]):
        write_dicom(folder / image, gradient(k, 96, 96))
    result = CliRunner().invoke(app, ["prepare", str(folder), "--out", str(tmp_path / "store"), "--size", "32",
                                      "--crop", "1.0", "--workers", "1", "--seed", "3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    store = Store(tmp_path / "store")
    assert store.manifest.dataset == "rsna" and store.manifest.params.seed == 3
    index = store.index
    assert len(index) == len(dataset.images)
    np.testing.assert_array_equal(index["Pneumonia"], dataset.labels["Lung Opacity"])
    assert index["Cardiomegaly"].isna().all()
    np.testing.assert_array_equal(store.image(0), load(folder / index["image"].iat[0], 32, 1.0))
    boxes = store.boxes()
    assert len(boxes) == len(dataset.boxes) and (boxes["w"] <= 32).all()
    assert set(index.loc[index["row"].isin(boxes["row"]), "Lung Opacity"]) == {1.0}


def test_official_and_seeded_splits(tmp_path):
    from cxr.data.datasets.source import store_source

    chexpert = read_dataset(DATA / "chexpert")
    chexpert.images.loc[chexpert.images.index[-3:], "split"] = "valid"
    chexpert.images.loc[chexpert.images["patient_id"].isin(chexpert.images["patient_id"].iloc[-3:]), "split"] = "valid"
    source = store_source(chexpert)
    assert (source.metadata["split"] == source.metadata["official_split"].map({"train": "train_val",
                                                                                "valid": "test"})).all()  # fmt: skip
    patients = pd.Series([f"p{k // 3}" for k in range(300)])
    first, again, other = seeded_split(patients), seeded_split(patients), seeded_split(patients, seed=1)
    assert (first == again).all() and (first != other).any()
    assert 0.15 < (first == "test").mean() <= 0.2
    assert not set(patients[first == "test"]) & set(patients[first == "train_val"])
    with pytest.raises(CxrError, match="describe NIH images"):
        prepare_store(DATA / "google2019", tmp_path / "store", size=32, workers=1, progress=False)
