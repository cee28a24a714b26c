"""Starting ``cxr serve``: uvicorn with our options, one process or several workers (an app factory each).

API keys come from ``CXR_API_KEY`` and ``--api-key-file``; without one, only a loopback host is allowed unless
``--insecure``. Several workers each load the model (one process per worker) and read their settings from the
environment (:meth:`~cxr.inference.serve.settings.ServeSettings.to_environment`), as an operator's
``uvicorn --factory cxr.inference.serve:app_from_environment`` does. On SIGTERM uvicorn stops accepting connections
and lets requests in flight finish, for at most ``graceful_timeout`` seconds.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi import FastAPI

from cxr.errors import CxrError
from cxr.inference.predictor import resolve_model_path
from cxr.inference.serve.app import create_app
from cxr.inference.serve.security import KEY_ENV, api_keys, check_listen_address
from cxr.inference.serve.settings import ServeSettings
from cxr.inference.serve.telemetry import AuditLog, uvicorn_log_config

log = logging.getLogger(__name__)


def app_from_environment() -> FastAPI:
    """The app factory uvicorn's worker processes call (``cxr serve --workers N``): settings from the environment
    (``CXR_SERVE_MODEL``, ``CXR_SERVE_MAX_UPLOAD_MB``, ``CXR_API_KEY``, ``CXR_API_KEY_FILE``,
    ``CXR_SERVE_DECODE_TIMEOUT``, ``CXR_SERVE_AUDIT``, ``CXR_SERVE_BACKGROUND_LOAD``, ``CXR_SERVE_BATCH_MAX``,
    ``CXR_SERVE_BATCH_WAIT_MS``, ``CXR_SERVE_PRECISION``)."""
    return create_app(settings=ServeSettings.from_environment())


def uvicorn_options(graceful_timeout: float, limit_concurrency: int | None = None) -> dict:
    """What every ``cxr serve`` passes to uvicorn: our log setup (``cxr.access`` replaces uvicorn's access log),
    how long a SIGTERM waits for requests in flight, and the connection limit."""
    return {
        "log_config": uvicorn_log_config(),
        "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout,
        "limit_concurrency": limit_concurrency,
    }


def run_server(
    settings: ServeSettings,
    host: str,
    port: int,
    workers: int = 1,
    *,
    api_key_file: str | Path | None = None,
    insecure: bool = False,
    graceful_timeout: float = 30.0,
    limit_concurrency: int | None = None,
) -> None:
    """Serve ``settings`` (whose keys are those of ``CXR_API_KEY`` and ``api_key_file``) with uvicorn."""
    import uvicorn

    if workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    warning = check_listen_address(host, settings.api_keys, insecure)
    if warning:
        log.warning(warning)
    options = uvicorn_options(graceful_timeout, limit_concurrency)
    if workers == 1:
        uvicorn.run(create_app(settings=settings), host=host, port=port, **options)
        return
    settings = settings.model_copy(update={"model": resolve_model_path(settings.model)})
    if settings.audit is not None:
        AuditLog(settings.audit).close()  # fail here, with one line, rather than in every worker
    os.environ.update(settings.to_environment(api_key_file))
    uvicorn.run(
        "cxr.inference.serve:app_from_environment", factory=True, host=host, port=port, workers=workers, **options
    )


def settings_for_cli(model: str | Path, api_key_file: str | Path | None = None, **values) -> ServeSettings:
    """The settings ``cxr serve`` builds from its options: keys from ``CXR_API_KEY`` and ``api_key_file``."""
    keys = api_keys(os.environ.get(KEY_ENV), api_key_file)
    return ServeSettings.of(model=model, api_keys=keys, **values)
