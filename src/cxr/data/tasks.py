"""Tasks as data: which outputs, which rows, which patient-wise split, how the training part is sampled.

A task is the ``task`` section of a config (:class:`cxr.config.TaskConfig`). :func:`build_split` applies it to a
store's index in a fixed order that avoids the original project's leaks (``docs/experiments.md``, flaws 1 and 2):

1. rows: drop blacklisted images (``drop_blacklisted``), drop "No Finding" rows (``drop_no_finding``);
2. split by patient: the official lists with a stratified patient-wise validation carve-out of train_val
   (``split: official``), or a patient-wise 70/10/20 ratio split (``split: ratio``, the original's ``disease-only``);
3. sample the *training part only*: the original project's resampling (``original_balanced``) or a balanced binary
   set (``balanced``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxr.config import Sampling, TaskConfig
from cxr.data.splits import assert_patient_disjoint, carve_validation, ratio_split
from cxr.errors import CxrError
from cxr.labels import ANY_FINDING, COMMON_FINDINGS, COMMON_LABELS, FINDINGS, NO_FINDING, canonical_name

# The seed's resampling of multilabel-balanced (sklearn.utils.resample, random_state=123): per-class targets, drawn
# with replacement, for the rare findings; pure "No Finding" drawn down without replacement; every other image once.
SEED_CLASS_TARGETS = {
    "Cardiomegaly": 3500,
    "Consolidation": 3500,
    "Edema": 3500,
    "Emphysema": 3500,
    "Fibrosis": 3500,
    "Pleural_Thickening": 3500,
    "Pneumonia": 3500,
    "Hernia": 2500,
}
SEED_NO_FINDING_TARGET = 35000
SEED_REFERENCE_ROWS = 85690
"""Images the original resampled: official train_val minus the blacklist. Targets scale by ``n_train / 85,690``."""


@dataclass
class TaskSplit:
    """A task applied to a store index: the rows used, their part, and the training rows after sampling."""

    outputs: list[str]
    table: pd.DataFrame  # the rows used (store index columns) + "part": train | val | test
    train: np.ndarray  # index labels of ``table``, after sampling (repeats allowed)

    def rows(self, part: str) -> np.ndarray:
        """Index labels of ``table`` in ``part``; ``"train"`` is the sampled training set."""
        return self.train if part == "train" else self.table.index[self.table["part"] == part].to_numpy()

    def split_table(self) -> pd.DataFrame:
        """``RUN/split.parquet``: image, patient_id, part — before resampling (and store, dataset for several)."""
        extra = [column for column in ("store", "dataset") if column in self.table]
        return self.table[["image", "patient_id", "part", *extra]].reset_index(drop=True)


COMMON_TARGET = "common"
"""``task.target: common``: every finding of the common vocabulary that at least one store provides."""


def task_outputs(task: TaskConfig, provided: list[str] | None = None) -> list[str]:
    """The output labels: NIH's 14 findings, the common findings in ``provided`` (``task.target: common``; the
    labels the stores give, see :func:`provided_labels`), or one binary target ("Fibrosis", "Any Finding", ...)."""
    if task.target == "findings":
        return list(FINDINGS)
    if task.target == COMMON_TARGET:
        return [name for name in COMMON_FINDINGS if provided is None or name in provided]
    try:
        return [canonical_name(task.target, COMMON_LABELS)]
    except ValueError as error:
        raise CxrError(f"task.target: {error}; or 'findings' for NIH's 14 labels, 'common' for all given") from None


def provided_labels(table: pd.DataFrame) -> list[str]:
    """Common labels with at least one known (non-NaN) value in ``table``: those a store can teach."""
    return [name for name in COMMON_LABELS if name in table and table[name].notna().any()]


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A label column as float; NaN where the table lacks the column (an NIH store has no "Lung Opacity")."""
    if name not in table:
        return np.full(len(table), np.nan)
    return table[name].to_numpy(dtype=np.float64)


def targets(table: pd.DataFrame, outputs: list[str]) -> np.ndarray:
    """Targets ``(n, K)`` float32: 0/1, NaN where the store does not give the label; "Any Finding" is 1 − "No
    Finding"."""
    columns = [1 - _column(table, NO_FINDING) if name == ANY_FINDING else _column(table, name) for name in outputs]
    return np.stack(columns, axis=1).astype(np.float32)


