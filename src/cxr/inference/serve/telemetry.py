"""Running ``cxr serve``: request ids and the access log, Prometheus metrics, the audit trail, the model's state.

Each request gets a random id (answered in ``X-Request-ID``) and one access-log line on ``cxr.access``: id, method,
route template, status, request body size, duration and the number of the API key used. Never a header value, a
query string, a file name or anything decoded from an upload. Metrics live in a registry per app, so that tests
(or one process serving two apps) never mix their counts. The audit trail, when asked for, is one JSON line per
prediction: when, which request, the SHA-256 of the uploaded bytes, which model, the probabilities.
"""

from __future__ import annotations

import contextvars
import datetime
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.inference.serve.uploads import HTTPProblem

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("cxr_request_id", default="-")
"""The id of the request being served (in the event loop, the thread pool and the decode pool)."""
REQUEST_ID_HEADER = b"x-request-id"
access_log = logging.getLogger("cxr.access")

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The app's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "cxr_http_requests", "HTTP requests answered, by route, method and status", ("route", "method", "status"),
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "cxr_http_request_duration_seconds", "Time to answer, by route and method", ("route", "method"),
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.in_progress = Gauge("cxr_http_requests_in_progress", "Requests being answered now", registry=r)
        self.model_load = Gauge("cxr_model_load_seconds", "Seconds it took to load the model", registry=r)
        self.model_ready = Gauge("cxr_model_ready", "1 once the model is loaded, else 0", registry=r)
        self.decode_timeouts = Counter(
            "cxr_decode_timeouts", "Uploads refused because decoding exceeded the time limit or waited too long",
            registry=r,
        )  # fmt: skip
        self.upload_bytes = Histogram(
            "cxr_upload_bytes", "Size of prediction request bodies",
            buckets=(2**14, 2**16, 2**18, 2**20, 2**21, 2**22, 2**23, 2**24, 2**25), registry=r,
        )  # fmt: skip

        self.batch_size = Histogram(
            "cxr_model_batch_images", "Images per model call (micro-batching: requests that shared a call)",
            buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_label(scope, routes=()) -> str:
    """The matched route's template (``/api/predict``, ``/static``), or ``unmatched``: bounded, never user text.

    A request answered by a middleware (401, 413) never reached the router: its route is looked up in ``routes``.
    """
    route = scope.get("route")
    if route is None:
        from starlette.routing import Match

        route = next((r for r in routes if r.matches(scope)[0] == Match.FULL), None)
    return getattr(route, "path", None) or "unmatched"


class RequestContext:
    """ASGI middleware, outermost: request id, timing, the access log line and the request metrics."""

    def __init__(self, app, metrics: Metrics, routes=()):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        start = time.perf_counter()
        status, received = 500, 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            return message

        async def tagged_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), (REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, counting_receive, tagged_send)
        finally:
            elapsed = time.perf_counter() - start
            route, method = route_label(scope, self.routes), scope["method"]
            self.metrics.in_progress.dec()
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(elapsed)
            if route == "/api/predict":
                self.metrics.upload_bytes.observe(received)
            client = scope.get("cxr.client")
            access_log.info(
                "request=%s method=%s route=%s status=%d bytes_in=%d ms=%.1f key=%s",
                request_id, method, route, status, received, 1000 * elapsed, client if client else "-",
            )  # fmt: skip
            REQUEST_ID.reset(token)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class AuditLog:
    """Appends one JSON line per prediction to ``path``: UTC time, request id, SHA-256 of the upload, the model
    (path, file SHA-256, the cxr version that wrote it) and the probabilities. No file name, no header value.

    Each line is one ``write`` on a file opened with ``O_APPEND``, so several workers can share the file.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as error:
            raise CxrError(f"{self.path}: cannot open the audit log ({error.strerror or error})") from None
        self.lock = threading.Lock()
        self.model: dict | None = None

    def describe_model(self, predictor) -> None:
        path = Path(predictor.path)
        self.model = {
            "path": str(path.resolve()),
            "sha256": file_sha256(path),
            "package_version": predictor.package_version,
            "backend": predictor.backend,
        }

    def record(self, request_id: str, data: bytes, probabilities: dict[str, float]) -> None:
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": request_id,
            "upload_sha256": sha256(data),
            "upload_bytes": len(data),
            "model": self.model,
            "probabilities": probabilities,
        }
        encoded = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self.lock:
            written = os.write(self.fd, encoded)
        if written != len(encoded):
            raise OSError(f"short write to the audit log ({written} of {len(encoded)} bytes)")

    def close(self) -> None:
        os.close(self.fd)


def uvicorn_log_config(level: str = "info") -> dict:
    """uvicorn's logging setup, plus the ``cxr`` loggers (the access log above) on the same stream and format.

    uvicorn's own access log is switched off by :func:`cxr.inference.serve.server.uvicorn_options`: ``cxr.access``
    replaces it with the request id and without the client's address and query string.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = json.loads(json.dumps(LOGGING_CONFIG))
    config["formatters"]["cxr"] = {
        "()": "uvicorn.logging.DefaultFormatter",
        "fmt": "%(asctime)s %(levelprefix)s %(name)s %(message)s",
        "use_colors": None,
    }
    config["handlers"]["cxr"] = {"formatter": "cxr", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["loggers"]["cxr"] = {"handlers": ["cxr"], "level": level.upper(), "propagate": False}
    return config


class ModelState:
    """Where the model stands: ``loading``, ``ready`` (with the service) or ``failed`` (with the reason)."""

    def __init__(self):
        self.status, self.service, self.error = "loading", None, None

    def ready(self, service) -> None:
        self.service, self.status = service, "ready"

    def failed(self, error: BaseException) -> None:
        self.error, self.status = f"{type(error).__name__}: {error}", "failed"

    def require(self):
        """The service, or a 503 saying why there is none yet."""
        if self.service is not None:
            return self.service
        if self.status == "failed":
            raise HTTPProblem(503, f"the model could not be loaded ({self.error})")
        raise HTTPProblem(503, "the model is still loading; try again shortly", {"Retry-After": "5"})
