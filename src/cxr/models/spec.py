"""One typed description of a model artifact, written into every file a model is saved as and read back the same way.

A checkpoint's ``"cxr"`` block and an ONNX export's ``cxr`` metadata are both :meth:`ModelSpec.to_dict` of one
:class:`ModelSpec`, and both are read by :meth:`ModelSpec.from_dict`, so the two formats cannot drift apart: the same
validation (required fields, unique label names, a threshold in [0, 1] for every label, an architecture whose outputs
match the labels) runs when a file is written and when it is read. The anchors are timm's ``PretrainedCfg`` and
open_clip's model configs: one description that builds the model and travels with its weights.

- :class:`ArchitectureSpec`: what :func:`cxr.models.factory.rebuild_model` needs to rebuild the network (registry
  name and source, head, dropout, outputs, the normalisation inside the model, a fixed input size where the family
  has one, the Grad-CAM target layer).
- :class:`cxr.imaging.preprocessing.Preprocessing`: stored pixels → model input.
- :class:`TrainingData` and :class:`ModelCard`: what the model was trained on, by dataset name, image count and the
  store manifest's hash — never a path of the machine that trained it (a path names users, projects, sometimes a
  hospital or a cohort). Files written before the card was typed carried ``trained_on`` as an absolute path: only
  its last component is shown.
- :class:`Provenance`: the package version and environment that wrote the file, and where imported weights came from.

Schema history: version 1 (cxr ≤ 0.1 at 5ef3c69) had no ``schema_version`` and recorded mean/std only for timm
models; version 2 adds ``schema_version``, the full architecture, ``training_data`` and ``source``. Both are read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from cxr import __version__
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing
from cxr.labels import check_names

SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)
DISCLAIMER = "Research software, not a medical device: not for diagnosis or clinical decisions."
DEFAULT_THRESHOLD = 0.5


def _require(block: Any, key: str, kinds: type | tuple[type, ...], where: str):
    if not isinstance(block, dict) or key not in block:
        raise CxrError(f"{where}: missing field {key!r}")
    value = block[key]
    if not isinstance(value, kinds):
        raise CxrError(f"{where}: field {key!r} has type {type(value).__name__}")
    return value


def _named(where: str, build):
    """``build()``, with ``where`` (the file) in front of a validation error's message."""
    try:
        return build()
    except CxrError as error:
        raise CxrError(f"{where}: {error}") from error


def _floats(values, where: str, key: str) -> tuple[float, ...]:
    if not isinstance(values, list | tuple) or not values or not all(isinstance(v, int | float) for v in values):
        raise CxrError(f"{where}: field {key!r} must be a non-empty list of numbers")
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class ArchitectureSpec:
    """The network of an artifact. ``mean``/``std`` (one value per channel the backbone takes) are applied inside the
    model; ``None`` only in schema-1 files of torchvision models, whose registry entry then supplies them."""

    name: str
    num_outputs: int
    head: str = "gap"
    dropout: float = 0.0
    source: str = "torchvision"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    img_size: int | None = None
    cam_layer: str | None = None
    cam_gate: str | None = None  # a later module whose Grad-CAM gates the heatmaps (cxr.inference.cam.grad_cam_batch)
    in_chans: int = 1  # the model's own input: one grey channel, in [0, 1]
    backbone_config: dict | None = None  # foundation backbones: their own config (cxr.models.foundation), no paths

    def __post_init__(self) -> None:
        where = f"architecture {self.name!r}"
        if not self.name:
            raise CxrError("architecture: empty name")
        if self.num_outputs < 1:
            raise CxrError(f"{where}: a model needs at least one output, got {self.num_outputs}")
        if not 0.0 <= self.dropout < 1.0:
            raise CxrError(f"{where}: dropout must be in [0, 1), got {self.dropout}")
        if (self.mean is None) != (self.std is None) or self.mean is not None and len(self.mean) != len(self.std):
            raise CxrError(f"{where}: mean and std must both be given, one value per channel")

    def to_dict(self) -> dict:
        record = {
            "name": self.name,
            "num_outputs": self.num_outputs,
            "head": self.head,
            "dropout": self.dropout,
            "source": self.source,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "img_size": self.img_size,
            "cam_layer": self.cam_layer,
            "in_chans": self.in_chans,
        }
        if self.cam_gate:  # only where set: artifacts without a gate keep their earlier layout
            record["cam_gate"] = self.cam_gate
        if self.backbone_config is not None:
            record["backbone_config"] = self.backbone_config
        return record

    @classmethod
    def from_dict(cls, block: dict, num_outputs: int, where: str = "architecture") -> ArchitectureSpec:
        """Schema 1 recorded neither ``num_outputs`` (the labels give it) nor, for torchvision models, the source."""
        name = _require(block, "name", str, where)
        recorded = block.get("num_outputs", num_outputs)
        if recorded != num_outputs:
            raise CxrError(f"{where}: {recorded} outputs recorded for {num_outputs} labels")
        mean, std = block.get("mean"), block.get("std")
        img_size = block.get("img_size")
        if img_size is not None and not isinstance(img_size, int):
            raise CxrError(f"{where}: field 'img_size' must be an integer or null")
        backbone_config = block.get("backbone_config")
        if backbone_config is not None and not isinstance(backbone_config, dict):
            raise CxrError(f"{where}: field 'backbone_config' must be a mapping or absent")
        return _named(
            where,
            lambda: cls(
                name=name,
                num_outputs=num_outputs,
                head=str(block.get("head", "gap")),
                dropout=float(block.get("dropout", 0.0)),
                source=str(block.get("source") or "torchvision"),
                mean=_floats(mean, where, "mean") if mean is not None else None,
                std=_floats(std, where, "std") if std is not None else None,
                img_size=img_size,
                cam_layer=block.get("cam_layer"),
                cam_gate=block.get("cam_gate"),
                in_chans=int(block.get("in_chans", 1)),
                backbone_config=backbone_config,
            ),
        )


