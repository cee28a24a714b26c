"""VinDr-CXR (Nguyen et al., "VinDr-CXR: An open dataset of chest X-rays with radiologist's annotations",
Scientific Data 2022), as released for the Kaggle VinBigData challenge: ``train.csv`` with
``image_id, class_name, class_id, rad_id, x_min, y_min, x_max, y_max`` and DICOMs ``train/<image_id>.dicom``.

One row per box (or per "No finding" vote), three radiologists per training image. An image is positive for a
class when any radiologist marked it; "No finding" is 1 only when no radiologist marked any class. Every box is
kept (in the DICOM's pixels, with the radiologist's id) for localisation. The file names no patients.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.base import (
    LabelledDataset,
    Mapping,
    ReadOptions,
    candidates,
    fail_at,
    finish,
    parse_numbers,
    read_csv,
    read_header,
    require_file,
)
from cxr.data.datasets.reader import Reader

NO_FINDING = "No finding"
CLASSES: tuple[str, ...] = (
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    NO_FINDING,
)
"""The 14 local findings of the challenge (``class_id`` 0-13, here alphabetical) and "No finding" (14)."""

MAPPING: Mapping = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Infiltration": ("Infiltration",),
    "Lung Opacity": ("Lung Opacity",),
    "Nodule/Mass": ("Lung Lesion",),
    "Pleural effusion": ("Effusion",),
    "Pleural thickening": ("Pleural_Thickening",),
    "Pneumothorax": ("Pneumothorax",),
    "Pulmonary fibrosis": ("Fibrosis",),
    NO_FINDING: ("No Finding",),
}
"""VinDr -> common vocabulary. Nodule/Mass cannot be split into NIH's Nodule and Mass: it provides Lung Lesion (the
CheXpert label for nodule or mass). Aortic enlargement, Calcification, ILD and Other lesion map to nothing."""

FILE_NAMES = ("train.csv",)
COLUMNS = ("image_id", "class_name", "rad_id")
_BOX = ("x_min", "y_min", "x_max", "y_max")


def detect(root: Path) -> bool:
    return any({"image_id", "class_name", "rad_id"} <= set(read_header(p)) for p in candidates(root, FILE_NAMES))


def _boxes(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    findings = table[table["class_name"] != NO_FINDING]
    if not all(column in table.columns for column in _BOX):
        return pd.DataFrame(columns=["image", "finding", "reader", "x", "y", "w", "h"])
    corners = {c: parse_numbers(path, findings[c], c).astype("float64") for c in _BOX}
    for column, values in corners.items():
        fail_at(path, findings[column], values.isna(), column, lambda v: f"a finding needs a box; {v!r} is empty")
    return pd.DataFrame({
        "image": "train/" + findings["image_id"] + ".dicom", "finding": findings["class_name"],
        "reader": findings["rad_id"],
        "x": corners["x_min"], "y": corners["y_min"], "w": corners["x_max"] - corners["x_min"],
        "h": corners["y_max"] - corners["y_min"],
    }).reset_index(drop=True)  # fmt: skip


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    path = require_file(root, FILE_NAMES, "VinDr-CXR")
    table = read_csv(path, COLUMNS)
    fail_at(path, table["image_id"], table["image_id"] == "", "image_id", lambda v: "empty image id")
    fail_at(path, table["class_name"], ~table["class_name"].isin(CLASSES), "class_name",
            lambda v: f"unknown class {v!r} (known: {', '.join(CLASSES)})")  # fmt: skip
    ids, order = pd.factorize(table["image_id"])  # images in order of first appearance
    marked = np.zeros((len(order), len(CLASSES)), dtype=np.float32)
    marked[ids, table["class_name"].map({name: k for k, name in enumerate(CLASSES)}).to_numpy()] = 1.0
    labels = pd.DataFrame(marked, columns=list(CLASSES))
    labels[NO_FINDING] = (labels.drop(columns=NO_FINDING).sum(axis=1) == 0).astype("float32")
    readers = table.groupby(ids)["rad_id"].nunique().to_numpy()
    images = pd.DataFrame({
        "image": "train/" + pd.Series(order) + ".dicom", "patient_id": "", "view": "", "split": "train",
        "image_id": order, "readers": readers,
    })  # fmt: skip
    return finish("vindr", root, {"metadata": path}, images, labels, MAPPING, boxes=_boxes(path, table),
                  patients_known=False)  # fmt: skip


READER = Reader(
    "vindr", "VinDr-CXR", detect, read, MAPPING, fixture="vindr",
    description="15,000 training images, 22 local and 6 global labels by 3 radiologists each, with boxes "
    "(Nguyen et al., Sci. Data 2022)",
)  # fmt: skip
