"""Experiment configs: defaults in code, presets as short YAML diffs, ``key=value`` overrides, strict types.

The defaults are the settings the original project's six experiments share (``docs/experiments.md``: DenseNet169 +
its head, Adam 1e-4, batch 16, rotation 15° / shift 0.15 / flip, early stopping with patience 4, a 300 px store cropped
to 75%). ``cxr/configs/experiments/<name>.yaml`` (inside the package) lists only what a preset changes;
``cxr train ... optim.lr=1e-3`` changes one value more. Unknown keys and wrong types are errors naming the key (as
nanoGPT's configurator refuses unknown keys). The merged config is written to ``RUN/config.yaml`` and into every
checkpoint (as timm saves its args).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml

from cxr.errors import CxrError


class EvalView(StrEnum):
    """How a store image becomes the model's input at validation, test and inference time."""

    RESIZE = "resize"  # to input_size (the identity when the store has the model's size)
    CENTER_CROP = "center_crop"  # an input_size square from the middle (CheXNet's 256 -> 224)


class AugmentOn(StrEnum):
    """Where the training augmentation runs (``cxr.data.device_augment``)."""

    AUTO = "auto"  # on the device when training on a GPU, else in the loader workers
    CPU = "cpu"  # in the loader workers (OpenCV), per image
    DEVICE = "device"  # batched on the training device (grid_sample); the loader sends uint8 images and draws


class Compile(StrEnum):
    """``torch.compile`` of the model (its mode), or none."""

    NONE = "none"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"  # CUDA graphs: needs static shapes
    MAX_AUTOTUNE = "max-autotune"


class Head(StrEnum):
    GAP = "gap"  # global average pooling + linear (+ dropout)
    ORIGINAL = "original"  # the original project's head (docs/experiments.md): flatten + dense layers, as in Keras

    @classmethod
    def _missing_(cls, value):
        # Called "seed" until 2026-12 ("seed" meant the original project): configs and checkpoints still say it.
        return cls.ORIGINAL if value == "seed" else None


class Optimizer(StrEnum):
    ADAM = "adam"
    SGD = "sgd"
    ADAMW = "adamw"  # decoupled weight decay (Loshchilov & Hutter, ICLR 2019); none on norms, biases and tokens


class Fused(StrEnum):
    """Which optimizer kernel: torch's default (a loop per parameter on CPU, ``foreach`` on CUDA), one fused kernel,
    or one ``foreach`` call per group."""

    AUTO = "auto"  # fused where the parameters are on CUDA, torch's default elsewhere
    FUSED = "fused"
    FOREACH = "foreach"
    DEFAULT = "default"


class Scheduler(StrEnum):
    NONE = "none"
    PLATEAU = "plateau"  # ReduceLROnPlateau on the validation loss
    COSINE = "cosine"  # per step: linear warm-up over optim.warmup_epochs, then cosine down to optim.min_lr


class Loss(StrEnum):
    BCE = "bce"  # binary cross-entropy per output (train.pos_weight: CheXNet's weighting)
    AUC_MARGIN = "auc_margin"  # AUC-M, square-hinge AUC surrogate (Yuan et al., ICCV 2021; cxr.training.losses)


class SplitScheme(StrEnum):
    OFFICIAL = "official"  # NIH's train_val / test lists
    RATIO = "ratio"  # a seeded patient-wise split by task.ratios


class Sampling(StrEnum):
    NONE = "none"
    ORIGINAL_BALANCED = "original_balanced"  # the original project's 14-label resampling (docs/experiments.md)
    BALANCED = "balanced"  # a balanced binary training set

    @classmethod
    def _missing_(cls, value):
        # The name it had until 2026-12 ("seed" meant the original project): configs and checkpoints still say it.
        return cls.ORIGINAL_BALANCED if value == "seed_balanced" else None


class Precision(StrEnum):
    AUTO = "auto"  # bf16/fp16 AMP on GPU; on CPU bf16 only where the CPU computes it natively
    FP32 = "32-true"
    FP16_MIXED = "16-mixed"
    BF16_MIXED = "bf16-mixed"


@dataclass
class DataConfig:
    """Store geometry the experiment expects, the model's input view and training augmentation."""

    store_size: int = 300  # the original resized to 400 and center-cropped 300: a 75% crop, then 300 px
    crop: float = 0.75
    input_size: int = 300
    eval_transform: EvalView = EvalView.RESIZE
    random_crop: bool = False  # CheXNet: random input_size crop of the store image in training
    rotation: float = 15.0  # degrees, Keras rotation_range
    shift: float = 0.15  # fraction of the side, Keras width/height_shift_range
    hflip: bool = True
    num_workers: int = 4
    stores: list[str] = field(default_factory=list)  # train on several stores (cxr.data.tasks.build_multi_split)
    store_weights: list[float] = field(default_factory=list)  # per store's share of the training draws; [] = by size
    prefetch_factor: int = 2  # batches each loader worker keeps ready (torch's default)
    augment_on: AugmentOn = AugmentOn.AUTO


