"""Chest X-ray ViTs whose checkpoints are not timm's, on timm's classes: EVA-X and the medical MAE ViTs.

- **EVA-X** (Yao et al. 2024, "EVA-X: A foundation model for general chest X-ray analysis with self-supervised
  learning", arXiv:2405.05237; https://github.com/hustvl/EVA-X, MIT): EVA-02 ViTs (rotary position embeddings,
  SwiGLU) pretrained by masked image modelling on 520k radiographs. The authors' backbone code (``eva_x.py``) is
  timm's :class:`~timm.models.eva.Eva`; their checkpoints keep EVA-02's own names (fused ``qkv`` + ``q_bias``/``v_bias``
  and xformers' packed ``mlp.w12`` for ViT-S; ``q_proj``/``k_proj``/``v_proj`` and a normalised SwiGLU
  ``mlp.w1``/``w2``/``ffn_ln``/``w3`` for ViT-B), mapped here onto timm's.
- **Medical MAE** (Xiao et al., "Delving into Masked Autoencoders for Multi-Label Thorax Disease Classification",
  WACV 2023, arXiv:2210.12843; https://github.com/lambert-x/medical_mae, Apache-2.0): MAE ViTs pretrained on 0.3M
  (ViT-S) and 0.5M (ViT-B) radiographs; the encoder keeps timm's names, the decoder and mask token are pretraining
  only.

Each entry says how the authors fine-tuned (input size, normalisation, pooling) and where the weights are; loading
is strict: every checkpoint key is used, or dropped by a named rule (pretraining-only parts), and every model weight
comes from the checkpoint unless the entry names it as started fresh, as the authors' fine-tuning starts it.
``model.pretrained``: ``imagenet`` (the default; as for the foundation backbones it means the model's published
weights, fetched on first use), ``none``, or the publisher's file.
"""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models import weights
from cxr.models.timm_backbones import TimmBackbone, cam_target
from cxr.models.vit_registry import XRAY_VITS, KeyMapping, XrayVit

log = logging.getLogger(__name__)
PATCH = 16  # every registered model has 16 px patches
TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")  # torch.save's zip; the legacy pickle (its magic number)
PUBLISHED = "imagenet"
"""``model.pretrained`` value that fetches the publisher's weights on first use: every preset's default, which for
these models (as for :mod:`cxr.models.foundation`'s) means the model's published weights, not ImageNet's."""

__all__ = ["PUBLISHED", "XRAY_VITS", "build_backbone", "is_registered", "load_published", "map_keys"]


def is_registered(name: str) -> bool:
    return name in XRAY_VITS


def build_backbone(
    name: str, head: str, input_size: int, pretrained: str, fine_cam_below: int, drop_path: float = 0.0
) -> TimmBackbone:
    """The timm model of ``name`` for ``(B, 3, input_size, input_size)`` inputs without its classifier, its
    publisher's normalisation, and its Grad-CAM target (the last block's ``norm1`` over the patch tokens)."""
    entry = XRAY_VITS[name]
    if head != "gap":
        raise CxrError(f"{name} is a transformer pooled as its authors did ({entry.pooling}): use model.head=gap")
    if input_size % PATCH:
        raise CxrError(f"{name} takes inputs in multiples of its {PATCH} px patches, got {input_size} px")
    model = _timm_model(entry, input_size, drop_path)
    if pretrained == PUBLISHED:
        load_published(model, _fetch(name, entry), name)
    elif pretrained != "none":
        load_published(model, Path(pretrained), name)
    layer, reshape = cam_target(model, input_size, fine_cam_below)
    return TimmBackbone(model, entry.mean, entry.std, input_size, layer, reshape)


def _timm_model(entry: XrayVit, input_size: int, drop_path: float) -> nn.Module:
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer

    classes = {"eva": Eva, "vit": VisionTransformer}
    return classes[entry.timm_class](img_size=input_size, num_classes=0, drop_path_rate=drop_path, **entry.kwargs)


