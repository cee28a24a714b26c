"""The durable journal of a resumable chunked writer (``cxr prepare``'s images, ``cxr embed``'s vectors): one JSON line
per finished chunk, committed only after the rows it vouches for are on disk, so a run killed at any moment (even by a
power cut) resumes exactly at the chunks not journaled. Each writer journals its own typed record per chunk.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar


class ChunkRecord(Protocol):
    """What a writer records of a finished chunk: any record that is a JSON object."""

    def to_dict(self) -> dict[str, Any]: ...


Record = TypeVar("Record", bound=ChunkRecord)


@dataclass(frozen=True)
class ChunkResult:
    """``cxr prepare``'s decoded chunk: each image's source ``[width, height]`` (None if rejected) and, by position
    in the chunk (a string: JSON keys are), the reason of each rejected image."""

    sizes: list[list[int] | None]
    rejects: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkResult:
        return cls(data["sizes"], data["rejects"])


def read_journal(path: Path, record: Callable[[dict[str, Any]], Record]) -> dict[int, Record]:
    """Finished chunks from the journal, each line made a record by ``record``; a torn last line (a kill mid-write) is
    dropped and truncated away."""
    done, good = {}, 0
    if path.exists():
        data = path.read_bytes()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                fields = json.loads(line)
            except ValueError:
                break
            done[int(fields.pop("chunk"))] = record(fields)
            good += len(line)
        if good < len(data):
            with open(path, "r+b") as handle:
                handle.truncate(good)
    return done


class Journal(Generic[Record]):
    """Finished chunks of a running writer, committed every ``interval`` seconds: fdatasync(the data file) first,
    then their journal lines, fsynced, so that a line only ever vouches for rows already on disk."""

    def __init__(self, path: Path, data_path: Path, done: dict[int, Record], interval: float):
        self.done, self.pending, self.last, self.interval = done, [], time.monotonic(), interval
        self.file = open(path, "ab")  # noqa: SIM115  closed by close()
        self.data = os.open(data_path, os.O_RDONLY)  # fdatasync flushes the file's pages, mapped ones too

    def add(self, chunk: int, result: Record) -> None:
        self.done[chunk] = result
        self.pending.append((json.dumps({"chunk": chunk, **result.to_dict()}) + "\n").encode())
        if time.monotonic() - self.last >= self.interval:
            self.commit()

    def commit(self) -> None:
        if self.pending:
            os.fdatasync(self.data)
            self.file.write(b"".join(self.pending))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.pending.clear()
        self.last = time.monotonic()

    def close(self) -> None:
        """Commit what finished (also when an exception is on its way out), then close."""
        try:
            self.commit()
        finally:
            self.file.close()
            os.close(self.data)
