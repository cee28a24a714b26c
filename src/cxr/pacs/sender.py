"""Results to the PACS, by C-STORE or by STOW-RS, retried with exponential backoff for a bounded time, never
silently dropped.

A PACS restarts, a network blips: a result that cannot be stored is retried (delays ``first_delay_s``, times
``factor``, at most ``max_delay_s``) until ``deadline_s`` after the first attempt, then reported as failed to the
caller, which counts it. Each attempt stores what is still pending, on every transport: C-STORE opens one association
(a Warning status, PS3.4 Annex B, counts as stored: coercion of elements, elements discarded); STOW-RS (PS3.18 10.5)
posts one ``multipart/related`` request (200: all stored; 202: the failed instances are retried; anything else: all).
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cxr.pacs.policy import Destination

RESULT_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7")
"""What the node sends: Comprehensive 3D SR Storage and Secondary Capture Image Storage."""
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RetryPolicy:
    """How long a result is retried before it counts as failed (``--retry-seconds``) and how the waits grow."""

    deadline_s: float = 300.0
    first_delay_s: float = 1.0
    factor: float = 2.0
    max_delay_s: float = 30.0


@dataclass(frozen=True)
class SendOutcome:
    stored: bool
    attempts: int
    error: str | None = None


class Transport(Protocol):
    def attempt(self, pending: list) -> tuple[list, str | None]:
        """Store ``pending``; return what is still not stored and why."""
        ...


class CStore:
    """C-STORE client of the node: one association per attempt, to ``destination``, as ``calling_ae_title``."""

    def __init__(self, destination: Destination, calling_ae_title: str):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        self.destination = destination
        self.ae = AE(ae_title=calling_ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT_S
        self.ae.connection_timeout = 10.0
        for sop_class in RESULT_SOP_CLASSES:
            # One context per transfer syntax, so the dataset's own encoding is always among those accepted.
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                self.ae.add_requested_context(sop_class, syntax)

    def attempt(self, pending: list) -> tuple[list, str | None]:
        from pynetdicom.status import code_to_category

        destination = self.destination
        assoc = self.ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            state = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
            return pending, f"association with {destination} {state}"
        left, error = [], None
        try:
            for dataset in pending:
                try:
                    answer = assoc.send_c_store(dataset)
                except (ValueError, RuntimeError) as problem:  # no accepted context for this dataset
                    left.append(dataset)
                    error = f"cannot send: {problem}"
                    continue
                code = answer.get("Status") if answer else None
                if code is None or code_to_category(int(code)) not in ("Success", "Warning"):
                    left.append(dataset)
                    error = "no C-STORE response" if code is None else f"C-STORE status 0x{int(code):04X}"
        finally:
            if assoc.is_established:
                assoc.release()
        return left, error


class Stow:
    """STOW-RS client (``--stow-url``): the results as Part 10 files in one ``multipart/related`` POST to
    ``URL/studies``, built in memory."""

    def __init__(self, url: str):
        url = url.rstrip("/")
        self.url = url if url.endswith("/studies") else f"{url}/studies"

    def attempt(self, pending: list) -> tuple[list, str | None]:
        boundary = uuid.uuid4().hex
        body = io.BytesIO()
        for dataset in pending:
            body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            dataset.save_as(body, enforce_file_format=True)
            body.write(b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        request = urllib.request.Request(
            self.url, data=body.getvalue(), method="POST",
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
                status, text = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return pending, f"STOW-RS HTTP {error.code}"
        except (urllib.error.URLError, OSError) as error:
            return pending, f"STOW-RS {self.url} unreachable ({getattr(error, 'reason', error)})"
        if status == 200:
            return [], None
        failed = _failed_instances(text)
        left = [dataset for dataset in pending if str(dataset.SOPInstanceUID) in failed] if failed else pending
        return left, f"STOW-RS HTTP {status}: {len(left)} not stored"


def _failed_instances(text: bytes) -> set[str]:
    """The SOP Instance UIDs of a STOW-RS response's Failed SOP Sequence (0008,1198), DICOM JSON (PS3.18 F.2)."""
    try:
        response = json.loads(text)
        items = response.get("00081198", {}).get("Value", [])
        return {item["00081155"]["Value"][0] for item in items}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return set()


class ResultSender:
    """Every result to every transport, retried per :class:`RetryPolicy` (or until :attr:`stop` is set)."""

    def __init__(self, transports: Sequence[Transport], retry: RetryPolicy, stop: threading.Event | None = None):
        self.transports, self.retry = list(transports), retry
        self.stop = stop or threading.Event()

    def send(self, datasets: Sequence) -> SendOutcome:
        pending = {index: list(datasets) for index in range(len(self.transports))}
        attempts, delay, error = 0, self.retry.first_delay_s, None
        deadline = time.monotonic() + self.retry.deadline_s
        while True:
            attempts += 1
            for index, transport in enumerate(self.transports):
                if pending[index]:
                    pending[index], error = transport.attempt(pending[index])
            if not any(pending.values()):
                return SendOutcome(True, attempts)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop.is_set():
                return SendOutcome(False, attempts, error)
            if self.stop.wait(min(delay, remaining)):
                return SendOutcome(False, attempts, f"{error}; stopped before the next attempt")
            delay = min(delay * self.retry.factor, self.retry.max_delay_s)
