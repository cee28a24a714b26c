"""Pretrained weights, fetched on first use and offline on request: the one door every weight source goes through.

Three kinds of source, three functions; each returns a local path and never a half-written file:

- :func:`hf_file` / :func:`hf_snapshot`: a file or a folder of a Hugging Face hub repository (timm's ``timm/…``
  weights, ``transformers`` and ``open_clip`` models) through ``huggingface_hub`` into its standard cache
  (``HF_HUB_CACHE``, else ``HF_HOME/hub``). ``huggingface_hub`` (2.4, read in its ``file_download.py``) resolves
  ``{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}`` with a HEAD request (commit from ``X-Repo-Commit``, identity from
  ``X-Linked-Etag``/``ETag``, size from ``X-Linked-Size``, a redirect to another host not followed), streams the GET
  into a process-unique ``*.incomplete`` file renamed into ``blobs/<etag>`` only when complete, retries a dropped
  connection up to 5 times with an HTTP ``Range`` request from the bytes it has (within one run: a killed run's
  partial file is deleted, the next run starts over), and checks the *size* — not the content: it never hashes what
  it downloaded. For files stored with Git LFS the etag *is* the publisher's SHA-256,
  so :func:`verify_new_blobs` hashes every blob this call added and removes it (and the snapshot links to it) on a
  mismatch.
- :func:`url_file`: any other HTTPS source (torchxrayvision's GitHub release files) into a given folder: streamed
  into ``NAME.part`` with a progress bar, an interrupted ``.part`` (dropped connection, killed process) resumed with
  ``Range``, the SHA-256 checked (where the publisher gives one) before the atomic rename.

Offline: ``CXR_OFFLINE=1`` covers every source, ``HF_HUB_OFFLINE=1`` the hub (both read when called, not at
import). Offline, or no network, and the file not cached → one line (:class:`WeightsUnavailableError`) naming the
command that needs it, the cache folder, how to copy it there, and that a file path works instead.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.models.http_stream import DownloadBar, DownloadFailed, stream_with_resume

OFFLINE_ENV = "CXR_OFFLINE"
SHA256 = re.compile(r"[0-9a-f]{64}")
_TRUE = {"1", "on", "yes", "true"}


class WeightsUnavailableError(CxrError):
    """Weights that are neither cached nor downloadable now (offline switch, no network, server error)."""


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def offline(hub: bool = False) -> bool:
    """Whether downloads are switched off: ``CXR_OFFLINE`` for every source; for the hub also ``HF_HUB_OFFLINE``
    (and ``TRANSFORMERS_OFFLINE``, which ``huggingface_hub`` treats alike), read now rather than at import."""
    if _env_true(OFFLINE_ENV):
        return True
    if not hub:
        return False
    from huggingface_hub import constants

    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def hub_cache() -> Path:
    """Hugging Face's cache folder as ``huggingface_hub`` defines it, with the environment read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def unavailable(
    what: str, folder: Path, reason: str, command: str, fetch: str, copy: str = "the file"
) -> WeightsUnavailableError:
    """The one-line error: who needs what, why it cannot be had, where it belongs and how to put it there."""
    who = command or "this command"
    return WeightsUnavailableError(
        f"{who} needs {what}, which is not in {folder} and cannot be downloaded ({reason}); on a machine with "
        f"internet {fetch} and copy {copy} into {folder} here, or pass the file's path instead"
    )


