"""SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019): ``train-rle.csv`` with ``ImageId, EncodedPixels`` (the
header has a space before ``EncodedPixels``) and DICOMs somewhere below ``dicom-images-train/`` (one folder per
study and series, so paths are found by file name).

One row per mask; ``-1`` means no pneumothorax. An image is positive for Pneumothorax when any of its rows holds a
mask; the masks are kept as run-length strings (pairs of start and length, as the challenge encodes them).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxr.data.datasets.base import (
    LabelledDataset,
    Mapping,
    ReadOptions,
    candidates,
    fail_at,
    finish,
    read_csv,
    read_header,
    require_file,
)
from cxr.data.datasets.reader import Reader

FILE_NAMES = ("train-rle.csv", "stage_2_train.csv")
COLUMNS = ("ImageId", "EncodedPixels")
MAPPING: Mapping = {"Pneumothorax": ("Pneumothorax",)}
"""SIIM gives one label."""


def detect(root: Path) -> bool:
    return any(set(COLUMNS) <= set(read_header(path)) for path in candidates(root, FILE_NAMES))


def valid_rle(text: str) -> bool:
    """``-1``, or an even number of positive integers (start/length pairs)."""
    if text == "-1":
        return True
    parts = text.split()
    return bool(parts) and len(parts) % 2 == 0 and all(p.isdigit() for p in parts)


def _dicom_paths(root: Path) -> dict[str, str]:
    """``ImageId -> path relative to root`` for every ``*.dcm`` below the folder."""
    found: dict[str, str] = {}
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            if name.lower().endswith(".dcm"):
                found.setdefault(name[:-4], os.path.relpath(os.path.join(folder, name), root))
    return found


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    path = require_file(root, FILE_NAMES, "SIIM-ACR")
    table = read_csv(path, COLUMNS)
    rle = table["EncodedPixels"]
    fail_at(path, rle, ~rle.map(valid_rle), "EncodedPixels", lambda v: f"{v[:40]!r} is not -1 or start/length pairs")
    ids, order = pd.factorize(table["ImageId"])
    positive = (rle != "-1").groupby(ids).any().to_numpy()
    on_disk = _dicom_paths(root)
    images = pd.DataFrame({
        "image": [on_disk.get(image, f"{image}.dcm") for image in order], "patient_id": "", "view": "", "split": "",
        "image_id": order,
    })  # fmt: skip
    masks = pd.DataFrame({"image": table["ImageId"][rle != "-1"], "rle": rle[rle != "-1"]}).reset_index(drop=True)
    labels = pd.DataFrame({"Pneumothorax": positive.astype("float32")})
    return finish("siim", root, {"metadata": path}, images, labels, MAPPING, masks=masks, patients_known=False)


READER = Reader(
    "siim", "SIIM-ACR Pneumothorax", detect, read, MAPPING, fixture="siim",
    description="DICOM images with pneumothorax masks as run-length strings, 12,047 in `train-rle.csv` "
    "(SIIM-ACR Pneumothorax Segmentation, Kaggle 2019)",
)  # fmt: skip
