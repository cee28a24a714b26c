"""Predicting many files: decoding in a pool of processes, overlapped with the model, results in input order.

``cxr predict DIR`` used to decode every file in the main process and then run the model, so one core decoded
while the others (or the GPU) waited. Here ``workers`` processes decode and preprocess (the one path of
``cxr prepare``: :func:`cxr.imaging.decode.decode_grayscale`, then the model's
:class:`~cxr.imaging.preprocessing.Preprocessing` up to the uint8 model view) while the main process runs the model on
full batches. Only the small model view crosses the process boundary (50 kB at 224 px against 1 MB for a decoded
1024² radiograph), unless Grad-CAM needs the source image. A bounded number of chunks is in flight and results are
consumed in submission order, so memory stays constant in the number of files and the output keeps the input's
order. The pool is the pattern of ``cxr prepare`` (forkserver, one OpenCV thread per process, workers that exit with
their parent).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale, init_decode_worker
from cxr.imaging.preprocessing import Preprocessing, to_unit
from cxr.inference.predictor import Predictor, probabilities

POOL_MIN_IMAGES = 32
"""Below this many files, the default decodes in this process: starting a pool costs more than it saves."""
CHUNK_IMAGES = 4
"""Files per task sent to a worker: large enough to amortise the hand-over, small enough to keep order cheap."""


@dataclass
class DecodedImage:
    """One file after decoding: the model's uint8 view of it, the source image when asked for, or why it failed."""

    path: Path
    view: np.ndarray | None = None
    source: np.ndarray | None = None
    error: str | None = None


def decode_for_model(path: Path, preprocessing: Preprocessing, keep_source: bool = False) -> DecodedImage:
    """Decode ``path`` and preprocess it up to the model's view (uint8 ``input_size`` square); an unreadable file
    gives a :class:`DecodedImage` with the reason instead of raising."""
    try:
        gray = decode_grayscale(path)
    except CxrError as error:
        return DecodedImage(path, error=str(error).removeprefix(f"{path}: "))
    return DecodedImage(path, preprocessing.view(preprocessing.store_image(gray)), gray if keep_source else None)


def _decode_chunk(paths: list[Path], preprocessing: Preprocessing, keep_source: bool) -> list[DecodedImage]:
    return [decode_for_model(path, preprocessing, keep_source) for path in paths]


def resolve_workers(workers: int | None, images: int) -> int:
    """``workers`` as given, or by default every core, except for a handful of files (no pool at all)."""
    if workers is not None:
        if workers < 1:
            raise CxrError(f"--workers must be at least 1, got {workers}")
        return workers
    return (os.cpu_count() or 1) if images >= POOL_MIN_IMAGES else 1


def decoded_images(
    images: Sequence[Path],
    preprocessing: Preprocessing,
    workers: int = 1,
    keep_source: bool = False,
    ahead: int = 64,
    on_drained: Callable[[], None] | None = None,
) -> Iterator[DecodedImage]:
    """Every file of ``images`` decoded, in input order; ``workers > 1`` decodes in that many processes, at most
    about ``ahead`` files ahead of the consumer (so decoding goes on while the consumer runs the model).
    ``on_drained()`` is called once the pool has decoded the last file (its cores are free from then on)."""
    if workers == 1:
        for path in images:
            yield decode_for_model(path, preprocessing, keep_source)
        return
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["cxr.imaging.decode", "cxr.imaging.preprocessing"])
    chunks = (list(images[start : start + CHUNK_IMAGES]) for start in range(0, len(images), CHUNK_IMAGES))
    in_flight = max(2 * workers, -(-ahead // CHUNK_IMAGES))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=init_decode_worker, initargs=(os.getpid(),))
    running: deque[Future] = deque()
    try:
        for chunk in chunks:
            running.append(pool.submit(_decode_chunk, chunk, preprocessing, keep_source))
            if len(running) >= in_flight:
                yield from _result(running.popleft())
        while running:
            decoded = _result(running.popleft())
            if on_drained is not None and all(future.done() for future in running):
                on_drained()
                on_drained = None
            yield from decoded
    finally:
        # The workers are idle or no longer needed: let them exit without making the consumer wait for them (the
        # join would hold up the last batch); what is still queued after an early stop is dropped.
        pool.shutdown(wait=False, cancel_futures=True)


def _result(future: Future) -> list[DecodedImage]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise CxrError("a decoding worker died (out of memory? killed?); rerun with --resume to go on") from None


@dataclass
class PredictedImage:
    """A readable file with its probabilities ``(K,)``, and its decoded source when Grad-CAM needs it."""

    path: Path
    probabilities: np.ndarray
    source: np.ndarray | None


def predicted_images(
    predictor: Predictor,
    images: Sequence[Path],
    *,
    batch_size: int = 16,
    workers: int = 1,
    tta: bool = False,
    keep_source: bool = False,
    on_error: Callable[[str, str], None],
) -> Iterator[PredictedImage]:
    """Probabilities for every readable file of ``images``, in input order, the model running on batches of
    ``batch_size`` while the pool decodes the next ones. Unreadable files go to ``on_error(path, reason)`` in their
    place in the input order (just before the next readable file is yielded), so a consumer that counts outcomes
    (:mod:`cxr.inference.devices`) knows which input each one answers."""
    if batch_size < 1:
        raise CxrError(f"batch size must be at least 1, got {batch_size}")
    ahead = 2 * batch_size + 4 * workers
    pending: list[DecodedImage] = []
    readable = 0
    with model_threads(predictor, workers) as drained:
        for item in decoded_images(images, predictor.preprocessing, workers, keep_source, ahead, drained):
            pending.append(item)
            readable += item.error is None
            if readable == batch_size:
                yield from _run_batch(predictor, pending, tta, on_error)
                pending, readable = [], 0
        if pending:
            yield from _run_batch(predictor, pending, tta, on_error)


@contextlib.contextmanager
def model_threads(predictor: Predictor, workers: int) -> Iterator[Callable[[], None]]:
    """While ``workers`` processes decode, a torch model on the CPU takes the cores they leave (at least one
    intra-op thread), restored afterwards; yields the function that gives the model its threads back early, when the
    pool has decoded the last file (the last batches then run on every core). On 2 cores, 2 decoding processes
    beside torch's 2 threads oversubscribed the CPU: the pipeline reached 0.78 of its reference, 0.85 with one thread
    (``benchmarks/predict_pipeline.py``, ``docs/benchmarks.md``). Measured on 2 cores only; onnxruntime keeps its
    own session settings."""
    torch = sys.modules.get("torch")  # a torch predictor has loaded it; the ONNX path must not import it
    on_cpu = str(getattr(predictor, "device", "")) == "cpu"
    if workers <= 1 or torch is None or predictor.backend != "torch" or not on_cpu:
        yield lambda: None
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    try:
        yield lambda: torch.set_num_threads(before)
    finally:
        torch.set_num_threads(before)


def _run_batch(
    predictor: Predictor, pending: list[DecodedImage], tta: bool, on_error: Callable[[str, str], None]
) -> Iterator[PredictedImage]:
    """The model on the readable files of ``pending``; then every file in order: its record, or its error."""
    batch = [item for item in pending if item.error is None]
    rows = iter(
        probabilities(predictor, to_unit(np.stack([item.view for item in batch]))[:, None], tta) if batch else []
    )
    for item in pending:
        if item.error is not None:
            on_error(str(item.path), item.error)
        else:
            yield PredictedImage(item.path, next(rows), item.source)
