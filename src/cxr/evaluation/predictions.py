"""Predictions with their targets: anyone's predictions CSV, a run's validation predictions, ``RUN/eval`` folders.

A predictions CSV has an image-id column (``Image Index``, else the first column) and one probability column per
output, named ``<Finding>`` or ``prob_<Finding>`` with NIH's spelling (``Pleural_Thickening``, ``No Finding``;
``Any Finding`` = 1 - No Finding). Columns are matched by name, never by position, because published files use
other orders (CheXNet's, for one). Targets and patients come from NIH metadata (``datasets.nih.read_metadata``) or a
store's index, which share their columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.nih import read_image_list, read_metadata
from cxr.errors import CxrError, InputFormatError
from cxr.labels import ANY_FINDING, COMMON_LABELS, NO_FINDING, canonical_name

ID_COLUMN = "Image Index"
PROB_PREFIX = "prob_"


@dataclass
class ScoredSet:
    """Images with targets and predicted probabilities, aligned row for row; ``labels`` name the columns."""

    labels: list[str]
    images: np.ndarray  # (n,) image names
    patient_ids: np.ndarray  # (n,)
    targets: np.ndarray  # (n, K) uint8 0/1
    probabilities: np.ndarray  # (n, K) float64 in [0, 1]


def summary_labels(labels: list[str]) -> list[str]:
    """Labels averaged into macro/micro AUROC: every output but "No Finding" (unless it is the only one)."""
    findings = [label for label in labels if label != NO_FINDING]
    return findings or list(labels)


def match_columns(columns: list[str], path: str | Path) -> tuple[str, dict[str, str]]:
    """The id column and ``{label: column}`` of a predictions file's header, labels in canonical order.

    Raises :class:`InputFormatError` (line 1, naming the column) for a column that names no known finding, for
    two columns naming one finding, and when no probability column is left.
    """
    id_column = ID_COLUMN if ID_COLUMN in columns else columns[0]
    matched: dict[str, str] = {}
    for column in columns:
        if column == id_column:
            continue
        try:
            label = canonical_name(column.removeprefix(PROB_PREFIX), COMMON_LABELS)
        except ValueError as error:
            message = f"not an image id or a probability column <Finding> / prob_<Finding> ({error})"
            if column.startswith("Unnamed:") or not column:
                message = "a column without a name (a DataFrame index saved by pandas? use to_csv(index=False))"
            raise InputFormatError(path, message, line=1, column=column) from None
        if label in matched:
            raise InputFormatError(path, f"a second column for {label!r} (first: {matched[label]!r})", 1, column)
        matched[label] = column
    if not matched:
        raise InputFormatError(path, "no probability column (expected <Finding> or prob_<Finding>)", line=1)
    return id_column, {label: matched[label] for label in (*COMMON_LABELS, ANY_FINDING) if label in matched}


def read_predictions(path: str | Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read a predictions CSV (gz or not): ``(images, labels, probabilities (n, K))``, columns matched by name."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except FileNotFoundError:
        raise CxrError(f"predictions file not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise InputFormatError(path, f"malformed CSV ({str(error).strip()})") from None
    table.columns = [str(c).strip() for c in table.columns]
    id_column, matched = match_columns(list(table.columns), path)
    if table.empty:
        raise InputFormatError(path, "no predictions below the header", line=2)
    images = table[id_column].str.strip()
    for bad, message in ((images == "", "empty image id"), (images.duplicated(), "duplicate image id")):
        if bad.any():
            raise InputFormatError(path, message, line=int(bad.idxmax()) + 2, column=id_column)
    probabilities = np.empty((len(table), len(matched)))
    for k, column in enumerate(matched.values()):
        values = pd.to_numeric(table[column].str.strip(), errors="coerce").to_numpy(np.float64)
        bad = ~((values >= 0.0) & (values <= 1.0))  # NaN (text, empty) fails both comparisons
        if bad.any():
            row = int(np.argmax(bad))
            message = f"{table[column].iat[row]!r} is not a probability in [0, 1]"
            raise InputFormatError(path, message, line=row + 2, column=column)
        probabilities[:, k] = values
    return images.to_numpy(dtype=str), list(matched), probabilities


def label_targets(metadata: pd.DataFrame, labels: list[str]) -> np.ndarray:
    """0/1 targets ``(n, K)`` for output ``labels`` from a table with one column per NIH label."""
    columns = [1 - metadata[NO_FINDING] if label == ANY_FINDING else metadata[label] for label in labels]
    return np.stack([np.asarray(c, dtype=np.uint8) for c in columns], axis=1)


def provided_labels(labels: list[str], metadata: pd.DataFrame) -> list[str]:
    """The ``labels`` a metadata table (one column per label it gives) can score, in their order."""
    return [label for label in labels if label in metadata.columns or (label == ANY_FINDING and NO_FINDING in metadata)]


def _listing(names: list[str], total: int) -> str:
    shown = ", ".join(names[:5])
    return f"{shown}, ... ({total} in all)" if total > 5 else shown


def join_labels(
    images: np.ndarray,
    labels: list[str],
    probabilities: np.ndarray,
    metadata: pd.DataFrame,
    restrict_to: list[str] | None = None,
    source: str = "predictions",
) -> ScoredSet:
    """Align predictions with NIH metadata (``datasets.nih.read_metadata`` columns); optionally restrict to a list.

    With ``restrict_to`` (e.g. ``test_list.txt``) exactly those images are scored and each needs a prediction;
    every scored image needs labels. Violations raise :class:`CxrError` listing a few names.
    """
    position = pd.Index(images)
    if restrict_to is not None:
        wanted = pd.Index(pd.unique(np.asarray(restrict_to, dtype=str)))
        unpredicted = wanted[~wanted.isin(position)]
        if len(unpredicted):
            raise CxrError(f"{len(unpredicted)} listed images have no prediction in {source}: "
                           f"{_listing(list(unpredicted), len(unpredicted))}")  # fmt: skip
        rows = position.get_indexer(wanted)
        images, probabilities = images[rows], probabilities[rows]
    known = pd.Index(metadata["image"])
    unlabelled = ~pd.Index(images).isin(known)
    if unlabelled.any():
        names = list(images[unlabelled])
        raise CxrError(f"{len(names)} images of {source} have no labels in the metadata: {_listing(names, len(names))}")
    rows = known.get_indexer(images)
    chosen = metadata.iloc[rows]
    kept = provided_labels(labels, metadata)  # a model's other outputs (e.g. Lung Opacity) are not scored on NIH
    if not kept:
        raise CxrError(f"the labels of {source} ({', '.join(labels)}) are none the metadata provides")
    if len(kept) < len(labels):
        probabilities = np.asarray(probabilities)[:, [list(labels).index(label) for label in kept]]
        labels = kept
    return ScoredSet(
        labels=list(labels),
        images=np.asarray(images, dtype=str),
        patient_ids=chosen["patient_id"].to_numpy(),
        targets=label_targets(chosen, labels),
        probabilities=np.asarray(probabilities, dtype=np.float64),
    )


def load_predictions(
    predictions: str | Path, labels_csv: str | Path, images_list: str | Path | None = None
) -> ScoredSet:
    """Predictions mode input: a predictions CSV joined with an NIH metadata CSV, optionally restricted to a list."""
    images, labels, probabilities = read_predictions(predictions)
    if not Path(labels_csv).is_file():
        raise CxrError(f"labels file not found: {labels_csv}")
    restrict = read_image_list(images_list) if images_list is not None else None
    return join_labels(images, labels, probabilities, read_metadata(labels_csv), restrict, source=str(predictions))


def write_scored_set(data: ScoredSet, folder: str | Path) -> None:
    """Write ``predictions.csv`` (``Image Index`` + ``prob_<label>``) and ``targets.csv`` (+ ``Patient ID``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probabilities = pd.DataFrame(data.probabilities, columns=[PROB_PREFIX + label for label in data.labels])
    probabilities.insert(0, ID_COLUMN, data.images)
    probabilities.to_csv(folder / "predictions.csv", index=False, float_format="%.9g")
    targets = pd.DataFrame(data.targets, columns=data.labels)
    targets.insert(0, "Patient ID", data.patient_ids)
    targets.insert(0, ID_COLUMN, data.images)
    targets.to_csv(folder / "targets.csv", index=False)


def read_val_predictions(path: str | Path, labels: list[str]) -> ScoredSet:
    """A run's ``val_predictions.parquet`` (``Image Index``, ``Patient ID``, ``<label>``, ``prob_<label>``)."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"{path} is missing: thresholds are chosen on validation predictions, written by `cxr train`")
    table = pd.read_parquet(path)
    wanted = [ID_COLUMN, "Patient ID", *labels, *(PROB_PREFIX + label for label in labels)]
    missing = [c for c in wanted if c not in table.columns]
    if missing:
        raise InputFormatError(path, f"missing columns {missing}", column=missing[0])
    return ScoredSet(
        labels=list(labels),
        images=table[ID_COLUMN].to_numpy(dtype=str),
        patient_ids=table["Patient ID"].to_numpy(),
        targets=_val_targets(table[list(labels)]),
        probabilities=table[[PROB_PREFIX + label for label in labels]].to_numpy(np.float64),
    )


def _val_targets(table: pd.DataFrame) -> np.ndarray:
    """0/1 uint8; float with NaN where a run on several stores has rows that do not give a label."""
    values = table.to_numpy(np.float64)
    return values if np.isnan(values).any() else values.astype(np.uint8)


def read_scored_set(folder: str | Path) -> ScoredSet:
    """Read back what :func:`write_scored_set` wrote (``RUN/eval/<split>/``), for ``cxr compare``."""
    folder = Path(folder)
    for name in ("predictions.csv", "targets.csv"):
        if not (folder / name).is_file():
            raise CxrError(f"{folder / name} is missing: run `cxr evaluate` on the run first")
    images, labels, probabilities = read_predictions(folder / "predictions.csv")
    targets = pd.read_csv(folder / "targets.csv", dtype={ID_COLUMN: str}).set_index(ID_COLUMN)
    if not targets.index.equals(pd.Index(images)) or any(label not in targets for label in labels):
        raise CxrError(f"{folder}: predictions.csv and targets.csv do not match (images or labels differ)")
    return ScoredSet(
        labels, images, targets["Patient ID"].to_numpy(), targets[labels].to_numpy(np.uint8), probabilities
    )
