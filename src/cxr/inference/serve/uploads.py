"""What ``cxr serve`` does with an upload before the model sees it: bound its size, parse it in memory, decode it in
a bounded pool.

Patient data stays in memory: the multipart body is parsed here from the bytes already buffered by the upload
limit (Starlette's ``UploadFile`` would spool any part over 1 MB to a temporary file on disk). The client's file
name is used for nothing but its suffix (``.dcm`` tells a DICOM file without a preamble), so it is never echoed or
logged. Decoding runs in a pool of its own with a time limit: a file whose decoding exceeds it is answered 422
while its thread finishes in the background (a thread cannot be stopped), and the pool's size bounds how many
decodes, and so how much decoding memory, run at once.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from fastapi.responses import JSONResponse
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

log = logging.getLogger(__name__)
T = TypeVar("T")

UPLOAD_NAME = "upload"
"""What an upload is called in answers, error messages and logs, whatever the client named its file."""
KNOWN_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
MAX_PARTS = 16
"""Parts a multipart body may have (the page sends one); more is not a client of this API."""


class HTTPProblem(Exception):
    """An error answered as ``{"detail": message}`` with ``status`` (and ``headers``)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def anonymous_name(filename: str | None) -> str:
    """``upload`` plus the client's suffix when it is one of the image suffixes: all that is kept of a file name."""
    suffix = Path(filename or "").suffix.lower()
    return UPLOAD_NAME + suffix if suffix in KNOWN_SUFFIXES else UPLOAD_NAME


def multipart_file(body: bytes, content_type: str | None, field: str = "file") -> tuple[bytes, str | None]:
    """The bytes and the client's file name of multipart field ``field`` in ``body``, parsed in memory.

    Raises :class:`HTTPProblem` 400 when the body is not ``multipart/form-data``, is malformed, or has no such
    field. Nothing is written anywhere: the parts are slices of ``body``.
    """
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise HTTPProblem(400, f"send the image as multipart/form-data, field '{field}'")
    parts: list[dict] = []
    header: dict[str, bytearray] = {}

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise HTTPProblem(400, f"more than {MAX_PARTS} parts in the multipart body")
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def on_header_end() -> None:
        name = bytes(header.get("field", b"")).strip().lower()
        parts[-1]["headers"][name] = bytes(header.get("value", b""))
        header.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_part_data": on_part_data,
    }
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as error:
        raise HTTPProblem(400, f"malformed multipart body ({type(error).__name__})") from None
    for part in parts:
        _, params = parse_options_header(part["headers"].get(b"content-disposition", b""))
        name = params.get(b"name")
        if name is not None and name.decode("latin-1") == field:
            filename = params.get(b"filename")
            return bytes(part["data"]), filename.decode("utf-8", "replace") if filename is not None else None
    raise HTTPProblem(400, f"no field '{field}' in the multipart body: send the image in field '{field}'")


class UploadLimit:
    """ASGI middleware: buffer a request body up to ``max_bytes``, answer 413 as soon as it is exceeded.

    Checked on the declared ``Content-Length`` first, then on the bytes actually received (chunked uploads), so
    an oversized upload is neither parsed nor held in memory beyond the limit.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send):
        response = JSONResponse({"detail": f"upload larger than the limit of {self.max_bytes // 2**20} MB"}, 413)
        await send({"type": "http.response.start", "status": 413, "headers": response.raw_headers})
        await send({"type": "http.response.body", "body": response.body})


class DecodePool:
    """Runs decodes in ``threads`` threads of its own, each answered within ``timeout`` seconds or refused.

    A decode still queued when ``timeout`` passes (every thread busy, perhaps with earlier slow files) is
    cancelled and answered 503 (the server is busy: try again); a decode that started but did not finish within
    ``timeout`` of its start is answered 422 (this file takes longer to decode than this server allows), and its
    thread carries on until the decoder returns: Python cannot stop a thread. Nothing here blocks the event loop.
    """

    def __init__(self, timeout: float = 30.0, threads: int = 2, on_timeout: Callable[[], None] | None = None):
        if timeout <= 0:
            raise ValueError(f"the decode timeout must be positive, got {timeout}")
        if threads < 1:
            raise ValueError(f"the decode pool needs at least one thread, got {threads}")
        self.timeout, self.threads = float(timeout), threads
        self.on_timeout = on_timeout
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="cxr-decode")

    def run(self, function: Callable[..., T], *args) -> T:
        started = threading.Event()
        context = contextvars.copy_context()  # the request id travels with the decode

        def task():
            started.set()
            return context.run(function, *args)

        future = self.pool.submit(task)
        if not started.wait(self.timeout) and future.cancel():
            self._timed_out()
            raise HTTPProblem(503, "the server is busy decoding other uploads; try again shortly", {"Retry-After": "5"})
        try:
            return future.result(timeout=self.timeout)
        except TimeoutError:
            self._timed_out()
            raise HTTPProblem(
                422, f"decoding this file took longer than this server's limit of {self.timeout:g} s"
            ) from None

    def _timed_out(self) -> None:
        if self.on_timeout is not None:
            self.on_timeout()

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def check_dicom_size(data: bytes, name: str, max_pixels: int | None) -> None:
    """Refuse a DICOM file whose header declares more than ``max_pixels`` pixels in all its frames together.

    Only the first frame is ever decoded, but a file declaring more pixels (Rows x Columns x frames x samples)
    than one image may have is not a radiograph: it is refused from its header, before any codec runs. A header
    that cannot be read is left to the decoder, which refuses it with its reason.
    """
    if max_pixels is None:
        return
    import io
    import warnings

    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            rows, columns = int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0)
            frames = int(header.get("NumberOfFrames", 1) or 1)
            samples = int(header.get("SamplesPerPixel", 1) or 1)
    except Exception:  # malformed: the decoder says why
        return
    declared = max(rows, 0) * max(columns, 0) * max(frames, 1) * max(samples, 1)
    if declared > max_pixels:
        raise HTTPProblem(
            413,
            f"{name}: the DICOM header declares {columns}x{rows} pixels x {frames} frame(s) x {samples} sample(s), "
            f"over this server's limit of {max_pixels} pixels",
        )
