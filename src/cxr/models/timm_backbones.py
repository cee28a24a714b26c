"""Any timm architecture as a cxr backbone: construction, weights (local cache or a file) and Grad-CAM targets.

The four torchvision names of :mod:`cxr.models.factory` keep their own implementation; every other ``model.name``
is looked up in timm (Wightman, *PyTorch Image Models*, https://github.com/huggingface/pytorch-image-models). A timm
model is built with ``num_classes=0`` so cxr's heads apply to its features:

- head ``gap``: timm's own pooling (``global_pool``, with what the family puts after it, e.g. ConvNeXt's norm),
  then cxr's dropout + linear layer;
- head ``original``: the unpooled ``(B, C, h, w)`` map, flattened, so CNNs only.

Its normalisation is the one its pretrained weights were trained with (``pretrained_cfg`` mean/std: 0.5 for the
original ViTs, ImageNet's for most CNNs); models with a fixed input size (ViT, Swin, EVA …) are built for the
input size of the run. Both are recorded in the artifact's ``architecture`` so a checkpoint rebuilds the same net.
``pretrained=imagenet`` downloads timm's weights on first use into Hugging Face's cache (older weights: torch hub's),
through :mod:`cxr.models.weights` (offline switches, checksums, resume); ``pretrained=<file>`` reads a local file.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.config import Head
from cxr.errors import CxrError
from cxr.models import weights

CamReshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TimmBackbone:
    """A timm feature extractor and what cxr needs to know about it."""

    model: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int | None  # the size it was built for (fixed-size models), else None
    feature_layer: str  # Grad-CAM target, a module name inside ``model``
    cam_reshape: CamReshape | None  # turns the target's output into (B, C, h, w); None when it already is


def is_timm_name(name: str) -> bool:
    """Whether timm knows ``name`` (an architecture, optionally with a ``.tag`` of its pretrained weights)."""
    import timm

    return timm.is_model(name)


def unknown_model_error(name: str, known: tuple[str, ...]) -> CxrError:
    """An error listing the closest names among cxr's torchvision names and timm's architectures."""
    import timm

    candidates = list(known) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    return CxrError(
        f"unknown model {name!r}{hint}. model.name takes {', '.join(known)} (cxr's names) or any timm architecture "
        "(python -c \"import timm; print(timm.list_models('convnext*'))\" lists them)"
    )


def _fixed_input_size(name: str) -> bool:
    """ViTs, Swin and their kin bake the token grid into the weights' shapes: they are built for one size."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False


def build_timm_backbone(
    name: str,
    head: str,
    input_size: int,
    pretrained: str,
    fine_cam_below: int,
    drop_path: float = 0.0,
) -> TimmBackbone:
    """Build ``name`` for ``(B, 3, input_size, input_size)`` inputs; ``pretrained``: ``"none"``, ``"imagenet"`` or
    a weights file (``.safetensors``, ``.pth``, ``.bin``); ``drop_path``: timm's stochastic depth rate."""
    import timm

    kwargs: dict = {"num_classes": 0, "in_chans": 3}
    if drop_path > 0:
        kwargs["drop_path_rate"] = drop_path
    img_size = input_size if _fixed_input_size(name) else None
    if img_size is not None:
        kwargs["img_size"] = img_size
    if head == Head.ORIGINAL:
        kwargs["global_pool"] = ""
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except Exception as error:  # e.g. a window size that does not divide the token grid at this input size
        raise CxrError(f"timm cannot build {name} at {input_size} px ({type(error).__name__}: {error})") from error
    if pretrained == "imagenet":
        load_weights(model, pretrained_file(model, name), name)
    elif pretrained != "none":
        load_weights(model, Path(pretrained), name)
    cfg = model.pretrained_cfg
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    if head == Head.ORIGINAL:
        _check_seed_map(model, name, input_size)
    layer, reshape = cam_target(model, input_size, fine_cam_below)
    return TimmBackbone(model, mean, std, img_size, layer, reshape)


def _check_seed_map(model: nn.Module, name: str, input_size: int) -> None:
    """The original head flattens a (C, h, w) map: transformers' tokens (or Swin's NHWC map) are not one."""
    if _is_vit(model) or getattr(model, "output_fmt", "NCHW") != "NCHW":
        raise CxrError(
            f"head 'original' flattens a CNN's (C, h, w) feature map; {name} is a transformer: use model.head=gap"
        )


# --- weights -------------------------------------------------------------------------------------------------------


