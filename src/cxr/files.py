"""Files written whole or not at all: a temporary file beside the target, flushed to disk, renamed over it.

A reader (another process, a resumed run, a user's viewer) never sees half a checkpoint, store table or report,
whatever moment the writer is killed at; what was there before stays until the new file is complete. The
temporary file is ``NAME.tmp`` in the same folder (a rename is atomic only within one file system) and takes the
umask's permissions, so a model written by one user stays readable by the team.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield the temporary path to write; when the block ends without error it replaces ``path``.

    On an error the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())  # on disk before the rename makes it visible: no empty file after a crash
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def plain(value):
    """A JSON-safe copy: numpy scalars and arrays to Python, NaN and infinities to null (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(document) -> str:
    """Strict, indented, newline-terminated JSON: the form of every JSON document cxr writes or prints."""
    return json.dumps(plain(document), indent=2) + "\n"


def write_json(path: str | Path, document) -> Path:
    write_bytes(path, to_json(document).encode())
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (weights and checkpoints are large): what artifacts, audit
    lines and downloads record to name exactly which file they came from."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
