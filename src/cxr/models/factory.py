"""The model registry and factory: torchvision or timm backbones with the original's or CheXNet's head, grayscale in,
logits out.

``model.name`` is one of the four torchvision names of :data:`BACKBONES` (their own implementation, so checkpoints of
earlier versions load) or any timm architecture (:mod:`cxr.models.timm_backbones`). Every model takes
``float32 (B, 1, S, S)`` in ``[0, 1]`` (store pixels / 255), repeats the channel to 3 and normalises with the
statistics of its pretrained weights *inside* the model, so ONNX export and every caller share one input convention
(``docs/architecture.md``, "Model input"). Heads:

- ``original`` (formerly ``seed``): Flatten → Dropout → Linear 256 + ReLU → Dropout → Linear 60 + ReLU → Dropout →
  Linear K, the head of the original NIH notebooks (Keras DenseNet169, ``include_top=False``, no pooling;
  ``docs/experiments.md``).
- ``gap``: global average pooling → Linear K, as CheXNet (Rajpurkar et al., 2017, arXiv:1711.05225).
"""

from __future__ import annotations

import functools
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlparse

import torch
import torch.utils.checkpoint
from torch import nn

from cxr.config import Head
from cxr.errors import CxrError
from cxr.models import weights as weight_sources
from cxr.models.spec import ArchitectureSpec

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS = tuple(Head)
log = logging.getLogger(__name__)


class CxrNet(nn.Module):
    """Backbone + head with the input convention of the project, built from its :class:`ArchitectureSpec`
    (``.architecture``, what an artifact records); ``.feature_layer`` is the Grad-CAM target and ``.cam_reshape``
    (None for CNNs) turns its output into ``(B, C, h, w)``."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        architecture: ArchitectureSpec,
        input_size: int,
        labels: Sequence[str] | None = None,
        cam_reshape: nn.Module | None = None,
    ):
        super().__init__()
        if architecture.mean is None or architecture.cam_layer is None:
            raise CxrError(f"{architecture.name}: a model is built from a complete architecture (mean, std, cam_layer)")
        self.backbone = backbone
        self.head = head
        # Not persistent: the statistics belong to the preprocessing contract (the architecture in the artifact),
        # not to the weights, and random-init models keep their family's so one artifact format fits every model.
        # One value per channel the backbone takes: the grey input is repeated to that many (torchxrayvision's: 1).
        channels = len(architecture.mean)
        self.register_buffer("mean", torch.tensor(architecture.mean).view(1, channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(architecture.std).view(1, channels, 1, 1), persistent=False)
        self.cam_reshape = cam_reshape
        self.architecture = architecture
        self.input_size = int(input_size)
        self.labels = list(labels) if labels is not None else None

    @property
    def feature_layer(self) -> nn.Module:
        """The Grad-CAM target for ``pytorch_grad_cam``: the last block (the map the head sees) from 224 px up, the
        last stride-16 block below (see ``FINE_CAM_BELOW``); a ViT's last ``norm1`` (tokens: see ``cam_reshape``)."""
        return self.backbone.get_submodule(self.architecture.cam_layer)

    @property
    def num_outputs(self) -> int:
        return self.architecture.num_outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K)`` of grayscale images ``(B, 1, S, S)`` with values in ``[0, 1]``."""
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected input of shape (B, 1, S, S), got {tuple(x.shape)}")
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        return self.head(self.backbone(x))


def _torchvision_model(name: str) -> nn.Module:
    import torchvision.models as tvm

    return getattr(tvm, name)(weights=None)


def _imagenet_model(name: str) -> nn.Module:
    """torchvision's ImageNet weights (hub cache, else download); never a silent fallback to random init."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(name).DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(weights.url).path).name
    if weight_sources.offline() and not cache.is_file():  # CXR_OFFLINE=1 covers torch hub's downloads too
        command = f"model.pretrained=imagenet for {name}"
        raise weight_sources.unavailable(cache.name, cache.parent, "CXR_OFFLINE=1", command, f"download {weights.url}")
    try:  # torch hub: a progress bar, a .partial file renamed when complete, the SHA-256 prefix in the name checked
        return getattr(tvm, name)(weights=weights)
    except Exception as error:  # URLError, a timeout, a corrupt or partial cache file: all mean "no weights"
        raise CxrError(
            f"cannot load ImageNet weights for {name} ({type(error).__name__}: {error}). Offline? Download "
            f"{weights.url} on a machine with internet and copy it to {cache}, or pass model.pretrained=<path to "
            "the .pth file>; model.pretrained=none trains from random initialisation."
        ) from error


