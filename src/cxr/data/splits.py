"""Patient-wise splits of NIH ChestX-ray14: the official one, a validation carve-out, and a ratio split.

NIH images of one patient (up to 184 follow-ups) look alike; a patient on two sides of a split leaks and inflates
the scores (the original project's flaw 1, see ``docs/experiments.md``). Every function here splits by
``patient_id`` and checks the result with :func:`assert_patient_disjoint` before returning it.

The stratified splits use iterative stratification (Sechidis, Tsoumakas & Vlahavas, "On the stratification of
multi-label data", ECML PKDD 2011), applied to patients instead of images: each patient carries the count of its
images per finding, the rarest finding is placed first, and every patient goes to the part that most lacks it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import CxrError
from cxr.labels import FINDINGS

SPLIT_VALUES = ("train_val", "test", "")


class PatientOverlapError(CxrError):
    """A patient has images on two sides of a split."""


def _patients(part) -> np.ndarray:
    """The patient ids of a split part: a table with ``patient_id``, a Series, or any array of ids."""
    if isinstance(part, pd.DataFrame):
        part = part["patient_id"]
    return np.unique(np.asarray(part))


def assert_patient_disjoint(*parts, names: Sequence[str] | None = None) -> None:
    """Raise :class:`PatientOverlapError` if any patient appears in two of ``parts``.

    Each part is a table with a ``patient_id`` column, a Series of patient ids, or an array of patient ids.
    """
    names = list(names) if names is not None else [f"part {i}" for i in range(len(parts))]
    patients = [_patients(part) for part in parts]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            shared = np.intersect1d(patients[i], patients[j])
            if len(shared):
                examples = ", ".join(str(p) for p in shared[:5])
                raise PatientOverlapError(
                    f"{len(shared)} patients are in both {names[i]} and {names[j]} (e.g. {examples}): "
                    "a patient on two sides of a split leaks between them"
                )


def official_split(
    table: pd.DataFrame,
    train_val: Iterable[str] | None = None,
    test: Iterable[str] | None = None,
    source: str | Path | None = None,
) -> pd.Series:
    """NIH's official split of ``table``'s rows: ``"train_val"``, ``"test"``, or ``""`` for an image in neither.

    With the two lists (``train_val_list.txt``, ``test_list.txt``: 86,524 and 25,596 images) the split is built
    from them; without, ``table["split"]`` (a dataset's metadata or a store's index) is validated and returned.
    Raises :class:`CxrError` for an image in both lists and :class:`PatientOverlapError` if the split is not
    patient-disjoint.
    """
    where = f" in {source}" if source else ""
    if train_val is None and test is None:
        if "split" not in table.columns:
            raise CxrError(f"no official split{where}: the table has no 'split' column and no lists were given")
        split = table["split"].astype(str)
        unknown = sorted(set(split.unique()) - set(SPLIT_VALUES))
        if unknown:
            raise CxrError(f"unknown split values{where}: {unknown} (expected 'train_val', 'test' or '')")
    else:
        train_val, test = set(train_val or ()), set(test or ())
        both = sorted(train_val & test)
        if both:
            raise CxrError(f"{len(both)} images are in both train_val_list.txt and test_list.txt, e.g. {both[:3]}")
        split = pd.Series("", index=table.index, dtype=object)
        split[table["image"].isin(train_val)] = "train_val"
        split[table["image"].isin(test)] = "test"
    parts = [table.loc[split == value, "patient_id"] for value in ("train_val", "test")]
    assert_patient_disjoint(*parts, names=[f"train_val{where}", f"test{where}"])
    return split.rename("split")


def _stratified_patients(
    table: pd.DataFrame, ratios: Sequence[float], rng: np.random.Generator, stratify: bool
) -> np.ndarray:
    """The part (0..k-1) of each row of ``table``, grouped by patient, sized by ``ratios`` in images."""
    patient_codes, patient_ids = pd.factorize(table["patient_id"], sort=True)
    n_patients = len(patient_ids)
    sizes = np.bincount(patient_codes, minlength=n_patients).astype(np.float64)
    findings = [name for name in FINDINGS if name in table.columns] if stratify else []
    counts = np.zeros((n_patients, len(findings)))
    if findings:
        np.add.at(counts, patient_codes, table[findings].to_numpy(dtype=np.float64))
    ratios = np.asarray(ratios, dtype=np.float64)
    wanted = ratios[:, None] * counts.sum(axis=0)[None, :]  # positives each part still lacks, per finding
    wanted_size = ratios * sizes.sum()  # images each part still lacks
    part_of = np.full(n_patients, -1)
    order = rng.permutation(n_patients)  # ties and the order within a finding follow the seed

    def place(patient: int, finding: int | None) -> None:
        # Only parts that still lack images compete (so sizes stay near the ratios), unless none does.
        open_parts = np.flatnonzero(wanted_size > 0) if (wanted_size > 0).any() else np.arange(len(ratios))
        lack = (wanted[:, finding] if finding is not None else wanted_size)[open_parts]
        best = open_parts[lack == lack.max()]
        if len(best) > 1 and finding is not None:  # break ties by overall size, then at random
            best = best[wanted_size[best] == wanted_size[best].max()]
        part = int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])
        part_of[patient] = part
        wanted[part] -= counts[patient]
        wanted_size[part] -= sizes[patient]

    remaining = counts[order].sum(axis=0)
    while findings and remaining.max() > 0:
        # The rarest finding still unplaced goes first: its few patients decide whether it is represented at all.
        finding = int(np.argmin(np.where(remaining > 0, remaining, np.inf)))
        for patient in order[(counts[order, finding] > 0) & (part_of[order] < 0)]:
            place(patient, finding)
            remaining -= counts[patient]
    for patient in order[part_of[order] < 0]:
        place(patient, None)
    return part_of[patient_codes]


def _split_rows(table: pd.DataFrame, ratios: Sequence[float], seed: int, stratify: bool) -> list[np.ndarray]:
    ratios = np.asarray(ratios, dtype=np.float64)
    if len(ratios) < 2 or (ratios <= 0).any() or not np.isclose(ratios.sum(), 1.0):
        raise CxrError(f"split ratios must be positive and sum to 1, got {list(map(float, ratios))}")
    if "patient_id" not in table.columns:
        raise CxrError("cannot split by patient: the table has no 'patient_id' column")
    part = _stratified_patients(table, ratios, np.random.default_rng(seed), stratify)
    parts = [table.index.to_numpy()[part == k] for k in range(len(ratios))]
    assert_patient_disjoint(*(table.loc[p, "patient_id"] for p in parts))
    return parts


def carve_validation(
    table: pd.DataFrame, fraction: float = 0.1, seed: int = 0, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Carve a patient-wise validation set out of ``table`` (normally the official ``train_val`` rows).

    Returns ``(train_index, val_index)``: labels of ``table.index``, in table order. About ``fraction`` of the images
    go to validation (whole patients only, so not exactly), stratified on the 14 findings as far as the patients
    allow; the same ``seed`` gives the same carve-out.
    """
    if not 0 < fraction < 1:
        raise CxrError(f"the validation fraction must be between 0 and 1, got {fraction}")
    train, val = _split_rows(table, (1 - fraction, fraction), seed, stratify)
    return train, val


def ratio_split(
    table: pd.DataFrame, ratios: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0, stratify: bool = True
) -> tuple[np.ndarray, ...]:
    """Split ``table`` patient-wise in the given ratios of images (e.g. train/val/test 70/10/20, as the original's
    ``disease-only`` experiment did, but by patient). Returns one array of ``table.index`` labels per ratio."""
    return tuple(_split_rows(table, ratios, seed, stratify))
