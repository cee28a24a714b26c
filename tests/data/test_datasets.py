"""Dataset readers beyond NIH: detection, each dataset's quirks and errors on excerpts of the real files
(``tests/fixtures/<dataset>/``), the common vocabulary, ``cxr inspect``, and the checked figures on the complete files
of the torchxrayvision wheel (skipped when it was not downloaded)."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data.datasets import (
    READERS,
    ReadOptions,
    chexpert,
    detect_dataset,
    google,
    padchest,
    read_dataset,
    vindr,
)
from cxr.data.datasets import summarize as summary_of
from cxr.errors import CxrError, InputFormatError
from cxr.labels import COMMON_LABELS, FINDINGS

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "fixtures"
EXCERPTS = tuple(reader.fixture for reader in READERS.values())
"""Every reader's fixture folder (tests/data/test_readers.py checks each reader has one)."""


def summarize(dataset) -> dict:
    return summary_of(dataset).to_dict()


def copy_excerpt(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / name
    shutil.copytree(DATA / name, folder)
    return folder


def edit_cell(path: Path, line: int, column: str, value: str) -> None:
    """Set one cell of a CSV (1-based line, header = line 1), rewriting the file with the csv module."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header = [cell.strip() for cell in rows[0]]
    rows[line - 1][header.index(column)] = value
    with open(path, "w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


@pytest.mark.parametrize("name", list(READERS))
def test_detected_from_files(name):
    assert detect_dataset(DATA / READERS[name].fixture) == name


def test_detection_errors(tmp_path, sample_dir):
    with pytest.raises(CxrError, match="no known dataset"):
        detect_dataset(tmp_path)
    mixed = copy_excerpt("padchest", tmp_path)
    shutil.copy(DATA / "siim" / "train-rle.csv", mixed)
    with pytest.raises(CxrError, match=r"several datasets \(padchest, siim\).*--dataset"):
        detect_dataset(mixed)
    assert read_dataset(mixed, "siim").name == "siim"
    with pytest.raises(CxrError, match="unknown dataset 'chexpert2'"):
        read_dataset(mixed, "chexpert2")
    # A label set next to NIH's metadata does not make an NIH folder ambiguous: the dataset wins.
    nih = tmp_path / "nih"
    nih.mkdir()
    shutil.copy(sample_dir / "Data_Entry_2017.csv", nih)
    shutil.copy(DATA / "google2019" / "google2019_nih-chest-xray-labels.csv", nih)
    assert detect_dataset(nih) == "nih"
    # VinDr's train.csv is told from CheXpert's by its columns, not its name.
    assert not chexpert.detect(DATA / "vindr") and not vindr.detect(DATA / "chexpert")


def test_common_vocabulary_and_mappings():
    assert COMMON_LABELS[: len(FINDINGS)] == FINDINGS  # an NIH model's outputs are a prefix
    assert len(set(COMMON_LABELS)) == len(COMMON_LABELS)
    assert {"Lung Opacity", "Lung Lesion", "Fracture", "Support Devices", "Enlarged Cardiomediastinum"} <= set(
        COMMON_LABELS
    )
    for reader in READERS.values():
        for source, targets in reader.mapping.items():
            assert set(targets) <= set(COMMON_LABELS), (reader.name, source)
    assert set(chexpert.MAPPING) <= set(chexpert.LABELS)
    assert set(vindr.MAPPING) <= set(vindr.CLASSES)
    assert set(google.MAPPING) == set(google.LABELS)


@pytest.mark.parametrize("name", EXCERPTS)
def test_aligned_tables_and_missing_is_nan(name):
    dataset = read_dataset(DATA / name)
    n = len(dataset.images)
    assert list(dataset.images.columns[:4]) == ["image", "patient_id", "view", "split"]
    assert len(dataset.labels) == len(dataset.harmonised) == n > 0
    assert list(dataset.harmonised.columns) == list(COMMON_LABELS)
    assert dataset.labels.dtypes.eq(np.float32).all() and dataset.harmonised.dtypes.eq(np.float32).all()
    values = dataset.harmonised.to_numpy()
    assert np.isin(values[~np.isnan(values)], [0.0, 1.0]).all()
    # A common label no own label maps to is NaN on every row, never 0.
    mapped = {target for targets in dataset.mapping.values() for target in targets}
    for label in COMMON_LABELS:
        if label not in mapped:
            assert dataset.harmonised[label].isna().all(), label
    table = dataset.table()
    assert len(table) == n and f"own:{dataset.labels.columns[0]}" in table.columns


def raw_chexpert() -> pd.DataFrame:
    return pd.read_csv(DATA / "chexpert" / "train.csv")


@pytest.mark.parametrize(("policy", "uncertain_as"), [("ones", 1.0), ("zeros", 0.0), ("ignore", np.nan)])
def test_chexpert_uncertainty_policy(policy, uncertain_as):
    raw = raw_chexpert()
    dataset = read_dataset(DATA / "chexpert", options=ReadOptions(uncertainty=policy))
    for label in chexpert.LABELS:
        expected = raw[label].replace(-1.0, uncertain_as).to_numpy(np.float32)
        np.testing.assert_array_equal(dataset.labels[label].to_numpy(), expected, err_msg=label)
        np.testing.assert_array_equal(dataset.uncertain[label].to_numpy(), (raw[label] == -1.0).to_numpy())
    assert dataset.labels.isna().any().any()  # blanks stay NaN under every policy
    np.testing.assert_array_equal(dataset.harmonised["Effusion"], dataset.labels["Pleural Effusion"])
    assert dataset.harmonised["Emphysema"].isna().all()


def test_chexpert_paths_patients_views():
    raw = raw_chexpert()
    dataset = read_dataset(DATA / "chexpert")
    images = dataset.images
    assert images["image"].iloc[0] == "train/patient00001/study1/view1_frontal.jpg"
    assert (images["image"] == raw["Path"].str.split("/", n=1).str[1]).all()
    assert (images["patient_id"] == raw["Path"].str.split("/").str[2]).all()
    lateral = raw["Frontal/Lateral"] == "Lateral"
    assert (images.loc[lateral, "view"] == raw.loc[lateral, "AP/PA"].fillna("Lateral")).all()
    assert (images.loc[~lateral, "view"] == raw.loc[~lateral, "AP/PA"]).all()
    assert set(images["view"]) >= {"AP", "PA", "Lateral", "LL", "RL"}
    assert (images["frontal"] == ~lateral).all()


@pytest.mark.parametrize(
    ("line", "column", "value", "message"),
    [
        (5, "Cardiomegaly", "2.0", "'2.0' is not one of -1.0, 0.0, 1.0 or empty"),
        (7, "Edema", "yes", "'yes' is not one of"),
        (3, "Path", "CheXpert-v1.0-small/train/study1/view1_frontal.jpg", "names no patientNNNNN"),
        (4, "Frontal/Lateral", "Oblique", "'Oblique' is not Frontal or Lateral"),
    ],
)
def test_chexpert_errors_name_line_and_column(tmp_path, line, column, value, message):
    folder = copy_excerpt("chexpert", tmp_path)
    edit_cell(folder / "train.csv", line, column, value)
    with pytest.raises(InputFormatError, match=message) as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert caught.value.path.endswith("train.csv")


def test_missing_column_and_duplicate(tmp_path):
    folder = copy_excerpt("chexpert", tmp_path)
    lines = (folder / "train.csv").read_text().splitlines()
    (folder / "train.csv").write_text("\n".join([lines[0].replace(",Edema", ",Oedema")] + lines[1:]) + "\n")
    with pytest.raises(InputFormatError, match="missing column") as caught:
        read_dataset(folder, "chexpert")
    assert (caught.value.line, caught.value.column) == (1, "Edema")
    (folder / "train.csv").write_text("\n".join([*lines, lines[2]]) + "\n")
    with pytest.raises(InputFormatError, match="first on line 3") as caught:
        read_dataset(folder)
    assert caught.value.line == len(lines) + 1


def test_padchest_rejects_unparsable_labels_and_strips_spaces():
    path = DATA / "padchest" / padchest.FILE_NAMES[0]
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    bad_lines = [number for number, row in enumerate(rows, start=2) if row["Labels"] == "nan"]
    assert len(bad_lines) == 3
    dataset = read_dataset(DATA / "padchest")
    assert dataset.rejects["line"].tolist() == bad_lines
    assert dataset.rejects["reason"].str.contains("not a list").all()
    assert len(dataset.images) == len(rows) - 3
    assert all(name == name.strip() and name for name in dataset.labels.columns)
    assert any(" " + name in row["Labels"] for row in rows for name in dataset.labels.columns)  # there were spaces
    good = [row for row in rows if row["Labels"] != "nan"]
    assert dataset.images["image"].tolist() == [f"{row['ImageDir']}/{row['ImageID']}" for row in good]
    assert dataset.images["view"].tolist() == [row["Projection"] for row in good]
    for k, row in enumerate(good):
        names = {item.strip() for item in eval(row["Labels"]) if item.strip()}  # noqa: S307 - test-side oracle
        assert set(dataset.labels.columns[dataset.labels.iloc[k] == 1]) == names
    effusion = dataset.labels.get("pleural effusion", pd.Series(0.0, index=dataset.labels.index))
    np.testing.assert_array_equal(dataset.harmonised["Effusion"] == 1, effusion.to_numpy() == 1)
    assert dataset.harmonised["Lung Opacity"].isna().all()
    summary = summarize(dataset)
    assert summary["images"] == len(rows) and summary["usable"] == len(rows) - 3
    assert summary["patients"] == len({row["PatientID"] for row in rows})


def test_vindr_any_radiologist_and_boxes():
    raw = pd.read_csv(DATA / "vindr" / "train.csv")
    dataset = read_dataset(DATA / "vindr")
    assert dataset.images["image_id"].tolist() == list(pd.unique(raw["image_id"]))
    assert (dataset.images["readers"] == 3).all()
    for k, image in enumerate(dataset.images["image_id"]):
        marked = set(raw.loc[raw["image_id"] == image, "class_name"]) - {"No finding"}
        positive = set(dataset.labels.columns[dataset.labels.iloc[k] == 1]) - {"No finding"}
        assert positive == marked
        assert dataset.labels.at[k, "No finding"] == float(not marked)
    # the rule matters: some class was marked by only one of the three radiologists, and is positive
    readers = raw[raw["class_name"] != "No finding"].groupby(["image_id", "class_name"])["rad_id"].nunique()
    assert (readers == 1).any()
    findings = raw[raw["class_name"] != "No finding"]
    assert len(dataset.boxes) == len(findings)
    np.testing.assert_allclose(dataset.boxes["w"], (findings["x_max"] - findings["x_min"]).to_numpy())
    assert set(dataset.boxes["reader"]) <= set(raw["rad_id"])
    assert summarize(dataset)["patients"] is None
    assert dataset.harmonised["Nodule"].isna().all()
    np.testing.assert_array_equal(dataset.harmonised["Lung Lesion"], dataset.labels["Nodule/Mass"])


def test_vindr_errors(tmp_path):
    folder = copy_excerpt("vindr", tmp_path)
    edit_cell(folder / "train.csv", 4, "class_name", "Pneumonia")
    with pytest.raises(InputFormatError, match="unknown class 'Pneumonia'") as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (4, "class_name")


def test_google_expert_labels(tmp_path):
    raw = pd.read_csv(DATA / "google2019" / "google2019_nih-chest-xray-labels.csv")
    dataset = read_dataset(DATA / "google2019")
    for label in google.LABELS:
        np.testing.assert_array_equal(dataset.labels[label], (raw[label] == "YES").astype(np.float32))
    assert dataset.images["split"].tolist() == raw["Set Id"].tolist()
    assert dataset.images["image"].tolist() == raw["Image Index"].tolist()
    folder = copy_excerpt("google2019", tmp_path)
    edit_cell(folder / "google2019_nih-chest-xray-labels.csv", 6, "Pneumothorax", "MAYBE")
    with pytest.raises(InputFormatError, match="'MAYBE' is not YES or NO") as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (6, "Pneumothorax")


def test_rsna_boxes_classes_and_errors(tmp_path):
    raw = pd.read_csv(DATA / "rsna" / "stage_2_train_labels.csv")
    dataset = read_dataset(DATA / "rsna")
    per_image = raw.groupby("patientId", sort=False)["Target"].max()
    assert dataset.images["patient_id"].tolist() == per_image.index.tolist()
    np.testing.assert_array_equal(dataset.labels["Lung Opacity"], per_image.to_numpy(np.float32))
    assert dataset.images["image"].iloc[0] == f"stage_2_train_images/{per_image.index[0]}.dcm"
    assert len(dataset.boxes) == int(raw["Target"].sum()) and dataset.boxes.groupby("image").size().max() == 2
    np.testing.assert_array_equal(dataset.harmonised["Pneumonia"], dataset.labels["Lung Opacity"])
    assert dataset.harmonised["No Finding"].isna().all()  # without the class file
    folder = copy_excerpt("rsna", tmp_path)
    classes = ["Normal" if t == 0 and k % 2 else ("Lung Opacity" if t else "No Lung Opacity / Not Normal")
               for k, t in enumerate(per_image)]  # fmt: skip
    pd.DataFrame({"patientId": per_image.index, "class": classes}).to_csv(folder / "stage_2_detailed_class_info.csv",
                                                                          index=False)  # fmt: skip
    with_classes = read_dataset(folder)
    np.testing.assert_array_equal(with_classes.harmonised["No Finding"], [float(c == "Normal") for c in classes])
    positive_line = int(np.flatnonzero(raw["Target"] == 1)[0]) + 2
    edit_cell(folder / "stage_2_train_labels.csv", positive_line, "width", "")
    with pytest.raises(InputFormatError, match="Target 1 needs a box") as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (positive_line, "width")


def test_siim_masks_and_paths(tmp_path):
    raw = pd.read_csv(DATA / "siim" / "train-rle.csv")
    raw.columns = [c.strip() for c in raw.columns]
    folder = copy_excerpt("siim", tmp_path)
    first = raw["ImageId"].iloc[0]
    nested = folder / "dicom-images-train" / "1.2.3" / "4.5.6"
    nested.mkdir(parents=True)
    (nested / f"{first}.dcm").write_bytes(b"")
    dataset = read_dataset(folder)
    positive = raw.groupby("ImageId", sort=False)["EncodedPixels"].agg(lambda c: (c.str.strip() != "-1").any())
    np.testing.assert_array_equal(dataset.labels["Pneumothorax"], positive.to_numpy(np.float32))
    assert dataset.images["image"].iloc[0] == f"dicom-images-train/1.2.3/4.5.6/{first}.dcm"
    assert len(dataset.masks) == int((raw["EncodedPixels"].str.strip() != "-1").sum())
    assert dataset.masks.groupby("image").size().max() > 1  # an image with several masks is one positive row
    edit_cell(folder / "train-rle.csv", 3, "EncodedPixels", "12 5 7")
    with pytest.raises(InputFormatError, match="not -1 or start/length pairs") as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (3, "EncodedPixels")


def test_mimic_study_labels_split_and_views(tmp_path):
    dataset = read_dataset(DATA / "mimic", options=ReadOptions(uncertainty="ones"))
    images = dataset.images
    assert images["image"].iloc[0] == "files/p10/p10000032/s50414267/02aa804e-bde0afdd-112c0b34-7bc16630-4e384014.jpg"
    assert images["split"].tolist() == ["train"] * 4 + ["validate", "test"]
    assert images["view"].tolist() == ["PA", "LATERAL", "PA", "LATERAL", "AP", "PA"]
    # both images of study 53189527 carry its labels; Edema -1.0 becomes 1 under "ones"
    assert dataset.labels.loc[[2, 3], "Edema"].tolist() == [1.0, 1.0]
    assert dataset.uncertain.loc[[2, 3], "Edema"].all()
    assert dataset.labels.loc[5].isna().all() and not images["labelled"].iloc[5]  # a study without labels
    assert read_dataset(DATA / "mimic").labels.loc[2, "Edema"] != read_dataset(DATA / "mimic").labels.loc[2, "Edema"]
    folder = copy_excerpt("mimic", tmp_path)
    edit_cell(folder / "mimic-cxr-2.0.0-split.csv", 4, "split", "valid")
    with pytest.raises(InputFormatError, match="'valid' is not one of train, validate, test") as caught:
        read_dataset(folder)
    assert (caught.value.line, caught.value.column) == (4, "split")


def test_inspect_cli(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(DATA / "chexpert"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    raw = raw_chexpert()
    assert summary["dataset"] == "chexpert" and summary["images"] == len(raw)
    assert summary["findings"]["Cardiomegaly"] == int((raw["Cardiomegaly"] == 1).sum())
    assert summary["uncertain"]["Consolidation"] == int((raw["Consolidation"] == -1).sum())
    assert summary["harmonised"]["Hernia"] is None and "Hernia" in summary["not_available"]
    assert summary["harmonised"]["Effusion"] == int((raw["Pleural Effusion"] == 1).sum())
    table = runner.invoke(app, ["inspect", str(DATA / "vindr")])
    assert table.exit_code == 0 and "Nodule/Mass" in table.output and "not available" in table.output
    forced = runner.invoke(app, ["inspect", str(DATA / "padchest"), "--dataset", "vindr"])
    assert isinstance(forced.exception, CxrError) and "no VinDr-CXR metadata" in str(forced.exception)
    nih = runner.invoke(app, ["inspect", str(DATA / "nih-sample"), "--json"])
    nih_summary = json.loads(nih.output)
    assert nih_summary["dataset"] == "nih" and nih_summary["harmonised"]["Fracture"] is None


def _wheel() -> Path | None:
    wheels = sorted((REPO / ".venv" / "wheels").glob("torchxrayvision-*.whl"))
    return wheels[-1] if wheels else None


needs_wheel = pytest.mark.skipif(
    _wheel() is None, reason="torchxrayvision wheel not downloaded (make venv puts it in .venv/wheels)"
)


def from_wheel(tmp_path: Path, member: str, name: str) -> Path:
    """A folder holding one metadata file of the wheel under the name the dataset's release uses."""
    folder = tmp_path / name.split(".")[0]
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(_wheel()) as wheel:
        (folder / name).write_bytes(wheel.read(f"torchxrayvision/data/{member}"))
    return folder


@needs_wheel
def test_checked_figures_chexpert(tmp_path):
    summary = summarize(read_dataset(from_wheel(tmp_path, "chexpert_train.csv.gz", "train.csv.gz")))
    assert (summary["dataset"], summary["images"], summary["patients"]) == ("chexpert", 223_414, 64_540)
    assert (summary["findings"]["Cardiomegaly"], summary["uncertain"]["Cardiomegaly"]) == (27_000, 8_087)


@needs_wheel
def test_checked_figures_padchest(tmp_path):
    name = padchest.FILE_NAMES[0] + ".gz"
    summary = summarize(read_dataset(from_wheel(tmp_path, name, name)))
    assert (summary["dataset"], summary["images"], summary["patients"]) == ("padchest", 160_861, 67_625)
    assert summary["rejects"]["count"] == 103 and summary["usable"] == 160_861 - 103
    assert {"PA", "L", "AP", "AP_horizontal", "COSTAL", "EXCLUDE", "UNK"} == set(summary["views"])


@needs_wheel
def test_checked_figures_vindr_google_rsna_siim(tmp_path):
    vindr_summary = summarize(read_dataset(from_wheel(tmp_path, "vinbigdata-train.csv.gz", "train.csv.gz")))
    assert (vindr_summary["dataset"], vindr_summary["images"]) == ("vindr", 15_000)
    member = "google2019_nih-chest-xray-labels.csv.gz"
    expert = summarize(read_dataset(from_wheel(tmp_path, member, member)))
    assert (expert["images"], expert["split"]) == (4_376, {"test": 1_962, "val": 2_414})
    rsna = summarize(read_dataset(from_wheel(tmp_path, "kaggle_stage_2_train_labels.csv.zip",
                                             "stage_2_train_labels.csv.zip")))  # fmt: skip
    assert (rsna["images"], rsna["findings"]["Lung Opacity"]) == (26_684, 6_012)
    siim = summarize(read_dataset(from_wheel(tmp_path, "siim-pneumothorax-train-rle.csv.gz", "train-rle.csv.gz")))
    assert (siim["images"], siim["findings"]["Pneumothorax"]) == (12_047, 2_669)
