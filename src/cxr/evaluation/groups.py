"""Which group each scored image belongs to: attributes read from the labels' metadata or the store's index, and
from a ``--subgroup-file`` joined by image or patient id, harmonised and binned (:mod:`cxr.data.attributes`).

An image whose attribute is unknown (an empty cell, an age outside 0-120, an id the file does not list) is placed
in no group of that attribute (group ``""``); how many is reported (``subgroup_settings.missing``), never guessed.
Group names: ``sex`` ``F``/``M``; ``age`` ``0-20`` ... ``80+`` (``--age-bins``); ``view`` upper case (``PA``,
``AP``, ``LATERAL``); a file's column as written; an intersection joins its parts with ``*`` (``F*80+``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.attributes import harmonise_age, harmonise_sex, harmonise_view
from cxr.errors import CxrError, InputFormatError
from cxr.evaluation.predictions import ScoredSet

DEFAULT_AGE_BINS: tuple[float, ...] = (0, 20, 40, 60, 80)
"""Lower edges of the age groups: 0-20, 20-40, 40-60, 60-80, 80+ (Seyyed-Kalantari et al., Nature Medicine 2021)."""

IMAGE_KEYS, PATIENT_KEYS = ("Image Index", "image"), ("Patient ID", "patient_id")
"""A subgroup file's join column: an image column if it has one, else a patient column."""


@dataclass(frozen=True)
class SubgroupRequest:
    """What ``--subgroups``, ``--age-bins`` and ``--subgroup-file`` asked for."""

    attributes: tuple[str, ...]
    age_bins: tuple[float, ...] = DEFAULT_AGE_BINS
    subgroup_file: Path | None = None

    @classmethod
    def parse(cls, spec: str, age_bins: str | None = None, subgroup_file: str | Path | None = None) -> SubgroupRequest:
        """``"sex,age,sex*age"``, ``"0,18,65"``: CxrError naming the flag for an empty name or unordered bins."""
        attributes = tuple(term.strip() for term in spec.split(",") if term.strip())
        if not attributes or any(not part.strip() for term in attributes for part in term.split("*")):
            raise CxrError(f"--subgroups {spec!r}: give attribute names separated by commas, e.g. sex,age,sex*age")
        bins = DEFAULT_AGE_BINS
        if age_bins is not None:
            try:
                bins = tuple(float(edge) for edge in age_bins.split(","))
            except ValueError:
                raise CxrError(f"--age-bins {age_bins!r}: give ages separated by commas, e.g. 0,20,40,60,80") from None
            if bins[0] < 0 or any(b <= a for a, b in zip(bins, bins[1:], strict=False)):
                raise CxrError(f"--age-bins {age_bins!r}: edges must be increasing ages from 0 up")
        file = Path(subgroup_file) if subgroup_file is not None else None
        if file is not None and not file.is_file():
            raise CxrError(f"--subgroup-file not found: {file}")
        return cls(tuple("*".join(part.strip() for part in term.split("*")) for term in attributes), bins, file)

    @property
    def base_attributes(self) -> list[str]:
        """The attributes named, intersections split (``sex*age`` -> ``sex``, ``age``), each once."""
        return list(dict.fromkeys(part for term in self.attributes for part in term.split("*")))