def pretrained_file(model: nn.Module, name: str) -> Path:
    """The file of ``name``'s default pretrained weights, downloaded on first use (:mod:`cxr.models.weights`): its
    Hugging Face repository (``timm/…``; ``model.safetensors``, else ``pytorch_model.bin``, as timm tries them) or,
    for older weights, its URL into torch hub's cache. Offline and not cached: one line saying what to copy where."""
    cfg = model.pretrained_cfg
    command = f"model.pretrained=imagenet for {name}"
    alternative = "model.pretrained=<path to the {} file>; model.pretrained=none trains from random initialisation"
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        repo_id, _, revision = hub_id.partition("@")
        filenames = (
            [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        )
        failures: list[CxrError] = []
        for filename in filenames:
            try:
                return weights.hf_file(repo_id, filename, revision or None, command=command)
            except CxrError as error:  # not published under this name, or not cached while offline: try the next
                failures.append(error)
        first = failures[0]
        raise type(first)(f"{first} ({alternative.format(filenames[0])})") from first
    url = cfg.get("url")
    if url:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        try:
            return weights.url_file(url, folder, command=command)
        except weights.WeightsUnavailableError as error:
            raise weights.WeightsUnavailableError(f"{error} ({alternative.format(url.rsplit('/', 1)[-1])})") from error
    raise CxrError(f"timm has no pretrained weights for {name}; pass model.pretrained=<file> or none")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a PyTorch file (``state_dict``/``model`` wrappers and DataParallel's
    ``module.`` prefix removed)."""
    if not path.is_file():
        raise CxrError(f"pretrained weights not found: {path} (expected 'none', 'imagenet' or a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            payload = load_file(os.fspath(path), device="cpu")
        else:
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(f"{path}: not a weights file ({type(error).__name__}: {error})") from error
    if isinstance(payload, dict):
        for key in ("state_dict", "model"):
            if isinstance(payload.get(key), dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(torch.is_tensor(v) for v in payload.values()):
        raise CxrError(f"{path}: expected a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in payload.items()}


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Module names of the ImageNet classifier (``pretrained_cfg['classifier']``): their weights are dropped."""
    names = model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_weights(model: nn.Module, path: Path, name: str) -> None:
    """Load a timm-layout state dict into ``model`` without its classifier; anything else missing or extra is a
    :class:`CxrError` naming the keys (timm's own loader turns strictness off when it drops a classifier)."""
    state = read_state_dict(path)
    filter_fn = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:  # original-format checkpoints, position embeddings resampled to this token grid
        try:
            state = filter_fn(state, model)
        except Exception as error:
            raise CxrError(f"{path}: weights do not fit {name} ({type(error).__name__}: {error})") from error
    head = _classifier_prefixes(model)
    state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatch: weights of another architecture or size
        raise CxrError(f"{path}: weights do not fit {name}: {str(error)[:600]}") from error
    if missing or unexpected:
        raise CxrError(
            f"{path}: weights do not fit {name}: missing {len(missing)} keys {missing[:4]}, unexpected "
            f"{len(unexpected)} keys {unexpected[:4]}"
        )


# --- Grad-CAM targets ----------------------------------------------------------------------------------------------


def _is_vit(model: nn.Module) -> bool:
    """A plain token transformer (ViT, DeiT, EVA, BEiT …): blocks over a fixed patch grid with prefix tokens."""
    return hasattr(model, "num_prefix_tokens") and hasattr(model, "blocks") and hasattr(model, "patch_embed")


class TokensToMap(nn.Module):
    """(B, prefix + h*w, C) tokens → (B, C, h, w), prefix (class, register) tokens dropped: the reshape the
    ``grad-cam`` package documents for ViTs."""

    def __init__(self, prefix: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix, self.grid = int(prefix), (int(grid[0]), int(grid[1]))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, self.prefix :, :]
        return patches.reshape(tokens.shape[0], *self.grid, tokens.shape[-1]).permute(0, 3, 1, 2)


class NhwcToNchw(nn.Module):
    """Swin's (B, h, w, C) stage outputs → (B, C, h, w)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


def cam_target(model: nn.Module, input_size: int, fine_cam_below: int) -> tuple[str, CamReshape | None]:
    """Grad-CAM target of a timm model and the reshape of its output to (B, C, h, w).

    ViT family: the last block's ``norm1`` (the tokens the last attention reads). Hierarchical models (CNNs, Swin):
    the last stage from ``fine_cam_below`` px, the stride-16 stage below it, as for the torchvision backbones.
    """
    if _is_vit(model):
        grid = tuple(model.patch_embed.grid_size)
        last = len(model.blocks) - 1
        layer = f"blocks.{last}.norm1" if hasattr(model.blocks[last], "norm1") else "norm"
        return layer, TokensToMap(model.num_prefix_tokens, grid)
    info = list(getattr(model, "feature_info", []) or [])
    if not info:
        raise CxrError(f"{type(model).__name__}: timm lists no feature stages, so cxr has no Grad-CAM target for it")
    stage = info[-1]
    if input_size < fine_cam_below:
        fine = [entry for entry in info if entry.get("reduction") == 16]
        stage = fine[-1] if fine else stage
    reshape = NhwcToNchw() if getattr(model, "output_fmt", "NCHW") == "NHWC" else None
    return stage["module"], reshape


def set_grad_checkpointing(model: nn.Module) -> None:
    """timm's activation checkpointing (blocks recomputed in the backward pass)."""
    model.set_grad_checkpointing(True)
