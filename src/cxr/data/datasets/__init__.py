"""Dataset readers, one module per dataset, and the registry that finds which one a folder holds.

Every module of this package that defines ``READER = Reader(...)`` (:mod:`cxr.data.datasets.reader`) is a dataset:
it is collected here, so adding a dataset is one module plus one fixture folder (``docs/datasets.md``, "Adding a
dataset"). ``read_dataset(folder)`` looks at the folder's file names and CSV headers (never at pixels) and reads it
with the one reader that recognises it; ``dataset=NAME`` forces a reader when a folder holds more than one dataset's
files. ``inspect_folder`` is ``cxr inspect``'s summary; :mod:`~cxr.data.datasets.tables` writes the docs' tables.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from cxr.data.datasets.base import LabelledDataset, ReadOptions, Uncertainty
from cxr.data.datasets.reader import Reader
from cxr.data.datasets.summary import DatasetSummary, summarize
from cxr.errors import CxrError


def _collect() -> dict[str, Reader]:
    """Every ``READER`` of this package's modules: primary datasets by name, then label sets for other datasets'
    images (secondary), so that tables and messages list them in that order."""
    found: list[Reader] = []
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            reader = getattr(importlib.import_module(f"{__name__}.{module.name}"), "READER", None)
            if isinstance(reader, Reader):
                found.append(reader)
    names = [reader.name for reader in found]
    if len(set(names)) != len(names):
        raise CxrError(f"two dataset modules register the same name: {sorted(names)}")
    return {reader.name: reader for reader in sorted(found, key=lambda r: (r.secondary, r.name))}


READERS: dict[str, Reader] = _collect()
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


def read_dataset(root: str | Path, dataset: str | None = None, options: ReadOptions | None = None) -> LabelledDataset:
    """Read a dataset folder with the reader ``dataset`` names, or the one its files identify."""
    root = Path(root)
    name = dataset or detect_dataset(root)
    if name not in READERS:
        raise CxrError(f"unknown dataset {name!r} (known: {', '.join(READERS)})")
    if not root.is_dir():
        raise CxrError(f"{root} is not a folder (expected a dataset's folder with its metadata files)")
    return READERS[name].read(root, options or ReadOptions())


def inspect_folder(root: str | Path, dataset: str | None = None, options: ReadOptions | None = None) -> DatasetSummary:
    """``cxr inspect``'s summary of any dataset folder."""
    return summarize(read_dataset(root, dataset, options))


__all__ = [
    "READERS",
    "DatasetSummary",
    "LabelledDataset",
    "ReadOptions",
    "Reader",
    "Uncertainty",
    "detect_dataset",
    "inspect_folder",
    "read_dataset",
    "summarize",
]
