"""``cxr predict``: probabilities per finding for PNG / JPEG / DICOM files, from a checkpoint or an ONNX export.

Both backends share one interface (:class:`Predictor`): ``labels``, ``thresholds``, ``preprocessing``, a model
card, and ``probabilities(batch)`` over model inputs. Images go through the one decode + preprocessing path of
``cxr prepare`` (:func:`cxr.imaging.decode.decode_grayscale`, :func:`cxr.models.artifact.model_input`), so a radiograph
is seen exactly as in training. A file that cannot be read is reported and skipped; the others are still predicted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale
from cxr.inference.cam import unique_stems, write_heatmaps
from cxr.inference.onnx import OnnxPredictor
from cxr.models.artifact import load_artifact, model_input

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""What a directory given to ``cxr predict`` is searched for (recursively, case-insensitively)."""

DISCLAIMER = "Research software, not a medical device: not for diagnosis or clinical decisions."


class Predictor(Protocol):
    """What ``predict``, ``serve`` and the benchmark need from a model, whatever runs it."""

    backend: str
    path: Path
    labels: list[str]
    thresholds: dict[str, float]
    preprocessing: dict
    package_version: str
    card: dict
    architecture: dict

    @property
    def input_size(self) -> int: ...

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``float32 (B, 1, S, S)`` in ``[0, 1]`` → probabilities ``float64 (B, K)``."""
        ...


class TorchPredictor:
    """A checkpoint (model artifact) in torch eager mode; ``model`` is also the Grad-CAM target."""

    backend = "torch"

    def __init__(self, artifact):
        self.artifact = artifact
        self.model = artifact.model
        self.path = Path(artifact.path)
        self.labels = list(artifact.labels)
        self.thresholds = {label: float(artifact.thresholds[label]) for label in self.labels}
        self.preprocessing = dict(artifact.preprocessing)
        self.package_version = artifact.package_version
        self.architecture = dict(artifact.architecture)
        self.card = model_card(self.path, artifact.config, self.architecture, self.preprocessing)
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu") -> TorchPredictor:
        return cls(load_artifact(resolve_model_path(path), device=device))

    @property
    def input_size(self) -> int:
        return int(self.preprocessing["input_size"])

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
            return torch.sigmoid(logits).double().cpu().numpy()


def resolve_model_path(path: str | Path) -> Path:
    """A checkpoint, an ``.onnx`` file, or a run directory (→ ``RUN/checkpoints/best.ckpt``)."""
    path = Path(path)
    if path.is_dir():
        best = path / "checkpoints" / "best.ckpt"
        if not best.is_file():
            raise CxrError(f"{path} is a directory without checkpoints/best.ckpt; pass a checkpoint or an .onnx file")
        return best
    if not path.is_file():
        raise CxrError(f"model not found: {path}")
    return path


def load_predictor(path: str | Path, device: str = "cpu") -> Predictor:
    """The predictor for a checkpoint (torch) or an exported ``.onnx`` (onnxruntime), chosen by suffix."""
    path = resolve_model_path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path)
    return TorchPredictor.from_path(path, device=device)


def model_card(path: Path, config: dict, architecture: dict, preprocessing: dict) -> dict:
    """What the model is: architecture, training data and experiment, test AUROC if ``cxr evaluate`` measured it.

    The test metrics are read from ``RUN/eval/test/metrics.json`` when the checkpoint sits in a run directory
    (``RUN/checkpoints/*.ckpt``).
    """
    config = config or {}
    card = {
        "architecture": architecture.get("name"),
        "head": architecture.get("head"),
        "input_size": preprocessing.get("input_size"),
        "experiment": _first(config, ("experiment",)),
        "task": _first(config, ("task", "target")),
        "trained_on": _training_data(config),
        "test_auroc": None,
        "disclaimer": DISCLAIMER,
    }
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    metrics_path = run_dir / "eval" / "test" / "metrics.json" if run_dir else None
    if metrics_path and metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
            card["test_auroc"] = _first(metrics, ("macro_auroc",))
        except (OSError, json.JSONDecodeError):
            pass  # a card without AUROC is better than no prediction
    return card


def _training_data(config: dict) -> str | None:
    """The source of the training store (its manifest's ``source`` and image count), when the config names it."""
    store = _first(config, ("store",))
    if not store:  # runs trained before the config recorded its store
        return None
    try:
        manifest = json.loads((Path(store) / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return str(store)
    images = (manifest.get("counts") or {}).get("images")
    return f"{manifest.get('source', store)}" + (f" ({images:,} images)" if isinstance(images, int) else "")


def _first(mapping: dict, *paths: tuple[str, ...]):
    """The first of several nested keys that is present and scalar, else ``None``."""
    for keys in paths:
        value = mapping
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, str | int | float | bool | Path):
            return str(value) if isinstance(value, Path) else value
    return None


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


def prediction_record(image: str, probabilities: Sequence[float], labels: Sequence[str], thresholds: dict) -> dict:
    """The JSON of one prediction: ``{"image", "probabilities", "positive", "thresholds"}`` keyed by NIH label names.

    ``positive`` lists the labels at or above their threshold, most probable first.
    """
    probs = {label: float(p) for label, p in zip(labels, probabilities, strict=True)}
    positive = sorted((label for label in labels if probs[label] >= thresholds[label]), key=lambda x: -probs[x])
    return {
        "image": image,
        "probabilities": probs,
        "positive": positive,
        "thresholds": {label: float(thresholds[label]) for label in labels},
    }


def predict_arrays(predictor: Predictor, grays: Sequence[np.ndarray], batch_size: int = 16) -> np.ndarray:
    """Probabilities ``(N, K)`` for decoded grayscale images (uint8, any size), in batches."""
    out = np.zeros((len(grays), len(predictor.labels)))
    for start in range(0, len(grays), batch_size):
        batch = np.stack([model_input(gray, predictor.preprocessing) for gray in grays[start : start + batch_size]])
        out[start : start + len(batch)] = predictor.probabilities(batch)
    return out


def _report_to_stderr(image: str, message: str) -> None:
    print(f"skipped {image}: {message}", file=sys.stderr)


def predict_images(
    model: str | Path | Predictor,
    paths: Iterable[str | Path],
    batch_size: int = 16,
    cam_dir: str | Path | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> list[dict]:
    """Predict every image of ``paths`` (files, or directories searched recursively) with ``model``.

    Returns one :func:`prediction_record` per readable image, in input order; with ``cam_dir``, each record also
    has ``"heatmaps"``: ``{finding: {"overlay": png, "map": npy}}`` for its positive findings (with an ONNX
    model, Grad-CAM runs on the torch twin rebuilt from the file). Unreadable files are passed to
    ``on_error(image, message)`` (default: printed to stderr) and skipped.
    """
    if batch_size < 1:
        raise CxrError(f"batch size must be at least 1, got {batch_size}")
    predictor = model if hasattr(model, "probabilities") else load_predictor(model)
    report = on_error or _report_to_stderr
    images, missing = find_images(paths)
    for error in missing:
        report(error["image"], error["error"])
    if cam_dir is not None:
        stems = dict(zip(map(str, images), unique_stems([str(path) for path in images]), strict=True))
    records = []
    for start in range(0, len(images), batch_size):
        names, grays = [], []
        for path in images[start : start + batch_size]:
            try:
                grays.append(decode_grayscale(path))
                names.append(str(path))
            except CxrError as error:
                report(str(path), str(error).removeprefix(f"{path}: "))
        if not grays:
            continue
        probabilities = predict_arrays(predictor, grays, batch_size)
        batch_records = [
            prediction_record(name, row, predictor.labels, predictor.thresholds)
            for name, row in zip(names, probabilities, strict=True)
        ]
        if cam_dir is not None:
            for record, gray in zip(batch_records, grays, strict=True):
                stem = stems[record["image"]]
                record["heatmaps"] = write_heatmaps(predictor, gray, record["positive"], Path(cam_dir), stem)
        records.extend(batch_records)
    return records
