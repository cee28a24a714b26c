"""``cxr serve``: a web page and a REST API around one model (checkpoint or ONNX export), FastAPI + uvicorn.

``POST /api/predict`` answers with the JSON of ``cxr predict --json`` for one image, optionally with a preview of the
decoded image and Grad-CAM heatmaps as PNG data URLs; ``GET /api/model`` describes the model; ``GET /healthz`` says
it is up, ``GET /readyz`` that the model is loaded, ``GET /metrics`` is for Prometheus; ``GET /`` is the page
(``cxr/inference/static``). Bad input never reaches a 500: an upload over the limit is 413 (refused before it is read
in full), a file that is not PNG/JPEG/DICOM is 415, one that does not decode is 400, a decompression bomb (over
Pillow's pixel limit) is 413, and a file whose decoding outlasts the time limit is 422. Concurrent predictions share
model calls (micro-batching).

The package, from the outside in: :mod:`.server` (uvicorn, workers), :mod:`.app` (``create_app``: wiring),
:mod:`.settings` (one typed :class:`ServeSettings` for the CLI and the environment), :mod:`.routes` and
:mod:`.schemas` (the API and its pydantic answers), :mod:`.service` (decode, predict, Grad-CAM; no HTTP),
:mod:`.batching` (the micro-batcher), :mod:`.security` (API keys, listening address, headers), :mod:`.uploads`
(size limit, in-memory multipart, the decode pool), :mod:`.telemetry` (request ids, access log, metrics, audit).
"""

from cxr.inference.serve.app import create_app
from cxr.inference.serve.server import app_from_environment, run_server, settings_for_cli, uvicorn_options
from cxr.inference.serve.settings import ServeSettings
from cxr.inference.serve.uploads import UploadLimit

__all__ = [
    "ServeSettings",
    "UploadLimit",
    "app_from_environment",
    "create_app",
    "run_server",
    "settings_for_cli",
    "uvicorn_options",
]
