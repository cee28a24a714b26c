"""Dataset readers, one module per dataset, and the registry that finds which one a folder holds.

``read_dataset(folder)`` looks at the folder's file names and CSV headers (never at pixels) and reads it with the
one reader that recognises it; ``dataset=NAME`` forces a reader when a folder holds more than one dataset's files.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.data.datasets import chexpert, google, mimic, nih, padchest, rsna, siim, vindr
from cxr.data.datasets.base import LabelledDataset, Mapping
from cxr.data.datasets.chexpert import Uncertainty
from cxr.data.nih import load_dataset
from cxr.data.nih import summarize as summarize_nih
from cxr.errors import CxrError
from cxr.labels import COMMON_LABELS


@dataclass(frozen=True)
class Reader:
    """One dataset: its name, title, how to recognise its folder, how to read it, its mapping table."""

    name: str
    title: str
    detect: Callable[[Path], bool]
    read: Callable[..., LabelledDataset]
    mapping: Mapping
    uncertainty: bool = False
    """Whether the reader takes the CheXpert uncertainty policy."""
    secondary: bool = False
    """A label set for another dataset's images: chosen only when no primary dataset is in the folder."""


READERS: dict[str, Reader] = {
    reader.name: reader
    for reader in (
        Reader("nih", "NIH ChestX-ray14", nih.detect, nih.read, nih.MAPPING),
        Reader("chexpert", "CheXpert", chexpert.detect, chexpert.read, chexpert.MAPPING, uncertainty=True),
        Reader("mimic", "MIMIC-CXR-JPG", mimic.detect, mimic.read, mimic.MAPPING, uncertainty=True),
        Reader("padchest", "PadChest", padchest.detect, padchest.read, padchest.MAPPING),
        Reader("vindr", "VinDr-CXR", vindr.detect, vindr.read, vindr.MAPPING),
        Reader("rsna", "RSNA Pneumonia", rsna.detect, rsna.read, rsna.MAPPING),
        Reader("siim", "SIIM-ACR Pneumothorax", siim.detect, siim.read, siim.MAPPING),
        Reader("google2019", "Google's NIH expert labels", google.detect, google.read, google.MAPPING, secondary=True),
    )
}
"""Every reader by name (the values of ``--dataset``)."""


def detect_dataset(root: str | Path) -> str:
    """The name of the dataset in a folder; :class:`CxrError` when none or several match (use ``--dataset``)."""
    root = Path(root)
    if not root.is_dir():
        raise CxrError(f"{root} is not a folder (expected a dataset's folder with its metadata files)")
    found = [reader for reader in READERS.values() if reader.detect(root)]
    primary = [reader for reader in found if not reader.secondary]
    found = primary or found
    if not found:
        raise CxrError(f"no known dataset's metadata in {root} (known: {', '.join(READERS)}); see docs/datasets.md")
    if len(found) > 1:
        names = ", ".join(reader.name for reader in found)
        raise CxrError(f"{root} holds the files of several datasets ({names}): choose one with --dataset NAME")
    return found[0].name


def read_dataset(
    root: str | Path, dataset: str | None = None, uncertainty: Uncertainty | str = Uncertainty.IGNORE
) -> LabelledDataset:
    """Read a dataset folder with the reader ``dataset`` names, or the one its files identify."""
    root = Path(root)
    name = dataset or detect_dataset(root)
    if name not in READERS:
        raise CxrError(f"unknown dataset {name!r} (known: {', '.join(READERS)})")
    if not root.is_dir():
        raise CxrError(f"{root} is not a folder (expected a dataset's folder with its metadata files)")
    reader = READERS[name]
    return reader.read(root, uncertainty) if reader.uncertainty else reader.read(root)


def mapping_markdown() -> str:
    """The mapping table of ``docs/datasets.md`` (a test checks the doc holds it): one row per common label, one
    column per dataset, the own labels that provide it, "—" where the dataset cannot (NaN)."""
    names = [name for name in READERS if name != "padchest"]
    lines = ["| common label | " + " | ".join(READERS[n].title for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for label in COMMON_LABELS:
        cells = []
        for name in names:
            sources = [source for source, targets in READERS[name].mapping.items() if label in targets]
            cells.append(", ".join(f"`{source}`" for source in sources) or "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def padchest_markdown() -> str:
    """PadChest's mapping (many labels per common label) as a two-column table for ``docs/datasets.md``."""
    lines = ["| common label | PadChest labels |", "|---|---|"]
    for label in COMMON_LABELS:
        sources = [source for source, targets in padchest.MAPPING.items() if label in targets]
        lines.append(f"| {label} | " + (", ".join(f"`{source}`" for source in sources) or "—") + " |")
    return "\n".join(lines) + "\n"


def _counts(values) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


def _on_disk(root: Path, images) -> int:
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


def summarize(dataset: LabelledDataset, examples: int = 5) -> dict:
    """The ``cxr inspect --json`` object of a non-NIH dataset: counts keyed by the dataset's own label names, and
    the common vocabulary's positives (``null`` for a label the dataset cannot provide). ``images`` counts every
    image the metadata lists (rejected rows included, as NIH's count does); ``usable`` those left after rejects."""
    images, labels = dataset.images, dataset.labels
    findings = labels.to_numpy() == 1.0
    if dataset.uncertain is not None:
        findings &= ~dataset.uncertain.to_numpy()  # positives as the source wrote them, whatever the policy
    not_provided = set(dataset.not_provided)
    summary = {
        "dataset": dataset.name,
        "source": str(dataset.root),
        "files": {key: path.name if path else None for key, path in dataset.files.items()},
        "images": len(images) + len(dataset.rejects),
        "usable": len(images),
        "patients": _patients(dataset),
        "findings": {name: int(n) for name, n in zip(labels.columns, findings.sum(axis=0), strict=True)},
    }
    if dataset.uncertain is not None:
        summary["uncertain"] = {name: int(n) for name, n in dataset.uncertain.sum(axis=0).items()}
    summary |= {
        "harmonised": {
            name: None if name in not_provided else int((dataset.harmonised[name] == 1.0).sum())
            for name in dataset.harmonised.columns
        },
        "not_available": [name for name in dataset.harmonised.columns if name in not_provided],
        "views": _counts(images["view"]),
        "split": _counts(images["split"]) if (images["split"] != "").any() else None,
        "rejects": {
            "count": len(dataset.rejects),
            "examples": dataset.rejects.head(examples).to_dict(orient="records"),
        },
        "boxes": None if dataset.boxes is None else len(dataset.boxes),
        "masks": None if dataset.masks is None else len(dataset.masks),
        "images_on_disk": _on_disk(dataset.root, images["image"]),
    }
    return summary


def inspect_folder(root: str | Path, dataset: str | None = None) -> dict:
    """``cxr inspect``'s object for any dataset. NIH keeps its own summary (:func:`cxr.data.nih.summarize`), with
    ``dataset`` and ``harmonised`` added."""
    name = dataset or detect_dataset(root)
    if name != "nih":
        return summarize(read_dataset(root, name))
    folder = load_dataset(root)
    common = nih.from_nih(folder).harmonised
    harmonised = {label: None if common[label].isna().all() else int((common[label] == 1).sum()) for label in common}
    return {"dataset": "nih", **summarize_nih(folder), "harmonised": harmonised}


__all__ = [
    "READERS",
    "LabelledDataset",
    "Reader",
    "Uncertainty",
    "detect_dataset",
    "inspect_folder",
    "mapping_markdown",
    "padchest_markdown",
    "read_dataset",
    "summarize",
]
