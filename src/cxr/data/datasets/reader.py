"""The reader protocol: what one dataset module declares so that detection, reading, ``cxr inspect``, ``cxr prepare``,
the tests and the docs' mapping tables find it (timm's ``@register_model`` idea: a plugin registers itself).

A dataset module defines ``READER = Reader(...)`` at module level; :mod:`cxr.data.datasets` imports every module of
the package and collects them, so adding a dataset is one module plus one fixture folder (``docs/datasets.md``,
"Adding a dataset").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cxr.data.datasets.base import LabelledDataset, Mapping, ReadOptions
from cxr.data.datasets.source import store_source
from cxr.data.store import StoreSource


@dataclass(frozen=True)
class Reader:
    """One dataset: how to recognise its folder, how to read it, what its labels mean, where it is tested."""

    name: str
    """The value of ``--dataset`` and of the store manifest's ``dataset``."""
    title: str
    """The dataset's published name (the docs' tables and messages)."""
    detect: Callable[[Path], bool]
    """Whether a folder holds this dataset's metadata, from file names and CSV headers only (never raises)."""
    read: Callable[[Path, ReadOptions], LabelledDataset]
    """Read the folder; errors in its files are :class:`~cxr.errors.InputFormatError` naming file, line, column."""
    mapping: Mapping
    """Own label -> the common labels it provides (the docs' mapping tables are generated from it)."""
    fixture: str
    """The folder below ``tests/fixtures/`` holding an excerpt of the real files: every reader is tested on one."""
    description: str = ""
    """One line for the docs' table of datasets: what the folder holds, the paper or release it comes from."""
    uncertainty: bool = False
    """Whether :attr:`ReadOptions.uncertainty` applies (its value is then recorded in a store's manifest)."""
    secondary: bool = False
    """A label set for another dataset's images: chosen only when no primary dataset is in the folder."""
    own_table: bool = False
    """Its mapping (many own labels per common label) gets a table of its own in the docs, not a column."""
    store: Callable[[LabelledDataset, int], StoreSource] = store_source
    """Shape a read dataset for ``cxr prepare`` given the split seed (the common vocabulary's index by default)."""