@dataclass
class TaskConfig:
    """Which outputs, which rows, which split, and how the training part is sampled (see ``cxr.data.tasks``)."""

    target: str = "findings"  # "findings" (NIH's 14), "common" (the common findings the stores give), or one label
    drop_blacklisted: bool = True
    drop_no_finding: bool = False
    split: SplitScheme = SplitScheme.OFFICIAL
    val_fraction: float = 0.1  # of the official train_val images, carved out patient-wise
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train/val/test for split: ratio
    split_seed: int = 0
    sampling: Sampling = Sampling.NONE
    sampling_seed: int = 123  # the original's sklearn.utils.resample(random_state=123)


@dataclass
class ModelConfig:
    name: str = "densenet169"  # cxr.models.factory.BACKBONES (torchvision) or any timm architecture; checked when built
    head: Head = Head.ORIGINAL
    dropout: float = 0.2
    pretrained: str = "imagenet"  # "imagenet" (X-ray and foundation models: their published weights), "none", a path
    init_from: str | None = None  # a previous run's checkpoint (the original chained Adam → SGD → balanced)
    grad_checkpointing: bool = False  # recompute activations in the backward: less memory, more compute
    drop_path: float = 0.0  # timm models: stochastic depth rate of the last block (ViT fine-tuning recipes: 0.1-0.2)
    cam_layer: str | None = None  # the heatmaps' layer (a backbone module, e.g. layer2); None: the family's default
    cam_gate: str | None = None  # a later backbone module whose Grad-CAM multiplies the heatmaps; None: no gate


@dataclass
class OptimConfig:
    name: Optimizer = Optimizer.ADAM
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 0.0
    decay: float = 0.0  # Keras time decay per step: lr_t = lr / (1 + decay * t)
    scheduler: Scheduler = Scheduler.NONE
    plateau_factor: float = 0.1
    plateau_patience: int = 1
    fused: Fused = Fused.AUTO
    warmup_epochs: float = 0.0  # cosine: linear warm-up length in epochs (fractions allowed), applied per step
    min_lr: float = 0.0  # cosine: the learning rate the schedule ends at (scaled per group with layer_decay)
    layer_decay: float = 1.0  # ViTs: block i of L learns at lr * layer_decay ** (L + 1 - i); 1.0 = off


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 16
    early_stopping_patience: int = 4  # on validation loss
    pos_weight: bool = False  # weighted BCE: positives weighted by negatives/positives of the training part
    precision: Precision = Precision.AUTO
    channels_last: bool = False  # on GPU; measured slower for DenseNet121 bf16 on an H200 (docs/benchmarks.md)
    compile: Compile = Compile.NONE  # torch.compile of the model; checkpoints keep the plain weight names
    check_finite_every: int = 50  # batches between host checks of the loss (and at each epoch's end): no per-step sync
    seed: int = 0
    ema: float = 0.0  # decay of an exponential moving average of the weights (e.g. 0.999); 0 = off
    accumulate: int = 1  # batches whose gradients are summed per optimizer step (effective batch = batch_size * this)
    loss: Loss = Loss.BCE  # NaN targets (a label the dataset does not give) are left out by both
    auc_margin: float = 1.0  # train.loss=auc_margin: the margin m between mean positive and negative scores


@dataclass
class Config:
    experiment: str = "custom"
    store: str = ""  # set by `cxr train`: the store the run was trained on (`cxr evaluate RUN` reads it)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def experiments_dirs() -> list[Path]:
    """Where presets are looked up, first match wins: the folders in ``$CXR_EXPERIMENTS_DIR`` (``os.pathsep``
    separated; a user's or a lab's own presets), then the presets shipped inside the package."""
    user = [Path(p) for p in os.environ.get("CXR_EXPERIMENTS_DIR", "").split(os.pathsep) if p]
    # Package data, read through importlib.resources: a wheel installed outside any checkout finds them too.
    return [*user, Path(str(resources.files("cxr") / "configs" / "experiments"))]


def available_experiments() -> list[str]:
    return sorted({path.stem for folder in experiments_dirs() for path in folder.glob("*.yaml")})


