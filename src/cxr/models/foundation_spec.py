"""The types a foundation backbone family (:mod:`cxr.models.rad_dino`, :mod:`cxr.models.biomedclip`) hands to the
registry (:mod:`cxr.models.foundation`) and the factory: kept apart so the families import neither."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cxr.errors import CxrError

CamReshape = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FoundationBackbone:
    """A built foundation encoder: ``model`` maps normalised ``(B, 3, S, S)`` to pooled features ``(B, num_features)``.

    ``config`` is what the artifact records (``ArchitectureSpec.backbone_config``) so a checkpoint rebuilds the same
    network with nothing downloaded; ``img_size`` is the input size the weights' shapes fix (None: any size)."""

    model: nn.Module
    num_features: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    img_size: int | None
    feature_layer: str  # Grad-CAM target, a module name inside ``model``
    cam_reshape: CamReshape  # the target's tokens → (B, C, h, w)
    config: dict


Builder = Callable[[str, int, "dict | None"], FoundationBackbone]
"""``build(pretrained, input_size, recorded_config)``: ``pretrained`` is ``"none"``, ``"imagenet"`` (the published
weights, fetched on first use) or a folder/file; ``recorded_config`` (from an artifact) replaces the defaults."""


@dataclass(frozen=True)
class FoundationEntry:
    """One ``model.name`` of the registry and its documentation (the README's model table is written from these)."""

    name: str
    build: Builder
    source: str  # where the weights come from
    licence: str
    input_size: int  # the size it was pretrained at
    normalisation: str
    pooling: str
    published: str  # published figures, marked as such
    paper: str


def read_json(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a :class:`CxrError` naming the file when it is missing or not JSON. A publisher's
    config file (a third-party layout): its reader checks the keys it uses."""
    if not path.is_file():
        raise CxrError(f"{path}: missing ({what})")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CxrError(f"{path}: not a JSON file ({what}): {error}") from error
    if not isinstance(value, dict):
        raise CxrError(f"{path}: expected a JSON object ({what})")
    return value


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str, name: str) -> None:
    """Load ``state`` into ``module``; any missing or unexpected key, or a shape mismatch, is a :class:`CxrError`
    naming the file and the keys (a silent partial load would leave random weights in a "pretrained" model)."""
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CxrError(f"{source}: weights do not fit {name}: {str(error)[:600]}") from error
    if missing or unexpected:
        raise CxrError(
            f"{source}: weights do not fit {name}: missing {len(missing)} keys {list(missing)[:4]}, unexpected "
            f"{len(unexpected)} keys {list(unexpected)[:4]}"
        )
