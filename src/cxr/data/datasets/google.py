"""Google's radiologist labels for NIH ChestX-ray14 images (Majkowska et al., "Chest radiograph interpretation with
deep learning models: assessment with radiologist-adjudicated reference standards and population-adjusted
evaluation", Radiology 2020): ``google2019_nih-chest-xray-labels.csv[.gz]``, 4,376 NIH images.

The file repeats NIH's metadata columns and adds four adjudicated labels, ``YES``/``NO``: ``Fracture``,
``Pneumothorax``, ``Airspace opacity``, ``Nodule or mass``, and ``Set Id`` (``val`` or ``test``, the paper's
split). It is an alternative label set for NIH images, not a dataset of its own pixels.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxr.data.datasets.base import (
    LabelledDataset,
    Mapping,
    ReadOptions,
    candidates,
    check_unique,
    fail_at,
    finish,
    read_csv,
    read_header,
    require_file,
)
from cxr.data.datasets.reader import Reader
from cxr.data.store import StoreSource
from cxr.errors import CxrError

FILE_NAMES = ("google2019_nih-chest-xray-labels.csv",)
LABELS: tuple[str, ...] = ("Fracture", "Pneumothorax", "Airspace opacity", "Nodule or mass")
COLUMNS = ("Image Index", "Patient ID", "View Position", *LABELS, "Set Id")

MAPPING: Mapping = {
    "Fracture": ("Fracture",),
    "Pneumothorax": ("Pneumothorax",),
    "Airspace opacity": ("Lung Opacity",),
    "Nodule or mass": ("Lung Lesion",),
}
"""Expert labels -> common vocabulary (for ``cxr inspect``; scoring NIH models uses the rules of
:mod:`cxr.evaluation.expert` instead, which combine NIH's outputs)."""


def detect(root: Path) -> bool:
    return any(set(LABELS) <= set(read_header(path)) for path in candidates(root, FILE_NAMES))


def read_file(path: Path) -> LabelledDataset:
    """Read the labels file itself (``cxr evaluate --labels`` passes a file, not a folder)."""
    table = read_csv(path, COLUMNS)
    check_unique(path, table["Image Index"], "Image Index")
    labels = {}
    for label in LABELS:
        cells = table[label]
        fail_at(path, cells, ~cells.isin(["YES", "NO"]), label, lambda v: f"{v!r} is not YES or NO")
        labels[label] = (cells == "YES").astype("float32")
    split = table["Set Id"]
    fail_at(path, split, ~split.isin(["val", "test"]), "Set Id", lambda v: f"{v!r} is not val or test")
    images = pd.DataFrame({
        "image": table["Image Index"], "patient_id": table["Patient ID"], "view": table["View Position"],
        "split": split,
    })  # fmt: skip
    return finish("google2019", path.parent, {"metadata": path}, images, pd.DataFrame(labels), MAPPING)


def is_expert_file(path: Path) -> bool:
    """True for a file with Google's four expert label columns (whatever its name)."""
    return set(LABELS) <= set(read_header(path))


def read(root: Path, options: ReadOptions | None = None) -> LabelledDataset:
    return read_file(require_file(root, FILE_NAMES, "Google NIH expert-label"))


def store_source(dataset: LabelledDataset, seed: int = 0) -> StoreSource:
    """No store: the labels describe NIH's images, which are in NIH's folder."""
    raise CxrError(
        "Google's expert labels describe NIH images: prepare the NIH folder, and score with "
        "`cxr evaluate --predictions P.csv --labels google2019_nih-chest-xray-labels.csv[.gz]`"
    )


READER = Reader(
    "google2019", "Google's NIH expert labels", detect, read, MAPPING, fixture="google2019", secondary=True,
    description="4 findings on 4,376 NIH images by 3 radiologists each (Majkowska et al., Radiology 2020)",
    store=store_source,
)  # fmt: skip
