"""``cxr serve``: a web page and a REST API around one model (checkpoint or ONNX export), FastAPI + uvicorn.

``POST /api/predict`` answers with the JSON of ``cxr predict --json`` for one image, optionally with a preview
of the decoded image and Grad-CAM heatmaps as PNG data URLs; ``GET /api/model`` describes the model;
``GET /healthz`` says it is up, ``GET /readyz`` that the model is loaded, ``GET /metrics`` is for Prometheus;
``GET /`` is the page (``cxr/inference/static``). Bad input never reaches a 500: an upload over the limit is 413
(refused before it is read in full), a file that is not PNG/JPEG/DICOM is 415, one that does not decode is 400, a
decompression bomb (over Pillow's pixel limit) is 413, and a file whose decoding outlasts the time limit is 422.
With API keys (:mod:`cxr.inference.security`), ``/api/…`` needs one. Uploads are parsed and decoded in memory and
their file names are dropped (:mod:`cxr.inference.uploads`); logs, metrics and the optional audit trail are in
:mod:`cxr.inference.ops`. One lock serialises the model (Grad-CAM hooks are not thread-safe); decoding runs
outside it, in a bounded pool of its own.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from pydantic import BaseModel, ConfigDict

from cxr import __version__
from cxr.errors import CxrError, ImageDecodeError, ImageTooLargeError
from cxr.imaging.decode import decode_grayscale, is_dicom
from cxr.inference.cam import grad_cam, heatmap_rgba, map_to_source, png_bytes
from cxr.inference.ops import REQUEST_ID, AuditLog, Metrics, ModelState, RequestContext, uvicorn_log_config
from cxr.inference.predict import load_predictor, prediction_record
from cxr.inference.predictor import probabilities as predictor_probabilities
from cxr.inference.predictor import resolve_model_path
from cxr.inference.security import (
    KEY_ENV,
    KEY_FILE_ENV,
    ApiKeyAuth,
    SecurityHeaders,
    api_keys,
    check_listen_address,
    keys_from_environment,
)
from cxr.inference.uploads import DecodePool, HTTPProblem, anonymous_name, check_dicom_size, multipart_file

STATIC_DIR = Path(__file__).with_name("static")
PREVIEW_SIZE = 512  # longest side of the preview and heatmaps sent to the page
MODEL_ENV, UPLOAD_ENV = "CXR_SERVE_MODEL", "CXR_SERVE_MAX_UPLOAD_MB"
DECODE_TIMEOUT_ENV, AUDIT_ENV = "CXR_SERVE_DECODE_TIMEOUT", "CXR_SERVE_AUDIT"
BACKGROUND_ENV = "CXR_SERVE_BACKGROUND_LOAD"
log = logging.getLogger(__name__)


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


def sniff_format(data: bytes, filename: str = "") -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's magic bytes (DICOM also by suffix), else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if is_dicom(data, filename):
        return "dicom"
    return None


def data_url(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def preview_shape(height: int, width: int, longest: int = PREVIEW_SIZE) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_upload(data: bytes, kind: str, name: str) -> np.ndarray:
    """``data`` (sniffed as ``kind``) → 8-bit grayscale, or :class:`HTTPProblem` 400/413 saying why not.

    ``name`` is the anonymous name (:func:`~cxr.inference.uploads.anonymous_name`); only the exception's type is
    logged, as its message may quote a value read from the file.
    """
    try:
        if kind == "dicom":
            check_dicom_size(data, name, Image.MAX_IMAGE_PIXELS)
        return decode_grayscale(data, name=name)
    except ImageTooLargeError as error:
        raise HTTPProblem(413, str(error)) from None
    except ImageDecodeError as error:
        raise HTTPProblem(400, str(error)) from None
    except HTTPProblem:
        raise
    except Exception as error:  # a decoder's unexpected failure on hostile input is still the input's fault
        log.warning("request %s: the %s decoder raised %s", REQUEST_ID.get(), kind, type(error).__name__)
        raise HTTPProblem(400, f"{name}: cannot decode this {kind} file") from None


class Service:
    """The model behind the API: one predictor, one lock, and the request-level logic (no HTTP in here)."""

    def __init__(self, predictor, decoder: DecodePool | None = None):
        self.predictor = predictor
        self.lock = threading.Lock()
        self.decoder = decoder or DecodePool()

    def decode(self, data: bytes, filename: str) -> np.ndarray:
        if not data:
            raise HTTPProblem(400, "empty upload: send an image in the multipart field 'file'")
        kind = sniff_format(data, filename)
        if kind is None:
            raise HTTPProblem(415, f"{filename or 'upload'}: not a PNG, JPEG or DICOM file")
        return self.decoder.run(decode_upload, data, kind, filename or "upload")

    def cam_findings(self, cam: str | None, positive: list[str]) -> list[str]:
        labels = self.predictor.labels
        if cam in (None, "", "0", "false", "none"):
            return []
        if cam in ("1", "true", "positive"):
            return list(positive)
        if cam == "all":
            return list(labels)
        wanted = [name.strip() for name in cam.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in labels]
        if unknown:
            raise HTTPProblem(400, f"cam: unknown finding(s) {unknown}; this model predicts {labels}")
        return wanted

    def predict(self, data: bytes, filename: str, cam: str | None, preview: bool, tta: bool = False) -> dict:
        gray = self.decode(data, filename)
        predictor = self.predictor
        batch = predictor.preprocessing.model_input(gray)[None]
        with self.lock:
            probabilities = predictor_probabilities(predictor, batch, tta)[0]
        record = prediction_record(filename or "upload", probabilities, predictor.labels, predictor.thresholds)
        findings = self.cam_findings(cam, record["positive"])
        shape = preview_shape(*gray.shape)
        if preview:
            record["preview"] = data_url(cv2.resize(gray, shape[::-1], interpolation=cv2.INTER_AREA))
        if findings:
            try:
                record["heatmaps"] = self.heatmaps(gray, batch[0], findings, shape)
            except CxrError as error:  # e.g. an ONNX file whose graph cannot give back its weights
                record["heatmaps"], record["heatmaps_error"] = {}, str(error)
        return record

    def heatmaps(self, gray: np.ndarray, model_input: np.ndarray, findings: list[str], shape) -> dict[str, str]:
        indices = [self.predictor.labels.index(finding) for finding in findings]
        with self.lock:
            maps = grad_cam(self.predictor.model, model_input, indices)
        height, width = gray.shape
        out = {}
        for finding, cam_map in zip(findings, maps, strict=True):
            source = map_to_source(cam_map, width, height, self.predictor.preprocessing)
            small = cv2.resize(source, shape[::-1], interpolation=cv2.INTER_AREA)
            out[finding] = data_url(heatmap_rgba(small))
        return out

    def describe(self) -> dict:
        predictor = self.predictor
        return {
            "labels": list(predictor.labels),
            "thresholds": dict(predictor.thresholds),
            "preprocessing": predictor.preprocessing.to_dict(),
            "package_version": predictor.package_version,
            "server_version": __version__,
            "backend": predictor.backend,
            "model": predictor.path.name,
            "architecture": predictor.architecture.to_dict(),
            "card": predictor.card.to_dict(),
        }


class Problem(BaseModel):
    """Every error: what went wrong, in one sentence."""

    detail: str


class Prediction(BaseModel):
    """``cxr predict --json`` for one upload; ``image`` is ``upload`` (plus the file's suffix), never its name."""

    model_config = ConfigDict(extra="allow")
    image: str
    probabilities: dict[str, float]
    positive: list[str]
    thresholds: dict[str, float]
    preview: str | None = None
    heatmaps: dict[str, str] | None = None
    heatmaps_error: str | None = None


class Health(BaseModel):
    status: str
    model: str


class Readiness(BaseModel):
    status: str


def _errors(*codes: int) -> dict:
    meaning = {
        400: "Bad request: not multipart, no 'file' field, undecodable file, unknown finding in 'cam'",
        401: "Missing or wrong API key (when the server has keys)",
        413: "Upload over the size limit, or an image over the pixel limit",
        415: "Not a PNG, JPEG or DICOM file",
        422: "Decoding this file took longer than the server's time limit",
        503: "Model not loaded yet (or failed to load), or every decode thread busy",
    }
    return {code: {"model": Problem, "description": meaning[code]} for code in codes}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM."}
                    },
                }
            }
        },
    }
}


