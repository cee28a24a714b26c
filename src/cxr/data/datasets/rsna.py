"""RSNA Pneumonia Detection Challenge (Shih et al., "Augmenting the National Institutes of Health chest radiograph
dataset with expert annotations of possible pneumonia", Radiology: AI 2019): ``stage_2_train_labels.csv`` (Kaggle
ships it zipped too), optional ``stage_2_detailed_class_info.csv``, DICOMs ``stage_2_train_images/<patientId>.dcm``.

One row per box: ``patientId, x, y, width, height, Target``; ``Target`` 1 rows carry a box (a lung opacity
suggestive of pneumonia), ``Target`` 0 rows none. The challenge's ``patientId`` names one image; it is kept as the
patient id, as the challenge defines it. With the detailed class info, "Normal" images give No Finding.
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
)
from cxr.data.datasets.reader import Reader
from cxr.errors import CxrError, InputFormatError

LABELS_FILE = "stage_2_train_labels.csv"
CLASS_FILE = "stage_2_detailed_class_info.csv"
COLUMNS = ("patientId", "x", "y", "width", "height", "Target")
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")

MAPPING: Mapping = {"Lung Opacity": ("Lung Opacity", "Pneumonia"), "Normal": ("No Finding",)}
"""RSNA -> common vocabulary: its positives are opacities the readers judged suggestive of pneumonia, so they give
both Lung Opacity and Pneumonia (as torchxrayvision reads them); "Normal" (with the class file) gives No Finding."""


def _labels_file(root: Path) -> list[Path]:
    return [*candidates(root, [LABELS_FILE]), *[p for p in [root / f"{LABELS_FILE}.zip"] if p.is_file()]]


def detect(root: Path) -> bool:
    return any({"patientId", "Target"} <= set(read_header(path)) for path in _labels_file(root))


def _classes(path: Path, order: pd.Index) -> pd.Series:
    table = read_csv(path, ("patientId", "class"))
    fail_at(path, table["class"], ~table["class"].isin(CLASSES), "class", lambda v: f"unknown class {v!r}")
    per_image = table.groupby("patientId", sort=False)["class"].first()
    return (per_image.reindex(order) == "Normal").astype("float32").where(per_image.reindex(order).notna())


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    found = _labels_file(root)
    if not found:
        raise CxrError(f"no RSNA metadata in {root}: expected {LABELS_FILE}[.gz|.zip]")
    path = found[0]
    table = read_csv(path, COLUMNS)
    target = parse_numbers(path, table["Target"], "Target", {0.0, 1.0})
    fail_at(path, table["Target"], target.isna(), "Target", lambda v: "empty Target")
    corners = {c: parse_numbers(path, table[c], c).astype("float64") for c in ("x", "y", "width", "height")}
    for column, values in corners.items():
        fail_at(path, table[column], (target == 1) & values.isna(), column, lambda v: "Target 1 needs a box")
    ids, order = pd.factorize(table["patientId"])
    positive = np.zeros(len(order), dtype=np.float32)
    np.maximum.at(positive, ids, target.to_numpy(np.float32))
    # a Target 0 row next to a Target 1 row of the same image would contradict itself
    mixed = pd.Series(target.to_numpy()).groupby(ids).nunique().to_numpy() > 1
    if mixed.any():
        image = order[int(np.argmax(mixed))]
        line = int(table.index[(table["patientId"] == image).to_numpy()][0])
        raise InputFormatError(path, f"{image!r} has rows with Target 0 and 1", line=line, column="Target")
    labels = pd.DataFrame({"Lung Opacity": positive})
    files: dict[str, Path | None] = {"metadata": path, "classes": None}
    classes = candidates(root, [CLASS_FILE])
    if classes:
        files["classes"] = classes[0]
        labels["Normal"] = _classes(classes[0], pd.Index(order)).to_numpy()
    marked = target == 1
    box_table = pd.DataFrame({
        "image": "stage_2_train_images/" + table["patientId"][marked] + ".dcm", "finding": "Lung Opacity",
        "x": corners["x"][marked], "y": corners["y"][marked], "w": corners["width"][marked],
        "h": corners["height"][marked],
    }).reset_index(drop=True)  # fmt: skip
    images = pd.DataFrame({
        "image": "stage_2_train_images/" + pd.Series(order) + ".dcm", "patient_id": order, "view": "", "split": "",
    })  # fmt: skip
    return finish("rsna", root, files, images, labels, MAPPING, boxes=box_table)


READER = Reader(
    "rsna", "RSNA Pneumonia", detect, read, MAPPING, fixture="rsna",
    description="26,684 DICOM images from NIH's with lung opacity boxes, in stage 2's labels "
    "(RSNA Pneumonia Detection Challenge 2018)",
)  # fmt: skip
