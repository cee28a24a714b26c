"""Where ``cxr predict`` writes its records as they come: a predictions CSV and a JSON-lines file, both resumable.

Each record is written (and flushed) as soon as its batch is done, so a dataset of 100,000 images never sits in
memory and a killed run leaves every finished line on disk. ``--resume`` reads back which images an output
already holds and skips them; a last line cut short by the kill is dropped before appending. The CSV is the
format ``cxr evaluate --predictions`` scores (``Image Index`` then ``prob_<finding>``); the JSON lines are the
records of ``cxr predict --json``, one per line.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from cxr.errors import CxrError, InputFormatError
from cxr.inference.predict import Prediction

INDEX_COLUMN = "Image Index"


def image_keys(images: Sequence[Path]) -> list[str]:
    """What identifies each image in the CSV: its file name, or its path for every image when two share a name
    (common in DICOM exports, ``IM0001.dcm`` in each series)."""
    names = [path.name for path in images]
    return names if len(set(names)) == len(names) else [str(path) for path in images]


class RecordSink(Protocol):
    """An output that takes records one at a time and knows which images it already holds."""

    path: Path

    def holds(self, image: str, key: str) -> bool:
        """Whether the output already has ``image`` (its path) whose CSV key is ``key``."""
        ...

    def write(self, prediction: Prediction, key: str) -> None: ...

    def close(self) -> None: ...


def _drop_partial_line(path: Path) -> None:
    """Cut a last line without its newline (the run was killed while writing it): it will be written again."""
    with open(path, "rb+") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size == 0:
            return
        handle.seek(max(0, size - 1))
        if handle.read(1) == b"\n":
            return
        handle.seek(0)
        content = handle.read()
        handle.truncate(content.rfind(b"\n") + 1)


class CsvSink:
    """``Image Index,prob_<finding>,...`` rows, appended and flushed one by one."""

    def __init__(self, path: Path, labels: Sequence[str], resume: bool = False):
        self.path, self.labels = Path(path), list(labels)
        self.header = [INDEX_COLUMN, *(f"prob_{label}" for label in self.labels)]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing: set[str] = set()
        if resume and self.path.is_file() and self.path.stat().st_size:
            _drop_partial_line(self.path)
            self.existing = self._read_keys()
        fresh = not (resume and self.path.is_file() and self.path.stat().st_size)
        self.handle = open(self.path, "w" if fresh else "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.writer = csv.writer(self.handle)
        if fresh:
            self.writer.writerow(self.header)
            self.handle.flush()

    def _read_keys(self) -> set[str]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header != self.header:
                raise InputFormatError(
                    self.path,
                    f"cannot resume: the columns are not this model's ({INDEX_COLUMN} + prob_ of "
                    f"{len(self.labels)} findings); write to another file",
                    line=1,
                )
            return {row[0] for row in rows if row}

    def holds(self, image: str, key: str) -> bool:
        return key in self.existing

    def write(self, prediction: Prediction, key: str) -> None:
        probabilities = prediction.probabilities
        self.writer.writerow([key, *(f"{probabilities[label]:.9g}" for label in self.labels)])
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


class JsonLinesSink:
    """One ``cxr predict --json`` record per line, appended and flushed one by one."""

    def __init__(self, path: Path, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.existing: set[str] = set()
        if resume and self.path.is_file():
            _drop_partial_line(self.path)
            self.existing = self._read_images()
        self.handle = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def _read_images(self) -> set[str]:
        images = set()
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    images.add(json.loads(line)["image"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputFormatError(self.path, "not a cxr predict record; cannot resume", line=number) from None
        return images

    def holds(self, image: str, key: str) -> bool:
        return image in self.existing

    def write(self, prediction: Prediction, key: str) -> None:
        self.handle.write(json.dumps(prediction.to_dict(), separators=(",", ":")) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def open_sinks(
    labels: Sequence[str], csv_path: Path | None, jsonl_path: Path | None, resume: bool
) -> list[CsvSink | JsonLinesSink]:
    """The outputs asked for; ``resume`` needs at least one of them."""
    if resume and csv_path is None and jsonl_path is None:
        raise CxrError("--resume needs an output to resume: --csv FILE or --jsonl FILE")
    sinks: list[CsvSink | JsonLinesSink] = []
    if csv_path is not None:
        sinks.append(CsvSink(csv_path, labels, resume))
    if jsonl_path is not None:
        sinks.append(JsonLinesSink(jsonl_path, resume))
    return sinks
