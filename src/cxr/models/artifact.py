"""The checkpoint is the model artifact: weights + everything ``predict``, ``export`` and ``serve`` need.

A Lightning checkpoint (``RUN/checkpoints/best.ckpt``) carries a top-level ``"cxr"`` block (``docs/architecture.md``,
"The model artifact"): format and version, package version, output labels, architecture, preprocessing
(:class:`cxr.imaging.preprocessing.Preprocessing`: store size and crop, eval view, input size), per-label
thresholds chosen on validation, and the merged config. The weights are the LightningModule's ``model.*`` entries
of ``state_dict``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cxr import __version__
from cxr.errors import CxrError
from cxr.files import replacing
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import check_names
from cxr.models.factory import CxrNet, rebuild_model, recorded_architecture
from cxr.provenance import environment

FORMAT = "cxr-model"
FORMAT_VERSION = 1
STATE_PREFIX = "model."  # the LightningModule holds the CxrNet as attribute ``model``


@dataclass
class ModelArtifact:
    """A loaded model artifact; ``model`` is in eval mode on the requested device."""

    model: CxrNet
    labels: list[str]
    preprocessing: Preprocessing
    thresholds: dict[str, float]
    config: dict
    package_version: str
    path: Path
    architecture: dict = field(default_factory=dict)


def make_preprocessing(model: CxrNet, store_size: int, crop: float, eval_view: str = "resize") -> Preprocessing:
    """The :class:`Preprocessing` of ``model`` (its input size) fed from a store of ``store_size`` px and ``crop``."""
    return Preprocessing(store_size, crop, model.input_config["input_size"], eval_view)


def artifact_metadata(
    labels: list[str],
    architecture: dict,
    preprocessing: Preprocessing,
    thresholds: dict[str, float] | None = None,
    config: dict | None = None,
) -> dict:
    """The ``"cxr"`` block of a checkpoint; thresholds default to 0.5 per label until validation chooses them."""
    labels = check_names(labels)
    thresholds = _check_thresholds(labels, thresholds or dict.fromkeys(labels, 0.5))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "labels": labels,
        "architecture": recorded_architecture(architecture),
        "preprocessing": preprocessing.to_dict(),
        "thresholds": thresholds,
        "config": dict(config or {}),
        "environment": environment(),  # versions and machine that wrote it (cxr.provenance)
    }


def _check_thresholds(labels: list[str], thresholds: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(thresholds) - set(labels))
    missing = [label for label in labels if label not in thresholds]
    if unknown or missing:
        raise CxrError(f"thresholds must name exactly the model's labels; unknown {unknown}, missing {missing}")
    out = {label: float(thresholds[label]) for label in labels}
    bad = {label: value for label, value in out.items() if not 0.0 <= value <= 1.0}
    if bad:
        raise CxrError(f"thresholds must be probabilities in [0, 1]: {bad}")
    return out


def write_artifact(
    path: str | Path,
    model: CxrNet,
    labels: list[str],
    preprocessing: Preprocessing,
    thresholds: dict[str, float] | None = None,
    config: dict | None = None,
) -> Path:
    """Write a minimal artifact (``state_dict`` + ``"cxr"`` block) that :func:`load_artifact` reads."""
    if len(labels) != model.num_outputs:
        raise CxrError(f"{len(labels)} labels for a model with {model.num_outputs} outputs")
    built_for = model.input_config["input_size"]
    if preprocessing.input_size != built_for:
        raise CxrError(f"preprocessing gives {preprocessing.input_size} px inputs to a model built for {built_for} px")
    checkpoint = {
        "state_dict": {STATE_PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()},
        "cxr": artifact_metadata(labels, model.architecture, preprocessing, thresholds, config),
    }
    return _atomic_save(checkpoint, Path(path))


def _atomic_save(checkpoint: dict, path: Path) -> Path:
    with replacing(path) as tmp:  # readers never see a half-written checkpoint
        torch.save(checkpoint, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dict, refusing anything that is not a cxr model artifact with a clear message."""
    path = Path(path)
    if not path.is_file():
        raise CxrError(f"model not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(f"{path}: not a cxr model (not a PyTorch checkpoint: {type(error).__name__})") from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CxrError(f"{path}: not a cxr model (no state_dict)")
    meta = checkpoint.get("cxr")
    if not isinstance(meta, dict):
        origin = "a Lightning checkpoint" if "pytorch-lightning_version" in checkpoint else "a checkpoint"
        raise CxrError(f"{path}: {origin} without the 'cxr' block; was it written by `cxr train`?")
    if meta.get("format") != FORMAT:
        raise CxrError(f"{path}: not a cxr model (format {meta.get('format')!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CxrError(
            f"{path}: model format_version {meta.get('format_version')} (package {meta.get('package_version')}), "
            f"this cxr {__version__} reads version {FORMAT_VERSION}; use a matching cxr release"
        )
    return checkpoint


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> ModelArtifact:
    """Rebuild the model of a checkpoint with nothing else (no config file, no store): eval mode on ``device``."""
    checkpoint = read_checkpoint(path)
    meta = checkpoint["cxr"]
    arch = meta["architecture"]
    preprocessing = Preprocessing.from_dict(meta["preprocessing"], f"{path}: preprocessing")
    model = rebuild_model(arch, meta["labels"], preprocessing.input_size)
    state = {k.removeprefix(STATE_PREFIX): v for k, v in checkpoint["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CxrError(f"{path}: weights do not match the recorded architecture {arch}: {error}") from error
    return ModelArtifact(
        model=model.to(device).eval(),
        labels=list(meta["labels"]),
        preprocessing=preprocessing,
        thresholds=dict(meta["thresholds"]),
        config=dict(meta.get("config", {})),
        package_version=str(meta["package_version"]),
        path=Path(path),
        architecture=dict(arch),
    )


def set_thresholds(path: str | Path, thresholds: dict[str, float]) -> None:
    """Replace ``cxr.thresholds`` of a checkpoint in place, atomically (chosen on validation by ``cxr evaluate``)."""
    checkpoint = read_checkpoint(path)
    checkpoint["cxr"]["thresholds"] = _check_thresholds(checkpoint["cxr"]["labels"], thresholds)
    _atomic_save(checkpoint, Path(path))


def strip_training_state(path: str | Path) -> None:
    """Drop what only ``--resume`` needs (optimizer and scheduler states, loop and callback states) from a model
    artifact, in place and atomically; weights, the ``cxr`` block and Lightning's version stay."""
    checkpoint = read_checkpoint(path)
    # current_model_state / averaging_state: the raw weights and step count beside train.ema's averaged weights.
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks", "current_model_state", "averaging_state"):
        checkpoint.pop(key, None)
    _atomic_save(checkpoint, Path(path))
