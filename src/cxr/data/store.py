"""The store: ``cxr prepare``'s output, read by training, evaluation and localisation.

Format (``docs/architecture.md``, "The store"): ``images.npy`` (uint8, N x S x S, memory-mapped), ``index.parquet``
(one row per usable image, ``row`` pointing into images.npy), ``rejects.csv``, ``manifest.json`` and, when the
source had NIH's ``BBox_List_2017.csv``, ``boxes.parquet`` with the boxes already in store pixels. Like nanoGPT's
``train.bin``, a store is written once and then only memory-mapped.

This module owns the format on disk, both ways: :class:`Store` reads a finished store; the writing helpers
(:class:`StoreSource`, :func:`allocate_images`, :func:`write_tables`, and :mod:`cxr.data.journal`) are what
:mod:`cxr.data.prepare` uses to write one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from cxr import __version__
from cxr.data.manifest import FORMAT, FORMAT_VERSION, StoreCounts, StoreManifest, StoreParams
from cxr.errors import CxrError, InputFormatError
from cxr.files import replacing, write_bytes, write_json
from cxr.imaging.geometry import box_to_store
from cxr.labels import LABELS
from cxr.provenance import environment

INDEX_COLUMNS = (
    "image", "row", "patient_id", "follow_up", "split", "blacklisted", "view", "age", "sex",
    "source_width", "source_height", *LABELS,
)  # fmt: skip
"""index.parquet of an NIH store: NIH's own labels as uint8 0/1 (another dataset's store has the common vocabulary's
labels, NaN-able: :data:`cxr.data.datasets.source.INDEX_COLUMNS`)."""
BOX_COLUMNS = ("image", "row", "finding", "x", "y", "w", "h")
IN_PROGRESS = ".prepare-state.json"
"""Present while ``cxr prepare`` has not finished the store (interrupted or running)."""
JOURNAL = ".prepare-journal.jsonl"
"""Chunks a running ``cxr prepare`` has finished, one JSON line each (see :class:`cxr.data.journal.Journal`)."""


# Writing, while prepare runs: the source, the preallocated images, the tables and the manifest last.


@dataclass
class StoreSource:
    """What the store writer reads of a dataset: the metadata table (unique ``image`` keys, one row per listed
    image, the store index's columns), the image files on disk by ``image``, the files it came from, the boxes
    (``image, finding, x, y, w, h`` in source pixels), and which columns the index keeps. A reader makes one
    (:func:`cxr.data.datasets.source.store_source`, or its own)."""

    name: str
    root: Path
    metadata: pd.DataFrame
    images: dict[str, Path]
    files: dict[str, Path | None]
    """``metadata`` (required) and ``boxes`` (None if the boxes are not from a file of their own) among others."""
    index_columns: tuple[str, ...]
    boxes: pd.DataFrame | None = None
    seeded: bool = True
    """Whether the split depends on prepare's ``--seed`` (False for a dataset with official lists only)."""


def allocate_images(path: Path, shape: tuple[int, int, int]) -> None:
    """Create images.npy (zeros) and reserve its disk space now: a full disk is a clear error here, not a worker
    killed by SIGBUS when it writes into a sparse memory map hours later."""
    images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    length = images.offset + images.nbytes
    del images
    try:
        with open(path, "r+b") as handle:
            os.posix_fallocate(handle.fileno(), 0, length)
    except OSError as error:
        path.unlink(missing_ok=True)
        raise CxrError(f"cannot reserve {length / 1e9:.1f} GB for {path} ({error.strerror}): free disk space or "
                       "choose another --out") from None  # fmt: skip


def write_tables(
    out: Path,
    source: StoreSource,
    present: np.ndarray,
    sizes: list[list[int] | None],
    reasons: dict[int, str],
    params: StoreParams,
    decoder: str,
) -> StoreManifest:
    """Write the store's tables once every row of ``images.npy`` is done; ``manifest.json`` last, as the seal.

    ``present[i]`` says whether metadata row ``i`` is on disk (store rows are those, in metadata order);
    ``sizes[row]`` is ``[width, height]`` of the decoded source image or None if rejected with ``reasons[row]``.
    ``decoder`` names what decoded the images (:mod:`cxr.imaging.decode`, area interpolation); the manifest also
    records this process's versions and machine, without a time (a resumed run writes the same bytes).
    """
    table = source.metadata
    columns = list(source.index_columns)
    stored = table[present].reset_index(drop=True)
    stored["row"] = np.arange(len(stored), dtype=np.int64)
    usable = np.array([s is not None for s in sizes], dtype=bool)
    decoded = np.array([s or (0, 0) for s in sizes], dtype=np.int64).reshape(-1, 2)
    stored["source_width"], stored["source_height"] = decoded[:, 0], decoded[:, 1]
    index = stored.loc[usable, columns].reset_index(drop=True)
    for column in ("image", "split", "view", "sex", "patient_id", "official_split"):
        if column in index and (column != "patient_id" or index[column].dtype == object):
            index[column] = index[column].astype(str)
    with replacing(out / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)

    # Rejects in metadata order: missing files (no row) and images that failed to decode (a zero row).
    positions = np.flatnonzero(present)
    reason_at = {int(i): "missing: listed in the metadata but not found below the data folder"
                 for i in np.flatnonzero(~present)}  # fmt: skip
    reason_at.update({int(positions[row]): reason for row, reason in reasons.items()})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image", "reason"])
    writer.writerows([table.at[i, "image"], reason_at[i]] for i in sorted(reason_at))
    write_bytes(out / "rejects.csv", buffer.getvalue().encode())

    boxes_file = None
    if source.boxes is not None:
        boxes = source.boxes.merge(index[["image", "row", "source_width", "source_height"]], on="image")
        x, y, w, h = box_to_store(*(boxes[c].to_numpy() for c in "xywh"), boxes["source_width"].to_numpy(),
                                  boxes["source_height"].to_numpy(), params.crop, params.size)  # fmt: skip
        boxes = boxes.assign(x=x, y=y, w=w, h=h)[list(BOX_COLUMNS)].sort_values(["row", "finding"], kind="stable")
        with replacing(out / "boxes.parquet") as tmp:
            boxes.reset_index(drop=True).to_parquet(tmp, index=False)
        boxes_file = "boxes.parquet"

    missing = int((~present).sum())
    counts = StoreCounts(
        listed=len(table),
        rows=len(stored),
        images=len(index),
        rejected=len(reason_at),
        missing=missing,
        undecodable=len(reason_at) - missing,
        train_val=int((index["split"] == "train_val").sum()),
        test=int((index["split"] == "test").sum()),
        blacklisted=int(index["blacklisted"].sum()) if "blacklisted" in index else 0,
        boxes=0 if boxes_file is None else len(boxes),
    )
    boxes_source = source.files.get("boxes")
    manifest = StoreManifest(
        params, source.files["metadata"].name, boxes_source.name if boxes_source else None, boxes_file, counts,
        __version__, decoder, "area", environment(timestamp=False).to_dict(),
    )  # fmt: skip
    write_json(out / "manifest.json", manifest.to_dict())
    return manifest


class Store:
    """A finished store, opened read-only. ``images`` is memory-mapped lazily (and again in each DataLoader
    worker: pickling a Store does not copy the pixels)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        hint = f"make one with `cxr prepare DATA --out {self.path}`"
        if not self.path.is_dir():
            raise CxrError(f"{self.path}: no such store folder ({hint})")
        manifest_path = self.path / "manifest.json"
        if not manifest_path.exists():
            if (self.path / IN_PROGRESS).exists():
                raise CxrError(f"{self.path} is an incomplete store (cxr prepare was interrupted or is running): "
                               "rerun the same `cxr prepare` command to finish it")  # fmt: skip
            raise CxrError(f"{self.path} is not a cxr store: it has no manifest.json ({hint})")
        try:
            data = json.loads(manifest_path.read_text())
        except ValueError as error:
            raise InputFormatError(manifest_path, f"not valid JSON ({error})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CxrError(f"{self.path} is not a cxr store: manifest.json has format {found!r}")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CxrError(f"{self.path} was written by a newer cxr (store format {data['format_version']})")
        if not data.get("complete"):
            raise CxrError(f"{self.path} is an incomplete store: rerun the same `cxr prepare` command to finish it")
        try:
            self.manifest: StoreManifest = StoreManifest.from_dict(data)
        except CxrError as error:
            raise CxrError(f"{self.path} is damaged: {error} (prepare it again with --force)") from None
        for name in ("images.npy", "index.parquet"):
            if not (self.path / name).is_file():
                raise CxrError(f"{self.path} is damaged: {name} is missing (prepare it again with --force)")
        self._images: np.ndarray | None = None

    @property
    def manifest_sha256(self) -> str:
        """SHA-256 of ``manifest.json``'s bytes: names this store (its counts, geometry, versions) without its path."""
        return hashlib.sha256((self.path / "manifest.json").read_bytes()).hexdigest()

    @property
    def size(self) -> int:
        """Side of every stored image, in pixels."""
        return self.manifest.size

    @property
    def crop(self) -> float:
        """Fraction of the shorter source side kept by the centered square crop."""
        return self.manifest.crop

    @cached_property
    def index(self) -> pd.DataFrame:
        """One row per usable image (``docs/architecture.md``); ``row`` addresses :attr:`images`."""
        return pd.read_parquet(self.path / "index.parquet")

    @property
    def images(self) -> np.ndarray:
        """All rows, ``(N, S, S)`` uint8, read-only memory map (rows of rejected images are zero and unindexed)."""
        if self._images is None:
            images = np.load(self.path / "images.npy", mmap_mode="r")
            if images.ndim != 3 or images.shape[1:] != (self.size, self.size) or images.dtype != np.uint8:
                raise CxrError(f"{self.path} is damaged: images.npy is {images.dtype}{images.shape}, "
                               f"expected uint8 (N, {self.size}, {self.size})")  # fmt: skip
            self._images = images
        return self._images

    def image(self, row: int) -> np.ndarray:
        """The ``(S, S)`` uint8 image at images.npy row ``row`` (the index's ``row`` column, not its position)."""
        return np.asarray(self.images[row])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def has_boxes(self) -> bool:
        """Whether the source had NIH's box list (``BBox_List_2017.csv``)."""
        return bool(self.manifest.boxes)

    def boxes(self) -> pd.DataFrame:
        """Boxes in store pixels: ``image, row, finding, x, y, w, h`` (clipped to the stored square)."""
        if not self.has_boxes:
            raise CxrError(f"{self.path} has no boxes: its source had no BBox_List_2017.csv")
        return pd.read_parquet(self.path / str(self.manifest.boxes))

    def rejects(self) -> pd.DataFrame:
        """Images that are not in the store, with the reason (``image, reason``)."""
        return pd.read_csv(self.path / "rejects.csv", dtype=str, keep_default_na=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_images"] = None  # re-mapped on first use in the other process instead of pickling the pixels
        return state

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, size={self.size}, crop={self.crop}, images={len(self)})"
