"""``cxr synth --layout chexpert``: the synthetic cohort written as CheXpert ships its data, read back by the
CheXpert reader, its labels following the drawn signs, and prepared into a store with the official split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data.datasets import ReadOptions, detect_dataset, read_dataset
from cxr.data.prepare import prepare_store
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.synth import generate
from cxr.synth.cohort import plan_cohort
from cxr.synth.dataset import render_record
from cxr.synth.layouts import CHEXPERT_FROM_SIGNS, chexpert_path

IMAGES, SIZE, SEED = 48, 48, 7


@pytest.fixture(scope="module")
def chexpert_synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "CheXpert-v1.0-small"
    result = CliRunner().invoke(app, ["synth", str(out), "--images", str(IMAGES), "--size", str(SIZE), "--seed",
                                      str(SEED), "--layout", "chexpert", "--workers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return out


def test_layout_is_read_as_chexpert(chexpert_synth):
    assert detect_dataset(chexpert_synth) == "chexpert"
    dataset = read_dataset(chexpert_synth, options=ReadOptions(uncertainty="ones"))
    records = plan_cohort(IMAGES, SEED)
    by_path = {chexpert_path(record): record for record in records}
    assert sorted(dataset.images["image"]) == sorted(by_path)
    assert all((chexpert_synth / image).is_file() for image in dataset.images["image"])
    for k, image in enumerate(dataset.images["image"]):
        record = by_path[image]
        assert dataset.images["split"].iat[k] == {"train_val": "train", "test": "valid"}[record.split]
        positive = {column for sign in record.findings for column in CHEXPERT_FROM_SIGNS.get(sign, ())}
        for column in ("Cardiomegaly", "Pleural Effusion", "Lung Lesion", "Atelectasis"):
            value = dataset.labels[column].iat[k]
            assert (value == 1.0) == (column in positive), (image, column)  # "ones": uncertain counts as positive
        assert (dataset.labels["No Finding"].iat[k] == 1.0) == (not record.findings)
    assert dataset.labels[["Pleural Effusion", "Lung Lesion", "Atelectasis"]].eq(1.0).any().all()
    assert dataset.uncertain.to_numpy().any() and dataset.labels.isna().to_numpy().any()  # the quirks are there
    # signs CheXpert has no column for stay unlabelled in the common vocabulary
    assert dataset.harmonised["Emphysema"].isna().all() and dataset.harmonised["Hernia"].isna().all()


def test_pixels_are_the_cohort_render(chexpert_synth):
    record = plan_cohort(IMAGES, SEED)[5]
    rendered, _ = render_record(record, SIZE, SEED)
    written = np.asarray(Image.open(chexpert_synth / chexpert_path(record)).convert("L"), dtype=float)
    assert written.shape == rendered.shape and np.abs(written - rendered).mean() < 3  # JPEG, quality 95


def test_same_seed_same_tables_and_bad_layout(chexpert_synth, tmp_path):
    again = generate(tmp_path / "again", images=IMAGES, size=SIZE, seed=SEED, workers=1, layout="chexpert")
    for name in ("train.csv", "valid.csv"):
        assert (again / name).read_bytes() == (chexpert_synth / name).read_bytes()
    with pytest.raises(CxrError, match="--layout must be one of nih, chexpert"):
        generate(tmp_path / "bad", images=4, size=SIZE, layout="mimic")


def test_prepared_with_the_official_split(chexpert_synth, tmp_path):
    manifest = prepare_store(chexpert_synth, tmp_path / "store", size=32, crop=1.0, workers=1, progress=False)
    index = Store(tmp_path / "store").index
    assert manifest.dataset == "chexpert" and len(index) == IMAGES
    official = pd.Series(index["official_split"]).map({"train": "train_val", "valid": "test"})
    assert (index["split"] == official).all() and set(index["split"]) == {"train_val", "test"}
    assert index["Fibrosis"].isna().all() and set(index["Cardiomegaly"].dropna()) <= {0.0, 1.0}
    # the uncertainty policy reaches the store: "ones" turns the uncertain cells' NaN into 1
    ones = prepare_store(chexpert_synth, tmp_path / "ones", size=32, crop=1.0, workers=1, progress=False,
                         uncertainty="ones")  # fmt: skip
    assert ones.params.uncertainty == "ones"
    flipped = Store(tmp_path / "ones").index
    dataset = read_dataset(chexpert_synth)
    uncertain = dataset.uncertain["Atelectasis"].to_numpy()
    by_image = flipped.set_index("image").loc[dataset.images["image"], "Atelectasis"].to_numpy()
    assert uncertain.any() and (by_image[uncertain] == 1.0).all()
    ignored = index.set_index("image").loc[dataset.images["image"], "Atelectasis"].to_numpy()
    assert np.isnan(ignored[uncertain]).all()  # the default, "ignore": missing, not negative
    with pytest.raises(CxrError, match="--uncertainty must be"):
        prepare_store(chexpert_synth, tmp_path / "bad", size=32, workers=1, progress=False, uncertainty="half")
