"""HTTP downloads that survive a dropped connection: a ``.part`` file appended with ``Range`` requests, and a progress
bar in bytes. Used by :func:`cxr.models.weights.url_file`, which owns the cache folder, the checksum and the rename.

Standard library only (``urllib``), so it works where no HTTP package is installed; ``tqdm`` draws the bar.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cxr.errors import CxrError

RETRIES = 5
TIMEOUT_S = 30.0


class DownloadFailed(CxrError):
    """No connection, or the connection kept breaking without progress."""


class DownloadBar(tqdm):
    """A plain tqdm bar in bytes. ``huggingface_hub``'s own bar hides itself when stderr is not a terminal (a log, a
    batch job, a test), where a user still needs to see that a large file is coming."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("name", None)
        kwargs.setdefault("unit", "B")
        kwargs.setdefault("unit_scale", True)
        kwargs.setdefault("unit_divisor", 1024)
        kwargs.setdefault("mininterval", 0.5)
        quiet = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS", "").strip().lower() in {"1", "on", "yes", "true"}
        kwargs.setdefault("disable", quiet)
        super().__init__(*args, **kwargs)


def stream_with_resume(url: str, part: Path, desc: str) -> None:
    """Append ``url``'s bytes to ``part`` from where it ends until the server's size is reached, retrying a dropped
    connection (new bytes reset the count, as ``huggingface_hub`` does)."""
    attempts, limit, last_error = 0, RETRIES, None
    while attempts <= limit:
        done = part.stat().st_size if part.exists() else 0
        try:
            total = _get(url, part, done, desc)
        except urllib.error.HTTPError as error:
            known = error.headers.get("Content-Range", "").rsplit("/", 1)[-1]
            if error.code == 416 and done and known == str(done):  # an earlier run got it all, then was killed
                return
            if error.code == 416 and done:  # a .part the server does not know (longer than the file): start over
                part.unlink()
                attempts += 1
                continue
            raise CxrError(f"{url}: the server answered HTTP {error.code} {error.reason}") from error
        except urllib.error.URLError as error:  # no connection at all (refused, no route, no DNS): retry once
            total, limit, last_error = -1, 1, error
        except (http.client.HTTPException, OSError) as error:  # dropped mid-file, a timeout: resume
            total, last_error = -1, error
        size = part.stat().st_size if part.exists() else 0
        if total is None or size == total:
            return
        if total >= 0 and size > total:
            part.unlink()
            raise CxrError(f"{url}: received {size} bytes, more than the {total} announced; nothing was kept")
        attempts = 0 if size > done else attempts + 1  # bytes arrived: the connection works, keep going
        time.sleep(0.2 * attempts)
    raise DownloadFailed(f"no connection: {getattr(last_error, 'reason', last_error)}")


def _get(url: str, part: Path, done: int, desc: str) -> int | None:
    """One GET appended to ``part`` (from byte ``done`` with a Range request); the file's full size if known."""
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:  # noqa: S310 (http(s) URLs of a registry)
        if done and response.status != 206:  # the server ignored the range: the whole file comes again
            done = 0
        length = response.headers.get("Content-Length")
        content_range = response.headers.get("Content-Range", "")
        total = int(content_range.rsplit("/", 1)[-1]) if done and "/" in content_range else None
        if total is None and length is not None:
            total = done + int(length)
        with part.open("ab" if done else "wb") as handle, DownloadBar(total=total, initial=done, desc=desc) as bar:
            for block in iter(lambda: response.read(1 << 16), b""):
                handle.write(block)
                bar.update(len(block))
    return total
