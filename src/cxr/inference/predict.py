"""``cxr predict``: probabilities per finding for PNG / JPEG / DICOM files, from a checkpoint or an ONNX export.

Both backends share one interface (:class:`cxr.inference.predictor.Predictor`). Images go through the one decode +
preprocessing path of ``cxr prepare`` (:func:`cxr.imaging.decode.decode_grayscale`, then the model's
:class:`~cxr.imaging.preprocessing.Preprocessing`), so a radiograph is seen exactly as in training. Torch is imported
only for a checkpoint or Grad-CAM. A file that cannot be read is reported and skipped; the others are still predicted.
Many files are decoded in a pool of processes while the model runs (:mod:`cxr.inference.pipeline`), and records come
out in input order as their batch completes (:func:`iter_predictions`), for outputs that stream
(:mod:`cxr.inference.outputs`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.inference.cam import unique_stems, write_heatmaps
from cxr.inference.devices import predicted_on_devices
from cxr.inference.pipeline import predicted_images, resolve_workers
from cxr.inference.predictor import Predictor, probabilities, resolve_model_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""What a directory given to ``cxr predict`` is searched for (recursively, case-insensitively)."""


def load_predictor(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Predictor:
    """The predictor for a checkpoint (torch) or an exported ``.onnx`` (onnxruntime), chosen by suffix. ``precision``
    (a checkpoint's: :func:`cxr.inference.eager.resolve_precision`) is refused for an ``.onnx`` file unless fp32/auto:
    an export carries its own arithmetic (fp32, or int8 from ``cxr export --quantize``)."""
    path = resolve_model_path(path)
    # Each backend imported only when a model needs it: an ONNX deployment has no torch to import.
    if path.suffix.lower() == ".onnx":
        from cxr.inference.onnx import OnnxPredictor

        if precision == "bf16":
            raise CxrError(f"{path}: --precision bf16 applies to a checkpoint; an ONNX export runs as it was exported")
        return OnnxPredictor(path)
    from cxr.inference.eager import TorchPredictor

    return TorchPredictor.from_path(path, device=device, precision=precision)


def find_images(paths: Iterable[str | Path]) -> tuple[list[Path], list[dict]]:
    """Files as given plus, for directories, every image below them (sorted); missing paths as errors."""
    images, errors = [], []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append({"image": str(path), "error": f"no {'/'.join(IMAGE_SUFFIXES)} files below it"})
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            errors.append({"image": str(path), "error": "no such file or directory"})
    return images, errors


@dataclass(frozen=True)
class Prediction:
    """One image's prediction: probability and threshold per finding (NIH label names, the model's order), the
    findings at or above their threshold, most probable first, and the Grad-CAM files ``{finding: {"overlay": png,
    "map": npy}}`` when asked for. :meth:`to_dict` is the JSON record of ``cxr predict --json`` and ``--jsonl``."""

    image: str
    probabilities: dict[str, float]
    positive: tuple[str, ...]
    thresholds: dict[str, float]
    heatmaps: dict[str, dict[str, str]] | None = None

    def to_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "image": self.image,
            "probabilities": dict(self.probabilities),
            "positive": list(self.positive),
            "thresholds": dict(self.thresholds),
        }
        if self.heatmaps is not None:
            record["heatmaps"] = self.heatmaps
        return record


def prediction_record(
    image: str, probabilities: Sequence[float], labels: Sequence[str], thresholds: Mapping[str, float]
) -> Prediction:
    """The :class:`Prediction` of ``image`` from its probabilities in ``labels`` order; a finding is positive at or
    above its threshold."""
    probs = {label: float(p) for label, p in zip(labels, probabilities, strict=True)}
    positive = sorted((label for label in labels if probs[label] >= thresholds[label]), key=lambda x: -probs[x])
    return Prediction(image, probs, tuple(positive), {label: float(thresholds[label]) for label in labels})


def predict_arrays(
    predictor: Predictor, grays: Sequence[np.ndarray], batch_size: int = 16, tta: bool = False
) -> np.ndarray:
    """Probabilities ``(N, K)`` for decoded grayscale images (uint8, any size), in batches (``tta``: with mirrors)."""
    out = np.zeros((len(grays), len(predictor.labels)))
    for start in range(0, len(grays), batch_size):
        batch = np.stack([predictor.preprocessing.model_input(gray) for gray in grays[start : start + batch_size]])
        out[start : start + len(batch)] = probabilities(predictor, batch, tta)
    return out