@dataclass(frozen=True)
class TrainingData:
    """A training store as a model card may name it: dataset, image count, the hash of the store's manifest."""

    dataset: str
    images: int | None = None
    manifest_sha256: str | None = None

    def describe(self) -> str:
        details = [f"{self.images:,} images"] if self.images is not None else []
        details += [f"store {self.manifest_sha256[:12]}"] if self.manifest_sha256 else []
        return f"{self.dataset} ({', '.join(details)})" if details else self.dataset

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "images": self.images, "manifest_sha256": self.manifest_sha256}

    @classmethod
    def from_dict(cls, block: dict, where: str = "training_data") -> TrainingData:
        images = block.get("images")
        return cls(
            str(_require(block, "dataset", str, where)),
            int(images) if images is not None else None,
            block.get("manifest_sha256"),
        )


_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def without_path(text: str) -> str:
    """``text`` with a leading absolute path reduced to its last component (``/home/a/demo/data (2,400 images)`` →
    ``data (2,400 images)``): how a schema-1 ``trained_on`` is shown."""
    if text.startswith(("/", "~", "\\")) or _WINDOWS_DRIVE.match(text):
        path = PureWindowsPath(text) if "\\" in text else PurePosixPath(text)
        return path.name or text
    return text


@dataclass(frozen=True)
class ModelCard:
    """What the model is, for people: shown by ``cxr serve`` and written into ONNX exports. No paths."""

    architecture: str
    head: str
    input_size: int
    experiment: str | None = None
    task: str | None = None
    trained_on: str | None = None
    test_auroc: float | None = None
    disclaimer: str = DISCLAIMER

    def to_dict(self) -> dict:
        return {
            "architecture": self.architecture,
            "head": self.head,
            "input_size": self.input_size,
            "experiment": self.experiment,
            "task": self.task,
            "trained_on": self.trained_on,
            "test_auroc": self.test_auroc,
            "disclaimer": self.disclaimer,
        }

    @classmethod
    def from_dict(cls, block: dict, spec: ModelSpec) -> ModelCard:
        """A card as stored in an ONNX file; missing entries come from ``spec``, old paths lose their folders."""
        base = spec.card()
        trained_on = block.get("trained_on")
        test_auroc = block.get("test_auroc")
        return replace(
            base,
            experiment=_scalar_text(block.get("experiment")) or base.experiment,
            task=_scalar_text(block.get("task")) or base.task,
            trained_on=without_path(trained_on) if isinstance(trained_on, str) else base.trained_on,
            test_auroc=float(test_auroc) if isinstance(test_auroc, int | float) else None,
        )