def select_rows(index: pd.DataFrame, task: TaskConfig) -> pd.DataFrame:
    """The rows a task uses (before the split)."""
    rows = index
    if task.drop_blacklisted:
        rows = rows[~rows["blacklisted"].astype(bool)]
    if task.drop_no_finding:
        rows = rows[rows[NO_FINDING] == 0]
    if task.split == "official":
        rows = rows[rows["split"].isin(["train_val", "test"])]  # images in neither list have no official part
    if rows.empty:
        raise CxrError("the task leaves no images of this store (check the blacklist / split columns)")
    return rows


def split_parts(rows: pd.DataFrame, task: TaskConfig) -> pd.Series:
    """``train`` / ``val`` / ``test`` per row, patient-wise and seeded (``cxr.data.splits``)."""
    part = pd.Series("", index=rows.index, dtype=object, name="part")
    if task.split == "official":
        train_val = rows[rows["split"] == "train_val"]
        if train_val["patient_id"].nunique() < 2:
            raise CxrError("the official train_val part needs at least two patients for a validation carve-out")
        train, val = carve_validation(train_val, fraction=task.val_fraction, seed=task.split_seed)
        part[train], part[val] = "train", "val"
        part[rows.index[rows["split"] == "test"]] = "test"
    else:
        train, val, test = ratio_split(rows, ratios=task.ratios, seed=task.split_seed)
        part[train], part[val], part[test] = "train", "val", "test"
    return part


def seed_resampling_targets(n_train: int) -> tuple[dict[str, int], int]:
    """The original project's per-class targets and No Finding target scaled to a training part of ``n_train`` images.

    Rule: ``max(1, round(target × n_train / 85,690))`` — the same share of the training set the seed gave each
    class, so a 600-image synthetic store gets e.g. Fibrosis 25 and No Finding 245, and the full NIH training part
    (~77k images after a 10% validation carve-out) gets ~3,150 and ~31,500.
    """
    scale = n_train / SEED_REFERENCE_ROWS
    classes = {name: max(1, round(target * scale)) for name, target in SEED_CLASS_TARGETS.items()}
    return classes, max(1, round(SEED_NO_FINDING_TARGET * scale))


def seed_resample(train: pd.DataFrame, seed: int = 123) -> np.ndarray:
    """The seed's resampling of ``multilabel-balanced`` applied to the training part; returns index labels."""
    rng = np.random.default_rng(seed)
    class_targets, no_finding_target = seed_resampling_targets(len(train))
    drawn = []
    for name, target in class_targets.items():
        pool = train.index[train[name] == 1].to_numpy()
        if len(pool):
            drawn.append(rng.choice(pool, size=target, replace=True))
    pure = train.index[train[NO_FINDING] == 1].to_numpy()
    drawn.append(rng.choice(pure, size=min(no_finding_target, len(pure)), replace=False))
    rare = train[list(class_targets)].to_numpy().any(axis=1)
    drawn.append(train.index[~rare & (train[NO_FINDING] == 0).to_numpy()].to_numpy())
    return np.concatenate(drawn)


def balanced_sample(train: pd.DataFrame, outputs: list[str], seed: int = 123) -> np.ndarray:
    """All images of the smaller class + as many random images of the larger one (binary tasks)."""
    target = targets(train, outputs)[:, 0]
    positives, negatives = train.index[target == 1].to_numpy(), train.index[target == 0].to_numpy()
    if not len(positives) or not len(negatives):
        missing = "positives" if not len(positives) else "negatives"
        raise CxrError(f"the training part has no {missing} for {outputs[0]}: a larger store is needed")
    rng = np.random.default_rng(seed)
    n = min(len(positives), len(negatives))
    return np.concatenate([rng.choice(positives, n, replace=False), rng.choice(negatives, n, replace=False)])


