"""A checkpoint (model artifact) as a :class:`~cxr.inference.predictor.Predictor`, in torch eager mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr.inference.predictor import model_card, resolve_model_path
from cxr.models.artifact import load_artifact


class TorchPredictor:
    """A checkpoint (model artifact) in torch eager mode; ``model`` is also the Grad-CAM target."""

    backend = "torch"

    def __init__(self, artifact):
        self.artifact = artifact
        self.model = artifact.model
        self.path = Path(artifact.path)
        self.spec = artifact.spec
        self.labels = list(self.spec.labels)
        self.thresholds = dict(self.spec.thresholds)
        self.preprocessing = self.spec.preprocessing
        self.package_version = self.spec.package_version
        self.architecture = artifact.model.architecture  # as rebuilt: the recorded one, completed for schema 1
        self.card = model_card(self.path, self.spec)
        self.device = next(self.model.parameters()).device

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu") -> TorchPredictor:
        return cls(load_artifact(resolve_model_path(path), device=device))

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device))
            return torch.sigmoid(logits).double().cpu().numpy()