def create_app(
    model_path: str | Path,
    max_upload_mb: float = 20,
    predictor=None,
    *,
    api_keys: Sequence[str] = (),
    decode_timeout: float = 30.0,
    decode_threads: int = 2,
    audit: str | Path | None = None,
    load_in_background: bool = False,
) -> FastAPI:
    """The FastAPI app serving ``model_path`` (a checkpoint, run directory or ``.onnx``).

    The model loads now (errors raise), or with ``load_in_background`` in a thread while the server already
    answers (``/readyz`` says when it is done; a failure is logged and reported by ``/healthz`` and ``/readyz``).
    ``api_keys``: keys one of which ``/api/…`` requests must present (none: the API is open). ``decode_timeout``
    seconds per decode in a pool of ``decode_threads``. ``audit``: a file to append one JSON line per prediction to.
    """
    if max_upload_mb <= 0:
        raise CxrError(f"the upload limit must be positive, got {max_upload_mb} MB")
    if decode_timeout <= 0 or decode_threads < 1:
        raise CxrError(f"need a positive decode timeout and thread count, got {decode_timeout} s, {decode_threads}")
    keys = check_keys(api_keys)
    metrics = Metrics()
    decoder = DecodePool(decode_timeout, decode_threads, on_timeout=metrics.decode_timeouts.inc)
    audit_log = AuditLog(audit) if audit is not None else None
    state = ModelState()

    def load() -> None:
        start = time.perf_counter()
        try:
            service = Service(predictor or load_predictor(model_path), decoder)
            if audit_log is not None:
                audit_log.describe_model(service.predictor)
        except Exception as error:
            if not load_in_background:
                raise
            log.error("the model could not be loaded: %s", error)
            state.failed(error)
            return
        metrics.model_load.set(time.perf_counter() - start)
        metrics.model_ready.set(1)
        app.state.service = service
        state.ready(service)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        decoder.close()
        if audit_log is not None:
            audit_log.close()

    app = FastAPI(
        title="cxr",
        version=__version__,
        description="Chest X-ray findings (NIH ChestX-ray14 labels) with Grad-CAM heatmaps. Not a medical device.",
        lifespan=lifespan,
    )
    app.state.model_state, app.state.metrics = state, metrics
    # Outermost last: request id and metrics see every answer, the key is checked before the body is read.
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))
    app.add_middleware(ApiKeyAuth, keys=keys)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestContext, metrics=metrics, routes=app.router.routes)

    @app.exception_handler(HTTPProblem)
    async def problem(_: Request, error: HTTPProblem) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse({"detail": f"invalid request ({where}); send multipart field 'file'"}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness: the process answers", response_model=Health, responses=_errors(503))
    def healthz() -> dict:
        if state.status == "failed":
            raise HTTPProblem(503, f"the model could not be loaded ({state.error})")
        name = state.service.predictor.path.name if state.service else Path(model_path).name
        return {"status": "ok", "model": name}

    @app.get("/readyz", summary="Readiness: the model is loaded", response_model=Readiness, responses=_errors(503))
    def readyz() -> dict:
        state.require()
        return {"status": "ready"}

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get(
        "/api/model",
        summary="Labels, thresholds, preprocessing, version and model card",
        responses=_errors(401, 503),
    )
    def model() -> dict:
        return state.require().describe()

    @app.post(
        "/api/predict",
        summary="Probabilities per finding for one PNG, JPEG or DICOM image (multipart field 'file')",
        response_model=Prediction,
        response_model_exclude_none=True,
        responses=_errors(400, 401, 413, 415, 422, 503),
        openapi_extra=UPLOAD_BODY,
    )
    async def predict(
        request: Request,
        cam: str | None = Query(None, description="Heatmaps: 'positive', 'all', or comma-separated findings."),
        preview: bool = Query(False, description="Add the decoded image as a PNG data URL (for the page)."),
        tta: bool = Query(False, description="Average with the horizontally mirrored image (test-time augmentation)."),
    ) -> dict:
        service = state.require()
        body, content_type = await request.body(), request.headers.get("content-type")

        def answer() -> dict:  # in the thread pool: parsing, decoding and the model stay off the event loop
            data, filename = multipart_file(body, content_type)
            record = service.predict(data, anonymous_name(filename), cam, preview, tta)
            if audit_log is not None:
                audit_log.record(REQUEST_ID.get(), data, record["probabilities"])
            return record

        return await run_in_threadpool(answer)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.openapi = _with_bearer_scheme(app, bool(keys))
    if load_in_background:
        threading.Thread(target=load, name="cxr-model-load", daemon=True).start()
    else:
        load()
    return app


def check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    """``keys`` as :func:`cxr.inference.security.api_keys` accepts them (length, characters), duplicates dropped."""
    checked: list[str] = []
    for key in keys:
        checked.extend(api_keys(key))
    return tuple(dict.fromkeys(checked))


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


def settings_from_environment(environ: dict | None = None) -> dict:
    """``create_app``'s keyword arguments from the environment (what ``cxr serve`` sets for its workers)."""
    environ = os.environ if environ is None else environ
    try:
        return {
            "max_upload_mb": float(environ.get(UPLOAD_ENV, "20")),
            "api_keys": keys_from_environment(environ),
            "decode_timeout": float(environ.get(DECODE_TIMEOUT_ENV, "30")),
            "audit": environ.get(AUDIT_ENV) or None,
            "load_in_background": environ.get(BACKGROUND_ENV, "") not in ("", "0", "false"),
        }
    except ValueError as error:
        raise CxrError(f"a CXR_SERVE_* variable is not a number: {error}") from None


def app_from_environment() -> FastAPI:
    """The app factory uvicorn's worker processes call (``cxr serve --workers N``): settings from the environment:
    ``CXR_SERVE_MODEL``, ``CXR_SERVE_MAX_UPLOAD_MB``, ``CXR_API_KEY``, ``CXR_API_KEY_FILE``,
    ``CXR_SERVE_DECODE_TIMEOUT``, ``CXR_SERVE_AUDIT``, ``CXR_SERVE_BACKGROUND_LOAD``."""
    settings = settings_from_environment()
    return create_app(os.environ[MODEL_ENV], settings.pop("max_upload_mb"), **settings)


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
    model_path: str | Path,
    host: str,
    port: int,
    workers: int = 1,
    max_upload_mb: float = 20,
    *,
    api_key_file: str | Path | None = None,
    insecure: bool = False,
    decode_timeout: float = 30.0,
    audit: str | Path | None = None,
    graceful_timeout: float = 30.0,
    load_in_background: bool = False,
    limit_concurrency: int | None = None,
) -> None:
    """Serve with uvicorn; several workers each load the model (one process per worker).

    API keys come from ``CXR_API_KEY`` and ``api_key_file``; without one, only a loopback ``host`` is allowed
    unless ``insecure``. On SIGTERM uvicorn stops accepting connections and lets requests in flight finish, for at
    most ``graceful_timeout`` seconds.
    """
    import uvicorn

    if workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    keys = api_keys(os.environ.get(KEY_ENV), api_key_file)
    warning = check_listen_address(host, keys, insecure)
    if warning:
        log.warning(warning)
    options = uvicorn_options(graceful_timeout, limit_concurrency)
    if workers == 1:
        app = create_app(
            model_path, max_upload_mb, api_keys=keys, decode_timeout=decode_timeout, audit=audit,
            load_in_background=load_in_background,
        )  # fmt: skip
        uvicorn.run(app, host=host, port=port, **options)
        return
    os.environ[MODEL_ENV] = str(resolve_model_path(model_path).resolve())
    os.environ[UPLOAD_ENV] = str(max_upload_mb)
    os.environ[DECODE_TIMEOUT_ENV] = str(decode_timeout)
    os.environ[BACKGROUND_ENV] = "1" if load_in_background else ""
    if api_key_file is not None:
        os.environ[KEY_FILE_ENV] = str(Path(api_key_file).resolve())
    if audit is not None:
        AuditLog(audit).close()  # fail here, with one line, rather than in every worker
        os.environ[AUDIT_ENV] = str(Path(audit).resolve())
    uvicorn.run(
        "cxr.inference.serve:app_from_environment", factory=True, host=host, port=port, workers=workers, **options
    )
