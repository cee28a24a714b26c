"""Micro-batching: concurrent requests share one model call instead of queueing for the model one by one.

A convolutional network costs far less per image in a batch of 8 than in 8 calls of one (the weights are read once,
the matrix products are larger), so a server whose requests arrive together answers more of them per second by
batching them — the dynamic batching of NVIDIA Triton and TorchServe (``max_batch_delay``). Each request thread
announces itself when its upload arrives (:meth:`MicroBatcher.request`), decodes, then hands its model input to
the batcher. A request that finds no batch being formed or run leads: it takes what is queued and, while other
announced requests are still decoding, waits for them up to ``wait_ms`` or until ``batch_max`` are there, then runs
the model in its own thread. A request alone never waits and never changes thread: with nothing else announced the
batch runs at once, so a single client sees no delay (a first version ran batches in a thread of its own, and the
two hand-overs per request doubled one client's median latency on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

BATCH_MAX, BATCH_WAIT_MS = 8, 10.0
"""Defaults of ``cxr serve --batch-max/--batch-wait-ms`` (``docs/benchmarks.md``: 8 clients, one worker)."""


@dataclass
class _Queued:
    model_input: np.ndarray
    tta: bool
    result: Future = field(default_factory=Future)


class Slot:
    """A request's place in the batcher, from its arrival until its model input is queued (or it gives up)."""

    def __init__(self, batcher: MicroBatcher):
        self.batcher, self.submitted = batcher, False

    def submit(self, model_input: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities ``(K,)`` for one model input ``(1, S, S)``, computed in a batch with its neighbours."""
        self.submitted = True
        return self.batcher._submit(model_input, tta)


class MicroBatcher:
    """Runs ``run(batch, tta)`` (``(B, 1, S, S)`` → ``(B, K)``) on batches of at most ``batch_max`` queued inputs.

    No thread of its own: a request that queues its input while no batch is being formed or run becomes the leader,
    forms the batch and runs it in its own thread, then hands the answers out (leader/followers). A lone request so
    runs in its own thread at once, exactly as without batching; the others wait for a leader's answer or take the
    lead for what queued meanwhile. ``lock`` is held during each model call (the server shares it with Grad-CAM,
    whose hooks are not thread-safe); ``on_batch(size)`` is told each call's size (the metrics' histogram).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray, bool], np.ndarray],
        batch_max: int = BATCH_MAX,
        wait_ms: float = BATCH_WAIT_MS,
        lock: threading.Lock | None = None,
        on_batch: Callable[[int], None] | None = None,
    ):
        if batch_max < 1 or wait_ms < 0:
            raise ValueError(f"need batch_max >= 1 and wait_ms >= 0, got {batch_max} and {wait_ms}")
        self.run, self.batch_max, self.wait = run, batch_max, wait_ms / 1000
        self.lock = lock or threading.Lock()
        self.on_batch = on_batch
        self.changed = threading.Condition()
        self.queue: list[_Queued] = []
        self.announced = 0  # requests that arrived and have not queued their input yet (decoding)
        self.leading = False  # a request is forming or running a batch
        self.closed = False

    @contextlib.contextmanager
    def request(self) -> Iterator[Slot]:
        """Announce a request (so a batch being formed waits for it) for as long as it prepares its input."""
        slot = Slot(self)
        with self.changed:
            self.announced += 1
        try:
            yield slot
        finally:
            if not slot.submitted:  # failed before its input was ready (a bad upload): nobody waits for it any more
                with self.changed:
                    self.announced -= 1
                    self.changed.notify_all()

    def _submit(self, model_input: np.ndarray, tta: bool) -> np.ndarray:
        item = _Queued(model_input, tta)
        with self.changed:
            self.announced -= 1
            if self.closed:
                raise RuntimeError("the server is shutting down")
            self.queue.append(item)
            self.changed.notify_all()
        while not item.result.done():
            with self.changed:
                while self.leading and not item.result.done():
                    self.changed.wait()
                if item.result.done():
                    break
                self.leading = True
                batch = self._form_batch()
            try:
                self._run(batch)
            finally:
                with self.changed:
                    self.leading = False
                    self.changed.notify_all()
        return item.result.result()

    def _form_batch(self) -> list[_Queued]:
        """(Holding ``changed``.) Wait for announced inputs up to ``wait_ms``, or until ``batch_max`` are queued;
        take at most ``batch_max``, oldest first."""
        deadline = time.monotonic() + self.wait
        while len(self.queue) < self.batch_max and self.announced > 0:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.changed.wait(left)
        batch, self.queue = self.queue[: self.batch_max], self.queue[self.batch_max :]
        return batch

    def _run(self, batch: list[_Queued]) -> None:
        for tta in (False, True):  # mirrored inputs need their own call
            group = [item for item in batch if item.tta == tta]
            if group:
                self._run_group(group, tta)

    def _run_group(self, group: list[_Queued], tta: bool) -> None:
        try:
            with self.lock:
                rows = self.run(np.concatenate([item.model_input[None] for item in group]), tta)
        except BaseException as error:  # every request of the call hears of it; the batcher goes on
            for item in group:
                item.result.set_exception(error)
            return
        if self.on_batch is not None:
            self.on_batch(len(group))
        for item, row in zip(group, rows, strict=True):
            item.result.set_result(row)

    def close(self) -> None:
        """Refuse new inputs (what is queued is still answered by its leaders)."""
        with self.changed:
            self.closed = True
            self.changed.notify_all()
