"""What every model backend offers (:class:`Predictor`), finding a model by path, and its model card.

Two backends implement the interface: :class:`cxr.inference.eager.TorchPredictor` (a checkpoint, torch eager mode)
and :class:`cxr.inference.onnx.OnnxPredictor` (an ``.onnx`` export, onnxruntime). Both carry the model's
:class:`~cxr.imaging.preprocessing.Preprocessing`, labels, thresholds and card. This module imports neither torch nor
onnxruntime (``cxr.inference.predict.load_predictor`` imports the backend a path needs), so an ONNX deployment
runs without torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import numpy as np

from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing

DISCLAIMER = "Research software, not a medical device: not for diagnosis or clinical decisions."


class Predictor(Protocol):
    """What ``predict``, ``serve`` and the benchmark need from a model, whatever runs it."""

    backend: str
    path: Path
    labels: list[str]
    thresholds: dict[str, float]
    preprocessing: Preprocessing
    package_version: str
    card: dict
    architecture: dict

    @property
    def input_size(self) -> int: ...

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``float32 (B, 1, S, S)`` in ``[0, 1]`` → probabilities ``float64 (B, K)``."""
        ...


def probabilities(predictor: Predictor, batch: np.ndarray, tta: bool = False) -> np.ndarray:
    """``predictor.probabilities(batch)``; with ``tta``, averaged with those of the horizontal mirror images
    (test-time augmentation, as ``cxr evaluate --tta``)."""
    result = predictor.probabilities(batch)
    if tta:
        result = (result + predictor.probabilities(np.ascontiguousarray(batch[..., ::-1]))) / 2
    return result


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


def model_card(path: Path, config: dict, architecture: dict, preprocessing: Preprocessing) -> dict:
    """What the model is: architecture, training data and experiment, test AUROC if ``cxr evaluate`` measured it.

    The test metrics are read from ``RUN/eval/test/metrics.json`` when the checkpoint sits in a run directory
    (``RUN/checkpoints/*.ckpt``).
    """
    config = config or {}
    card = {
        "architecture": architecture.get("name"),
        "head": architecture.get("head"),
        "input_size": preprocessing.input_size,
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
