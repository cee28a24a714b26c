"""The frozen encoder of a probe: a cxr model whose last linear layer's input is the embedding.

``MODEL`` is a model artifact (a ``.ckpt`` file or a run folder: its ``checkpoints/best.ckpt``; ``cxr import`` writes
the same format) or a registered backbone name (``model.name``: torchvision and timm names, and whatever other modules
register with :func:`cxr.models.factory.create_model`). The embedding of an image is what the model's final
``nn.Linear`` reads — global average pooling of the last block for a ``gap`` head, timm's own pooling for timm models,
the 60-unit layer of the original head — captured with a forward pre-hook, so the model runs exactly as ``predict`` runs
it and every architecture's own pooling is kept (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR
2022, and Oquab et al., "DINOv2", 2023, probe the same way: a linear layer on the frozen pooled features).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import FINDINGS
from cxr.models.artifact import load_artifact, make_preprocessing
from cxr.models.factory import CxrNet, create_model

ARTIFACT_SUFFIXES = (".ckpt", ".pt", ".pth")
PRECISIONS = ("auto", "32", "bf16")


@dataclass
class Encoder:
    """A frozen model (eval mode), the preprocessing that feeds it from the store, and what to record about it."""

    model: CxrNet
    preprocessing: Preprocessing
    labels: list[str]  # the model's outputs (a backbone built by name: NIH's findings, on an untrained head)
    description: dict  # JSON-safe: kind, name, sha256 of the weights file or the pretrained source; no paths


def artifact_file(model: str | Path) -> Path | None:
    """The checkpoint ``model`` names (a file, or a run folder's best checkpoint); None for a backbone name."""
    path = Path(model)
    if path.is_dir():
        best = path / "checkpoints" / "best.ckpt"
        if not best.is_file():
            raise CxrError(f"{path} is a folder but not a finished run: {best} is missing")
        return best
    if path.suffix == ".onnx":
        raise CxrError(f"{path}: an ONNX graph cannot be embedded (its weights are not a torch model); "
                       "embed the checkpoint it was exported from")  # fmt: skip
    if path.suffix in ARTIFACT_SUFFIXES or path.is_file():
        if not path.is_file():
            raise CxrError(f"model not found: {path}")
        return path
    return None


def load_encoder(
    model: str | Path, store, pretrained: str = "imagenet", input_size: int | None = None, device: str = "cpu"
) -> Encoder:
    """The encoder ``model`` names, fed from ``store`` (a :class:`cxr.data.store.Store`).

    An artifact keeps its own preprocessing (and refuses a store prepared otherwise, as ``predict`` does);
    ``pretrained`` and ``input_size`` (default: the store's size) apply to a backbone name only."""
    path = artifact_file(model)
    if path is not None:
        if input_size is not None:
            raise CxrError("--image-size applies to a backbone name; an artifact keeps the input size it was built for")
        artifact = load_artifact(path, device=device)
        artifact.preprocessing.check_store(store)
        description = {"kind": "artifact", "name": artifact.spec.architecture.name, "file": path.name,
                       "sha256": file_sha256(path), "labels": list(artifact.labels)}  # fmt: skip
        return Encoder(artifact.model.eval(), artifact.preprocessing, list(artifact.labels), description)
    size = int(input_size or store.size)
    built = create_model(str(model), len(FINDINGS), head="gap", pretrained=pretrained, input_size=size,
                         labels=list(FINDINGS))  # fmt: skip
    description = {"kind": "backbone", "name": str(model), "pretrained": _weights_record(pretrained)}
    preprocessing = make_preprocessing(built, store.size, store.crop)
    return Encoder(built.to(device).eval(), preprocessing, list(FINDINGS), description)


def _weights_record(pretrained: str) -> dict:
    """Where a backbone's weights came from: a named source, or a file by name and SHA-256 (no machine path)."""
    path = Path(pretrained)
    if pretrained not in ("none", "imagenet") and path.is_file():
        return {"file": path.name, "sha256": file_sha256(path)}
    return {"source": pretrained}


def final_linear(model: CxrNet) -> nn.Linear:
    """The model's last linear layer (its head's last ``nn.Linear``): the probe replaces it, the embedding feeds it."""
    linears = [module for module in model.head.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise CxrError(f"{model.architecture.name}: its head has no linear layer to probe")
    last = linears[-1]
    if isinstance(model.head, nn.Sequential) and model.head[-1] is not last:
        raise CxrError(f"{model.architecture.name}: its head does not end in a linear layer")
    return last


def pooling(model: CxrNet) -> str:
    """How the embedding is formed, in words: the head's modules before its final linear layer."""
    head = list(model.head) if isinstance(model.head, nn.Sequential) else []
    before = [type(module).__name__ for module in head[:-1] if not isinstance(module, nn.Dropout)]
    backbone = f"{model.architecture.name} backbone output"
    return " → ".join([backbone, *before]) + " (the input of the final linear layer)"


class Embedder:
    """Calling it with a ``(B, 1, S, S)`` float batch returns the ``(B, D)`` float32 inputs of the final linear layer,
    under bf16 autocast when ``bf16``; the model runs its own forward (normalisation included)."""

    def __init__(self, model: CxrNet, bf16: bool):
        self.model, self.bf16 = model.eval(), bf16
        self.device = next(model.parameters()).device
        self._seen: list[torch.Tensor] = []
        final_linear(model).register_forward_pre_hook(lambda _module, inputs: self._seen.append(inputs[0]))

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self._seen.clear()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            self.model(batch.to(self.device))
        (features,) = self._seen
        self._seen.clear()
        return features.float()


def use_bf16(precision: str, device: str) -> bool:
    """bf16 autocast for ``auto`` only where the hardware computes bf16 natively: a CUDA GPU that supports it, a CPU
    with AMX or AVX-512 BF16 (:func:`cxr.training.precision.native_bf16` reads the CPU's flags; elsewhere bf16 is
    emulated, slower than fp32)."""
    if precision not in PRECISIONS:
        raise CxrError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision == "bf16"
    if torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    from cxr.training.precision import native_bf16

    return native_bf16()


def embedding_dims(embedder: Embedder, input_size: int) -> int:
    """``D``, from one blank image."""
    return int(embedder(torch.zeros(1, 1, input_size, input_size)).shape[1])
