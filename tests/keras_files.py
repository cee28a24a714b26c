"""Keras reference models with random weights, written as Keras 2 HDF5 files by h5py (tests of `cxr import keras`).

Keras 3 on its torch backend (no TensorFlow) builds the references: its DenseNet cut at the final BatchNormalization
``bn`` (Keras 2.2's had no ReLU after it), then the original project's Sequential head or CheXNet-Keras' pooling and
``predictions``. The files are written as Keras 2.2 (full model: ``model_config``, ``model_weights`` with
``layer_names``, one group per layer with ``weight_names`` ending in ``:0``, the head one nested group) and Keras 2.1
(weights only: ``layer_names`` at the root) wrote them (``docs/original-models.md``), with Keras 2's layer names
(``conv1/conv``, not Keras 3's ``conv1_conv``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported: no TensorFlow here
import h5py  # noqa: E402
import keras  # noqa: E402

KERAS2_NAMES = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406], "f"), np.array([0.229, 0.224, 0.225], "f")


def keras2_name(name: str) -> str:
    return KERAS2_NAMES.get(name, name)


def densenet(depth: int, size: int) -> keras.Model:
    """Keras' DenseNet without its final ReLU (ending at ``bn``), random weights."""
    base = getattr(keras.applications, f"DenseNet{depth}")(weights=None, include_top=False, input_shape=(size, size, 3))
    assert base.layers[-1].name == "relu" and base.layers[-2].name == "bn"  # Keras 3 added it; 2.2.2 had none
    return keras.Model(base.input, base.get_layer("bn").output)


def original_model(size: int, outputs: int, dropout: float = 0.2) -> keras.Model:
    """The original project's model: DenseNet169 → nested Sequential Flatten/Dropout/Dense 256/60/K."""
    features = densenet(169, size)
    head = keras.Sequential(
        [keras.layers.Flatten(), keras.layers.Dropout(dropout), keras.layers.Dense(256, activation="relu"),
         keras.layers.Dropout(dropout), keras.layers.Dense(60, activation="relu"), keras.layers.Dropout(dropout),
         keras.layers.Dense(outputs, activation="sigmoid")],
        name="sequential_1",
    )  # fmt: skip
    return keras.Model(features.input, head(features.output))


def chexnet_keras_model() -> keras.Model:
    """CheXNet-Keras: DenseNet121 → average pooling → Dense(14, sigmoid, name="predictions"), 224 px."""
    features = densenet(121, 224)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(features.output)
    return keras.Model(features.input, keras.layers.Dense(14, activation="sigmoid", name="predictions")(pooled))


def calibrate(model: keras.Model, images: np.ndarray, seed: int) -> None:
    """Batch-norm moving statistics from ``images`` and a last Dense scaled to logits of spread 1.5, so that the
    probabilities are neither 0 nor 1 and the parity test compares numbers that can differ."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0  # one training-mode pass sets the moving statistics to the batch's
            gamma, beta, mean, variance = (np.asarray(w) for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape), mean, variance])
    last = model.layers[-1].layers[-1] if isinstance(model.layers[-1], keras.Sequential) else model.layers[-1]
    kernel, bias = (np.asarray(w) for w in last.get_weights())
    model(images, training=True)  # moving statistics := the batch's
    before_last = keras.Model(model.input, _before_last(model))  # its layers are the model's
    inputs = np.asarray(keras.ops.convert_to_numpy(before_last(images, training=False)))  # without dropout
    logits = inputs @ kernel
    kernel *= 1.5 / logits.std()
    bias = rng.uniform(-1.5, 0.5, bias.shape) - (inputs @ kernel).mean(0)
    last.set_weights([kernel, bias])


def _before_last(model: keras.Model):
    """The symbolic input of the last Dense (through the nested head for the original layout)."""
    if isinstance(model.layers[-1], keras.Sequential):
        x = model.layers[-2].output
        for layer in model.layers[-1].layers[:-1]:
            x = layer(x)
        return x
    return model.layers[-1].input


def _bytes_array(names: list[str]) -> np.ndarray:
    return np.array([name.encode("utf8") for name in names], dtype=f"S{max([len(n) for n in names] + [1])}")


def _write_layer(group: h5py.Group, name: str, weight_names: list[str], values: list[np.ndarray]) -> None:
    layer = group.create_group(name)
    layer.attrs["weight_names"] = _bytes_array(weight_names)
    for weight_name, value in zip(weight_names, values, strict=True):
        layer.create_dataset(weight_name, data=np.asarray(value, dtype=np.float32))


def _layer_weights(layer) -> tuple[list[str], list[np.ndarray]]:
    """Keras 2's ``weight_names`` of a layer and its arrays; a nested Sequential numbers its Dense layers."""
    if isinstance(layer, keras.Sequential):
        names, values, dense = [], [], 0
        for inner in layer.layers:
            if inner.weights:
                dense += 1
                names += [f"dense_{dense}/{weight.name}:0" for weight in inner.weights]
                values += [np.asarray(weight) for weight in inner.weights]
        return names, values
    return [f"{keras2_name(layer.name)}/{w.name}:0" for w in layer.weights], [np.asarray(w) for w in layer.weights]


