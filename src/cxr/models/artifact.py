"""The checkpoint is the model artifact: weights + everything ``predict``, ``export`` and ``serve`` need.

A Lightning checkpoint (``RUN/checkpoints/best.ckpt``) carries a top-level ``"cxr"`` block (``docs/architecture.md``,
"The model artifact"): the format header and :meth:`cxr.models.spec.ModelSpec.to_dict` — labels, thresholds chosen on
validation, the architecture, the preprocessing, the merged config, the training data by name and count, provenance.
The weights are the LightningModule's ``model.*`` entries of ``state_dict``. The same spec, read and validated the
same way, is the metadata of an ONNX export (:mod:`cxr.inference.onnx`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cxr import __version__
from cxr.errors import CxrError
from cxr.files import replacing
from cxr.imaging.preprocessing import Preprocessing
from cxr.models.factory import CxrNet, rebuild_model
from cxr.models.spec import DEFAULT_THRESHOLD, ModelSpec, Provenance, TrainingData
from cxr.provenance import environment

FORMAT = "cxr-model"
FORMAT_VERSION = 1
STATE_PREFIX = "model."  # the LightningModule holds the CxrNet as attribute ``model``


@dataclass
class ModelArtifact:
    """A loaded model artifact; ``model`` is in eval mode on the requested device."""

    model: CxrNet
    spec: ModelSpec
    path: Path

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self.spec.thresholds)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.spec.preprocessing

    @property
    def config(self) -> dict:
        """The recorded config tree (:attr:`ModelSpec.config`: a training run's ``Config``, or the tree a probe, an
        importer or ``cxr embed`` records), plain so that every kind of artifact keeps what it wrote."""
        return self.spec.config

    @property
    def package_version(self) -> str:
        return self.spec.package_version


def make_preprocessing(model: CxrNet, store_size: int, crop: float, eval_view: str = "resize") -> Preprocessing:
    """The :class:`Preprocessing` of ``model`` (its input size) fed from a store of ``store_size`` px and ``crop``."""
    return Preprocessing(store_size, crop, model.input_size, eval_view)


def model_spec(
    model: CxrNet,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    thresholds: dict[str, float] | None = None,
    config: dict | None = None,
    training_data: Sequence[TrainingData] = (),
    source: dict | None = None,
) -> ModelSpec:
    """The description of ``model`` as an artifact records it; thresholds are 0.5 per label until validation chooses
    them. Validated here, so a file that could not be read back is never written. ``config`` is the tree to record
    (see :attr:`ModelArtifact.config`), ``source`` where imported weights came from (e.g.
    :meth:`cxr.models.keras_import.KerasSource.to_dict`)."""
    if preprocessing.input_size != model.input_size:
        raise CxrError(
            f"preprocessing gives {preprocessing.input_size} px inputs to a model built for {model.input_size} px"
        )
    labels = tuple(labels)
    return ModelSpec(
        labels=labels,
        thresholds=dict.fromkeys(labels, DEFAULT_THRESHOLD) if thresholds is None else dict(thresholds),
        architecture=model.architecture,
        preprocessing=preprocessing,
        config=dict(config or {}),
        training_data=tuple(training_data),
        provenance=Provenance(__version__, environment().to_dict(), source),
    )


def artifact_block(spec: ModelSpec) -> dict:
    """The ``"cxr"`` block of a checkpoint: the format header and the spec, as plain types (the file format: a
    checkpoint loads with ``weights_only=True``)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION} | spec.to_dict()


def write_artifact(
    path: str | Path,
    model: CxrNet,
    labels: Sequence[str],
    preprocessing: Preprocessing,
    thresholds: dict[str, float] | None = None,
    config: dict | None = None,
    training_data: Sequence[TrainingData] = (),
    source: dict | None = None,
) -> Path:
    """Write a minimal artifact (``state_dict`` + ``"cxr"`` block) that :func:`load_artifact` reads. ``source``
    records where imported weights came from (file name, SHA-256, URL)."""
    spec = model_spec(model, labels, preprocessing, thresholds, config, training_data, source)
    checkpoint = {
        "state_dict": {STATE_PREFIX + key: value.detach().cpu() for key, value in model.state_dict().items()},
        "cxr": artifact_block(spec),
    }
    return _atomic_save(checkpoint, Path(path))


def _atomic_save(checkpoint: dict, path: Path) -> Path:
    with replacing(path) as tmp:  # readers never see a half-written checkpoint
        torch.save(checkpoint, tmp)
    return path


def read_checkpoint(path: str | Path) -> tuple[dict, ModelSpec]:
    """The raw checkpoint dict and its validated :class:`ModelSpec`, refusing anything that is not a cxr model
    artifact with a clear message."""
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
    return checkpoint, ModelSpec.from_dict(meta, str(path))


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> ModelArtifact:
    """Rebuild the model of a checkpoint with nothing else (no config file, no store): eval mode on ``device``."""
    checkpoint, spec = read_checkpoint(path)
    model = rebuild_model(spec.architecture, spec.labels, spec.preprocessing.input_size)
    state = {k.removeprefix(STATE_PREFIX): v for k, v in checkpoint["state_dict"].items() if k.startswith(STATE_PREFIX)}
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CxrError(
            f"{path}: weights do not match the recorded architecture {spec.architecture}: {error}"
        ) from error
    return ModelArtifact(model=model.to(device).eval(), spec=spec, path=Path(path))


def set_thresholds(path: str | Path, thresholds: dict[str, float]) -> None:
    """Replace the thresholds of a checkpoint in place, atomically (chosen on validation by ``cxr evaluate``)."""
    checkpoint, spec = read_checkpoint(path)
    checkpoint["cxr"]["thresholds"] = spec.with_thresholds(thresholds).thresholds
    _atomic_save(checkpoint, Path(path))


def strip_training_state(path: str | Path) -> None:
    """Drop what only ``--resume`` needs (optimizer and scheduler states, loop and callback states) from a model
    artifact, in place and atomically; weights, the ``cxr`` block and Lightning's version stay."""
    checkpoint, _ = read_checkpoint(path)
    # current_model_state / averaging_state: the raw weights and step count beside train.ema's averaged weights.
    for key in ("optimizer_states", "lr_schedulers", "loops", "callbacks", "current_model_state", "averaging_state"):
        checkpoint.pop(key, None)
    _atomic_save(checkpoint, Path(path))