def find_experiment(experiment: str | Path) -> Path:
    """A preset name (``chexnet``) or a YAML path → the YAML file; a clear error lists the presets."""
    path = Path(experiment)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise CxrError(f"experiment file not found: {path}")
        return path
    for folder in experiments_dirs():
        preset = folder / f"{experiment}.yaml"
        if preset.is_file():
            return preset
    names = ", ".join(available_experiments()) or "none found in " + ", ".join(map(str, experiments_dirs()))
    raise CxrError(f"unknown experiment {str(experiment)!r}; presets: {names} (or pass a YAML path)")


def load_config(experiment: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults ← the experiment's YAML ← ``key=value`` overrides (dotted keys, e.g. ``optim.lr=1e-3``)."""
    config = Config()
    if experiment is not None:
        path = find_experiment(experiment)
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise CxrError(f"{path}: not valid YAML: {error}") from error
        if not isinstance(mapping, dict):
            raise CxrError(f"{path}: expected a mapping of config keys")
        mapping.setdefault("experiment", path.stem)
        _apply(config, mapping, "", str(path))
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise CxrError(f"override {override!r} must be key=value, e.g. optim.lr=1e-3")
        set_value(config, key.strip(), text.strip(), from_text=True)
    return config


def config_from_dict(mapping: dict, source: str = "config") -> Config:
    """Rebuild a :class:`Config` from :func:`to_dict`'s output (``RUN/config.yaml``, a checkpoint's block): the
    boundary where the raw tree parsed from YAML is checked key by key and becomes typed."""
    config = Config()
    _apply(config, mapping, "", source)
    return config


def to_dict(config: Config) -> dict:
    """Plain nested dict (lists, not tuples) for YAML and checkpoints."""

    def plain(value):
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return list(value) if isinstance(value, tuple | list) else value

    return plain(dataclasses.asdict(config))


def save_config(config: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def set_value(config: Config, key: str, value, from_text: bool = False, source: str = "override") -> None:
    """Set a dotted ``key``, type-checked; ``from_text`` parses a command-line string as YAML first."""
    *parents, name = key.split(".")
    node = config
    for depth, part in enumerate(parents):
        node = _child(node, part, ".".join(parents[: depth + 1]), source)
        if not dataclasses.is_dataclass(node):
            raise CxrError(f"{source}: {'.'.join(parents[: depth + 1])} is a value, not a section (in {key!r})")
    if name not in _hints(node):
        _unknown(node, key, source)
    hint = _hints(node)[name]
    if dataclasses.is_dataclass(getattr(node, name)):
        raise CxrError(f"{source}: {key!r} is a section; set one of its keys, e.g. {key}.<key>=value")
    if from_text and hint is not str:
        try:
            value = yaml.safe_load(value) if value != "" else None
        except yaml.YAMLError as error:
            raise CxrError(f"{source}: cannot parse {key}={value!r}: {error}") from error
    setattr(node, name, _coerce(value, hint, key, source))


def _apply(node, mapping: dict, prefix: str, source: str) -> None:
    for name, value in mapping.items():
        key = f"{prefix}{name}"
        if name not in _hints(node):
            _unknown(node, key, source)
        if dataclasses.is_dataclass(getattr(node, name)):
            if not isinstance(value, dict):
                raise CxrError(f"{source}: {key!r} is a section and needs a mapping, got {value!r}")
            _apply(getattr(node, name), value, f"{key}.", source)
        else:
            setattr(node, name, _coerce(value, _hints(node)[name], key, source))


def _child(node, part: str, key: str, source: str):
    if part not in _hints(node):
        _unknown(node, key, source)
    return getattr(node, part)


def _hints(node) -> dict:
    return typing.get_type_hints(type(node))


def _unknown(node, key: str, source: str) -> typing.NoReturn:
    known = ", ".join(f.name for f in dataclasses.fields(node))
    raise CxrError(f"{source}: unknown config key {key!r} (known here: {known})")


def _coerce(value, hint, key: str, source: str):
    """``value`` checked against the annotation ``hint``; YAML 1.1 reads ``1e-4`` as a string, so floats parse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    where = f"{source}: {key}"
    if origin in (typing.Union, types.UnionType):  # X | None
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key, source)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(value)
        except ValueError:
            raise CxrError(f"{where} must be one of {', '.join(m.value for m in hint)}; got {value!r}") from None
    if origin is Literal:
        if value not in args:
            raise CxrError(f"{where} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise CxrError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, args[0], key, source) for v in value]
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise CxrError(f"{where} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(v, a, key, source) for v, a in zip(value, args, strict=True))
    if hint is bool:
        if not isinstance(value, bool):
            raise CxrError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CxrError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise CxrError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CxrError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise CxrError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {hint!r} for {key}")
