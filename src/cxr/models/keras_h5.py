"""Keras 2 HDF5 files read with h5py alone: no Keras, no TensorFlow at run time.

Two layouts of Keras 2 (``keras/engine/saving.py`` of Keras 2.1-2.2, described in ``docs/original-models.md``):

- **full model** (``model.save``, ``ModelCheckpoint`` without ``save_weights_only``): root attributes
  ``keras_version``, ``backend``, ``model_config`` (the model as JSON) and ``training_config``; the weights in the
  group ``model_weights`` (attribute ``layer_names``);
- **weights only** (``model.save_weights``): the root itself carries ``layer_names``, ``keras_version`` and
  ``backend``.

In both, every layer has a group with the attribute ``weight_names`` (``conv1/conv/kernel:0``, ...) naming its
datasets, in the order of the layer's weights; a nested model (the original project's ``Sequential`` head) is one
group holding the weights of all its layers. Keras 3's own formats (``.weights.h5``: groups ``layers``/``vars``;
``.keras``: a zip archive) are recognised and refused with a clear message.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np

from cxr.errors import CxrError, InputFormatError
from cxr.files import file_sha256


class SaveKind(StrEnum):
    """Which ``save`` wrote the file."""

    FULL_MODEL = "full-model"
    WEIGHTS_ONLY = "weights-only"


@dataclass(frozen=True)
class KerasWeight:
    """One array of a layer: ``kind`` is the last part of its name without ``:0`` (``kernel``, ``gamma``, ...)."""

    name: str
    kind: str
    value: np.ndarray


@dataclass(frozen=True)
class KerasFile:
    """The contents of a Keras 2 HDF5 file that an importer needs; ``layers`` maps every layer name with weights to
    its weights in stored order (weightless layers are listed in ``layer_names`` only)."""

    path: Path
    kind: SaveKind
    keras_version: str
    backend: str
    model_config: dict | None
    layer_names: tuple[str, ...]
    layers: dict[str, tuple[KerasWeight, ...]] = field(repr=False)
    sha256: str = ""


def _text(value) -> str:
    """An HDF5 attribute as text: h5py returns ``bytes`` for what Keras 2 wrote with ``np.bytes_``."""
    if isinstance(value, bytes | np.bytes_):
        return value.decode("utf-8")
    return str(value)


def _names(attrs, name: str) -> tuple[str, ...]:
    """A list attribute; Keras 2 splits one over 64 KB (HDF5's object header limit) into ``name0``, ``name1``, ..."""
    if name in attrs:
        chunks = [attrs[name]]
    else:
        chunks = [attrs[f"{name}{index}"] for index in range(len(attrs)) if f"{name}{index}" in attrs]
    return tuple(_text(item) for chunk in chunks for item in np.atleast_1d(chunk))


def _refuse_keras3(path: Path) -> None:
    if zipfile.is_zipfile(path):
        raise CxrError(
            f"{path}: a Keras 3 '.keras' archive; not supported yet (cxr imports Keras 2 HDF5 files: model.save or "
            "save_weights of Keras 2.x). Save it from Keras with model.save('model.h5') or export it to ONNX"
        )


def read_keras_file(path: str | Path) -> KerasFile:
    """Read a Keras 2 full-model or weights-only HDF5 file; a :class:`CxrError` for anything else, naming it."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CxrError(f"Keras file not found: {path}")
    _refuse_keras3(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CxrError(f"{path}: not an HDF5 file ({error})") from error
    with handle:
        if "model_weights" in handle:
            kind, weights_group = SaveKind.FULL_MODEL, handle["model_weights"]
        elif "layer_names" in handle.attrs or "layer_names0" in handle.attrs:
            kind, weights_group = SaveKind.WEIGHTS_ONLY, handle
        elif "layers" in handle or "vars" in handle:
            raise CxrError(
                f"{path}: a Keras 3 '.weights.h5' file; not supported yet (cxr imports Keras 2 HDF5 files). Save the "
                "model from Keras with model.save('model.h5'), which keeps its architecture"
            )
        else:
            raise CxrError(f"{path}: not a Keras file (no 'model_weights' group, no 'layer_names' attribute)")
        version = _text(handle.attrs.get("keras_version", weights_group.attrs.get("keras_version", "unknown")))
        backend = _text(handle.attrs.get("backend", weights_group.attrs.get("backend", "unknown")))
        model_config = _model_config(path, handle) if kind is SaveKind.FULL_MODEL else None
        layer_names = _names(weights_group.attrs, "layer_names")
        layers = {name: weights for name in layer_names if (weights := _layer_weights(path, weights_group, name))}
    return KerasFile(path, kind, version, backend, model_config, layer_names, layers, file_sha256(path))


def _model_config(path: Path, handle) -> dict:
    if "model_config" not in handle.attrs:
        raise InputFormatError(path, "a full-model file without the 'model_config' attribute (its architecture)")
    try:
        config = json.loads(_text(handle.attrs["model_config"]))
    except json.JSONDecodeError as error:
        raise InputFormatError(path, f"attribute 'model_config' is not JSON ({error})") from error
    if not isinstance(config, dict) or "config" not in config:
        raise InputFormatError(path, "attribute 'model_config' has no 'config' (not a Keras model description)")
    return config


def _layer_weights(path: Path, weights_group, layer: str) -> tuple[KerasWeight, ...]:
    """The weights of ``layer`` in the order its ``weight_names`` lists them."""
    if layer not in weights_group:
        raise InputFormatError(path, f"layer {layer!r} is listed in 'layer_names' but has no group")
    group = weights_group[layer]
    weights = []
    for name in _names(group.attrs, "weight_names"):
        if name not in group:
            raise InputFormatError(path, f"layer {layer!r}: weight {name!r} is listed in 'weight_names' but absent")
        kind = name.rsplit("/", 1)[-1].split(":", 1)[0]
        weights.append(KerasWeight(name, kind, np.asarray(group[name], dtype=np.float32)))
    return tuple(weights)
