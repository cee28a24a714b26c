"""The weights of a Keras 2 DenseNet placed into cxr's twin of it, by layer name and shape.

The file is read with h5py only (:mod:`cxr.models.keras_h5`), its architecture recognised
(:mod:`cxr.models.keras_layouts`), and every weight placed into cxr's twin of it — ``keras-densenet121/169`` of
:data:`cxr.models.factory.BACKBONES` (BatchNormalization epsilon 1.001e-5, no ReLU after the final ``bn``) with the
``original`` or ``gap`` head — matched by layer name and shape. Every mismatch (a missing, extra or misshapen layer) is
reported in one line before anything is written. The conversions (Keras is channels-last):

- Conv2D kernels ``(kh, kw, in, out)`` → ``(out, in, kh, kw)``; Dense kernels ``(in, out)`` → ``(out, in)``;
- the first Dense after Flatten: Keras flattens the ``(h, w, c)`` map, PyTorch ``(c, h, w)``, so its rows are
  reordered from ``(h, w, c)`` to ``(c, h, w)`` before the transpose;
- BatchNormalization ``gamma, beta, moving_mean, moving_variance`` → ``weight, bias, running_mean, running_var``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cxr.errors import CxrError
from cxr.models.factory import CxrNet
from cxr.models.keras_h5 import KerasFile
from cxr.models.keras_layouts import Recognised, keras_name

BN_WEIGHTS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
"""Keras' BatchNormalization weights (in Keras' order) → PyTorch's names."""

# torchvision's DenseNet modules → Keras' layer names (keras-applications' densenet.py): dense stage b of torchvision
# (denseblock1-4) is Keras' conv2-conv5, its transitions (transition1-3) Keras' pool2-pool4.
DENSE_LAYER_PARTS = {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv"}
BACKBONE_NAMES: tuple[tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    (re.compile(r"conv0$"), lambda m: "conv1_conv"),
    (re.compile(r"norm0$"), lambda m: "conv1_bn"),
    (re.compile(r"denseblock(\d)\.denselayer(\d+)\.(norm1|conv1|norm2|conv2)$"),
     lambda m: f"conv{int(m[1]) + 1}_block{m[2]}_{DENSE_LAYER_PARTS[m[3]]}"),
    (re.compile(r"transition(\d)\.(norm|conv)$"), lambda m: f"pool{int(m[1]) + 1}_{'bn' if m[2] == 'norm' else m[2]}"),
    (re.compile(r"norm5$"), lambda m: "bn"),
)  # fmt: skip


@dataclass(frozen=True)
class Slot:
    """One Keras weight and where it goes: ``convert`` turns the Keras array into the PyTorch tensor's layout."""

    kind: str
    target: str  # key of the CxrNet state dict
    keras_shape: tuple[int, ...]
    convert: Callable[[np.ndarray], np.ndarray]


def _conv(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def _dense(kernel: np.ndarray) -> np.ndarray:
    return kernel.T


def _flatten_dense(feature_shape: tuple[int, int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """The first Dense after Flatten: rows in Keras' (h, w, c) order → PyTorch's (c, h, w), then transposed."""
    channels, height, width = feature_shape

    def convert(kernel: np.ndarray) -> np.ndarray:
        rows = kernel.reshape(height, width, channels, kernel.shape[1]).transpose(2, 0, 1, 3)
        return rows.reshape(channels * height * width, kernel.shape[1]).T

    return convert


def _module_slots(prefix: str, module: torch.nn.Module, convert: Callable | None = None) -> list[Slot]:
    """The Keras weights of one PyTorch conv, batch-norm or linear module, in Keras' order."""
    if isinstance(module, torch.nn.BatchNorm2d):
        return [Slot(kind, f"{prefix}.{name}", (module.num_features,), np.asarray) for kind, name in BN_WEIGHTS.items()]
    out, into = module.weight.shape[:2]
    if isinstance(module, torch.nn.Conv2d):
        shape = (*module.kernel_size, into, out)
        slots = [Slot("kernel", f"{prefix}.weight", shape, convert or _conv)]
    else:
        slots = [Slot("kernel", f"{prefix}.weight", (into, out), convert or _dense)]
    if module.bias is not None:
        slots.append(Slot("bias", f"{prefix}.bias", (out,), np.asarray))
    return slots


def expected_layers(model: CxrNet, recognised: Recognised) -> dict[str, list[Slot]]:
    """Keras layer name (spelled by :func:`keras_name`) → its weights, for every layer of ``model`` with weights."""
    layers: dict[str, list[Slot]] = {}
    for name, module in model.backbone.named_modules():
        if isinstance(module, torch.nn.Conv2d | torch.nn.BatchNorm2d):
            pattern, keras = next((p, k) for p, k in BACKBONE_NAMES if p.search(name))
            layers[keras(pattern.search(name))] = _module_slots(f"backbone.{name}", module)
    linears = [(f"head.{name}", m) for name, m in model.head.named_modules() if isinstance(m, torch.nn.Linear)]
    head: list[Slot] = []
    for index, (prefix, linear) in enumerate(linears):
        after_flatten = index == 0 and recognised.layout.head == "original"
        convert = _flatten_dense(feature_shape(model)) if after_flatten else None
        head += _module_slots(prefix, linear, convert)
    layers[keras_name(recognised.head_layer)] = head  # a nested Sequential is one group holding its layers' weights
    return layers


def feature_shape(model: CxrNet) -> tuple[int, int, int]:
    """(C, h, w) of the map the original head flattens, from its first Linear (no forward pass): (1664, 9, 9) for
    DenseNet169 at 300 px."""
    channels = model.backbone.norm5.num_features
    side = round((model.head[2].in_features / channels) ** 0.5)
    return channels, side, side


def mismatches(file: KerasFile, expected: dict[str, list[Slot]]) -> list[str]:
    """Every way the file's layers differ from ``expected`` (missing, extra, other weights, other shapes), each
    naming the layer as the file spells it."""
    spelled = {keras_name(name): name for name in file.layers}
    problems = [f"missing layer {name}" for name in expected if name not in spelled]
    problems += [f"extra layer {spelled[name]}" for name in spelled if name not in expected]
    for name in (name for name in expected if name in spelled):
        found = file.layers[spelled[name]]
        kinds = [slot.kind for slot in expected[name]]
        if [weight.kind for weight in found] != kinds:
            problems.append(f"layer {spelled[name]}: weights {[w.kind for w in found]}, expected {kinds}")
            continue
        for slot, weight in zip(expected[name], found, strict=True):
            if tuple(weight.value.shape) != slot.keras_shape:
                problems.append(f"layer {spelled[name]} weight {weight.name}: expected shape {slot.keras_shape}, "
                                f"found {tuple(weight.value.shape)}")  # fmt: skip
    return problems


def load_weights(model: CxrNet, file: KerasFile, recognised: Recognised) -> None:
    """Copy every weight of ``file`` into ``model``; a :class:`CxrError` listing all mismatches in one line."""
    expected = expected_layers(model, recognised)
    problems = mismatches(file, expected)
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise CxrError(f"{file.path}: does not fit {model.architecture.name} with the {recognised.layout.name} "
                       f"head: {shown}")  # fmt: skip
    state = model.state_dict()
    found = {keras_name(name): weights for name, weights in file.layers.items()}
    for name, slots in expected.items():
        for slot, weight in zip(slots, found[name], strict=True):  # mismatches() checked kinds, order and shapes
            state[slot.target] = torch.from_numpy(np.ascontiguousarray(slot.convert(weight.value)))
    model.load_state_dict(state)
