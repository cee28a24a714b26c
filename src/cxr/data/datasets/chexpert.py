"""CheXpert (Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert
Comparison", AAAI 2019): ``train.csv`` and ``valid.csv`` in ``CheXpert-v1.0[-small]/``.

Each row is one image (``Path`` = ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg``). The 14 label
cells hold ``1.0`` (positive), ``0.0`` (negative), ``-1.0`` (uncertain: the report hedged) or nothing (not
mentioned). Blank is read as not provided (NaN); what -1.0 becomes is the uncertainty policy (``ones``, ``zeros``,
``ignore`` = NaN, masked), the three choices Irvin et al. compare. ``Frontal/Lateral`` and ``AP/PA`` are kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.base import (
    LabelledDataset,
    Mapping,
    ReadOptions,
    Uncertainty,
    candidates,
    check_unique,
    fail_at,
    finish,
    parse_numbers,
    read_csv,
    read_header,
)
from cxr.data.datasets.reader import Reader
from cxr.errors import CxrError

LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
"""CheXpert's 14 observations, in its files' order (MIMIC-CXR's CheXpert labeler uses the same names)."""

MAPPING: Mapping = {
    "No Finding": ("No Finding",),
    "Enlarged Cardiomediastinum": ("Enlarged Cardiomediastinum",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Lung Opacity": ("Lung Opacity",),
    "Lung Lesion": ("Lung Lesion",),
    "Edema": ("Edema",),
    "Consolidation": ("Consolidation",),
    "Pneumonia": ("Pneumonia",),
    "Atelectasis": ("Atelectasis",),
    "Pneumothorax": ("Pneumothorax",),
    "Pleural Effusion": ("Effusion",),
    "Fracture": ("Fracture",),
    "Support Devices": ("Support Devices",),
}
"""CheXpert -> common vocabulary. ``Pleural Other`` (any pleural finding but effusion) maps to nothing."""

FILES = {"train": "train.csv", "valid": "valid.csv"}
COLUMNS = ("Path", "Frontal/Lateral", "AP/PA", *LABELS)
_PATIENT = r"(patient\d+)"


def apply_policy(values: pd.DataFrame, policy: Uncertainty | str) -> pd.DataFrame:
    """Replace -1.0 per the policy; the other values (1, 0, NaN) stay."""
    replacement = {Uncertainty.ONES: 1.0, Uncertainty.ZEROS: 0.0, Uncertainty.IGNORE: np.nan}[Uncertainty(policy)]
    return values.mask(values == -1.0, replacement).astype("float32")


def parse_labels(path: Path, table: pd.DataFrame, labels: tuple[str, ...]) -> pd.DataFrame:
    """The label cells as floats in {1, 0, -1, NaN}; anything else is an error naming the line and column."""
    return pd.DataFrame({label: parse_numbers(path, table[label], label, {1.0, 0.0, -1.0}) for label in labels})


def detect(root: Path) -> bool:
    return any("Path" in read_header(path) for path in candidates(root, FILES.values()))


def _strip_release(paths: pd.Series) -> pd.Series:
    """Paths relative to the dataset folder: drop the leading ``CheXpert-v1.0[-small]/`` the CSVs carry."""
    return paths.str.replace(r"^CheXpert-v1\.0[^/]*/", "", regex=True)


def _read_part(path: Path, split: str) -> pd.DataFrame:
    table = read_csv(path, COLUMNS)
    patients = table["Path"].str.extract(_PATIENT, expand=False)
    fail_at(path, table["Path"], patients.isna(), "Path", lambda v: f"{v!r} names no patientNNNNN folder")
    frontal = table["Frontal/Lateral"]
    fail_at(path, frontal, ~frontal.isin(["Frontal", "Lateral"]), "Frontal/Lateral",
            lambda v: f"{v!r} is not Frontal or Lateral")  # fmt: skip
    view = table["AP/PA"].where(table["AP/PA"] != "", frontal.where(frontal == "Lateral", ""))
    age = pd.to_numeric(table["Age"], errors="coerce") if "Age" in table else np.nan
    images = pd.DataFrame({
        "image": _strip_release(table["Path"]), "patient_id": patients, "view": view, "split": split,
        "frontal": frontal == "Frontal", "sex": table.get("Sex", ""), "age": age, "line": table.index,
    })  # fmt: skip
    return pd.concat([images, parse_labels(path, table, LABELS)], axis=1)


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    """Read ``train.csv`` and/or ``valid.csv`` (gzipped or not) of a CheXpert folder."""
    files: dict[str, Path | None] = {}
    parts = []
    for split, name in FILES.items():
        found = candidates(root, [name])
        files[split] = found[0] if found else None
        if found:
            parts.append(_read_part(found[0], split))
    if not parts:
        raise CxrError(f"no CheXpert metadata in {root}: expected train.csv[.gz] and/or valid.csv[.gz]")
    table = pd.concat(parts, ignore_index=True)
    for part in parts:
        check_unique(files[part["split"].iat[0]], part.set_index("line")["image"], "Path")
    raw = table[list(LABELS)]
    images = table.drop(columns=[*LABELS, "line"])
    labels = apply_policy(raw, (options or ReadOptions()).uncertainty)
    return finish("chexpert", root, files, images, labels, MAPPING, uncertain=raw == -1.0)


READER = Reader(
    "chexpert", "CheXpert", detect, read, MAPPING, fixture="chexpert", uncertainty=True,
    description="224,316 images of 65,240 patients, 14 observations labelled 1, 0 or uncertain from reports "
    "(Irvin et al., AAAI 2019)",
)  # fmt: skip