def age_group_names(bins: tuple[float, ...]) -> list[str]:
    """``0-20``, ``20-40``, ..., ``80+`` for the lower edges ``bins``."""
    edges = [f"{edge:g}" for edge in bins]
    return [f"{low}-{high}" for low, high in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"]


def age_groups(age: pd.Series, bins: tuple[float, ...]) -> pd.Series:
    """Each age's group, ``[low, high)`` (20 is in 20-40); ``""`` for an unknown age or one below the first edge."""
    names = np.array(age_group_names(bins), dtype=object)
    years = harmonise_age(age).to_numpy()
    which = np.searchsorted(np.asarray(bins, dtype=np.float64), np.nan_to_num(years, nan=-1.0), side="right") - 1
    placed = np.isfinite(years) & (which >= 0)
    return pd.Series(np.where(placed, names[np.clip(which, 0, None)], ""), dtype=object)


HARMONISERS = {"sex": harmonise_sex, "view": harmonise_view}
"""Built-in attributes with a harmonised vocabulary (``age`` is binned by :func:`age_groups`)."""


def _key(values: pd.Series) -> pd.Series:
    """Join keys as text; all-digit ids without their leading zeros (``00001234`` and ``1234`` match)."""
    text = pd.Series(values, dtype=object).astype(str).str.strip()
    digits = text.str.fullmatch(r"\d+")
    return text.where(~digits, text[digits].str.lstrip("0").replace("", "0"))


def read_subgroup_file(path: Path, images: np.ndarray, patient_ids: np.ndarray) -> pd.DataFrame:
    """The file's columns for each scored image (``""`` where the file does not list it), joined by image id
    (``Image Index``/``image``) or else patient id (``Patient ID``/``patient_id``); a repeated id is an error."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputFormatError(path, f"malformed CSV ({str(error).strip()})") from None
    table.columns = [str(c).strip() for c in table.columns]
    key = next((c for c in (*IMAGE_KEYS, *PATIENT_KEYS) if c in table.columns), None)
    if key is None:
        wanted = ", ".join((*IMAGE_KEYS, *PATIENT_KEYS))
        raise InputFormatError(path, f"no id column to join on (one of {wanted}; found {', '.join(table.columns)})", 1)
    keys = _key(table[key])
    repeated = keys.duplicated()
    if repeated.any():
        raise InputFormatError(path, f"{table[key].iat[int(np.argmax(repeated))]!r} is listed twice",
                               line=int(np.argmax(repeated)) + 2, column=key)  # fmt: skip
    scored = images if key in IMAGE_KEYS else patient_ids
    rows = pd.Index(keys).get_indexer(_key(pd.Series(scored)))
    columns = [c for c in table.columns if c not in (*IMAGE_KEYS, *PATIENT_KEYS)]
    values = table[columns].to_numpy(dtype=object)
    if not len(values):  # a header without rows lists nobody
        return pd.DataFrame(np.full((len(rows), len(columns)), "", dtype=object), columns=columns)
    joined = np.where((rows >= 0)[:, None], values[np.clip(rows, 0, None)], "")
    return pd.DataFrame(joined, columns=columns)


def attribute_groups(
    data: ScoredSet, metadata: pd.DataFrame | None, request: SubgroupRequest
) -> tuple[pd.DataFrame, dict[str, list[str]], dict[str, str]]:
    """Group name of every scored image per requested attribute, the groups' order, and where each came from."""
    raw: dict[str, pd.Series] = {}
    sources: dict[str, str] = {}
    if metadata is not None:
        rows = pd.Index(metadata["image"].astype(str)).get_indexer(data.images.astype(str))
        for name in request.base_attributes:
            if name in metadata.columns:
                column = metadata[name].to_numpy(dtype=object)
                raw[name] = pd.Series(np.where(rows >= 0, column[np.clip(rows, 0, None)], None), dtype=object)
                sources[name] = "metadata"
    if request.subgroup_file is not None:
        extra = read_subgroup_file(request.subgroup_file, data.images, data.patient_ids)
        for name in extra.columns:
            raw[name], sources[name] = extra[name], str(request.subgroup_file)
    table, order = pd.DataFrame(index=range(len(data.images))), {}
    for name in request.base_attributes:
        if name not in raw:
            known = sorted({*(metadata.columns if metadata is not None else []), *raw})
            raise CxrError(f"attribute {name!r} is not in the labels' metadata or the store's index; give it with "
                           f"--subgroup-file CSV (an image or patient id column and a {name!r} column). Known "
                           f"columns: {', '.join(map(str, known)) or 'none'}")  # fmt: skip
        values = raw[name].reset_index(drop=True)
        if name == "age":
            table[name], order[name] = age_groups(values, request.age_bins), age_group_names(request.age_bins)
            continue
        harmonise = HARMONISERS.get(name, lambda v: pd.Series(v, dtype=object).fillna("").astype(str).str.strip())
        table[name] = harmonise(values).to_numpy(dtype=object)
        order[name] = sorted(set(table[name]) - {""})
    for term in request.attributes:
        parts = term.split("*")
        if len(parts) > 1:
            placed = np.logical_and.reduce([table[part] != "" for part in parts])
            table[term] = np.where(placed, table[parts].astype(str).agg("*".join, axis=1), "")
            order[term] = ["*".join(combo) for combo in _product([order[part] for part in parts])]
    return table, order, sources


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    combos: list[tuple[str, ...]] = [()]
    for names in lists:
        combos = [(*combo, name) for combo in combos for name in names]
    return combos