def _offline_reason() -> str:
    names = [name for name in (OFFLINE_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if _env_true(name)]
    return ", ".join(f"{name}=1" for name in names) or "HF_HUB_OFFLINE=1"


# --- the Hugging Face hub ------------------------------------------------------------------------------------------


def _repo_folder(cache: Path, repo_id: str) -> Path:
    return cache / f"models--{repo_id.replace('/', '--')}"


def _blobs(repo: Path) -> set[str]:
    folder = repo / "blobs"
    return {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()


def verify_new_blobs(repo: Path, before: set[str], what: str) -> None:
    """Hash the blobs this download added whose name is a SHA-256 (Git LFS files: the publisher's checksum); on a
    mismatch remove the blob and every snapshot link to it, so a corrupt file is never loaded later."""
    for name in sorted(_blobs(repo) - before):
        if not SHA256.fullmatch(name):
            continue  # a small git-stored file: its etag is a git blob hash, not a content SHA-256
        blob = repo / "blobs" / name
        actual = file_sha256(blob)
        if actual != name:
            for link in (repo / "snapshots").rglob("*"):
                if link.is_symlink() and Path(os.path.realpath(link)) == Path(os.path.realpath(blob)):
                    link.unlink()
            blob.unlink()
            raise CxrError(
                f"{what}: checksum mismatch (SHA-256 {actual}, the publisher's {name}); the download was removed from "
                f"{repo}. Run the command again; if it repeats, the server or a proxy alters the file"
            )


@contextmanager
def _hub_offline_mode(on: bool) -> Iterator[None]:
    """``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import; ``CXR_OFFLINE`` (or a later ``HF_HUB_OFFLINE``)
    must also stop what it sends besides the download (e.g. 2.4's fetch of ``/api/agent-harnesses`` for its
    user agent), so its switch is turned on for the call."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or on
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def _hub_errors(what: str, repo_id: str, fetch: str, command: str) -> Iterator[None]:
    """``huggingface_hub``'s exceptions as cxr's one-line errors."""
    from huggingface_hub import errors

    cache = hub_cache()
    try:
        yield
    except errors.LocalEntryNotFoundError as error:  # offline, no network, hub down, and not cached
        copy = f"its {_repo_folder(cache, repo_id).name} folder"
        raise unavailable(what, cache, _hub_reason(error), command, fetch, copy) from error
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.RemoteEntryNotFoundError) as error:
        raise CxrError(f"{what} is not on {_endpoint_name()} ({type(error).__name__})") from error
    except errors.HfHubHTTPError as error:
        raise CxrError(f"{what}: {_endpoint_name()} answered {error.response.status_code}") from error
    except _transport_errors() as error:  # the size check failed, or the connection broke more often than it retries
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise WeightsUnavailableError(f"{what}: download failed ({message}); run the command again") from error


def _hub_reason(error: Exception) -> str:
    """Why nothing could be fetched: the offline switch, the hub's HTTP status, or no connection."""
    if offline(hub=True):
        return _offline_reason()
    status = getattr(getattr(error.__cause__, "response", None), "status_code", None)
    return f"{_endpoint_name()} answered {status}" if status else f"no connection to {_endpoint_name()}"


def _transport_errors() -> tuple[type[BaseException], ...]:
    """OSError and the HTTP client's transport errors (``huggingface_hub`` 2.x uses ``httpx2``, 1.x ``httpx``; those
    of ``requests``, 0.x, are OSErrors)."""
    found: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _endpoint_name() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT", constants.ENDPOINT).rstrip("/")


def hf_file(repo_id: str, filename: str, revision: str | None = None, *, command: str = "") -> Path:
    """``filename`` of the hub repository ``repo_id`` from Hugging Face's cache, downloaded on first use (with a
    progress bar); the publisher's SHA-256 checked for LFS files. ``command`` names who needs it, for the error."""
    from huggingface_hub import hf_hub_download

    what = f"{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    fetch = f"run `hf download {repo_id} {filename}{f' --revision {revision}' if revision else ''}`"
    with _from_hub(repo_id, what, fetch, command) as (cache, local_only):
        path = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache,
            endpoint=os.environ.get("HF_ENDPOINT"),
            local_files_only=local_only,
            tqdm_class=DownloadBar,
        )
    return Path(path)


def hf_snapshot(
    repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None, *, command: str = ""
) -> Path:
    """The folder of hub repository ``repo_id`` (only ``allow_patterns`` where given: e.g. ``["*.json",
    "*.safetensors"]``) from Hugging Face's cache, downloaded on first use; LFS files' SHA-256 checked."""
    from huggingface_hub import snapshot_download

    options = [f"--include '{p}'" for p in allow_patterns or []] + ([f"--revision {revision}"] if revision else [])
    fetch = f"run `hf download {' '.join([repo_id, *options])}`"
    with _from_hub(repo_id, repo_id, fetch, command) as (cache, local_only):
        path = snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache,
            endpoint=os.environ.get("HF_ENDPOINT"),
            local_files_only=local_only,
            allow_patterns=allow_patterns,
        )
    return Path(path)


@contextmanager
def _from_hub(repo_id: str, what: str, fetch: str, command: str) -> Iterator[tuple[Path, bool]]:
    """Around one hub download: yields (cache folder, offline?); hub errors become one-line ``CxrError``s, and the blobs
    the download added are checked against their SHA-256 when it succeeds."""
    cache = hub_cache()
    repo = _repo_folder(cache, repo_id)
    before = _blobs(repo)
    local_only = offline(hub=True)
    with _hub_errors(what, repo_id, fetch, command), _hub_offline_mode(local_only):
        yield cache, local_only
    verify_new_blobs(repo, before, what)


# --- any other URL -------------------------------------------------------------------------------------------------


def url_file(url: str, cache_dir: Path, sha256: str | None = None, *, command: str = "") -> Path:
    """``cache_dir/NAME`` (NAME: the last part of the URL's path, else ``download``), downloaded on first use:
    streamed into ``NAME.part`` with a progress bar, a dropped connection or an earlier interrupted ``.part`` resumed
    with an HTTP ``Range`` request, ``sha256`` (the publisher's, where given) checked before the atomic rename; a
    mismatch removes the ``.part``."""
    folder = Path(cache_dir).expanduser()
    name = Path(urlparse(url).path).name or "download"
    target = folder / name
    if target.is_file():
        return target
    fetch = f"download {url}"
    if offline():
        raise unavailable(name, folder, f"{OFFLINE_ENV}=1", command, fetch)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{name}.part"
    with FileLock(_lock_path(folder, name)):  # one writer per .part; released by the OS if the process dies
        if target.is_file():  # another process finished it while this one waited
            return target
        try:
            stream_with_resume(url, part, desc=name)
        except DownloadFailed as error:
            raise unavailable(name, folder, str(error), command, fetch) from error
        _check_and_rename(part, target, url, sha256)
    return target


def _lock_path(folder: Path, name: str) -> Path:
    """Locks live in ``.locks/`` (as in ``huggingface_hub``'s cache), apart from the weights."""
    locks = folder / ".locks"
    locks.mkdir(exist_ok=True)
    return locks / f"{name}.lock"


def _check_and_rename(part: Path, target: Path, url: str, sha256: str | None) -> None:
    """The publisher's SHA-256 (where given) before the rename; a mismatch leaves nothing in the folder."""
    if sha256 is not None:
        actual = file_sha256(part)
        if actual != sha256.lower():
            part.unlink()
            raise CxrError(
                f"{url}: checksum mismatch (SHA-256 {actual}, the publisher's {sha256.lower()}); nothing was kept in "
                f"{target.parent}. Run the command again; if it repeats, the server or a proxy alters the file"
            )
    os.replace(part, target)  # same folder: atomic, so a reader sees the whole file or none
