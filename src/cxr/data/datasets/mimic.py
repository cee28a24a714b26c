"""MIMIC-CXR-JPG (Johnson et al., "MIMIC-CXR-JPG, a large publicly available database of labeled chest
radiographs", arXiv:1901.07042, 2019), from its published column layout:

- ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (or ``-negbio``): ``subject_id, study_id`` and CheXpert's 14 labels with
  ``1.0``/``0.0``/``-1.0``/blank, one row per **study**;
- ``mimic-cxr-2.0.0-metadata.csv[.gz]``: ``dicom_id, subject_id, study_id, ViewPosition, ...``, one row per image;
- ``mimic-cxr-2.0.0-split.csv[.gz]``: ``dicom_id, study_id, subject_id, split`` (``train``/``validate``/``test``).

- optionally MIMIC-IV's ``patients.csv[.gz]`` (``subject_id, gender, anchor_age, anchor_year``), copied into the
  folder: it gives each image's ``sex`` and its ``age`` at the study (``anchor_age`` moved by the study's year minus
  ``anchor_year``; both dates are shifted alike), for subgroup evaluation. Without it both are unknown.

Study labels are joined to each of the study's images; an image whose study has no label row keeps NaN labels.
Images live at ``files/p<first two digits>/p<subject_id>/s<study_id>/<dicom_id>.jpg``. Uncertain (-1.0) follows
the same policy as CheXpert.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.attributes import age_from_anchor
from cxr.data.datasets.base import (
    LabelledDataset,
    ReadOptions,
    candidates,
    check_unique,
    fail_at,
    finish,
    read_csv,
    read_header,
    rejects_table,
    require_file,
)
from cxr.data.datasets.chexpert import LABELS, MAPPING, apply_policy, parse_labels
from cxr.data.datasets.reader import Reader

PREFIX = "mimic-cxr-2.0.0-"
LABEL_FILES = (f"{PREFIX}chexpert.csv", f"{PREFIX}negbio.csv")
SPLITS = ("train", "validate", "test")
PATIENTS_FILE = "patients.csv"
"""MIMIC-IV's patients table (hosp module), optional."""


def _demographics(path: Path, meta: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Sex and age at the study of every metadata row from MIMIC-IV's ``patients.csv`` (NaN/"" where unlisted)."""
    patients = read_csv(path, ("subject_id", "gender", "anchor_age", "anchor_year"))
    _integers(path, patients, ("subject_id",))
    check_unique(path, patients["subject_id"], "subject_id")
    rows = patients.set_index("subject_id").reindex(meta["subject_id"].to_numpy())
    study = meta["StudyDate"] if "StudyDate" in meta else pd.Series("", index=meta.index)
    age = age_from_anchor(rows["anchor_age"].to_numpy(), rows["anchor_year"].to_numpy(), study.to_numpy())
    return rows["gender"].fillna("").to_numpy(), age.to_numpy()


def detect(root: Path) -> bool:
    return any("study_id" in read_header(path) for path in candidates(root, LABEL_FILES))


def _integers(path: Path, table: pd.DataFrame, columns: tuple[str, ...]) -> None:
    for column in columns:
        fail_at(path, table[column], ~table[column].str.fullmatch(r"\d+"), column, lambda v: f"{v!r} is not an id")


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    label_path = require_file(root, LABEL_FILES, "MIMIC-CXR labels")
    meta_path = require_file(root, [f"{PREFIX}metadata.csv"], "MIMIC-CXR")
    split_path = candidates(root, [f"{PREFIX}split.csv"])
    studies = read_csv(label_path, ("subject_id", "study_id", *LABELS))
    _integers(label_path, studies, ("subject_id", "study_id"))
    check_unique(label_path, studies["study_id"], "study_id")
    raw_study = parse_labels(label_path, studies, LABELS)
    raw_study.index = studies["study_id"].to_numpy()
    meta = read_csv(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition"), optional=["StudyDate"])
    _integers(meta_path, meta, ("subject_id", "study_id"))
    check_unique(meta_path, meta["dicom_id"], "dicom_id")
    split = pd.Series("", index=meta["dicom_id"].to_numpy())
    if split_path:
        parts = read_csv(split_path[0], ("dicom_id", "split"))
        fail_at(split_path[0], parts["split"], ~parts["split"].isin(SPLITS), "split",
                lambda v: f"{v!r} is not one of {', '.join(SPLITS)}")  # fmt: skip
        split = parts.set_index("dicom_id")["split"].reindex(split.index).fillna("")
    unlabelled = ~meta["study_id"].isin(raw_study.index)
    raw = raw_study.reindex(meta["study_id"].to_numpy()).reset_index(drop=True)
    subject = meta["subject_id"]
    images = pd.DataFrame({
        "image": "files/p" + subject.str[:2] + "/p" + subject + "/s" + meta["study_id"] + "/" + meta["dicom_id"]
        + ".jpg",
        "patient_id": subject, "view": meta["ViewPosition"], "split": split.to_numpy(), "study_id": meta["study_id"],
    }).reset_index(drop=True)  # fmt: skip
    patients_path = candidates(root, [PATIENTS_FILE])
    if patients_path:
        images["sex"], images["age"] = _demographics(patients_path[0], meta)
    files = {"labels": label_path, "metadata": meta_path, "split": split_path[0] if split_path else None}
    rejects = rejects_table([])
    labels = apply_policy(raw, (options or ReadOptions()).uncertainty)
    dataset = finish("mimic", root, files, images, labels, MAPPING, uncertain=raw == -1.0,
                     rejects=rejects)  # fmt: skip
    dataset.images["labelled"] = ~unlabelled.to_numpy()
    return dataset


READER = Reader(
    "mimic", "MIMIC-CXR-JPG", detect, read, MAPPING, fixture="mimic", uncertainty=True,
    description="377,110 images of 65,379 patients, CheXpert's labels per study (Johnson et al., 2019)",
)  # fmt: skip
