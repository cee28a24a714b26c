"""NIH ChestX-ray14's files: the metadata CSV, the official lists, the blacklist, the boxes, and the PNGs below it.

The dataset is Wang et al., "ChestX-ray8: Hospital-scale chest X-ray database and benchmarks on weakly-supervised
classification and localization of common thorax diseases", CVPR 2017 (112,120 images, 30,805 patients). Its metadata
exists in two releases: ``Data_Entry_2017.csv`` (a trailing comma on every line, an empty 12th column, 16 impossible
ages 148-414) and ``Data_Entry_2017_v2020.csv`` (no trailing comma, no impossible ages). Both are read here, gzipped
or not. ``blacklist.csv`` comes from AzureChestXRay (header ``black``, old-Mac CR line endings).

Every validation error is an :class:`~cxr.errors.InputFormatError` naming the file, the 1-based line and the column;
the tables are read by :mod:`cxr.data.datasets.base`'s helpers, whose row index is that line number. The reader that
puts these files together is :mod:`cxr.data.datasets.nih`.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.base import candidates, fail_at, open_text, read_rows
from cxr.errors import CxrError, InputFormatError
from cxr.labels import LABELS, canonical_name, parse_finding_labels

METADATA_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
"""Metadata file names in order of preference (v2020 corrects the 2017 release's ages)."""

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})

# NIH column -> our column. The bracketed names are what splitting NIH's header on commas leaves.
METADATA_COLUMNS = {
    "Image Index": "image",
    "Finding Labels": "finding_labels",
    "Follow-up #": "follow_up",
    "Patient ID": "patient_id",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "view",
    "OriginalImage[Width": "width",
    "Height]": "height",
    "OriginalImagePixelSpacing[x": "spacing_x",
    "y]": "spacing_y",
}
_INTEGER_COLUMNS = ("follow_up", "patient_id", "width", "height")
_FLOAT_COLUMNS = ("spacing_x", "spacing_y")


def find_metadata(data_dir: str | Path) -> Path:
    """The metadata CSV of an NIH folder: ``Data_Entry_2017_v2020.csv`` preferred, then ``Data_Entry_2017.csv``,
    each possibly gzipped. Raises :class:`CxrError` naming the files looked for."""
    data_dir = Path(data_dir)
    found = candidates(data_dir, METADATA_NAMES)
    if found:
        return found[0]
    wanted = ", ".join(f"{n}[.gz]" for n in METADATA_NAMES)
    raise CxrError(f"no NIH metadata in {data_dir}: expected one of {wanted}")


def read_metadata(path: str | Path, age_max: float = 120) -> pd.DataFrame:
    """Read NIH's ``Data_Entry_2017[_v2020].csv[.gz]`` into one row per image.

    Columns: ``image, patient_id, follow_up, age, age_outlier, sex, view, width, height, spacing_x, spacing_y`` and
    one ``uint8`` 0/1 column per name in :data:`cxr.labels.LABELS`. An age outside ``0..age_max`` (the 2017
    release's 148-414 "years" are data-entry errors) is flagged in ``age_outlier`` and set to NaN, keeping the
    image; an empty age is NaN too. The 2017 release's trailing comma is accepted; any other extra cell is an error.
    """
    path = Path(path)
    with open_text(path) as handle:
        header = next(csv.reader([handle.readline()]), [])
    header = [name.strip() for name in header]
    while header and not header[-1]:
        header.pop()  # the 2017 release ends its header with a comma too
    for column in METADATA_COLUMNS:
        if column not in header:
            raise InputFormatError(path, f"missing column (found: {', '.join(header) or 'nothing'})", 1, column)
    # One spare column absorbs the 2017 release's empty 12th cell; a 13th cell makes pandas raise with its line.
    table = read_rows(path, [*header, "_extra"])
    extra = f"#{len(header) + 1}"
    fail_at(path, table["_extra"], table["_extra"] != "", extra, lambda v: f"unexpected extra cell {v!r}")

    images = table["Image Index"]
    fail_at(path, images, images == "", "Image Index", lambda v: "empty image name")
    duplicated = images.duplicated()
    if duplicated.any():
        line = int(duplicated.idxmax())
        first = int(images.index[images == images.at[line]][0])
        message = f"duplicate image {images.at[line]!r} (first on line {first})"
        raise InputFormatError(path, message, line=line, column="Image Index")

    out = pd.DataFrame({"image": images})
    for nih, ours in METADATA_COLUMNS.items():
        if ours not in (*_INTEGER_COLUMNS, *_FLOAT_COLUMNS, "age"):
            continue
        text = table[nih]
        values = pd.to_numeric(text, errors="coerce")
        bad = values.isna() & (text != "") if ours == "age" else values.isna()
        if ours in _INTEGER_COLUMNS:
            bad |= values.notna() & (values != values.round())
        kind = "an integer" if ours in _INTEGER_COLUMNS else "a number"
        fail_at(path, table[nih], bad, nih, lambda v, kind=kind: f"{v!r} is not {kind}")
        out[ours] = values.astype("int64") if ours in _INTEGER_COLUMNS else values.astype("float64")
    out["age_outlier"] = (out["age"] < 0) | (out["age"] > age_max)
    out.loc[out["age_outlier"], "age"] = np.nan
    out["sex"] = table["Patient Gender"]
    out["view"] = table["View Position"]

    # ~800 distinct label strings among 112,120 rows: parse each once with the canonical parser, then index.
    codes, uniques = pd.factorize(table["Finding Labels"])
    matrix = np.zeros((len(uniques), len(LABELS)), dtype=np.uint8)
    for code, text in enumerate(uniques):
        try:
            names = parse_finding_labels(text)
        except ValueError as error:
            line = int(table.index[codes == code][0])
            raise InputFormatError(path, str(error), line=line, column="Finding Labels") from None
        matrix[code, [LABELS.index(name) for name in names]] = 1
    labels = pd.DataFrame(matrix[codes], columns=list(LABELS), index=out.index)
    columns = ["image", "patient_id", "follow_up", "age", "age_outlier", "sex", "view", "width", "height"]
    return pd.concat([out[[*columns, "spacing_x", "spacing_y"]], labels], axis=1).reset_index(drop=True)


