"""Weights fetched on first use: the Hugging Face hub through ``huggingface_hub``, other hosts by URL (minimal version
for the foundation backbones and the chest X-ray ViTs).

The weight-download issue (issue 20 item 1) gives this module progress, checksums, resume and the loopback-hub tests;
this version keeps only its signatures so :mod:`cxr.models.foundation` and :mod:`cxr.models.vit_checkpoints` run: the
hub functions go through ``huggingface_hub`` (its cache, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``), ``url_file``
through ``urllib`` into ``NAME.part``, renamed when complete; ``CXR_OFFLINE=1`` stops both. Any failure is one
:class:`CxrError` that names the command to run on a machine with internet and the folder to copy.
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
    """Whether the user asked for no downloads from any source (``CXR_OFFLINE``; ``HF_HUB_OFFLINE`` is the hub's)."""
    return os.environ.get("CXR_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _offline_error(repo_id: str, what: str, error: Exception, command: str, revision: str | None = None) -> CxrError:
    from huggingface_hub.constants import HF_HUB_CACHE

    hint = f" ({command})" if command else ""
    pinned = f" --revision {revision}" if revision else ""  # the cache keeps files per commit
    return CxrError(
        f"cannot fetch {what} of {repo_id} from the Hugging Face hub{hint}: {type(error).__name__}: {error}. "
        f"Offline? On a machine with internet run `huggingface-cli download {repo_id}{pinned}` and copy its "
        f"models--{repo_id.replace('/', '--')} folder into {HF_HUB_CACHE}, or pass the downloaded folder or file "
        "as model.pretrained"
    )


def hf_file(repo_id: str, filename: str, revision: str | None = None, *, command: str = "") -> Path:
    """The local path of ``filename`` in the hub repository ``repo_id``: from the cache, else downloaded into it."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=offline()))
    except Exception as error:  # offline, missing file, HTTP error: all mean "no weights here"
        raise _offline_error(repo_id, filename, error, command, revision) from error


def hf_snapshot(
    repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None, *, command: str = ""
) -> Path:
    """The local folder of ``repo_id`` (only ``allow_patterns`` files): from the cache, else downloaded into it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(repo_id, allow_patterns=allow_patterns, revision=revision, local_files_only=offline())
        )
    except Exception as error:
        raise _offline_error(repo_id, ", ".join(allow_patterns or ["all files"]), error, command, revision) from error


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