def _scalar_text(value) -> str | None:
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Provenance:
    """Who wrote the file: cxr's version, the environment block (:func:`cxr.provenance.environment`), and for
    imported weights their origin (file name, SHA-256, URL)."""

    package_version: str = __version__
    environment: dict = field(default_factory=dict)
    source: dict | None = None


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a model artifact but its weights. Validated on construction, so on write and on read."""

    labels: tuple[str, ...]
    thresholds: dict[str, float]
    architecture: ArchitectureSpec
    preprocessing: Preprocessing
    config: dict = field(default_factory=dict)
    training_data: tuple[TrainingData, ...] = ()
    provenance: Provenance = field(default_factory=Provenance)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        try:
            labels = tuple(check_names(self.labels))
        except ValueError as error:  # unknown or duplicate names
            raise CxrError(f"labels: {error}") from error
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "thresholds", checked_thresholds(labels, self.thresholds))
        if self.architecture.num_outputs != len(labels):
            raise CxrError(f"{len(labels)} labels for a model with {self.architecture.num_outputs} outputs")
        if self.architecture.img_size not in (None, self.preprocessing.input_size):
            raise CxrError(
                f"architecture built for {self.architecture.img_size} px, preprocessing gives "
                f"{self.preprocessing.input_size} px"
            )
        if self.schema_version not in READABLE_SCHEMAS:
            raise CxrError(f"model schema_version {self.schema_version}; this cxr reads {READABLE_SCHEMAS}")

    @property
    def package_version(self) -> str:
        return self.provenance.package_version

    @property
    def stores(self) -> list[str]:
        """The stores the model was trained on, as recorded: ``data.stores`` (several) or ``store`` (one; set by
        ``cxr train`` and ``cxr probe``); empty for imported models."""
        data = self.config.get("data")
        several = data.get("stores") if isinstance(data, dict) else None
        store = self.config.get("store")
        return [str(path) for path in several] if several else ([str(store)] if store else [])

    def with_thresholds(self, thresholds: dict[str, float]) -> ModelSpec:
        return replace(self, thresholds=thresholds)

    def portable(self) -> ModelSpec:
        """This description for a file that leaves the run (an ONNX export): absolute paths in the training config
        (stores, output and initialisation files) reduced to their last component."""
        return replace(self, config=_without_paths(self.config))

    def card(self, test_auroc: float | None = None) -> ModelCard:
        """The model card: names the training data, never its path."""
        if self.training_data:
            trained_on = "; ".join(data.describe() for data in self.training_data)
        else:  # schema 1: the config's store path, shown by its last component only
            store = self.config.get("store")
            trained_on = without_path(str(store)) if isinstance(store, str) and store else None
        task = self.config.get("task")
        return ModelCard(
            architecture=self.architecture.name,
            head=self.architecture.head,
            input_size=self.preprocessing.input_size,
            experiment=_scalar_text(self.config.get("experiment")),
            task=_scalar_text(task.get("target")) if isinstance(task, dict) else None,
            trained_on=trained_on,
            test_auroc=test_auroc,
        )

    def to_dict(self) -> dict:
        """Plain types only: a checkpoint loads with ``weights_only=True``, the ONNX metadata is JSON."""
        block = {
            "schema_version": self.schema_version,
            "package_version": self.provenance.package_version,
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "architecture": self.architecture.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "config": self.config,
            "training_data": [data.to_dict() for data in self.training_data],
            "environment": self.provenance.environment,
        }
        if self.provenance.source is not None:
            block["source"] = dict(self.provenance.source)
        return block

    @classmethod
    def from_dict(cls, block: dict, where: str) -> ModelSpec:
        """Read and validate a ``"cxr"`` block or an ONNX metadata document; errors name ``where`` and the field."""
        if not isinstance(block, dict):
            raise CxrError(f"{where}: model description is not a mapping")
        schema = block.get("schema_version", 1)
        if schema not in READABLE_SCHEMAS:
            raise CxrError(
                f"{where}: model schema_version {schema} (written by cxr {block.get('package_version')}); this cxr "
                f"{__version__} reads {READABLE_SCHEMAS}: use a matching cxr release"
            )
        labels = _require(block, "labels", list, where)
        thresholds = _require(block, "thresholds", dict, where)
        architecture = ArchitectureSpec.from_dict(
            _require(block, "architecture", dict, where), len(labels), f"{where}: architecture"
        )
        preprocessing = Preprocessing.from_dict(
            _require(block, "preprocessing", dict, where), f"{where}: preprocessing"
        )
        package_version = str(_require(block, "package_version", str, where))
        training = block.get("training_data") or []
        config = block.get("config") or {}
        if not isinstance(config, dict):
            raise CxrError(f"{where}: field 'config' must be a mapping")
        return _named(
            where,
            lambda: cls(
                labels=tuple(labels),
                thresholds=thresholds,
                architecture=architecture,
                preprocessing=preprocessing,
                config=config,
                training_data=tuple(TrainingData.from_dict(item, f"{where}: training_data") for item in training),
                # schema 1's ONNX metadata had "source": the checkpoint's file name; imports record a mapping here.
                provenance=Provenance(
                    package_version, dict(block.get("environment") or {}), _mapping(block.get("source"))
                ),
                schema_version=schema,
            ),
        )


def _mapping(value) -> dict | None:
    return dict(value) if isinstance(value, dict) else None


def _without_paths(value):
    if isinstance(value, dict):
        return {key: _without_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_without_paths(item) for item in value]
    return without_path(value) if isinstance(value, str) else value


def checked_thresholds(labels: tuple[str, ...], thresholds: dict[str, float]) -> dict[str, float]:
    """Exactly one threshold per label, each a probability in [0, 1]."""
    unknown = sorted(set(thresholds) - set(labels))
    missing = [label for label in labels if label not in thresholds]
    if unknown or missing:
        raise CxrError(f"thresholds must name exactly the model's labels; unknown {unknown}, missing {missing}")
    out = {}
    for label in labels:
        value = thresholds[label]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:  # NaN too
            raise CxrError(f"thresholds must be probabilities in [0, 1]: {label} = {value!r}")
        out[label] = float(value)
    return out
