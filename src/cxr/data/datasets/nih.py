"""NIH ChestX-ray14 (Wang et al., CVPR 2017): the reader. Its files are read by :mod:`cxr.data.datasets.nih_files`.

An NIH folder holds the metadata (required), the official ``train_val_list.txt`` / ``test_list.txt``, the
AzureChestXRay blacklist and ``BBox_List_2017.csv`` (each optional), and PNGs anywhere below it, found by file name.
The images table keeps what only NIH has (``follow_up``, ``blacklisted``, ``age_outlier``); the official split is
checked to be patient-disjoint and kept as it is (``""`` for an image in neither list), never re-drawn. Its store
keeps NIH's own 15 labels as uint8 (:data:`cxr.data.store.INDEX_COLUMNS`), as NIH stores always had.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.base import LabelledDataset, Mapping, ReadOptions, candidates, finish
from cxr.data.datasets.nih_files import (
    find_images,
    find_metadata,
    read_blacklist,
    read_boxes,
    read_image_list,
    read_metadata,
)
from cxr.data.datasets.reader import Reader
from cxr.data.splits import official_split
from cxr.data.store import INDEX_COLUMNS, StoreSource
from cxr.errors import CxrError
from cxr.labels import FINDINGS, LABELS, NO_FINDING

MAPPING: Mapping = {name: (name,) for name in LABELS} | {
    "Mass": ("Mass", "Lung Lesion"),
    "Nodule": ("Nodule", "Lung Lesion"),
}
"""NIH -> common vocabulary: itself, and Lung Lesion = Nodule or Mass (CheXpert's definition of a lung lesion)."""

SPLITS = ("train_val", "test")
LIST_FILES = {"train_val": "train_val_list.txt", "test": "test_list.txt", "blacklist": "blacklist.csv"}


def detect(root: Path) -> bool:
    try:
        find_metadata(root)
    except CxrError:
        return False
    return True


def _optional(root: Path, name: str) -> Path | None:
    found = candidates(root, [name])
    return found[0] if found else None


def read(root: Path, options: ReadOptions = ReadOptions()) -> LabelledDataset:  # noqa: B008  (frozen, immutable)
    """Read an NIH folder: the metadata, the official lists and the blacklist (each optional), the boxes (optional),
    and the images below it.

    ``images["split"]`` is ``"train_val"``, ``"test"`` or ``""`` (in neither list) and is checked to be
    patient-disjoint; ``images["blacklisted"]`` marks the blacklist's images, which are kept.
    """
    files: dict[str, Path | None] = {"metadata": find_metadata(root)}
    files |= {key: _optional(root, name) for key, name in LIST_FILES.items()}
    files["boxes"] = _optional(root, "BBox_List_2017.csv")

    table = read_metadata(files["metadata"], age_max=options.age_max)
    known = set(table["image"])
    lists = {key: read_image_list(files[key]) if files[key] else [] for key in SPLITS}
    blacklist = read_blacklist(files["blacklist"]) if files["blacklist"] else set()
    split = official_split(table, lists["train_val"], lists["test"], source=files["metadata"])
    elsewhere = {key: sum(name not in known for name in names) for key, names in lists.items()}
    elsewhere["blacklist"] = len(blacklist - known)
    images = pd.DataFrame({
        "image": table["image"], "patient_id": table["patient_id"].astype(str), "view": table["view"], "split": split,
        "sex": table["sex"], "age": table["age"], "follow_up": table["follow_up"],
        "blacklisted": table["image"].isin(blacklist), "age_outlier": table["age_outlier"],
    })  # fmt: skip
    labels = table[[*FINDINGS, NO_FINDING]].astype("float32")
    boxes = read_boxes(files["boxes"]) if files["boxes"] else None
    return finish("nih", root, files, images, labels, MAPPING, boxes=boxes, official_splits=SPLITS,
                  found=find_images(root), listed_elsewhere=elsewhere)  # fmt: skip


def store_source(dataset: LabelledDataset, seed: int = 0) -> StoreSource:
    """NIH's store: its own labels as uint8, its integer patient ids and follow-up numbers, the official split as
    listed (``seed`` is unused: NIH is never re-split), the images found anywhere below the folder, and the boxes."""
    images = dataset.images
    metadata = pd.DataFrame({
        "image": images["image"], "patient_id": images["patient_id"].astype("int64"), "follow_up": images["follow_up"],
        "split": images["split"], "blacklisted": images["blacklisted"], "view": images["view"], "age": images["age"],
        "sex": images["sex"],
    })  # fmt: skip
    metadata = pd.concat([metadata, dataset.labels[list(LABELS)].astype(np.uint8)], axis=1)
    return StoreSource("nih", dataset.root, metadata, dict(dataset.found or {}), dict(dataset.files), INDEX_COLUMNS,
                       dataset.boxes, seeded=False)  # fmt: skip


READER = Reader(
    "nih", "NIH ChestX-ray14", detect, read, MAPPING, fixture="nih-sample",
    description="112,120 frontal images of 30,805 patients, 14 findings mined from reports (Wang et al., CVPR 2017)",
    store=store_source,
)  # fmt: skip

__all__ = ["MAPPING", "READER", "detect", "find_images", "find_metadata", "read", "read_blacklist", "read_boxes",
           "read_image_list", "read_metadata", "store_source"]  # fmt: skip