def _report_to_stderr(image: str, message: str) -> None:
    print(f"skipped {image}: {message}", file=sys.stderr)


def iter_predictions(
    predictor: Predictor,
    images: Sequence[Path],
    *,
    batch_size: int = 16,
    workers: int | None = None,
    cam_dir: str | Path | None = None,
    stems: dict[str, str] | None = None,
    on_error: Callable[[str, str], None] | None = None,
    tta: bool = False,
    devices: Sequence[str] | None = None,
    precision: str = "fp32",
) -> Iterator[Prediction]:
    """One :class:`Prediction` per readable file of ``images``, in input order, as each batch completes.

    Decoding runs in ``workers`` processes (default: every core when there are enough files; see
    :mod:`cxr.inference.pipeline`), overlapped with the model. With ``cam_dir``, each also has its ``heatmaps``
    (files named by ``stems``, default :func:`~cxr.inference.cam.unique_stems` of ``images``).
    With several ``devices`` (``cuda:0``, ``cuda:1``, ... or ``cpu``), one process per device predicts its share
    (:mod:`cxr.inference.devices`) and the records are the same, in the same order; each loads the checkpoint with
    ``precision`` (:func:`cxr.inference.eager.resolve_precision`, resolved for its own device).
    """
    report = on_error or _report_to_stderr
    workers = resolve_workers(workers, len(images))
    if cam_dir is not None and stems is None:
        stems = dict(zip(map(str, images), unique_stems([str(path) for path in images]), strict=True))
    if devices is not None and len(devices) > 1:
        if cam_dir is not None:
            raise CxrError("Grad-CAM (--cam) runs in one process: use --device instead of --devices")
        if predictor.backend != "torch":
            raise CxrError(f"--devices needs a checkpoint; {predictor.path} runs on onnxruntime's CPU provider")
        items = predicted_on_devices(
            predictor.path, devices, images, batch_size=batch_size, workers=workers, tta=tta, on_error=report,
            precision=precision,
        )  # fmt: skip
    else:
        items = predicted_images(
            predictor, images, batch_size=batch_size, workers=workers, tta=tta, keep_source=cam_dir is not None,
            on_error=report,
        )  # fmt: skip
    for item in items:
        prediction = prediction_record(str(item.path), item.probabilities, predictor.labels, predictor.thresholds)
        if cam_dir is not None:
            stem, positive = stems[prediction.image], prediction.positive
            prediction = replace(
                prediction, heatmaps=write_heatmaps(predictor, item.source, positive, Path(cam_dir), stem)
            )
        yield prediction


def predict_images(
    model: str | Path | Predictor,
    paths: Iterable[str | Path],
    batch_size: int = 16,
    cam_dir: str | Path | None = None,
    on_error: Callable[[str, str], None] | None = None,
    tta: bool = False,
    workers: int | None = None,
) -> list[dict]:
    """Predict every image of ``paths`` (files, or directories searched recursively) with ``model``.

    Returns the JSON record (:meth:`Prediction.to_dict`) of each readable image, in input order; with ``cam_dir``,
    each record also has ``"heatmaps"``: ``{finding: {"overlay": png, "map": npy}}`` for its positive findings (with
    an ONNX model, Grad-CAM runs on the torch twin rebuilt from the file). Unreadable files are passed to
    ``on_error(image, message)`` (default: printed to stderr) and skipped. ``tta``: each probability is the mean
    of the image's and its horizontal mirror's. For a dataset, :func:`iter_predictions` streams the same records.
    """
    if batch_size < 1:
        raise CxrError(f"batch size must be at least 1, got {batch_size}")
    predictor = model if hasattr(model, "probabilities") else load_predictor(model)
    report = on_error or _report_to_stderr
    images, missing = find_images(paths)
    for error in missing:
        report(error["image"], error["error"])
    predictions = iter_predictions(
        predictor, images, batch_size=batch_size, workers=workers, cam_dir=cam_dir, on_error=report, tta=tta
    )
    return [prediction.to_dict() for prediction in predictions]
