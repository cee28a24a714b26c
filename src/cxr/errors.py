"""Errors the user can act on. The CLI prints them as one clear message (no traceback) and exits 2."""

from __future__ import annotations


class CxrError(Exception):
    """Base of every error that is the input's fault, not a bug."""


class InputFormatError(CxrError):
    """A malformed input file. The message names the file and, where known, the line (1-based) and column."""

    def __init__(self, path, message: str, line: int | None = None, column: str | None = None):
        self.path, self.line, self.column = str(path), line, column
        where = self.path
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


class ImageDecodeError(CxrError):
    """An image that cannot be decoded: empty, truncated, corrupt, unsupported, or too large."""


class ImageTooLargeError(ImageDecodeError):
    """An image over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""
