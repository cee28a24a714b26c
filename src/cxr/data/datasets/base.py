"""What every dataset reader returns, and the CSV helpers they share.

One contract for all datasets (the idea of torchxrayvision's datasets, written our own way): a reader turns the
metadata files of a dataset's folder into a :class:`LabelledDataset` whose tables are aligned row for row: the
images (path relative to the folder, patient, view, split), the dataset's **own** labels as floats (NaN = not
provided), the labels of the **common** vocabulary (:data:`cxr.labels.COMMON_LABELS`, NaN where the dataset cannot
provide one), and the rows it rejected with the reason. Errors in the files are
:class:`~cxr.errors.InputFormatError` naming the file, the 1-based line and the column.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import CxrError, InputFormatError
from cxr.labels import COMMON_LABELS

IMAGE_COLUMNS = ("image", "patient_id", "view", "split")
"""The columns every reader's ``images`` table starts with (``patient_id`` is a string, ``""`` when unknown)."""

Mapping = dict[str, tuple[str, ...]]
"""A dataset's mapping table: own label -> the common labels it provides."""


class Uncertainty(StrEnum):
    """What CheXpert's -1.0 (uncertain) becomes: 1, 0, or missing (NaN: the loss masks it, metrics skip it)."""

    ONES = "ones"
    ZEROS = "zeros"
    IGNORE = "ignore"


@dataclass(frozen=True)
class ReadOptions:
    """What a user may choose about how a folder is read; a reader uses the options that concern it."""

    uncertainty: Uncertainty = Uncertainty.IGNORE
    """CheXpert's and MIMIC's -1.0: ``ones``, ``zeros`` or ``ignore`` (NaN)."""
    age_max: float = 120
    """NIH: an age above this (the 2017 release's 148-414 "years") is flagged as an outlier and set to NaN."""

    def __post_init__(self) -> None:
        if self.uncertainty not in {policy.value for policy in Uncertainty}:
            raise CxrError(f"--uncertainty must be ones, zeros or ignore, not {self.uncertainty!r}")
        object.__setattr__(self, "uncertainty", Uncertainty(self.uncertainty))


@dataclass
class LabelledDataset:
    """A dataset folder, read. ``images``, ``labels``, ``harmonised`` (and ``uncertain``) share one row index."""

    name: str
    root: Path
    files: dict[str, Path | None]
    images: pd.DataFrame
    labels: pd.DataFrame
    """Own labels, float32: 1 positive, 0 negative, NaN not provided (after the uncertainty policy, if any)."""
    harmonised: pd.DataFrame
    """One float32 column per :data:`~cxr.labels.COMMON_LABELS`; NaN where not provided."""
    rejects: pd.DataFrame = field(default_factory=lambda: rejects_table([]))
    """``line, image, patient_id, reason``: metadata rows that are not in ``images`` (patient ``""`` if unknown)."""
    uncertain: pd.DataFrame | None = None
    """Where the source said "uncertain" (CheXpert's and MIMIC's -1.0), per own label; None if it cannot."""
    boxes: pd.DataFrame | None = None
    """``image`` (the path, as in ``images``), ``finding`` (own label name), ``x, y, w, h`` in the source image's
    pixels, and ``reader`` where the dataset names who drew the box."""
    masks: pd.DataFrame | None = None
    """``image, rle`` for datasets that give segmentation masks (SIIM), one row per mask."""
    patients_known: bool = True
    mapping: Mapping = field(default_factory=dict)
    official_splits: tuple[str, ...] = ()
    """The split names the dataset's own list files define (NIH: ``train_val``, ``test``); when given, the
    ``split`` column keeps them (``""`` for an image in no list) and a store never re-splits the dataset."""
    found: dict[str, Path] | None = None
    """Image files found anywhere below ``root``, by file name, for a dataset whose metadata names images without
    their folder (NIH); None when ``image`` is a path relative to ``root``."""
    listed_elsewhere: dict[str, int] | None = None
    """Per list file (official lists, blacklist): how many of its names are not in the metadata."""

    def table(self) -> pd.DataFrame:
        """One table: the image columns, then the common labels (their names), then own labels as ``own:<name>``."""
        own = self.labels.add_prefix("own:")
        return pd.concat([self.images, self.harmonised, own], axis=1)

    @property
    def not_provided(self) -> list[str]:
        """Common labels this dataset cannot provide (NaN on every row)."""
        return [label for label in COMMON_LABELS if self.harmonised[label].isna().all()]


def rejects_table(rows: Iterable[tuple[int, str, str, str]]) -> pd.DataFrame:
    """``(line, image, patient_id, reason)`` tuples as the rejects table."""
    table = pd.DataFrame(list(rows), columns=["line", "image", "patient_id", "reason"])
    return table.astype({"line": "int64", "image": str, "patient_id": str, "reason": str})


def harmonise(labels: pd.DataFrame, mapping: Mapping) -> pd.DataFrame:
    """Common labels from own labels: each is the maximum of the *known* values of the own labels mapped to it
    (NaN where all of them are NaN), and NaN on every row where no own label maps to it."""
    sources: dict[str, list[str]] = {label: [] for label in COMMON_LABELS}
    for source, targets in mapping.items():
        for target in targets:
            if target not in sources:
                raise ValueError(f"{source!r} maps to {target!r}, which is not in the common vocabulary")
            sources[target].append(source)
    columns = {}
    for label, names in sources.items():
        present = [name for name in names if name in labels.columns]
        if present:
            columns[label] = labels[present].max(axis=1, skipna=True).to_numpy(np.float32)
        else:
            columns[label] = np.full(len(labels), np.nan, dtype=np.float32)
    return pd.DataFrame(columns, index=labels.index)