def _read_weights(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """("cxr", CxrNet state dict) for one of our checkpoints, ("torchvision", state dict) for anything else."""
    if not path.is_file():
        raise CxrError(f"pretrained weights not found: {path} (expected 'none', 'imagenet' or a file)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(f"{path}: not a PyTorch weights file ({type(error).__name__}: {error})") from error
    if _is_cxr_payload(payload):
        return "cxr", _cxr_state(payload)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CxrError(f"{path}: expected a state dict (name -> tensor) or a cxr checkpoint")
    # DataParallel-era checkpoints (e.g. CheXNet reproductions) prefix every key with "module.".
    return "torchvision", {k.removeprefix("module."): v for k, v in state.items()}


# Old torchvision DenseNet checkpoints name layers "norm.1"; the modules are "norm1" now.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _load_torchvision_state(tv_model: nn.Module, state: dict, name: str, path: str) -> None:
    """Load a torchvision-layout state dict into the backbone; its classifier (any size) is ignored."""
    state = {_OLD_DENSENET_KEY.sub(r"\1\2", k): v for k, v in state.items()}
    classifier = ("classifier.", "fc.")
    state = {k: v for k, v in state.items() if not k.startswith(classifier)}
    try:
        missing, unexpected = tv_model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: weights of another architecture
        raise CxrError(f"{path}: weights do not fit {name}: {error}") from error
    missing = [k for k in missing if not k.startswith(classifier)]
    if missing or unexpected:
        raise CxrError(f"{path}: weights do not fit {name}: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _load_cxr_state(model: CxrNet, state: dict, path: str) -> None:
    """Load one of our checkpoints: the backbone always, the head when it has the same shape (same task)."""
    backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    try:
        model.backbone.load_state_dict(backbone)
    except RuntimeError as error:
        raise CxrError(f"{path}: checkpoint does not fit {model.architecture.name}: {error}") from error
    head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
    own = model.head.state_dict()
    if head.keys() == own.keys() and all(head[k].shape == own[k].shape for k in own):
        model.head.load_state_dict(head)
    else:
        log.warning("%s: head has another shape (other task or input size); only the backbone was loaded", path)


# Grad-CAM's map has the resolution of its target layer. The last block is at stride 32: 7x7 cells at 224 px (the
# CheXNet-style map), but only 3x3 at the demo's 96 px, too coarse to point at a finding. Below this input size the
# target is the last stride-16 block instead. Measured on the demo run (ResNet-18, 96 px), pointing game of
# Cardiomegaly / Mass / Pneumothorax: 0.05 / 0.04 / 0.89 on layer4, 0.95 / 0.88 / 0.97 on layer3 (docs/benchmarks.md).
FINE_CAM_BELOW = 224


@dataclass(frozen=True)
class Backbone:
    """How a torchvision classifier becomes a feature extractor: ``cut`` returns (features, their channels);
    ``last_block`` and ``fine_block`` (stride 16, Grad-CAM's target below ``FINE_CAM_BELOW`` px) name its modules.

    ``torchvision`` names the constructor when it is not the registry name; ``mean`` and ``std`` (one value per
    input channel of the first convolution) are the normalisation the weights were trained with."""

    cut: Callable[[nn.Module], tuple[nn.Module, int]]
    last_block: str
    fine_block: str
    torchvision: str | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def in_chans(self) -> int:
        return len(self.mean)


def _densenet_features(tv_model: nn.Module) -> tuple[nn.Module, int]:
    features = tv_model.features
    # torchvision applies this ReLU in DenseNet.forward, Keras has it as the last layer of include_top=False;
    # as a module, the Grad-CAM target sees the same rectified map the head does.
    features.add_module("relu5", nn.ReLU())
    return features, tv_model.classifier.in_features


def _resnet_features(tv_model: nn.Module) -> tuple[nn.Module, int]:
    parts = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((part, getattr(tv_model, part)) for part in parts)), tv_model.fc.in_features


DENSENET = Backbone(_densenet_features, last_block="relu5", fine_block="denseblock3")
RESNET = Backbone(_resnet_features, last_block="layer4", fine_block="layer3")

# torchxrayvision's classifiers (Cohen et al., 2022, arXiv:2111.00595), imported by `cxr import torchxrayvision`
# (cxr.models.xrv): torchvision's DenseNet-121 and ResNet-50 with a one-channel first convolution, trained on
# pixels scaled to [-1024, 1024]. Our [0, 1] input maps there as (x - 0.5) / (1 / 2048) = 2048 x - 1024.
XRV_MEAN, XRV_STD = (0.5,), (1 / 2048,)
XRV_DENSENET = replace(DENSENET, torchvision="densenet121", mean=XRV_MEAN, std=XRV_STD)
XRV_RESNET = replace(RESNET, torchvision="resnet50", mean=XRV_MEAN, std=XRV_STD)

# Keras' DenseNet as keras-applications <= 1.0.4 built it (Keras 2.1-2.2.2, the original project's six models and
# CheXNet-Keras; imported by `cxr import keras`, cxr.models.keras_import): BatchNormalization epsilon 1.001e-5, and no
# ReLU after the final BatchNormalization `bn`, which feeds the head directly. `-unit`: fed pixels / 255 with no
# mean/std (the original project); the others: ImageNet mean/std (Keras' own DenseNet preprocess_input, CheXNet-Keras).
KERAS_BN_EPSILON = 1.001e-5
UNIT_MEAN, UNIT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def _keras_densenet_features(tv_model: nn.Module) -> tuple[nn.Module, int]:
    for module in tv_model.features.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = KERAS_BN_EPSILON
    return tv_model.features, tv_model.classifier.in_features


KERAS_DENSENET = Backbone(_keras_densenet_features, last_block="norm5", fine_block="denseblock3")

BACKBONES: dict[str, Backbone] = {
    "densenet121": DENSENET,
    "densenet169": DENSENET,
    "resnet18": RESNET,
    "resnet50": RESNET,
    "xrv-densenet121": XRV_DENSENET,
    "xrv-resnet50": XRV_RESNET,
    "keras-densenet121": replace(KERAS_DENSENET, torchvision="densenet121"),
    "keras-densenet169": replace(KERAS_DENSENET, torchvision="densenet169"),
    "keras-densenet121-unit": replace(KERAS_DENSENET, torchvision="densenet121", mean=UNIT_MEAN, std=UNIT_STD),
    "keras-densenet169-unit": replace(KERAS_DENSENET, torchvision="densenet169", mean=UNIT_MEAN, std=UNIT_STD),
}
"""The torchvision architectures (constructors of the same name; ``xrv-*``: the layout of torchxrayvision's
classifiers, whose weights ``cxr import torchxrayvision`` brings; ``keras-*``: Keras' DenseNets of 2018, whose weights
``cxr import keras`` brings); every other ``model.name`` is timm's."""
ARCHITECTURES = tuple(BACKBONES)


def _set_in_chans(tv_model: nn.Module, in_chans: int) -> None:
    """Give the first convolution ``in_chans`` input channels (freshly initialised), as torchxrayvision's nets do."""
    if in_chans == 3:
        return
    name, conv = next((n, m) for n, m in tv_model.named_modules() if isinstance(m, nn.Conv2d))
    parent, _, attribute = name.rpartition(".")
    new = nn.Conv2d(
        in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None
    )
    setattr(tv_model.get_submodule(parent) if parent else tv_model, attribute, new)


def _feature_shape(backbone: nn.Module, input_size: int, in_chans: int = 3) -> tuple[int, int, int]:
    """(C, h, w) of the backbone's output at ``input_size``: the original head's Flatten size depends on it."""
    was_training = backbone.training
    backbone.eval()  # batch-norm must not update its running statistics on the probe
    with torch.no_grad():
        shape = backbone(torch.zeros(1, in_chans, input_size, input_size)).shape[1:]
    backbone.train(was_training)
    return tuple(int(s) for s in shape)


def _head(kind: str, feature_shape: tuple[int, int, int], num_outputs: int, dropout: float) -> nn.Module:
    channels, height, width = feature_shape
    if kind == "gap":
        layers = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        return nn.Sequential(*layers, nn.Linear(channels, num_outputs))
    # The original head (docs/experiments.md): at 300 px DenseNet169 flattens 9x9x1664 = 134,784 features.
    return nn.Sequential(
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(channels * height * width, 256),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(256, 60),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(60, num_outputs),
    )


def create_model(
    name: str,
    num_outputs: int,
    head: str = "gap",
    dropout: float = 0.0,
    pretrained: str | Path = "none",
    input_size: int = 224,
    labels: Sequence[str] | None = None,
    grad_checkpointing: bool = False,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    backbone_config: dict | None = None,
    drop_path: float = 0.0,
) -> CxrNet:
    """Build a classifier for ``(B, 1, input_size, input_size)`` inputs returning ``(B, num_outputs)`` logits.

    ``name``: a torchvision name of :data:`BACKBONES` or any timm architecture. ``pretrained``: ``"none"`` (random
    init), ``"imagenet"`` (torchvision's weights from the torch hub cache or downloaded; timm's from the local Hugging
    Face cache only; a :class:`CxrError` says how to provide them offline) or a path to a state dict (torchvision or
    timm layout; ``.safetensors`` for timm too) or to one of our checkpoints (whose head is reused when its shape
    matches, e.g. the original's SGD run started from the Adam run's weights). ``grad_checkpointing`` recomputes block
    activations in the backward pass (less memory, more compute). ``normalization``: the (mean, std) an artifact
    recorded, checked against the model's own so a checkpoint never runs with other statistics than it was trained
    with. ``backbone_config``: what an artifact recorded of a foundation backbone (:mod:`cxr.models.foundation`): the
    publisher's configuration, a third-party JSON tree kept as written.
    ``drop_path``: stochastic depth of timm models (Huang et al. 2016), the rate of their last block.
    """
    try:
        head = Head(head).value  # "seed", the original head's former name, is still read
    except ValueError:
        raise CxrError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}") from None
    if num_outputs < 1:
        raise CxrError(f"a model needs at least one output, got num_outputs={num_outputs}")
    if labels is not None and len(labels) != num_outputs:
        raise CxrError(f"{len(labels)} label names for {num_outputs} outputs")
    if not 0.0 <= dropout < 1.0:
        raise CxrError(f"dropout must be in [0, 1), got {dropout}")
    if not 0.0 <= drop_path < 1.0 or (drop_path > 0 and (name in ARCHITECTURES or _is_foundation_name(name))):
        raise CxrError(
            f"model.drop_path={drop_path}: a rate in [0, 1) for timm models (stochastic depth), 0 for {name}"
        )
    pretrained = str(pretrained)
    checkpoint = _cxr_checkpoint(Path(pretrained)) if pretrained not in ("none", "imagenet") else None
    is_cxr_file = checkpoint is not None  # loaded once: its recorded backbone and its weights come from it
    if name in ARCHITECTURES:
        model = _torchvision_net(name, num_outputs, head, dropout, pretrained, input_size, labels, is_cxr_file)
    elif _is_foundation_name(name):
        if is_cxr_file and backbone_config is None:  # an earlier run's checkpoint: its backbone as it recorded it
            backbone_config = checkpoint["cxr"]["architecture"].get("backbone_config")
        spec = _foundation_spec(name, head, input_size, "none" if is_cxr_file else pretrained, backbone_config)
        model = _foundation_net(name, spec, num_outputs, head, dropout, input_size, labels)
    else:
        model = _timm_net(name, num_outputs, head, dropout, pretrained, input_size, labels, is_cxr_file, drop_path)
    if normalization is not None:
        _check_normalization(model, normalization)
    if checkpoint is not None:
        _load_cxr_state(model, _cxr_state(checkpoint), pretrained)
    if grad_checkpointing:
        _set_grad_checkpointing(model)
    return model


def _cxr_checkpoint(path: Path) -> dict | None:
    """``path`` loaded, if it is one of our checkpoints (``model.pretrained``/``init_from`` of an earlier run)."""
    if path.suffix == ".safetensors" or not path.is_file():
        return None  # the loader of the architecture reports a missing file in its words
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # not a PyTorch file: the architecture's loader says so
        return None
    return payload if _is_cxr_payload(payload) else None


def _is_cxr_payload(payload) -> bool:
    return isinstance(payload, dict) and isinstance(payload.get("cxr"), dict) and "state_dict" in payload


def _cxr_state(payload: dict) -> dict[str, torch.Tensor]:
    """The CxrNet weights of one of our checkpoints (the LightningModule's ``model.*`` entries)."""
    return {k.removeprefix("model."): v for k, v in payload["state_dict"].items() if k.startswith("model.")}


def _torchvision_net(
    name: str,
    num_outputs: int,
    head: str,
    dropout: float,
    pretrained: str,
    input_size: int,
    labels: Sequence[str] | None,
    is_cxr_file: bool,
) -> CxrNet:
    spec = BACKBONES[name]
    constructor = spec.torchvision or name
    if pretrained == "imagenet" and spec.in_chans != 3:
        raise CxrError(
            f"{name} has no ImageNet weights (its first convolution takes {spec.in_chans} channel); start from an "
            "imported model with model.init_from=MODEL.ckpt, or model.pretrained=none"
        )
    tv_model = _imagenet_model(constructor) if pretrained == "imagenet" else _torchvision_model(constructor)
    _set_in_chans(tv_model, spec.in_chans)
    if pretrained not in ("none", "imagenet") and not is_cxr_file:
        _load_torchvision_state(tv_model, _read_weights(Path(pretrained))[1], name, pretrained)
    backbone, _ = spec.cut(tv_model)
    architecture = ArchitectureSpec(
        name=str(name),
        num_outputs=num_outputs,
        head=Head(head).value,
        dropout=float(dropout),
        source="torchvision",
        mean=spec.mean,
        std=spec.std,
        cam_layer=spec.fine_block if input_size < FINE_CAM_BELOW else spec.last_block,
    )
    feature_shape = _feature_shape(backbone, input_size, spec.in_chans)
    return CxrNet(backbone, _head(head, feature_shape, num_outputs, dropout), architecture, input_size, labels)


def _timm_net(
    name: str,
    num_outputs: int,
    head: str,
    dropout: float,
    pretrained: str,
    input_size: int,
    labels: Sequence[str] | None,
    is_cxr_file: bool,
    drop_path: float = 0.0,
) -> CxrNet:
    from cxr.models import timm_backbones, vit_checkpoints

    weights = "none" if is_cxr_file else pretrained
    if vit_checkpoints.is_registered(name):  # X-ray ViTs with their publishers' checkpoints (vit_registry)
        spec = vit_checkpoints.build_backbone(name, Head(head).value, input_size, weights, FINE_CAM_BELOW, drop_path)
    elif timm_backbones.is_timm_name(name):
        spec = timm_backbones.build_timm_backbone(
            name, Head(head).value, input_size, weights, FINE_CAM_BELOW, drop_path=drop_path
        )
    else:
        raise timm_backbones.unknown_model_error(name, ARCHITECTURES + tuple(vit_checkpoints.XRAY_VITS))
    if head == Head.GAP:  # timm's own pooling (and whatever its family puts after it) gives (B, num_features)
        layers = [nn.Dropout(dropout)] if dropout > 0 else []
        head_module = nn.Sequential(*layers, nn.Linear(spec.model.num_features, num_outputs))
    else:
        head_module = _head(head, _feature_shape(spec.model, input_size), num_outputs, dropout)
    architecture = _built_architecture(name, num_outputs, head, dropout, "timm", spec)
    return CxrNet(spec.model, head_module, architecture, input_size, labels, cam_reshape=spec.cam_reshape)


def _built_architecture(name, num_outputs: int, head: str, dropout: float, source: str, spec, **extra):
    """The :class:`ArchitectureSpec` of a backbone built by timm or a foundation loader: its record (``spec``)
    gives the normalisation, fixed input size and Grad-CAM layer."""
    return ArchitectureSpec(
        name=str(name),
        num_outputs=num_outputs,
        head=Head(head).value,
        dropout=float(dropout),
        source=source,
        mean=tuple(spec.mean),
        std=tuple(spec.std),
        img_size=spec.img_size,
        cam_layer=spec.feature_layer,
        **extra,
    )


def _is_foundation_name(name: str) -> bool:
    from cxr.models.foundation import is_foundation_name

    return is_foundation_name(name)


def _foundation_spec(name: str, head: str, input_size: int, pretrained: str, recorded: dict | None):
    from cxr.models.foundation import build_foundation_backbone

    return build_foundation_backbone(name, Head(head).value, input_size, pretrained, recorded)


def _foundation_net(name, spec, num_outputs: int, head: str, dropout: float, input_size: int, labels) -> CxrNet:
    """A registered foundation backbone (pooled features) + dropout + linear: head ``gap`` only."""
    layers = [nn.Dropout(dropout)] if dropout > 0 else []
    architecture = _built_architecture(
        name, num_outputs, head, dropout, "foundation", spec, backbone_config=spec.config
    )
    head_module = nn.Sequential(*layers, nn.Linear(spec.num_features, num_outputs))
    return CxrNet(spec.model, head_module, architecture, input_size, labels, cam_reshape=spec.cam_reshape)


def _check_normalization(model: CxrNet, normalization: tuple[Sequence[float], Sequence[float]]) -> None:
    mean, std = ([float(v) for v in values] for values in normalization)
    if not (
        model.mean.numel() == len(mean)
        and torch.allclose(model.mean.flatten(), torch.tensor(mean))
        and torch.allclose(model.std.flatten(), torch.tensor(std))
    ):
        raise CxrError(
            f"{model.architecture.name} normalises with mean {list(model.architecture.mean)}, std "
            f"{list(model.architecture.std)} here, the checkpoint recorded mean {mean}, std {std}: was it written by "
            "another timm version? Use the versions it names (its 'environment' block)"
        )


def _set_grad_checkpointing(model: CxrNet) -> None:
    """Activation checkpointing: timm's own switch; DenseNet's ``memory_efficient`` dense layers; per ResNet block
    ``torch.utils.checkpoint`` (the module tree and so the checkpoint keys stay as they are)."""
    backbone = model.backbone
    if model.architecture.source == "timm":
        from cxr.models.timm_backbones import set_grad_checkpointing

        set_grad_checkpointing(backbone)
    elif model.architecture.source == "foundation":
        from cxr.models.foundation import set_grad_checkpointing as set_foundation_checkpointing

        set_foundation_checkpointing(backbone)
    elif "densenet" in model.architecture.name:  # torchxrayvision's xrv-densenet121 too
        for module in backbone.modules():
            if hasattr(module, "memory_efficient"):
                module.memory_efficient = True
    else:
        for stage in ("layer1", "layer2", "layer3", "layer4"):
            for block in backbone.get_submodule(stage):
                block.forward = functools.partial(_checkpointed, type(block).forward, block)


def _checkpointed(forward: Callable, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``forward(module, x)`` with its activations recomputed in the backward pass while training."""
    if module.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(forward, module, x, use_reentrant=False)
    return forward(module, x)


def rebuild_model(architecture: ArchitectureSpec, labels: Sequence[str], input_size: int) -> CxrNet:
    """The randomly initialised twin of a recorded architecture (its weights come from the artifact or graph), with
    the normalisation and Grad-CAM layer the artifact recorded."""
    if architecture.img_size not in (None, input_size):
        raise CxrError(f"architecture built for {architecture.img_size} px, preprocessing gives {input_size} px")
    normalization = (architecture.mean, architecture.std) if architecture.mean is not None else None
    model = create_model(
        architecture.name,
        len(labels),
        head=architecture.head,
        dropout=architecture.dropout,
        input_size=input_size,
        labels=list(labels),
        normalization=normalization,
        backbone_config=architecture.backbone_config,
    )
    if architecture.cam_layer:
        set_cam_layer(model, architecture.cam_layer, architecture.cam_gate)
    return model


def set_cam_layer(model: CxrNet, layer: str, gate: str | None = None) -> None:
    """Make backbone module ``layer`` the heatmaps' target and ``gate`` (if any) the module whose Grad-CAM gates them
    (``model.cam_layer``, ``model.cam_gate``; recorded in the artifact; :func:`cxr.inference.cam.grad_cam_batch`)."""
    for name in (layer, gate) if gate else (layer,):
        try:
            model.backbone.get_submodule(name)
        except AttributeError as error:
            raise CxrError(f"{model.architecture.name}: no layer {name!r} in the backbone for the heatmaps") from error
    model.architecture = replace(model.architecture, cam_layer=layer, cam_gate=gate or None)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the original reports 47.2 M for DenseNet169 + its head at 300 px)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
