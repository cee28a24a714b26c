"""PadChest (Bustos et al., "PadChest: A large chest x-ray image dataset with multi-label annotated reports",
Medical Image Analysis 2020): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]`` and 16-bit PNGs in
numbered folders (``ImageDir``/``ImageID``).

``Labels`` is a Python list literal written as text, with stray leading spaces in its items
(``"['normal', ' pleural effusion']"``); items are stripped and empty items dropped. Rows whose cell is not such a
list (103 in the released file, written ``nan``) are rejected with their line. ``Projection`` is one of ``PA``,
``L``, ``AP``, ``AP_horizontal``, ``COSTAL``, ``EXCLUDE``, ``UNK``; every image is kept with it as ``view``.
``PatientSex_DICOM`` is kept as ``sex``, and the age at the study (``StudyDate_DICOM``'s year minus
``PatientBirth``) as ``age``, for subgroup evaluation.
Labels are read from the whole report, so a label not listed for an image is negative (0).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.attributes import age_at_study
from cxr.data.datasets.base import (
    LabelledDataset,
    Mapping,
    ReadOptions,
    candidates,
    check_unique,
    finish,
    read_csv,
    read_header,
    rejects_table,
    require_file,
)
from cxr.data.datasets.reader import Reader

FILE_NAMES = ("PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", "PADCHEST_chest_x_ray_images_labels_160K.csv")
COLUMNS = ("ImageID", "ImageDir", "PatientID", "Projection", "Labels")

_DEVICES = (
    "pacemaker", "dual chamber device", "single chamber device", "electrical device", "NSG tube", "endotracheal tube",
    "tracheostomy tube", "chest drain tube", "central venous catheter", "central venous catheter via jugular vein",
    "central venous catheter via subclavian vein", "central venous catheter via umbilical vein",
    "reservoir central venous catheter", "catheter", "ventriculoperitoneal drain tube", "gastrostomy tube",
    "nephrostomy tube", "double J stent", "artificial heart valve", "artificial mitral heart valve",
    "artificial aortic heart valve",
)  # fmt: skip

MAPPING: Mapping = {
    "normal": ("No Finding",),
    "atelectasis": ("Atelectasis",),
    "laminar atelectasis": ("Atelectasis",),
    "lobar atelectasis": ("Atelectasis",),
    "segmental atelectasis": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    "cardiomegaly": ("Cardiomegaly",),
    "consolidation": ("Consolidation",),
    "pulmonary edema": ("Edema",),
    "pleural effusion": ("Effusion",),
    "loculated pleural effusion": ("Effusion",),
    "emphysema": ("Emphysema",),
    "pulmonary fibrosis": ("Fibrosis",),
    "hiatal hernia": ("Hernia",),
    "infiltrates": ("Infiltration",),
    "mass": ("Mass", "Lung Lesion"),
    "pulmonary mass": ("Mass", "Lung Lesion"),
    "nodule": ("Nodule", "Lung Lesion"),
    "multiple nodules": ("Nodule", "Lung Lesion"),
    "pleural thickening": ("Pleural_Thickening",),
    "apical pleural thickening": ("Pleural_Thickening",),
    "calcified pleural thickening": ("Pleural_Thickening",),
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    "pneumothorax": ("Pneumothorax",),
    "hydropneumothorax": ("Pneumothorax",),
    "fracture": ("Fracture",),
    "rib fracture": ("Fracture",),
    "callus rib fracture": ("Fracture",),
    "clavicle fracture": ("Fracture",),
    "humeral fracture": ("Fracture",),
    "vertebral fracture": ("Fracture",),
    "mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    "superior mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    **{device: ("Support Devices",) for device in _DEVICES},
}
"""PadChest -> common vocabulary (our reading of its label hierarchy; the other ~130 labels map to nothing).
Lung Opacity is left unmapped: PadChest splits opacities into patterns (alveolar, interstitial, ground glass)
that do not match CheXpert's definition one to one."""


def detect(root: Path) -> bool:
    return any(
        "Labels" in read_header(path) and "ImageID" in read_header(path) for path in candidates(root, FILE_NAMES)
    )


def parse_label_list(text: str) -> list[str] | None:
    """The stripped, non-empty items of a ``Labels`` cell, or None when the cell is not a list of strings."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        return None
    return [item.strip() for item in value if item.strip()]


def _age(rows: pd.DataFrame) -> pd.Series | float:
    """Age at the study from ``PatientBirth`` (a year) and ``StudyDate_DICOM``; NaN where either is missing."""
    if "PatientBirth" not in rows or "StudyDate_DICOM" not in rows:
        return np.nan
    return age_at_study(rows["PatientBirth"], rows["StudyDate_DICOM"]).to_numpy()


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    path = require_file(root, FILE_NAMES, "PadChest")
    table = read_csv(path, COLUMNS, optional=["PatientSex_DICOM", "PatientBirth", "StudyDate_DICOM"])
    check_unique(path, table["ImageID"], "ImageID")
    # ~30k distinct cells among 160k rows: parse each once.
    codes, cells = pd.factorize(table["Labels"])
    parsed = [parse_label_list(cell) for cell in cells]
    unparsable = np.array([items is None for items in parsed])[codes]
    rejects = rejects_table(
        (line, image, patient, f"Labels {cell!r} is not a list of labels")
        for line, image, patient, cell in zip(table.index[unparsable], table["ImageID"][unparsable],
                                              table["PatientID"][unparsable], table["Labels"][unparsable], strict=True)
    )  # fmt: skip
    names = sorted({item for items in parsed if items for item in items})
    column = {name: k for k, name in enumerate(names)}
    matrix = np.zeros((len(cells), len(names)), dtype=np.float32)
    for code, items in enumerate(parsed):
        if items:
            matrix[code, [column[item] for item in items]] = 1.0
    kept = ~unparsable
    labels = pd.DataFrame(matrix[codes[kept]], columns=names)
    rows = table[kept]
    images = pd.DataFrame({
        "image": rows["ImageDir"] + "/" + rows["ImageID"], "patient_id": rows["PatientID"],
        "view": rows["Projection"], "split": "", "sex": rows.get("PatientSex_DICOM", ""), "age": _age(rows),
    })  # fmt: skip
    return finish("padchest", root, {"metadata": path}, images, labels, MAPPING, rejects=rejects)


READER = Reader(
    "padchest", "PadChest", detect, read, MAPPING, fixture="padchest", own_table=True,
    description="over 160,000 images of 67,000 patients, 174 radiographic findings from Spanish reports "
    "(Bustos et al., Med. Image Anal. 2020)",
)  # fmt: skip
