"""Weights fetched on first use from the Hugging Face hub (minimal version for the foundation backbones).

The weight-download issue (issue 20 item 1) gives this module progress, checksums, resume and ``CXR_OFFLINE``; this
version keeps only its two signatures so :mod:`cxr.models.foundation` runs: both go through ``huggingface_hub``
(its cache, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``) and turn any failure into one :class:`CxrError` that names the
command to run on a machine with internet and the folder to copy.
"""

from __future__ import annotations

from pathlib import Path

from cxr.errors import CxrError


def _offline_error(repo_id: str, what: str, error: Exception, command: str) -> CxrError:
    from huggingface_hub.constants import HF_HUB_CACHE

    hint = f" ({command})" if command else ""
    return CxrError(
        f"cannot fetch {what} of {repo_id} from the Hugging Face hub{hint}: {type(error).__name__}: {error}. "
        f"Offline? On a machine with internet run `huggingface-cli download {repo_id}` and copy its "
        f"models--{repo_id.replace('/', '--')} folder into {HF_HUB_CACHE}, or pass the downloaded folder or file "
        "as model.pretrained"
    )


def hf_file(repo_id: str, filename: str, revision: str | None = None, *, command: str = "") -> Path:
    """The local path of ``filename`` in the hub repository ``repo_id``: from the cache, else downloaded into it."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as error:  # offline, missing file, HTTP error: all mean "no weights here"
        raise _offline_error(repo_id, filename, error, command) from error


def hf_snapshot(
    repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None, *, command: str = ""
) -> Path:
    """The local folder of ``repo_id`` (only ``allow_patterns`` files): from the cache, else downloaded into it."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, revision=revision))
    except Exception as error:
        raise _offline_error(repo_id, ", ".join(allow_patterns or ["all files"]), error, command) from error
