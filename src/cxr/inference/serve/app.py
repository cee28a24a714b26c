"""The FastAPI app of ``cxr serve``: settings in, middleware, error handlers, routes and the model's loading wired.

The model loads now (errors raise), or with ``load_in_background`` in a thread while the server already answers
(``/readyz`` says when it is done; a failure is logged and reported by ``/healthz`` and ``/readyz``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from cxr import __version__
from cxr.inference.predict import load_predictor
from cxr.inference.serve.routes import STATIC_DIR, router
from cxr.inference.serve.security import ApiKeyAuth, SecurityHeaders
from cxr.inference.serve.service import Service
from cxr.inference.serve.settings import ServeSettings
from cxr.inference.serve.telemetry import AuditLog, Metrics, ModelState, RequestContext
from cxr.inference.serve.uploads import DecodePool, HTTPProblem, UploadLimit

DESCRIPTION = "Chest X-ray findings (NIH ChestX-ray14 labels) with Grad-CAM heatmaps. Not a medical device."
log = logging.getLogger(__name__)


def create_app(
    model_path: str | Path | None = None,
    max_upload_mb: float = 20,
    predictor=None,
    *,
    settings: ServeSettings | None = None,
    **options,
) -> FastAPI:
    """The app serving ``model_path`` (a checkpoint, run directory or ``.onnx``) with ``settings`` (or the keyword
    ``options`` of :class:`~cxr.inference.serve.settings.ServeSettings`); ``predictor``: an already loaded model."""
    settings = settings or ServeSettings.of(model=model_path, max_upload_mb=max_upload_mb, **options)
    metrics = Metrics()
    decoder = DecodePool(settings.decode_timeout, settings.decode_threads, on_timeout=metrics.decode_timeouts.inc)
    audit = AuditLog(settings.audit) if settings.audit is not None else None
    state = ModelState()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        state.service.close() if state.service else decoder.close()
        audit and audit.close()

    app = FastAPI(title="cxr", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.settings, app.state.model_state, app.state.metrics, app.state.audit = settings, state, metrics, audit
    # Outermost last: request id and metrics see every answer, the key is checked before the body is read.
    app.add_middleware(UploadLimit, max_bytes=int(settings.max_upload_mb * 2**20))
    app.add_middleware(ApiKeyAuth, keys=settings.api_keys)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, metrics=metrics, routes=app.router.routes)
    app.add_exception_handler(HTTPProblem, _problem)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.router.routes.extend(router.routes)  # not include_router: middleware must see each route's own path
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = _with_bearer_scheme(app, bool(settings.api_keys))
    load = lambda: _load(settings, predictor, decoder, state, metrics, audit)  # noqa: E731
    threading.Thread(target=load, name="cxr-model-load", daemon=True).start() if settings.load_in_background else load()
    return app


def _load(settings: ServeSettings, predictor, decoder, state: ModelState, metrics: Metrics, audit) -> None:
    """Load the model into ``state`` (raising, unless in the background: then the failure is logged and kept)."""
    start = time.perf_counter()
    try:
        batching = (settings.batch_max, settings.batch_wait_ms, metrics.batch_size.observe)
        service = Service(predictor or load_predictor(settings.model, precision=settings.precision), decoder, batching)
        if audit is not None:
            audit.describe_model(service.predictor)
    except Exception as error:
        if not settings.load_in_background:
            raise
        log.error("the model could not be loaded: %s", error)
        state.failed(error)
        return
    metrics.model_load.set(time.perf_counter() - start)
    metrics.model_ready.set(1)
    state.ready(service)


async def _problem(_: Request, error: HTTPProblem) -> JSONResponse:
    return JSONResponse({"detail": error.message}, status_code=error.status, headers=error.headers)


async def _invalid(_: Request, error: RequestValidationError) -> JSONResponse:
    where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
    return JSONResponse({"detail": f"invalid request ({where}); send multipart field 'file'"}, status_code=400)


def _with_bearer_scheme(app: FastAPI, enabled: bool):
    """``app.openapi`` declaring the bearer scheme on ``/api/…`` (so ``/docs`` offers "Authorize") when keys are set."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            if enabled:
                schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key of this server (CXR_API_KEY or --api-key-file).",
                }
                for path, operations in schema["paths"].items():
                    if path.startswith("/api/"):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi
