"""``cxr predict --devices``: one process per device, each running the pipeline on its share, merged in input order.

The input is cut into chunks of a few batches dealt round-robin to the devices (chunk ``k`` to device ``k mod N``),
so every device starts at once and the merge never waits for a whole shard: the main process takes chunk ``k``'s
outcomes from device ``k mod N``'s queue, in order, and the bounded queues keep memory constant (a device that runs
ahead blocks). Each device process loads the checkpoint on its device and runs :func:`~cxr.inference.pipeline.
predicted_images` on its chunks with its share of the decoding workers; it sends, per batch, one outcome per input
file (probabilities or the reason it is unreadable), in its input order. Processes are spawned (CUDA cannot be
used in a forked child) and stopped when the consumer stops early. ``cpu`` devices take the same path, which is how
it is tested without a GPU; ``--resume`` needs nothing here (the caller drops the images an output holds).
"""

from __future__ import annotations

import os
import queue
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.inference.pipeline import PredictedImage

CHUNK_BATCHES = 4
"""Batches per chunk dealt to a device: few enough that the devices stay level, enough that a batch rarely spans
two devices' chunks."""
QUEUE_MESSAGES = 8
"""Messages (one per batch) a device may have waiting for the merge before it blocks."""
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    """What a device process says of one input file: its probabilities, or why it could not be read."""

    image: str
    probabilities: np.ndarray | None = None
    error: str | None = None


def parse_devices(spec: str, cuda_devices: Callable[[], int] | None = None) -> list[str]:
    """``--devices``: ``N`` (the first N CUDA devices) or a comma-separated list (``cuda:0,cuda:2``, ``cpu,cpu``).

    Refuses a CUDA device this machine does not have, naming how many it has."""
    spec = spec.strip()
    if spec.isdigit():
        count = int(spec)
        if count < 1:
            raise CxrError(f"--devices {spec}: at least one device")
        devices = [f"cuda:{index}" for index in range(count)]
    else:
        devices = [_device_name(name.strip(), spec) for name in spec.split(",")]
    wanted = [int(name.split(":")[1]) for name in devices if name.startswith("cuda")]
    if wanted:
        present = (cuda_devices or _cuda_device_count)()
        if max(wanted) >= present:
            raise CxrError(
                f"--devices {spec} asks for cuda:{max(wanted)}; this machine has {present} CUDA device(s) "
                f"({', '.join(f'cuda:{k}' for k in range(present)) or 'none'})"
            )
    return devices


def _device_name(name: str, spec: str) -> str:
    if name == "cpu":
        return name
    if name == "cuda":
        return "cuda:0"
    index = name.removeprefix("cuda:")
    if name.startswith("cuda:") and index.isdigit():
        return f"cuda:{int(index)}"
    raise CxrError(f"--devices {spec}: {name!r} is not a device (a count N, or cpu, cuda, cuda:K separated by commas)")


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def deal_chunks(count: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``range(count)``; chunk ``k`` goes to device ``k % len(devices)``."""
    return [(start, min(start + chunk, count)) for start in range(0, count, chunk)]


def predicted_on_devices(
    model: Path,
    devices: Sequence[str],
    images: Sequence[Path],
    *,
    batch_size: int,
    workers: int,
    tta: bool,
    on_error: Callable[[str, str], None],
    precision: str = "fp32",
) -> Iterator[PredictedImage]:
    """What :func:`~cxr.inference.pipeline.predicted_images` gives for ``images``, computed by one process per
    device (the checkpoint ``model`` loaded on each), ``workers`` decoding processes shared among them."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    chunks = deal_chunks(len(images), CHUNK_BATCHES * batch_size)
    shares = [[images[i] for k, (a, b) in enumerate(chunks) if k % len(devices) == d for i in range(a, b)]
              for d in range(len(devices))]  # fmt: skip
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    share_workers = max(1, workers // len(devices))
    queues = [context.Queue(QUEUE_MESSAGES) for _ in devices]
    processes = [
        context.Process(
            target=run_device,
            name=f"cxr-predict-{device}",
            args=(str(model), device, share, batch_size, share_workers, tta, threads, queues[d], precision),
        )  # fmt: skip
        for d, (device, share) in enumerate(zip(devices, shares, strict=True))
    ]
    for process, share in zip(processes, shares, strict=True):
        if share:  # fewer chunks than devices: the last devices have nothing to do
            process.start()
    waiting: list[deque[Outcome]] = [deque() for _ in devices]
    try:
        for k, (start, stop) in enumerate(chunks):
            d = k % len(devices)
            for path in images[start:stop]:
                outcome = _next_outcome(waiting[d], queues[d], processes[d], devices[d])
                if outcome.image != str(path):
                    raise CxrError(f"{devices[d]} answered {outcome.image} for {path} (a bug; please report it)")
                if outcome.error is not None:
                    on_error(outcome.image, outcome.error)
                else:
                    yield PredictedImage(path, outcome.probabilities, None)
    finally:
        for process, share in zip(processes, shares, strict=True):
            if share and process.is_alive():  # the consumer stopped early (an error, Ctrl-C): stop the device
                process.terminate()
            if share:
                process.join()


def _next_outcome(waiting: deque[Outcome], messages, process, device: str) -> Outcome:
    while not waiting:
        try:
            kind, payload = messages.get(timeout=POLL_SECONDS)
        except queue.Empty:
            if not process.is_alive():
                raise CxrError(
                    f"the process predicting on {device} died (exit code {process.exitcode}); rerun with --resume"
                ) from None
            continue
        if kind == "failed":
            raise CxrError(f"on {device}: {payload}")
        waiting.extend(payload)
    return waiting.popleft()


def run_device(
    model: str,
    device: str,
    images: list[Path],
    batch_size: int,
    workers: int,
    tta: bool,
    threads: int,
    messages,
    precision: str = "fp32",
) -> None:
    """A device process: the checkpoint on ``device``, the pipeline on ``images``, one message per batch of
    outcomes (in input order) to ``messages``; a failure is sent as its message instead of a traceback."""
    try:
        import torch

        from cxr.inference.eager import TorchPredictor
        from cxr.inference.pipeline import predicted_images

        if device == "cpu":
            torch.set_num_threads(threads)  # N processes on one CPU: each its share of the cores
        predictor = TorchPredictor.from_path(model, device=device, precision=precision)
        outcomes: list[Outcome] = []

        def unreadable(image: str, reason: str) -> None:
            outcomes.append(Outcome(image, error=reason))

        for item in predicted_images(
            predictor, images, batch_size=batch_size, workers=workers, tta=tta, on_error=unreadable
        ):
            outcomes.append(Outcome(str(item.path), item.probabilities))
            if len(outcomes) >= batch_size:
                messages.put(("outcomes", outcomes))
                outcomes = []
        messages.put(("outcomes", outcomes))
    except CxrError as error:
        messages.put(("failed", str(error)))
    except Exception as error:  # noqa: BLE001 (the merge reports it; a traceback in a child would be lost)
        messages.put(("failed", f"{type(error).__name__}: {error}"))
