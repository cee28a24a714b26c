"""``cxr inspect``'s summary of a read dataset: one typed record for every dataset, computed without decoding a pixel.

Every summary has the same keys (``docs/datasets.md``, "cxr inspect"); the keys about things only some datasets have
(official list files, a blacklist, images found by name, ages and sexes) are present only for a dataset that has
them, so NIH's summary keeps the keys it always had and another dataset's summary gains none it cannot fill.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr.data.datasets.base import LabelledDataset

OPTIONAL = ("uncertain", "unlisted", "blacklisted", "age_outliers", "age", "sex", "missing_images",
            "listed_not_in_metadata")  # fmt: skip
"""Keys left out of :meth:`DatasetSummary.to_dict` when the dataset has no such thing (None)."""


@dataclass(frozen=True)
class Examples:
    """How many, and the first few (rows or image names)."""

    count: int
    examples: list[Any]


@dataclass(frozen=True)
class DatasetSummary:
    """What ``cxr inspect`` shows: counts keyed by the dataset's own label names and by the common vocabulary's
    (None for a common label the dataset cannot provide). ``images`` counts every image the metadata lists (rejected
    rows included); ``usable`` those left after rejects."""

    dataset: str
    source: str
    files: dict[str, str | None]
    images: int
    usable: int
    patients: int | None
    findings: dict[str, int]
    harmonised: dict[str, int | None]
    not_available: list[str]
    views: dict[str, int]
    split: dict[str, int] | None
    rejects: Examples
    boxes: int | None
    masks: int | None
    images_on_disk: int
    uncertain: dict[str, int] | None = None
    unlisted: int | None = None
    """Images in none of the official lists (a dataset with official list files)."""
    blacklisted: dict[str, int] | None = None
    age_outliers: int | None = None
    age: dict[str, float | None] | None = None
    sex: dict[str, int] | None = None
    missing_images: Examples | None = None
    """Listed images not found below the folder (a dataset whose images are found by file name)."""
    listed_not_in_metadata: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``cxr inspect --json`` object (plain JSON types)."""
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data = {key: value for key, value in data.items() if value is not None or key not in OPTIONAL}
        return {key: asdict(value) if isinstance(value, Examples) else value for key, value in data.items()}


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def _number(value: float) -> float | None:
    return None if pd.isna(value) else float(value)


def _on_disk(root: Path, images: pd.Series) -> int:
    """How many listed images exist; no file is looked at when none of their top folders exists (metadata only)."""
    tops = {str(image).split("/", 1)[0] for image in images}
    if not any(os.path.exists(os.path.join(root, top)) for top in tops):
        return 0
    return int(np.sum([os.path.isfile(os.path.join(root, image)) for image in images]))


def _patients(dataset: LabelledDataset) -> int | None:
    """Distinct patients among every metadata row, rejected rows included (they are images of patients too)."""
    if not dataset.patients_known:
        return None
    patients = set(dataset.images["patient_id"]) | set(dataset.rejects["patient_id"])
    return len(patients - {""})


def _split(dataset: LabelledDataset) -> tuple[dict[str, int] | None, int | None, dict[str, int] | None]:
    """``split``, ``unlisted`` and ``blacklisted``: per official list when the dataset has list files (zeros
    included), else the dataset's own split words (None when it has none)."""
    split = dataset.images["split"]
    if not dataset.official_splits:
        return (_counts(split) if (split != "").any() else None), None, None
    counts = {part: int((split == part).sum()) for part in dataset.official_splits}
    blacklisted = None
    if "blacklisted" in dataset.images:
        marked = dataset.images["blacklisted"].astype(bool)
        blacklisted = {part: int((marked & (split == part)).sum()) for part in dataset.official_splits}
        blacklisted["total"] = int(marked.sum())
    return counts, int((split == "").sum()), blacklisted


def _demographics(images: pd.DataFrame) -> dict[str, Any]:
    """``age`` (min, median, max), ``age_outliers`` and ``sex`` where the images table has those columns."""
    found: dict[str, Any] = {}
    if "age" in images and pd.api.types.is_numeric_dtype(images["age"]):
        found["age"] = {name: _number(getattr(images["age"], name)()) for name in ("min", "median", "max")}
    if "age_outlier" in images:
        found["age_outliers"] = int(images["age_outlier"].sum())
    if "sex" in images:
        found["sex"] = _counts(images["sex"].astype(str))
    return found


def summarize(dataset: LabelledDataset, examples: int = 5) -> DatasetSummary:
    """The summary of a read dataset (``examples`` rejects and missing images are named)."""
    images, labels = dataset.images, dataset.labels
    findings = labels.to_numpy() == 1.0
    if dataset.uncertain is not None:
        findings &= ~dataset.uncertain.to_numpy()  # positives as the source wrote them, whatever the policy
    not_provided = set(dataset.not_provided)
    split, unlisted, blacklisted = _split(dataset)
    if dataset.found is None:
        on_disk, missing = _on_disk(dataset.root, images["image"]), None
    else:
        absent = [name for name in images["image"] if name not in dataset.found]
        on_disk, missing = len(dataset.found), Examples(len(absent), absent[:examples])
    return DatasetSummary(
        dataset=dataset.name,
        source=str(dataset.root),
        files={key: path.name if path else None for key, path in dataset.files.items()},
        images=len(images) + len(dataset.rejects),
        usable=len(images),
        patients=_patients(dataset),
        findings={name: int(n) for name, n in zip(labels.columns, findings.sum(axis=0), strict=True)},
        harmonised={
            name: None if name in not_provided else int((dataset.harmonised[name] == 1.0).sum())
            for name in dataset.harmonised.columns
        },
        not_available=[name for name in dataset.harmonised.columns if name in not_provided],
        views=_counts(images["view"]),
        split=split,
        rejects=Examples(len(dataset.rejects), dataset.rejects.head(examples).to_dict(orient="records")),
        boxes=None if dataset.boxes is None else len(dataset.boxes),
        masks=None if dataset.masks is None else len(dataset.masks),
        images_on_disk=on_disk,
        uncertain=None if dataset.uncertain is None else {k: int(n) for k, n in dataset.uncertain.sum(axis=0).items()},
        unlisted=unlisted,
        blacklisted=blacklisted,
        missing_images=missing,
        listed_not_in_metadata=None if dataset.listed_elsewhere is None else dict(dataset.listed_elsewhere),
        **_demographics(images),
    )
