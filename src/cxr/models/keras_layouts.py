"""What a Keras 2 file holds: the DenseNet, its head, input size and outputs (``docs/original-models.md``).

Two layouts are known, in :data:`LAYOUTS`:

- ``original``: the original NIH project's six models (Keras 2.2.2, full-model HDF5): DenseNet169 without its final
  ReLU, then a nested ``Sequential`` head Flatten → Dropout → Dense 256 ReLU → Dropout → Dense 60 ReLU → Dropout →
  Dense K sigmoid (cxr's ``original`` head), fed pixels / 255 with no mean/std; the input size, K and the dropout are
  read from the stored ``model_config``. Its outputs: the 14 findings in alphabetical order, or one (named by
  :data:`ORIGINAL_FILES` from the file name, else by ``--labels``).
- ``chexnet-keras``: brucechou1983/CheXNet-Keras (Keras 2.1.4, weights-only HDF5): DenseNet121 without its final
  ReLU, average pooling, ``Dense(14, sigmoid, name="predictions")`` (cxr's ``gap`` head), 224 px, ImageNet mean/std,
  CheXNet's output order.

The DenseNet's depth is recognised from its layer names (``conv{stage}_block{n}_...``: blocks per dense stage).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from cxr.errors import CxrError, InputFormatError
from cxr.labels import ANY_FINDING, CHEXNET_ORDER, FINDINGS
from cxr.models.keras_h5 import KerasFile, SaveKind

DENSENET_BLOCKS: dict[tuple[int, ...], int] = {(6, 12, 24, 16): 121, (6, 12, 32, 32): 169, (6, 12, 48, 32): 201}
"""Dense blocks per stage → depth (Huang et al., 2017, arXiv:1608.06993, Table 1)."""

_BLOCK = re.compile(r"^conv([2-5])_block(\d+)_")


@dataclass(frozen=True)
class Layout:
    """How one project built and fed its Keras model; ``unit``: pixels / 255 without mean/std."""

    name: str
    head: str  # cxr's head: "original" (Flatten + three Dense) or "gap" (average pooling + one Dense)
    unit: bool
    labels: tuple[str, ...]  # its output order when it has len(labels) outputs
    input_size: int | None = None  # fixed by the project (weights-only files do not record it)
    description: str = ""


LAYOUTS: dict[str, Layout] = {
    "original": Layout("original", "original", True, FINDINGS, None, "the original NIH project's DenseNet169 models"),
    "chexnet-keras": Layout("chexnet-keras", "gap", False, CHEXNET_ORDER, 224, "brucechou1983/CheXNet-Keras"),
}
LAYOUT_CHOICES = ("auto", *LAYOUTS)


@dataclass(frozen=True)
class OriginalFile:
    """One of the original project's six published files: the cxr preset reproducing its experiment (whose
    preprocessing is the file's: crop, store and input size) and its outputs when it has one."""

    experiment: str
    labels: tuple[str, ...] = FINDINGS


ORIGINAL_FILES: dict[str, OriginalFile] = {
    "300Crop169Adam": OriginalFile("multilabel-adam"),
    "300Crop169SGD": OriginalFile("multilabel-sgd"),
    "300Crop169SGDbalanced": OriginalFile("multilabel-balanced"),
    "multilabel_diseaseOnly712": OriginalFile("disease-only"),
    "fibrosis": OriginalFile("binary-fibrosis", ("Fibrosis",)),
    "fibrosisT": OriginalFile("binary-fibrosis", ("Fibrosis",)),  # the name its notebook writes
    "binary_balanced": OriginalFile("binary-finding", (ANY_FINDING,)),
}
"""The published files by name (``docs/original-models.md``), without the ``.hdf5`` suffix."""


@dataclass(frozen=True)
class Recognised:
    """The architecture found in a file: ``head_layer`` is the layer (group) holding the head's weights."""

    layout: Layout
    depth: int
    input_size: int
    num_outputs: int
    dropout: float
    head_layer: str


def keras_name(name: str) -> str:
    """Keras 2.2 names layers ``conv1/conv``, Keras 3 ``conv1_conv``: one spelling to compare them."""
    return name.replace("/", "_")


def densenet_depth(file: KerasFile, names: list[str]) -> int:
    """121, 169 or 201 from the blocks per stage named in ``names``; a :class:`CxrError` for anything else."""
    stages = Counter(int(match[1]) for name in names if (match := _BLOCK.match(keras_name(name))) and "_concat" in name)
    if not stages:  # weights-only files name no concatenation layer in groups of weights; count the first conv
        stages = Counter(int(m[1]) for n in names if (m := _BLOCK.match(keras_name(n))) and n.endswith("_1_conv"))
    blocks = tuple(stages.get(stage, 0) for stage in (2, 3, 4, 5))
    if blocks not in DENSENET_BLOCKS:
        raise CxrError(f"{file.path}: not a Keras DenseNet (dense blocks per stage {blocks}; known: "
                       f"{', '.join(f'{v}: {k}' for k, v in DENSENET_BLOCKS.items())})")  # fmt: skip
    return DENSENET_BLOCKS[blocks]