def build_split(index: pd.DataFrame, task: TaskConfig) -> TaskSplit:
    """Apply a task to a store index: rows, patient-wise parts, then sampling of the training part only."""
    outputs = task_outputs(task, provided_labels(index))
    if task.sampling == "balanced" and len(outputs) != 1:
        raise CxrError("task.sampling=balanced needs a binary task (task.target=<one label>)")
    if task.sampling == Sampling.ORIGINAL_BALANCED and task.target != "findings":
        raise CxrError(
            "task.sampling=original_balanced is the original project's 14-label resampling (task.target=findings)"
        )
    rows = select_rows(index, task)
    table = rows.assign(part=split_parts(rows, task))
    table = table[table["part"] != ""]
    names = ["train", "val", "test"]
    assert_patient_disjoint(*(table[table["part"] == name] for name in names), names=names)
    train = table[table["part"] == "train"]
    if task.sampling == Sampling.ORIGINAL_BALANCED:
        sampled = seed_resample(train, task.sampling_seed)
    elif task.sampling == "balanced":
        sampled = balanced_sample(train, outputs, task.sampling_seed)
    else:
        sampled = train.index.to_numpy()
    return TaskSplit(outputs=outputs, table=table, train=sampled)


def store_shares(sizes: list[int], weights: list[float]) -> np.ndarray:
    """Each store's share of the training draws: ``weights`` normalised, or proportional to ``sizes`` when empty."""
    if not weights:
        return np.asarray(sizes, dtype=np.float64) / sum(sizes)
    if len(weights) != len(sizes):
        raise CxrError(f"data.store_weights has {len(weights)} values for {len(sizes)} stores: give one per store")
    shares = np.asarray(weights, dtype=np.float64)
    if not np.isfinite(shares).all() or (shares < 0).any() or shares.sum() <= 0:
        raise CxrError(f"data.store_weights must be non-negative numbers, not all 0; got {list(weights)}")
    return shares / shares.sum()


def weighted_draw(parts: list[np.ndarray], shares: np.ndarray, seed: int) -> np.ndarray:
    """The training rows drawn from each store in the ratio ``shares``, as many in all as the stores hold.

    A store whose share asks for fewer rows than it has gives a random subset (without replacement); one that asks
    for more gives all its rows plus a draw with replacement. Drawn once per run (seeded), like the other samplings.
    """
    rng = np.random.default_rng(seed)
    total = sum(len(p) for p in parts)
    drawn = []
    for rows, share in zip(parts, shares, strict=True):
        n = round(share * total)
        if n and not len(rows):
            raise CxrError("a store with a non-zero data.store_weights value has no training rows")
        if n <= len(rows):
            drawn.append(rng.choice(rows, size=n, replace=False))
        else:
            drawn.append(np.concatenate([rows, rng.choice(rows, size=n - len(rows), replace=True)]))
    return np.concatenate(drawn)


def build_multi_split(
    indices: list[pd.DataFrame], names: list[str], task: TaskConfig, weights: list[float] | None = None
) -> TaskSplit:
    """A task over several stores: each store split patient-wise on its own (:func:`build_split`), then the union.

    ``table`` gains ``store`` (the store's position) and ``dataset`` (``names``); patient ids are prefixed with the
    store's position so that two stores' patients never merge. The outputs are the task's over the union of the
    labels the stores provide; a label a store does not give is NaN on its rows (masked by the loss). The training
    rows are drawn per store in the ratio of ``weights`` (``data.store_weights``; by size when empty).
    """
    if len(indices) != len(names):
        raise ValueError("one name per store index")
    provided = sorted({name for index in indices for name in provided_labels(index)}, key=COMMON_LABELS.index)
    outputs = task_outputs(task, provided)
    tables, trains, offset = [], [], 0
    for k, index in enumerate(indices):
        single = build_split(index, task)
        patients = f"{k}:" + single.table["patient_id"].astype(str)
        table = single.table.assign(store=k, dataset=names[k], patient_id=patients)
        position = pd.Index(table.index)
        table.index = pd.RangeIndex(offset, offset + len(table))
        trains.append(table.index.to_numpy()[position.get_indexer(single.train)])
        tables.append(table)
        offset += len(table)
    table = pd.concat(tables)
    shares = store_shares([len(t) for t in trains], list(weights or []))
    train = np.concatenate(trains) if not weights else weighted_draw(trains, shares, task.sampling_seed)
    return TaskSplit(outputs=outputs, table=table, train=train)