def _fetch(name: str, entry: XrayVit) -> Path:
    """The publisher's file, downloaded on first use (Hugging Face cache, or torch's hub folder for other hosts)."""
    command = f"`cxr train … model.name={name}` (model.pretrained=imagenet: the published weights)"
    source = entry.weights
    if source.hf_repo:
        return weights.hf_file(source.hf_repo, source.filename, source.revision, command=command)
    folder = Path(torch.hub.get_dir()) / "checkpoints" / "cxr" / name  # one folder each: the URL names no file
    path = weights.url_file(source.url, folder, command=command)
    with open(path, "rb") as handle:
        if handle.read(4) not in TORCH_FILE_STARTS:  # a host's HTML page (quota, consent) is no checkpoint
            path.unlink()
            raise CxrError(
                f"{source.url} did not give a PyTorch checkpoint (the host may ask for a confirmation in a browser); "
                f"download {source.filename} from {source.page} and pass model.pretrained=<path to it>"
            )
    return path


# --- the publisher's file ------------------------------------------------------------------------------------------


def read_checkpoint(path: Path, wrappers: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The state dict inside a publisher's training checkpoint (``{"model": ..., "optimizer": ..., "args": ...}``):
    read with ``weights_only`` (no code runs), allowing only the argparse ``Namespace`` their scripts save."""
    if not path.is_file():
        raise CxrError(f"pretrained weights not found: {path} (expected 'imagenet', 'none' or a file)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(
            f"{path}: not a checkpoint torch reads safely ({type(error).__name__}: {str(error)[:300]})"
        ) from error
    state = payload
    if isinstance(payload, dict):
        state = next((payload[key] for key in wrappers if isinstance(payload.get(key), dict)), payload)
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CxrError(f"{path}: expected a state dict (name -> tensor), alone or under one of {list(wrappers)}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def map_keys(state: dict[str, torch.Tensor], mapping: KeyMapping) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(timm-named tensors, {timm name: publisher's name}); keys matching a ``dropped`` rule are left out."""
    mapped, origin = {}, {}
    for key, value in state.items():
        if any(re.search(pattern, key) for pattern, _ in mapping.dropped):
            continue
        new = key
        for pattern, replacement in mapping.renames:
            new = re.sub(pattern, replacement, new)
        if new in mapped:
            raise CxrError(f"checkpoint keys {origin[new]!r} and {key!r} both map to {new!r}")
        mapped[new], origin[new] = value, key
    return mapped, origin


def load_published(model: nn.Module, path: Path, name: str) -> None:
    """Load the publisher's checkpoint at ``path`` into ``model`` (built by :func:`build_backbone`), strictly."""
    entry = XRAY_VITS[name]
    state = read_checkpoint(path, entry.wrappers)
    mapped, origin = map_keys(state, entry.keys)
    if "pos_embed" in mapped:
        mapped["pos_embed"] = _resample_positions(mapped["pos_embed"], model, entry)
    own = model.state_dict()
    missing = [k for k in own if k not in mapped and k not in entry.keys.fresh]
    unexpected = [origin[k] for k in mapped if k not in own]
    misshapen = [f"{origin[k]} {tuple(v.shape)} for {k} {tuple(own[k].shape)}" for k, v in mapped.items()
                 if k in own and v.shape != own[k].shape]  # fmt: skip
    if missing or unexpected or misshapen:
        raise CxrError(
            f"{path}: not a {entry.family} {name} checkpoint: {len(missing)} weights missing {missing[:4]}, "
            f"{len(unexpected)} unexpected {unexpected[:4]}, {len(misshapen)} of another shape {misshapen[:2]}"
        )
    model.load_state_dict(mapped, strict=False)
    dropped = len(state) - len(mapped)
    fresh = [k for k in entry.keys.fresh if k not in mapped]
    log.info("%s: %d tensors loaded into %s, %d pretraining-only dropped, started fresh: %s",
             path, len(mapped), name, dropped, fresh or "none")  # fmt: skip


def _resample_positions(pos_embed: torch.Tensor, model: nn.Module, entry: XrayVit) -> torch.Tensor:
    """The pretraining grid's absolute position embeddings resampled (bicubic) to this input size's grid, as the
    authors' own fine-tuning code does for other sizes (MAE's ``interpolate_pos_embed``, EVA-X's filter)."""
    from timm.layers import resample_abs_pos_embed

    grid = tuple(model.patch_embed.grid_size)
    if pos_embed.shape[1] == model.pos_embed.shape[1]:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, new_size=grid, num_prefix_tokens=1, interpolation="bicubic", antialias=entry.antialias, verbose=False
    )