def _keras22_config(model: keras.Model) -> dict:
    """``model_config`` as Keras 2.2.2 wrote it: a functional "Model" whose head is a nested "Sequential" whose
    config is a list of its layers."""
    layers, previous = [], None
    for layer in model.layers:
        name = keras2_name(layer.name)
        if isinstance(layer, keras.layers.InputLayer):
            shape = [None, *layer.batch_shape[1:]]
            config = {"batch_input_shape": shape, "dtype": "float32", "sparse": False, "name": name}
        elif isinstance(layer, keras.Sequential):
            config = [{"class_name": inner.__class__.__name__, "config": inner.get_config()} for inner in layer.layers]
        else:
            config = layer.get_config() | {"name": name}
        inbound = [] if previous is None else [[[previous, 0, 0, {}]]]
        kind = layer.__class__.__name__
        layers.append({"name": name, "class_name": kind, "config": config, "inbound_nodes": inbound})
        previous = name
    for entry in layers:
        if entry["class_name"] == "Functional":
            entry["class_name"] = "Model"
    return {"class_name": "Model", "config": {"name": "model_1", "layers": layers,
            "input_layers": [[layers[0]["name"], 0, 0]], "output_layers": [[previous, 0, 0]]}}  # fmt: skip


def write_full_model(model: keras.Model, path: Path) -> Path:
    """``model.save`` of Keras 2.2.2 (the original project's ModelCheckpoint)."""
    with h5py.File(path, "w") as handle:
        handle.attrs["keras_version"] = b"2.2.2"
        handle.attrs["backend"] = b"tensorflow"
        handle.attrs["model_config"] = json.dumps(_keras22_config(model)).encode("utf8")
        handle.attrs["training_config"] = json.dumps({"loss": "binary_crossentropy", "metrics": ["accuracy"]}).encode()
        weights = handle.create_group("model_weights")
        names = [keras2_name(layer.name) for layer in model.layers]
        weights.attrs["layer_names"] = _bytes_array(names)
        weights.attrs["backend"], weights.attrs["keras_version"] = b"tensorflow", b"2.2.2"
        for name, layer in zip(names, model.layers, strict=True):
            _write_layer(weights, name, *_layer_weights(layer))
        handle.create_group("optimizer_weights")
    return path


def write_weights_only(model: keras.Model, path: Path) -> Path:
    """``model.save_weights`` of Keras 2.1.4 (CheXNet-Keras' ModelCheckpoint with save_weights_only=True)."""
    with h5py.File(path, "w") as handle:
        names = [keras2_name(layer.name) for layer in model.layers]
        handle.attrs["layer_names"] = _bytes_array(names)
        handle.attrs["backend"], handle.attrs["keras_version"] = b"tensorflow", b"2.1.4"
        for name, layer in zip(names, model.layers, strict=True):
            _write_layer(handle, name, *_layer_weights(layer))
    return path


def keras_input(pixels: np.ndarray, imagenet: bool) -> np.ndarray:
    """The Keras model's input for cxr's model input ``(1, S, S)`` in [0, 1]: grey replicated to RGB, channels last,
    and for CheXNet-Keras ImageNet mean/std after the / 255."""
    rgb = np.repeat(pixels[0][..., None], 3, axis=-1)[None]
    return ((rgb - IMAGENET_MEAN) / IMAGENET_STD).astype("f") if imagenet else rgb.astype("f")
