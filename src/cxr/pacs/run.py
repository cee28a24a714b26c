"""Starting ``cxr dicom-node`` from the command line: settings checked, the model loaded, the node run until
SIGINT or SIGTERM, then drained and its counters logged."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cxr.errors import CxrError
from cxr.pacs.policy import AssociationPolicy, Destination, parse_ae_title
from cxr.pacs.sender import RetryPolicy

if TYPE_CHECKING:  # node.py needs pynetdicom, an optional extra: imported where the node starts
    from cxr.pacs.node import NodeStatus

PACS_EXTRA = "pip install 'cxr[pacs]'"


def node_settings(
    ae_title: str,
    port: int,
    send_to: str | None,
    allow: Sequence[str] = (),
    host: str = "127.0.0.1",
    secondary_capture: bool = False,
    max_instance_mb: float = 64,
    queue_size: int = 8,
    retry_seconds: float = 300,
    stow_url: str | None = None,
):
    """The node's settings from the command line's words; every mistake is a :class:`CxrError` naming the option."""
    from cxr.pacs.node import NodeSettings

    if not 0 <= port < 65536:
        raise CxrError(f"--port {port}: not a TCP port")
    if max_instance_mb <= 0 or queue_size < 1 or retry_seconds < 0:
        raise CxrError("--max-instance-mb and --queue must be positive, --retry-seconds not negative")
    if not send_to and not stow_url:
        raise CxrError("where should results go? give --send-to HOST:PORT:AET, --stow-url URL, or both")
    if stow_url and not stow_url.startswith(("http://", "https://")):
        raise CxrError(f"--stow-url {stow_url!r}: expected an http(s) URL, e.g. http://pacs:8042/dicom-web")
    destination = Destination.parse(send_to) if send_to else None
    return NodeSettings(
        ae_title=parse_ae_title(ae_title, "--ae-title"),
        destination=destination,
        policy=AssociationPolicy.for_node(allow, destination),
        host=host,
        port=port,
        secondary_capture=secondary_capture,
        max_instance_bytes=int(max_instance_mb * 2**20),
        queue_size=queue_size,
        retry=RetryPolicy(deadline_s=retry_seconds),
        stow_url=stow_url,
    )


def _log_to_stderr() -> None:
    logger = logging.getLogger("cxr")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def run_node(model: str | Path, settings, audit: Path | None = None, metrics_port: int | None = None) -> NodeStatus:
    """Load ``model``, serve until SIGINT/SIGTERM (and ``/metrics`` on ``metrics_port``), drain the queue; return the
    final status."""
    try:
        from cxr.pacs.node import DicomNode
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] in ("pynetdicom", "highdicom"):
            raise CxrError(f"cxr dicom-node needs {error.name}: {PACS_EXTRA}") from None
        raise
    from cxr.inference.predict import load_predictor
    from cxr.inference.serve.telemetry import AuditLog

    _log_to_stderr()
    predictor = load_predictor(model)
    trail = AuditLog(audit) if audit else None
    if trail is not None:
        trail.describe_model(predictor)
    node = DicomNode(predictor, settings, audit=trail)
    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    try:
        node.start()
    except OSError as error:
        raise CxrError(f"cannot listen on {settings.host}:{settings.port} ({error.strerror or error})") from None
    metrics = None
    if metrics_port is not None:
        from cxr.pacs.metrics import serve_metrics

        try:
            metrics = serve_metrics(node, metrics_port, settings.host)
        except OSError as error:
            node.stop(drain_s=0)
            raise CxrError(f"--metrics-port {metrics_port}: cannot listen ({error.strerror or error})") from None
    stop.wait()
    status = node.stop()
    if metrics is not None:
        metrics.shutdown()
    if trail is not None:
        trail.close()
    return status