def check_layout(layout_name: str) -> str:
    if layout_name not in LAYOUT_CHOICES:
        raise CxrError(f"unknown Keras layout {layout_name!r}; choose one of: {', '.join(LAYOUT_CHOICES)}")
    return layout_name


def recognise(file: KerasFile, layout_name: str = "auto") -> Recognised:
    """The architecture of ``file`` under ``layout_name`` (``auto``: full-model → original, weights-only →
    chexnet-keras)."""
    if check_layout(layout_name) == "auto":
        layout_name = "original" if file.kind is SaveKind.FULL_MODEL else "chexnet-keras"
    if layout_name == "original":
        return _recognise_original(file)
    return _recognise_chexnet_keras(file)


def _recognise_original(file: KerasFile) -> Recognised:
    if file.model_config is None:
        raise CxrError(
            f"{file.path}: a weights-only file (save_weights) has no architecture; --layout original needs the "
            "full-model file (model.save, as the original project's ModelCheckpoint wrote). Weights of "
            "CheXNet-Keras: --layout chexnet-keras"
        )
    layers = file.model_config["config"].get("layers", [])
    names = [layer.get("name") or layer.get("config", {}).get("name", "") for layer in layers]
    if "relu" in names:
        raise CxrError(f"{file.path}: this DenseNet has a ReLU after its final BatchNormalization (Keras >= 2.2.3); "
                       "not supported yet (the original project's Keras 2.2.2 DenseNet had none)")  # fmt: skip
    depth = densenet_depth(file, names)
    input_size = _input_size(file, layers)
    heads = [layer for layer in layers if layer.get("class_name") in ("Sequential", "Model", "Functional")]
    if len(heads) != 1:
        raise InputFormatError(file.path, "model_config: expected one nested Sequential head after the DenseNet "
                               f"(the original project's), found {len(heads)} nested models")  # fmt: skip
    num_outputs, dropout = _original_head(file, heads[0])
    return Recognised(LAYOUTS["original"], depth, input_size, num_outputs, dropout, heads[0]["name"])


def _input_size(file: KerasFile, layers: list[dict]) -> int:
    inputs = [layer for layer in layers if layer.get("class_name") == "InputLayer"]
    config = inputs[0].get("config", {}) if inputs else {}
    shape = config.get("batch_input_shape") or config.get("batch_shape")
    if not shape or len(shape) != 4 or shape[1] != shape[2] or shape[1] is None or shape[3] != 3:
        raise InputFormatError(file.path, f"model_config: expected a square RGB input (None, S, S, 3), found {shape}")
    return int(shape[1])


SEED_HEAD = ("Flatten", "Dropout", "Dense", "Dropout", "Dense", "Dropout", "Dense")
SEED_UNITS = (256, 60)
SEED_ACTIVATIONS = ("relu", "relu", "sigmoid")


def _original_head(file: KerasFile, head: dict) -> tuple[int, float]:
    """(outputs, dropout) of the original project's head, checked layer by layer against :data:`SEED_HEAD`."""
    config = head.get("config", [])
    layers = config.get("layers", []) if isinstance(config, dict) else config  # Keras 2.2.0-2.2.4 stored a list
    layers = [layer for layer in layers if layer.get("class_name") != "InputLayer"]
    classes = tuple(layer.get("class_name") for layer in layers)
    where = f"model_config, head {head.get('name')!r}"
    if classes != SEED_HEAD:
        raise InputFormatError(file.path, f"{where}: layers {list(classes)}, expected {list(SEED_HEAD)}")
    dense = [layer["config"] for layer in layers if layer["class_name"] == "Dense"]
    units = tuple(int(layer["units"]) for layer in dense)
    activations = tuple(layer.get("activation") for layer in dense)
    if units[:2] != SEED_UNITS or activations != SEED_ACTIVATIONS:
        raise InputFormatError(file.path, f"{where}: Dense units {units} with activations {activations}, expected "
                               f"(256, 60, K) with {SEED_ACTIVATIONS}")  # fmt: skip
    rates = {float(layer["config"]["rate"]) for layer in layers if layer["class_name"] == "Dropout"}
    if len(rates) != 1:
        raise InputFormatError(file.path, f"{where}: dropout rates {sorted(rates)}; cxr's original head has one rate")
    return units[2], rates.pop()


def _recognise_chexnet_keras(file: KerasFile) -> Recognised:
    depth = densenet_depth(file, list(file.layer_names))
    head = file.layers.get("predictions")
    kernels = [weight.value.shape for weight in head or () if weight.kind == "kernel"]
    if len(kernels) != 1 or len(kernels[0]) != 2:
        raise CxrError(f"{file.path}: no Dense layer 'predictions' (CheXNet-Keras' output layer); layers with "
                       f"weights end with {list(file.layers)[-3:]}")  # fmt: skip
    layout = LAYOUTS["chexnet-keras"]
    return Recognised(layout, depth, layout.input_size, int(kernels[0][1]), 0.0, "predictions")
