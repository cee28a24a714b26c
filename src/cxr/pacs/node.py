"""The DICOM node: a C-ECHO / C-STORE service (pynetdicom) with a bounded queue and one worker that predicts.

An association is refused at A-ASSOCIATE time unless its calling AE title and address are allowed
(:class:`~cxr.pacs.policy.AssociationPolicy`; PS3.8 A-ASSOCIATE-RJ "calling AE title not recognized"). A C-STORE
is answered before the model runs, after the checks that decide its status: too large or the queue full → 0xA700
"Refused: Out of Resources" (back-pressure: the PACS retries later, the node's memory does not grow); a header or
pixel data that cannot be decoded → 0xC000 "Error: Cannot understand"; not a frontal chest radiograph → Success,
skipped, the reason logged. What is accepted is queued as decoded pixels plus the header without its pixel data;
the worker predicts it, builds the SR (and the SC) and sends them back (:mod:`cxr.pacs.sender`).

Nothing touches the disk: pynetdicom keeps received data in memory (``STORE_RECV_CHUNKED_PDV`` is forced off, which
would spool instances to temporary files), decoding reads bytes. Logs (logger ``cxr.pacs``) hold an instance id, the
first 12 hex digits of the instance's SHA-256, sizes, timings, statuses and counters, never a header value.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import io
import json
import logging
import os
import queue
import threading
import time
import uuid
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np

from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.imaging.decode import decode_grayscale
from cxr.pacs import analysis, results
from cxr.pacs.policy import IMAGE_SOP_CLASSES, AssociationPolicy, Destination, decodable_transfer_syntaxes, skip_reason
from cxr.pacs.sender import CStore, ResultSender, RetryPolicy, Stow

log = logging.getLogger("cxr.pacs")

OUT_OF_RESOURCES, CANNOT_UNDERSTAND, SUCCESS = 0xA700, 0xC000, 0x0000
COUNTERS = (
    "associations_refused", "received", "predicted", "skipped", "refused_too_large", "refused_busy",
    "failed_decode", "failed_results", "results_sent", "results_failed",
)  # fmt: skip


@dataclass(frozen=True)
class NodeStatus:
    """The counters (:data:`COUNTERS`) and the queue: what a monitoring check reads (``/metrics``) and the CLI prints
    when the node stops."""

    counts: dict[str, int]
    queue_depth: int
    queue_size: int

    def counts_text(self) -> str:
        """``name=value`` per counter, the form of the node's log lines."""
        return " ".join(f"{name}={value}" for name, value in self.counts.items())


@dataclass
class Job:
    """One accepted instance waiting for the worker: pixels and the header without its pixel data."""

    id: str
    sha256: str
    size: int
    header: object
    gray: np.ndarray
    received: float


@dataclass(frozen=True)
class NodeSettings:
    ae_title: str
    destination: Destination | None  # --send-to (C-STORE)
    policy: AssociationPolicy
    host: str = "127.0.0.1"
    port: int = 11112
    secondary_capture: bool = False
    max_instance_bytes: int = 64 * 2**20
    queue_size: int = 8
    retry: RetryPolicy = RetryPolicy()
    stow_url: str | None = None  # --stow-url (STOW-RS)

    def describe_destinations(self) -> str:
        return " + ".join([*([str(self.destination)] if self.destination else []), *filter(None, [self.stow_url])])


def safe_reason(error: BaseException) -> str:
    """What may be logged and answered of an error: cxr's own reason, without the name it starts with and without
    the library detail in parentheses (which could quote a header value); of any other error only its type."""
    if not isinstance(error, CxrError):
        return type(error).__name__
    return str(error).split(": ", 1)[-1].split(" (", 1)[0][:64]


