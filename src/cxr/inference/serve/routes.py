"""The routes of ``cxr serve``: the page, health and readiness, Prometheus metrics, the model, the prediction.

Each JSON route answers one of the pydantic models of :mod:`.schemas` (errors: :class:`~.schemas.Problem`), so
``/docs`` describes every answer. The routes find the model through ``app.state`` (``model_state``: loading, ready or
failed; ``audit``: the audit trail or ``None``), set by :func:`cxr.inference.serve.app.create_app`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from cxr.inference.serve.schemas import UPLOAD_BODY, Health, ModelDescription, Prediction, Readiness, errors
from cxr.inference.serve.telemetry import REQUEST_ID
from cxr.inference.serve.uploads import HTTPProblem, anonymous_name, multipart_file

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
router = APIRouter()
PREDICT_QUERY = frozenset({"cam", "preview", "tta"})


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz", summary="Liveness: the process answers", responses=errors(503))
def healthz(request: Request) -> Health:
    state = request.app.state.model_state
    if state.status == "failed":
        raise HTTPProblem(503, f"the model could not be loaded ({state.error})")
    name = state.service.predictor.path.name if state.service else Path(request.app.state.settings.model).name
    return Health(status="ok", model=name)


@router.get("/readyz", summary="Readiness: the model is loaded", responses=errors(503))
def readyz(request: Request) -> Readiness:
    request.app.state.model_state.require()
    return Readiness(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus_metrics(request: Request) -> Response:
    body, content_type = request.app.state.metrics.exposition()
    return Response(body, media_type=content_type)


@router.get(
    "/api/model", summary="Labels, thresholds, preprocessing, version and model card", responses=errors(401, 503)
)
def model(request: Request) -> ModelDescription:
    return request.app.state.model_state.require().describe()


@router.post(
    "/api/predict",
    summary="Probabilities per finding for one PNG, JPEG or DICOM image (multipart field 'file')",
    response_model=Prediction,
    response_model_exclude_none=True,
    responses=errors(400, 401, 413, 415, 422, 503),
    openapi_extra=UPLOAD_BODY,
)
async def predict(
    request: Request,
    cam: str | None = Query(None, description="Heatmaps: 'positive', 'all', or comma-separated findings."),
    preview: bool = Query(False, description="Add the decoded image as a PNG data URL (for the page)."),
    tta: bool = Query(False, description="Average with the horizontally mirrored image (test-time augmentation)."),
) -> Prediction:
    if not set(request.query_params) <= PREDICT_QUERY:  # a typo (?cams=all) must not pass silently for the default
        raise HTTPProblem(400, f"unknown query parameter: this route takes {', '.join(sorted(PREDICT_QUERY))}")
    service, audit = request.app.state.model_state.require(), request.app.state.audit
    body, content_type = await request.body(), request.headers.get("content-type")

    def answer() -> Prediction:  # in the thread pool: parsing, decoding and the model stay off the event loop
        data, filename = multipart_file(body, content_type)
        prediction = service.predict(data, anonymous_name(filename), cam, preview, tta)
        if audit is not None:
            audit.record(REQUEST_ID.get(), data, prediction.probabilities)
        return prediction

    return await run_in_threadpool(answer)
