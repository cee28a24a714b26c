"""``cxr serve``: a web page and a REST API around one model (checkpoint or ONNX export), FastAPI + uvicorn.

``POST /api/predict`` answers with the JSON of ``cxr predict --json`` for one image, optionally with a preview
of the decoded image and Grad-CAM heatmaps as PNG data URLs; ``GET /api/model`` describes the model;
``GET /healthz`` says it is up; ``GET /`` is the page (``cxr/inference/static``). Bad input never reaches a 500: an
upload over the limit is 413 (refused before it is read in full), a file that is not PNG/JPEG/DICOM is 415, one that
does not decode is 400, and a decompression bomb (over Pillow's pixel limit) is 413. One lock serialises the
model (Grad-CAM hooks are not thread-safe); decoding runs outside it, in FastAPI's thread pool.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from pathlib import Path

import cv2
import numpy as np
from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from cxr import __version__
from cxr.errors import CxrError, ImageDecodeError, ImageTooLargeError
from cxr.imaging.decode import decode_grayscale, is_dicom
from cxr.inference.cam import grad_cam, heatmap_rgba, map_to_source, png_bytes
from cxr.inference.predict import load_predictor, prediction_record
from cxr.inference.predictor import probabilities as predictor_probabilities
from cxr.inference.predictor import resolve_model_path

STATIC_DIR = Path(__file__).with_name("static")
PREVIEW_SIZE = 512  # longest side of the preview and heatmaps sent to the page
MODEL_ENV, UPLOAD_ENV = "CXR_SERVE_MODEL", "CXR_SERVE_MAX_UPLOAD_MB"
log = logging.getLogger(__name__)


class HTTPProblem(Exception):
    """An error answered as ``{"detail": message}`` with ``status``."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


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


class Service:
    """The model behind the API: one predictor, one lock, and the request-level logic (no HTTP in here)."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.lock = threading.Lock()

    def decode(self, data: bytes, filename: str) -> np.ndarray:
        if not data:
            raise HTTPProblem(400, "empty upload: send an image in the multipart field 'file'")
        kind = sniff_format(data, filename)
        if kind is None:
            raise HTTPProblem(415, f"{filename or 'upload'}: not a PNG, JPEG or DICOM file")
        try:
            return decode_grayscale(data, name=filename or "upload")
        except ImageTooLargeError as error:
            raise HTTPProblem(413, str(error)) from None
        except ImageDecodeError as error:
            raise HTTPProblem(400, str(error)) from None
        except Exception as error:  # a decoder's unexpected failure on hostile input is still the input's fault
            log.warning("decoding %s failed: %r", filename, error)
            raise HTTPProblem(400, f"{filename or 'upload'}: cannot decode this {kind} file") from None

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
            "architecture": dict(predictor.architecture),
            "card": dict(predictor.card),
        }


def create_app(model_path: str | Path, max_upload_mb: float = 20, predictor=None) -> FastAPI:
    """The FastAPI app serving ``model_path`` (a checkpoint, run directory or ``.onnx``); loads the model now."""
    if max_upload_mb <= 0:
        raise CxrError(f"the upload limit must be positive, got {max_upload_mb} MB")
    service = Service(predictor or load_predictor(model_path))
    app = FastAPI(
        title="cxr",
        version=__version__,
        description="Chest X-ray findings (NIH ChestX-ray14 labels) with Grad-CAM heatmaps. Not a medical device.",
    )
    app.state.service = service
    app.add_middleware(UploadLimit, max_bytes=int(max_upload_mb * 2**20))

    @app.exception_handler(HTTPProblem)
    async def problem(_: Request, error: HTTPProblem) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in error.errors())
        return JSONResponse({"detail": f"invalid request ({where}); send multipart field 'file'"}, status_code=400)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.get("/healthz", summary="Liveness")
    def healthz() -> dict:
        return {"status": "ok", "model": service.predictor.path.name}

    @app.get("/api/model", summary="Labels, thresholds, preprocessing, version and model card")
    def model() -> dict:
        return service.describe()

    @app.post(
        "/api/predict",
        summary="Probabilities per finding for one PNG, JPEG or DICOM image",
        responses={
            400: {"description": "undecodable"},
            413: {"description": "too large"},
            415: {"description": "not an image"},
        },
    )
    def predict(
        file: UploadFile = File(..., description="The radiograph: PNG, JPEG or DICOM."),
        cam: str | None = Query(None, description="Heatmaps: 'positive', 'all', or comma-separated findings."),
        preview: bool = Query(False, description="Add the decoded image as a PNG data URL (for the page)."),
        tta: bool = Query(False, description="Average with the horizontally mirrored image (test-time augmentation)."),
    ) -> dict:
        # A plain `def`: FastAPI runs it in its thread pool, so decoding runs in parallel and the lock guards the model.
        data = file.file.read()
        return service.predict(data, Path(file.filename or "upload").name, cam, preview, tta)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def app_from_environment() -> FastAPI:
    """The app factory uvicorn's worker processes call (``cxr serve --workers N``): settings from the environment."""
    return create_app(os.environ[MODEL_ENV], float(os.environ.get(UPLOAD_ENV, "20")))


def run_server(model_path: str | Path, host: str, port: int, workers: int = 1, max_upload_mb: float = 20) -> None:
    """Serve with uvicorn; several workers each load the model (one process per worker)."""
    import uvicorn

    if workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    if workers == 1:
        uvicorn.run(create_app(model_path, max_upload_mb), host=host, port=port)
        return
    os.environ[MODEL_ENV] = str(resolve_model_path(model_path).resolve())
    os.environ[UPLOAD_ENV] = str(max_upload_mb)
    uvicorn.run("cxr.inference.serve:app_from_environment", factory=True, host=host, port=port, workers=workers)
