"""Patient attributes in one vocabulary across datasets: ``sex`` (``F``/``M``), ``age`` (years), ``view`` (``PA``,
``AP``, ``LATERAL``, ...), as stores keep them and subgroup evaluation reads them.

Each dataset spells them its own way: NIH ``Patient Gender`` ``F``/``M`` and ``View Position`` ``PA``/``AP``;
CheXpert ``Sex`` ``Female``/``Male``/``Unknown``, ``Age``, ``Frontal/Lateral`` and ``AP/PA``; PadChest
``PatientSex_DICOM`` ``F``/``M``/``O``, no age but ``PatientBirth`` (a year) and ``StudyDate_DICOM`` (``YYYYMMDD``),
``Projection`` ``PA``/``L``/``AP``/``AP_horizontal``/...; MIMIC-CXR ``ViewPosition`` ``PA``/``AP``/``LATERAL``/``LL``
with sex and age in MIMIC-IV's ``patients.csv`` (``gender``, ``anchor_age`` in ``anchor_year``, both shifted
consistently with MIMIC-CXR's ``StudyDate``). What is unknown stays empty (``""``, NaN), never guessed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEXES = {"f": "F", "female": "F", "m": "M", "male": "M"}
"""Spellings of sex -> ``F``/``M``; anything else (``Unknown``, ``O``, empty) is unknown (``""``)."""

VIEWS = {"l": "LATERAL", "ll": "LATERAL", "rl": "LATERAL", "lateral": "LATERAL", "ap_horizontal": "AP"}
"""Spellings of a view that differ from the upper-cased name (PadChest ``AP_horizontal`` is a supine AP film)."""

UNKNOWN_VIEWS = {"", "unk", "unknown", "exclude", "nan", "none"}


def harmonise_sex(values: pd.Series | np.ndarray | list) -> pd.Series:
    """``F``, ``M`` or ``""`` per value, case and spaces ignored."""
    text = pd.Series(values, dtype=object).fillna("").astype(str).str.strip().str.lower()
    return text.map(SEXES).fillna("").astype(str)


def harmonise_view(values: pd.Series | np.ndarray | list) -> pd.Series:
    """Upper-case view names with the lateral spellings joined (``L``, ``LL`` -> ``LATERAL``); ``""`` if unknown."""
    text = pd.Series(values, dtype=object).fillna("").astype(str).str.strip()
    lower = text.str.lower()
    named = lower.map(VIEWS).fillna(text.str.upper())
    return named.where(~lower.isin(UNKNOWN_VIEWS), "").astype(str)


def harmonise_age(values: pd.Series | np.ndarray | list, age_max: float = 120) -> pd.Series:
    """Ages in years as float64; text, negatives and values above ``age_max`` are NaN (unknown, not guessed)."""
    age = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").astype("float64")
    return age.where((age >= 0) & (age <= age_max))


def age_at_study(birth_year: pd.Series, study_date: pd.Series) -> pd.Series:
    """Age in whole years at the study from a birth year (``1930`` or ``1930.0``) and a ``YYYYMMDD`` date: the
    study's year minus the birth year (PadChest gives no birth day, so this is exact to within one year)."""
    born = pd.to_numeric(pd.Series(birth_year, dtype=object), errors="coerce")
    year = pd.to_numeric(pd.Series(study_date, dtype=object).astype(str).str.strip().str[:4], errors="coerce")
    return harmonise_age(year - born)


def age_from_anchor(anchor_age: pd.Series, anchor_year: pd.Series, study_date: pd.Series) -> pd.Series:
    """MIMIC: ``anchor_age`` is the age in ``anchor_year``; the study's (shifted) year moves it by the difference."""
    age = pd.to_numeric(pd.Series(anchor_age, dtype=object), errors="coerce")
    anchor = pd.to_numeric(pd.Series(anchor_year, dtype=object), errors="coerce")
    year = pd.to_numeric(pd.Series(study_date, dtype=object).astype(str).str.strip().str[:4], errors="coerce")
    return harmonise_age(age + (year - anchor).fillna(0))