class DicomNode:
    """``cxr dicom-node``: receive, screen, predict, send back. :meth:`start` it, :meth:`stop` it."""

    def __init__(self, predictor, settings: NodeSettings, audit=None):
        from pynetdicom import AE, _config

        _config.STORE_RECV_CHUNKED_PDV = False  # True would spool every received instance to a temporary file
        self.predictor, self.settings, self.audit = predictor, settings, audit
        model_sha256 = file_sha256(predictor.path)
        self.algorithm = results.Algorithm.of(predictor, model_sha256)
        if settings.secondary_capture:
            predictor.model  # noqa: B018  Grad-CAM needs the torch model (an ONNX file's twin): fail at start, not later
        self.jobs: queue.Queue[Job | None] = queue.Queue(maxsize=settings.queue_size)
        self.counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        transports = [CStore(settings.destination, settings.ae_title)] if settings.destination else []
        transports += [Stow(settings.stow_url)] if settings.stow_url else []
        if not transports:
            raise CxrError("no destination for the results: give --send-to HOST:PORT:AET or --stow-url URL")
        self.sender = ResultSender(transports, settings.retry, self.stopping)
        self.ae = AE(ae_title=settings.ae_title)
        self.ae.maximum_associations = 4
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 60.0
        syntaxes = decodable_transfer_syntaxes()
        for sop_class in IMAGE_SOP_CLASSES:
            self.ae.add_supported_context(sop_class, syntaxes)
        self.ae.add_supported_context("1.2.840.10008.1.1")  # Verification (C-ECHO)
        self.server = None
        self.worker: threading.Thread | None = None

    # --- running -------------------------------------------------------------------------------------------------

    def start(self, worker: bool = True) -> DicomNode:
        """Listen (in pynetdicom's threads) and, with ``worker``, start predicting what arrives."""
        from pynetdicom import evt

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its debug output dumps received elements
        handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_C_STORE, self._on_store),
        ]
        address = (self.settings.host, self.settings.port)
        self.server = self.ae.start_server(address, block=False, evt_handlers=handlers)
        if worker:
            self.worker = threading.Thread(target=self._work, name="cxr-dicom-node-worker", daemon=True)
            self.worker.start()
        log.info(
            "listening ae_title=%s port=%d send_to=%s allow=%s secondary_capture=%s queue=%d max_bytes=%d",
            self.settings.ae_title, self.port, self.settings.describe_destinations(), self.settings.policy,
            self.settings.secondary_capture, self.settings.queue_size, self.settings.max_instance_bytes,
        )  # fmt: skip
        return self

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else self.settings.port

    def stop(self, drain_s: float = 30.0) -> NodeStatus:
        """Refuse new associations, let the worker finish what is queued (up to ``drain_s``), then stop it."""
        if self.server is not None:
            self.server.shutdown()
        if self.worker is not None:
            with contextlib.suppress(queue.Full):
                self.jobs.put(None, timeout=drain_s)
            self.worker.join(timeout=drain_s)
            self.stopping.set()
            self.worker.join(timeout=5)
        self.stopping.set()
        status = self.status()
        log.info("stopped %s", status.counts_text())
        return status

    def status(self) -> NodeStatus:
        """The counters and the queue: what a monitoring check reads (also logged at every result)."""
        with self.lock:
            counts = dict(self.counts)
        return NodeStatus(counts, self.jobs.qsize(), self.settings.queue_size)

    def _count(self, name: str) -> None:
        with self.lock:
            self.counts[name] += 1

    # --- association and C-STORE (pynetdicom's threads) ----------------------------------------------------------

    def _on_requested(self, event) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.primitive.calling_ae_title).strip()
        if not self.settings.policy.admits(calling, requestor.address):
            self._count("associations_refused")
            log.warning("association refused calling_ae=%s address=%s (not in --allow)", calling, requestor.address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, service user, calling AE not known
            event.assoc.kill()  # as pynetdicom's own rejections: waits until the A-ASSOCIATE-RJ has left

    def _on_store(self, event):
        started = time.perf_counter()
        stream = event.request.DataSet
        size = stream.seek(0, io.SEEK_END)
        job_id = uuid.uuid4().hex[:16]
        self._count("received")
        if size > self.settings.max_instance_bytes:
            return self._answer(job_id, "refused_too_large", OUT_OF_RESOURCES, size, started, "instance too large")
        if self.jobs.full():
            return self._answer(job_id, "refused_busy", OUT_OF_RESOURCES, size, started, "queue full")
        data = event.encoded_dataset(include_meta=True)
        digest = hashlib.sha256(data).hexdigest()
        try:
            header = _header(data)
            reason = skip_reason(header)
            if reason is not None:
                return self._answer(job_id, "skipped", SUCCESS, size, started, reason, digest)
            gray = decode_grayscale(data, name=f"instance {job_id}")
        except Exception as error:  # anything unreadable is the sender's problem, never the node's end
            return self._answer(job_id, "failed_decode", CANNOT_UNDERSTAND, size, started, safe_reason(error), digest)
        try:
            self.jobs.put_nowait(Job(job_id, digest, size, header, gray, time.perf_counter()))
        except queue.Full:
            return self._answer(job_id, "refused_busy", OUT_OF_RESOURCES, size, started, "queue full", digest)
        return self._answer(job_id, None, SUCCESS, size, started, "queued", digest)

    def _answer(self, job_id, counter, status, size, started, reason, digest="-"):
        if counter:
            self._count(counter)
        log.info(
            "instance=%s sha256=%s bytes=%d status=0x%04X ms=%.1f %s",
            job_id, digest[:12], size, status, 1000 * (time.perf_counter() - started), reason,
        )  # fmt: skip
        if status == SUCCESS:
            return status
        from pydicom.dataset import Dataset

        answer = Dataset()
        answer.Status, answer.ErrorComment = status, reason[:64]
        return answer

    # --- the worker ----------------------------------------------------------------------------------------------

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            try:
                self._process(job)
            except Exception as error:  # a result that cannot be built is counted and logged, the node goes on
                self._count("failed_results")
                log.error("instance=%s results failed: %s", job.id, type(error).__name__)

    def _process(self, job: Job) -> None:
        started = time.perf_counter()
        probabilities = analysis.probabilities(self.predictor, job.gray)
        self._count("predicted")
        outputs = [results.structured_report(job.header, probabilities, self.algorithm)]
        if self.settings.secondary_capture:
            positive = self.algorithm.positive(probabilities)
            rgb = analysis.cam_overlay(self.predictor, job.gray, positive)
            pixels = results.banner_image(rgb, results.banner_lines(probabilities, self.algorithm))
            outputs.append(results.secondary_capture(job.header, pixels, self.algorithm))
        predicted = time.perf_counter()
        outcome = self.sender.send(outputs)
        self._count("results_sent" if outcome.stored else "results_failed")
        if self.audit is not None:
            self._audit(job, probabilities, outcome.stored)
        log.log(
            logging.INFO if outcome.stored else logging.ERROR,
            "instance=%s results=%d %s attempts=%d predict_ms=%.1f send_ms=%.1f queued_ms=%.1f%s %s",
            job.id, len(outputs), "sent" if outcome.stored else "FAILED", outcome.attempts,
            1000 * (predicted - started), 1000 * (time.perf_counter() - predicted), 1000 * (started - job.received),
            f" error={outcome.error}" if outcome.error else "", self.status().counts_text(),
        )  # fmt: skip

    def _audit(self, job: Job, probabilities: dict[str, float], stored: bool) -> None:
        """One JSON line per predicted instance, as ``cxr serve --audit`` writes per upload: time, id, the SHA-256
        and size of what was received, the model, the probabilities; plus whether the results reached the PACS."""
        line = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "request_id": job.id,
            "instance_sha256": job.sha256,
            "instance_bytes": job.size,
            "model": self.audit.model,
            "probabilities": probabilities,
            "results_stored": stored,
        }
        encoded = (json.dumps(line, separators=(",", ":")) + "\n").encode()
        with self.audit.lock:
            os.write(self.audit.fd, encoded)


def _header(data: bytes):
    """The dataset without its pixel data (what the results copy and reference)."""
    import pydicom

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        for keyword in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID"):
            if not str(header.get(keyword, "")).strip():
                raise CxrError(f"header: no {keyword}")
    return header
