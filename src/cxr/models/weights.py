"""Pretrained weights fetched on first use: the Hugging Face hub through ``huggingface_hub``, other hosts by URL.

A minimal version so the registered X-ray ViTs (:mod:`cxr.models.vit_checkpoints`) can fetch their weights by name;
the full one (progress, resume, checksums per source, loopback-hub tests; issue 20, item 1) replaces it with the same
two signatures. Offline (``HF_HUB_OFFLINE=1``, ``CXR_OFFLINE=1``) or without network, each gives one
:class:`CxrError` naming what to download and where to put it; a file passed as ``model.pretrained`` never comes here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from cxr.errors import CxrError


def offline() -> bool:
    """Whether the user asked for no downloads: ``CXR_OFFLINE`` (every source) or ``HF_HUB_OFFLINE`` (the hub)."""
    return os.environ.get("CXR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_file(repo_id: str, filename: str, revision: str | None = None, *, command: str = "") -> Path:
    """``filename`` of the hub repository ``repo_id`` from the Hugging Face cache, downloaded there when missing."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline()))
    except Exception as error:  # offline, no network, a missing file or revision: all mean "no weights here"
        where = command or "the command"
        pinned = f" --revision {revision}" if revision else ""  # the cache keeps files per commit
        raise CxrError(
            f"cannot get {repo_id}/{filename} ({type(error).__name__}: {str(error)[:200]}). Offline? On a machine with "
            f"internet run `huggingface-cli download {repo_id} {filename}{pinned}` and copy its "
            f"models--{repo_id.replace('/', '--')} folder into {HF_HUB_CACHE} here (or set HF_HUB_CACHE), then rerun "
            f"{where}; or pass the file itself as model.pretrained=<path>."
        ) from error


def url_file(url: str, cache_dir: Path, sha256: str | None = None, *, command: str = "") -> Path:
    """The file at ``url`` in ``cache_dir`` (named after the URL's last path part), downloaded there when missing:
    into ``NAME.part``, checked against ``sha256`` when the publisher gives one, renamed only when complete."""
    cache_dir = Path(cache_dir)
    target = cache_dir / (Path(urlparse(url).path).name or "download")
    if target.is_file():
        return target
    where = command or "the command"
    if offline():
        raise CxrError(
            f"{target} is missing and CXR_OFFLINE is set. On a machine with internet download {url}, copy it to "
            f"{target} and rerun {where}; or pass the file itself as model.pretrained=<path>."
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as handle:
            shutil.copyfileobj(response, handle, length=1 << 20)
    except OSError as error:  # URLError, timeouts, a full disk
        partial.unlink(missing_ok=True)
        raise CxrError(
            f"cannot download {url} ({type(error).__name__}: {error}). Offline? Download it on a machine with "
            f"internet, copy it to {target} and rerun {where}; or pass model.pretrained=<path>."
        ) from error
    if sha256 is not None and _sha256(partial) != sha256.lower():
        partial.unlink(missing_ok=True)
        raise CxrError(f"{url}: the download does not match its published SHA-256 {sha256}; nothing was kept")
    os.replace(partial, target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