def candidates(root: Path, names: Iterable[str]) -> list[Path]:
    """Existing files ``root/name`` and ``root/name.gz`` for each name, in order."""
    found = []
    for name in names:
        for suffix in ("", ".gz"):
            path = root / f"{name}{suffix}"
            if path.is_file():
                found.append(path)
    return found


def open_text(path: Path) -> io.TextIOBase:
    """A CSV as text: plain, gzipped, or the single member of a zip (how Kaggle ships RSNA's labels)."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise InputFormatError(path, f"expected one CSV in the zip, found {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_header(path: Path) -> list[str]:
    """The header cells of a CSV (stripped); ``[]`` for an unreadable or empty file (detection must not fail)."""
    try:
        with open_text(path) as handle:
            return [cell.strip() for cell in next(csv.reader([handle.readline()]), [])]
    except (OSError, UnicodeDecodeError, EOFError, zipfile.BadZipFile, InputFormatError):
        return []


def read_csv(path: Path, required: Iterable[str], optional: Iterable[str] | None = None) -> pd.DataFrame:
    """Every cell as a stripped string; the row index is the file's 1-based line number (header = line 1).

    With ``optional`` given, only the required and optional columns are read (PadChest's free-text reports make
    the whole file slow to parse). Raises :class:`InputFormatError` for a malformed file and for a missing
    ``required`` column (line 1).
    Assumes no quoted cell spans lines, true of every metadata file read here.
    """
    required = list(required)
    wanted = None if optional is None else {*required, *optional}
    try:
        with open_text(path) as handle:
            table = pd.read_csv(
                handle, dtype=str, keep_default_na=False, na_filter=False, skip_blank_lines=False,
                index_col=False, engine="c", usecols=None if wanted is None else (lambda c: c.strip() in wanted),
            )  # fmt: skip
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise InputFormatError(path, f"malformed CSV ({str(error).strip()})") from None
    table.columns = [str(c).strip() for c in table.columns]
    for column in required:
        if column not in table.columns:
            raise InputFormatError(path, f"missing column (found: {', '.join(table.columns)})", 1, column)
    table.index = pd.RangeIndex(2, len(table) + 2)
    table = table[~(table == "").all(axis=1)]
    return table.apply(lambda c: c.str.strip())


def read_rows(path: Path, names: list[str]) -> pd.DataFrame:
    """Every cell as a stripped string under the given column ``names`` (the file's header line is skipped, so a
    header with a trailing comma or a row with one spare cell can be read); the index is the 1-based line number,
    as :func:`read_csv`'s. A row with more cells than ``names`` is a malformed-CSV error naming its line."""
    try:
        with open_text(path) as handle:
            table = pd.read_csv(
                handle, header=None, skiprows=1, names=names, dtype=str, index_col=False, keep_default_na=False,
                na_filter=False, skip_blank_lines=False, engine="c",
            )  # fmt: skip
    except (pd.errors.ParserError, UnicodeDecodeError, zipfile.BadZipFile) as error:
        raise InputFormatError(path, f"malformed CSV ({str(error).strip()})") from None
    table.index = pd.RangeIndex(2, len(table) + 2)
    table = table[~(table == "").all(axis=1)]
    return table.apply(lambda c: c.str.strip())


def fail_at(path: Path, cells: pd.Series, bad: pd.Series | np.ndarray, column: str, message: Callable) -> None:
    """Raise for the first flagged row of a table read by :func:`read_csv`; ``message(cell)`` words the problem."""
    bad = pd.Series(np.asarray(bad, dtype=bool), index=cells.index)
    if bad.any():
        line = bad.idxmax()
        raise InputFormatError(path, message(cells.at[line]), line=int(line), column=column)


def parse_numbers(path: Path, cells: pd.Series, column: str, allowed: set[float] | None = None) -> pd.Series:
    """Cells as float32 (empty = NaN); raise naming the line for text, or a value outside ``allowed``."""
    values = pd.to_numeric(cells, errors="coerce")
    bad = values.isna() & (cells != "")
    if allowed is not None:
        bad |= values.notna() & ~values.isin(sorted(allowed))
    expected = f"one of {', '.join(map(str, sorted(allowed)))} or empty" if allowed is not None else "a number"
    fail_at(path, cells, bad, column, lambda v: f"{v!r} is not {expected}")
    return values.astype("float32")


def check_unique(path: Path, cells: pd.Series, column: str) -> None:
    """Raise naming the line of the first repeated value (and where it first appeared)."""
    repeated = cells.duplicated()
    if repeated.any():
        line = int(repeated.idxmax())
        first = int(cells.index[cells == cells.at[line]][0])
        raise InputFormatError(path, f"duplicate {cells.at[line]!r} (first on line {first})", line, column)


def require_file(root: Path, names: Iterable[str], dataset: str) -> Path:
    """The first of ``names`` (or its ``.gz``) in ``root``; :class:`CxrError` naming what was looked for."""
    names = list(names)
    found = candidates(root, names)
    if not found:
        raise CxrError(f"no {dataset} metadata in {root}: expected {' or '.join(f'{n}[.gz]' for n in names)}")
    return found[0]


def finish(
    name: str,
    root: Path,
    files: dict[str, Path | None],
    images: pd.DataFrame,
    labels: pd.DataFrame,
    mapping: Mapping,
    **extra,
) -> LabelledDataset:
    """Assemble a :class:`LabelledDataset`: a clean 0..n-1 index shared by every table, and the common labels."""
    images = images.reset_index(drop=True)
    labels = labels.reset_index(drop=True).astype("float32")
    uncertain = extra.pop("uncertain", None)
    if uncertain is not None:
        uncertain = uncertain.reset_index(drop=True)
    return LabelledDataset(
        name, root, files, images, labels, harmonise(labels, mapping), uncertain=uncertain, mapping=mapping, **extra
    )
