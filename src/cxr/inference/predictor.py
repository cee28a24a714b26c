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
from cxr.models.spec import DISCLAIMER, ArchitectureSpec, ModelCard, ModelSpec

__all__ = ["DISCLAIMER", "Predictor", "model_card", "probabilities", "resolve_model_path"]


class Predictor(Protocol):
    """What ``predict``, ``serve`` and the benchmark need from a model, whatever runs it."""

    backend: str
    path: Path
    spec: ModelSpec
    labels: list[str]
    thresholds: dict[str, float]
    preprocessing: Preprocessing
    package_version: str
    card: ModelCard
    architecture: ArchitectureSpec

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


def model_card(path: Path, spec: ModelSpec) -> ModelCard:
    """What the model is (:meth:`ModelSpec.card`: architecture, training data by name and count, experiment), with the
    test AUROC when ``cxr evaluate`` measured it: read from ``RUN/eval/test/metrics.json`` when the checkpoint sits in
    a run directory (``RUN/checkpoints/*.ckpt``)."""
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    metrics_path = run_dir / "eval" / "test" / "metrics.json" if run_dir else None
    test_auroc = None
    if metrics_path and metrics_path.is_file():
        try:
            value = json.loads(metrics_path.read_text()).get("macro_auroc")
            test_auroc = float(value) if isinstance(value, int | float) else None
        except (OSError, json.JSONDecodeError, AttributeError):
            pass  # a card without AUROC is better than no prediction
    return spec.card(test_auroc)
