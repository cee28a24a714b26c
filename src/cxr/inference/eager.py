"""A checkpoint (model artifact) as a :class:`~cxr.inference.predictor.Predictor`, in torch eager mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cxr.errors import CxrError
from cxr.inference.predictor import model_card, resolve_model_path
from cxr.models.artifact import load_artifact
from cxr.models.hardware import native_bf16

PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: str = "cpu") -> str:
    """``fp32`` or ``bf16`` for a torch model's predictions. ``auto``: bf16 on a CPU that computes it natively (AMX or
    AVX-512 BF16, :func:`~cxr.models.hardware.native_bf16`), fp32 elsewhere — on such a CPU bf16 with channels_last
    ran a ResNet-18 at 224 px 1.6x (batch 1) to 2.8x (batch 16) faster than fp32, with probabilities within 0.0035 of
    fp32's (``benchmarks/cpu_backends.py``; ``docs/benchmarks.md``, "Server")."""
    if precision not in PRECISIONS:
        raise CxrError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if str(device).startswith("cpu") and native_bf16() else "fp32"
    return precision


class TorchPredictor:
    """A checkpoint (model artifact) in torch eager mode; ``model`` is also the Grad-CAM target (always in fp32).

    ``precision`` (:func:`resolve_precision`): ``bf16`` runs the predictions under bf16 autocast with the weights and
    inputs in channels_last (NHWC) memory order, the combination that pays on CPUs with native bf16."""

    backend = "torch"

    def __init__(self, artifact, precision: str = "fp32"):
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
        self.precision = resolve_precision(precision, self.device.type)
        if self.precision == "bf16":
            self.model = self.model.to(memory_format=torch.channels_last)

    @classmethod
    def from_path(cls, path: str | Path, device: str = "cpu", precision: str = "fp32") -> TorchPredictor:
        return cls(load_artifact(resolve_model_path(path), device=device), precision)

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        if self.precision == "fp32":
            with torch.inference_mode():
                return torch.sigmoid(self.model(inputs)).double().cpu().numpy()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16):
            logits = self.model(inputs.contiguous(memory_format=torch.channels_last))
        return torch.sigmoid(logits.float()).double().cpu().numpy()
