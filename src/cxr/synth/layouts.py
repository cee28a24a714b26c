"""Synthetic data in other datasets' layouts, so multi-dataset training and external validation run in tests.

``chexpert``: the cohort of :func:`cxr.synth.cohort.plan_cohort`, rendered as for NIH, written as CheXpert
(Irvin et al., AAAI 2019) ships it: ``train.csv`` / ``valid.csv`` (the NIH split's train_val / test) with ``Path``
= ``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyK/view1_frontal.jpg``, JPEG images at those paths (without
the ``CheXpert-v1.0-small/`` prefix: the output folder *is* that folder), and CheXpert's 14 label columns.

The drawn signs become CheXpert labels by :data:`CHEXPERT_FROM_SIGNS`; signs CheXpert has no column for
(Emphysema, Fibrosis, Hernia, Pleural_Thickening) are drawn but not labelled, as in a real external dataset. Like
the real files, a seeded share of positives is written ``-1.0`` (uncertain) and of negatives left blank (not
mentioned); "No Finding" is ``1.0`` for an image without signs and blank otherwise.
"""

from __future__ import annotations

import numpy as np

from cxr.synth.cohort import ImageRecord

CHEXPERT_PREFIX = "CheXpert-v1.0-small"
CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
    "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture",
    "Support Devices",
)  # fmt: skip
CHEXPERT_HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(CHEXPERT_LABELS)

CHEXPERT_FROM_SIGNS: dict[str, tuple[str, ...]] = {
    "Atelectasis": ("Atelectasis",),
    "Cardiomegaly": ("Cardiomegaly",),
    "Consolidation": ("Consolidation",),
    "Edema": ("Edema",),
    "Effusion": ("Pleural Effusion",),
    "Pneumonia": ("Pneumonia",),
    "Pneumothorax": ("Pneumothorax",),
    "Mass": ("Lung Lesion",),
    "Nodule": ("Lung Lesion",),
    "Infiltration": ("Lung Opacity",),
}
"""Synthetic sign (NIH's name) -> the CheXpert columns it makes positive."""

UNCERTAIN_SHARE = 0.1
"""Share of positive cells written -1.0."""
BLANK_SHARE = 0.5
"""Share of negative cells left blank (CheXpert's "not mentioned")."""

SPLIT_PARTS = {"train_val": "train", "test": "valid"}


def chexpert_path(record: ImageRecord) -> str:
    """The image's path inside the output folder (the CSV's ``Path`` without the release prefix)."""
    part = SPLIT_PARTS[record.split]
    return f"{part}/patient{record.patient_id:05d}/study{record.follow_up + 1}/view1_frontal.jpg"


def chexpert_cells(record: ImageRecord, rng: np.random.Generator) -> list[str]:
    """The 14 label cells of one image, in :data:`CHEXPERT_LABELS` order."""
    positive = {column for sign in record.findings for column in CHEXPERT_FROM_SIGNS.get(sign, ())}
    cells = []
    for label in CHEXPERT_LABELS:
        draw = rng.random()
        if label == "No Finding":
            cells.append("1.0" if not record.findings else "")
        elif label in positive:
            cells.append("-1.0" if draw < UNCERTAIN_SHARE else "1.0")
        else:
            cells.append("" if draw < BLANK_SHARE else "0.0")
    return cells


def chexpert_tables(records: list[ImageRecord], seed: int) -> dict[str, bytes]:
    """``{"train.csv": bytes, "valid.csv": bytes}`` for the records (seeded cells, CheXpert's columns)."""
    rows: dict[str, list[str]] = {"train.csv": [CHEXPERT_HEADER], "valid.csv": [CHEXPERT_HEADER]}
    for record in records:
        rng = np.random.default_rng([seed, 4, record.index])
        sex = {"M": "Male", "F": "Female"}.get(record.sex, "Unknown")
        cells = [f"{CHEXPERT_PREFIX}/{chexpert_path(record)}", sex, str(record.age), "Frontal", record.view]
        rows[f"{SPLIT_PARTS[record.split]}.csv"].append(",".join(cells + chexpert_cells(record, rng)))
    return {name: ("\n".join(lines) + "\n").encode() for name, lines in rows.items()}