def read_image_list(path: str | Path) -> list[str]:
    """Image names of ``train_val_list.txt`` / ``test_list.txt``, one per line (the last line may lack a newline)."""
    try:
        with open_text(Path(path)) as handle:  # gzipped or not, like the metadata
            text = handle.read()
    except (UnicodeDecodeError, OSError, EOFError) as error:
        raise InputFormatError(path, f"not a text list of image names ({type(error).__name__}: {error})") from error
    return [name for name in (line.strip() for line in text.splitlines()) if name]


def read_blacklist(path: str | Path) -> set[str]:
    """Image names of AzureChestXRay's ``blacklist.csv`` (header ``black``; CR-only line endings are accepted)."""
    names = read_image_list(path)  # str.splitlines splits on CR, LF and CRLF alike
    if names and names[0].lower() == "black":
        names = names[1:]
    return set(names)


def read_boxes(path: str | Path) -> pd.DataFrame:
    """NIH's ``BBox_List_2017.csv``: columns ``image, finding, x, y, w, h`` (floats, in the PNG's pixels).

    The header is ``Image Index,Finding Label,Bbox [x,y,w,h],,,``; NIH spells Infiltration ``Infiltrate`` there.
    """
    path = Path(path)
    with open_text(path) as handle:
        header = next(csv.reader([handle.readline()]), [])
    if [h.strip() for h in header[:2]] != ["Image Index", "Finding Label"] or len(header) < 6:
        raise InputFormatError(path, "expected the header 'Image Index,Finding Label,Bbox [x,y,w,h],,,'", 1)
    names = ["image", "finding", "x", "y", "w", "h"]
    table = read_rows(path, names + [f"_extra{i}" for i in range(len(header) - len(names))])
    out = pd.DataFrame({"image": table["image"]})
    for column in names[2:]:
        out[column] = pd.to_numeric(table[column], errors="coerce").astype("float64")
        where = f"Bbox [x,y,w,h] ({column})"
        fail_at(path, table[column], out[column].isna(), where, lambda v: f"box coordinate {v!r} is not a number")
    findings = {}
    for text in table["finding"].unique():
        try:
            findings[text] = canonical_name(text)
            if findings[text] not in LABELS[:-1]:
                raise ValueError(f"{text!r} is not a finding")
        except ValueError as error:
            bad = table["finding"] == text
            fail_at(path, table["finding"], bad, "Finding Label", lambda v, e=error: str(e))
    out["finding"] = table["finding"].map(findings)
    return out[names].reset_index(drop=True)


def find_images(data_dir: str | Path) -> dict[str, Path]:
    """Every image file anywhere below ``data_dir`` (e.g. ``images_001/images/*.png``), by file name.

    A fast ``os.scandir`` walk; hidden folders are skipped. Folders are visited in sorted order, so when a name
    occurs twice the first path in that order wins, deterministically.
    """
    found: dict[str, Path] = {}
    pending = [os.fspath(data_dir)]
    while pending:
        with os.scandir(pending.pop()) as entries:
            ordered = sorted(entries, key=lambda e: e.name)
        subdirs = []
        for entry in ordered:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subdirs.append(entry.path)
            elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES and entry.name not in found:
                found[entry.name] = Path(entry.path)
        pending.extend(reversed(subdirs))  # depth-first, in sorted order
    return found
