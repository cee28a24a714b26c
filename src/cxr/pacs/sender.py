"""Results to the PACS by C-STORE, retried with exponential backoff for a bounded time, never silently dropped.

A PACS restarts, a network blips: a result that cannot be stored is retried (delays ``first_delay_s``, times
``factor``, at most ``max_delay_s``) until ``deadline_s`` after the first attempt, then reported as failed to the
caller, which counts it. Each attempt opens one association and stores what is still pending; a Warning status
(PS3.4 Annex B: coercion of data elements, elements discarded) counts as stored, anything else is retried.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

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


class ResultSender:
    """C-STORE client of the node: one association per attempt, to ``destination``, as ``calling_ae_title``."""

    def __init__(
        self, destination: Destination, calling_ae_title: str, retry: RetryPolicy, stop: threading.Event | None = None
    ):
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
        from pynetdicom import AE

        self.destination, self.retry = destination, retry
        self.stop = stop or threading.Event()
        self.ae = AE(ae_title=calling_ae_title)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT_S
        self.ae.connection_timeout = 10.0
        for sop_class in RESULT_SOP_CLASSES:
            # One context per transfer syntax, so the dataset's own encoding is always among those accepted.
            for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                self.ae.add_requested_context(sop_class, syntax)

    def send(self, datasets: Sequence) -> SendOutcome:
        """Store every dataset; retry what is pending until the deadline (or until :attr:`stop` is set)."""
        pending, attempts, delay = list(datasets), 0, self.retry.first_delay_s
        deadline = time.monotonic() + self.retry.deadline_s
        while True:
            attempts += 1
            pending, error = self._attempt(pending)
            if not pending:
                return SendOutcome(True, attempts)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop.is_set():
                return SendOutcome(False, attempts, error)
            if self.stop.wait(min(delay, remaining)):
                return SendOutcome(False, attempts, f"{error}; stopped before the next attempt")
            delay = min(delay * self.retry.factor, self.retry.max_delay_s)

    def _attempt(self, pending: list) -> tuple[list, str | None]:
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
