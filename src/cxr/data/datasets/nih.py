"""NIH ChestX-ray14 in the common shape: :mod:`cxr.data.nih` reads the folder; this maps its labels."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data.datasets.base import LabelledDataset, Mapping, finish
from cxr.data.nih import NIHDataset, find_metadata, load_dataset
from cxr.errors import CxrError
from cxr.labels import FINDINGS, LABELS, NO_FINDING

MAPPING: Mapping = {name: (name,) for name in LABELS} | {
    "Mass": ("Mass", "Lung Lesion"),
    "Nodule": ("Nodule", "Lung Lesion"),
}
"""NIH -> common vocabulary: itself, and Lung Lesion = Nodule or Mass (CheXpert's definition of a lung lesion)."""


def detect(root: Path) -> bool:
    try:
        find_metadata(root)
    except CxrError:
        return False
    return True


def read(root: Path) -> LabelledDataset:
    return from_nih(load_dataset(root))


def from_nih(dataset: NIHDataset) -> LabelledDataset:
    """An NIH folder already read by :func:`cxr.data.nih.load_dataset`, in the common shape."""
    root, table = dataset.root, dataset.metadata
    images = pd.DataFrame({
        "image": table["image"], "patient_id": table["patient_id"].astype(str), "view": table["view"],
        "split": table["split"], "sex": table["sex"], "age": table["age"],
    })  # fmt: skip
    labels = table[[*FINDINGS, NO_FINDING]].astype("float32")
    return finish("nih", root, dict(dataset.files), images, labels, MAPPING)
