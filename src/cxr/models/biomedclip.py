"""BiomedCLIP (Zhang et al., "BiomedCLIP: a multimodal biomedical foundation model pretrained from fifteen million
scientific image-text pairs", arXiv:2303.00915; NEJM AI 2025): a CLIP with a ViT-B/16 image tower and a PubMedBERT
text tower (256 tokens) trained on PMC-15M, published by Microsoft as
``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` (MIT licence) and run with ``open_clip``'s own modules.

The hub folder holds ``open_clip_config.json`` (``model_cfg``: ``embed_dim`` 512, ``vision_cfg`` = timm's
``vit_base_patch16_224`` with its CLS pooling and a linear projection, ``text_cfg`` = a Hugging Face BERT named by
``hf_model_name`` with an MLP projection; ``preprocess_cfg``: OpenAI CLIP's mean/std), ``open_clip_pytorch_model.bin``
(``visual.*``, ``text.*``, ``logit_scale``) and the tokenizer files. The text model's ``config.json`` lives in
another hub repository (``hf_model_name``): it is fetched on first use, or read from a local folder when
``hf_model_name`` names one.

Image tower (``model.name=biomedclip``): ``open_clip``'s ``TimmModel`` built from ``vision_cfg`` at the run's input
size (timm's ``set_input_size`` resamples the 14×14 position grid when it is not 224 px), its ``visual.*``
weights loaded with strict key checks; the features are the L2-normalised 512-d image embedding, CLIP's joint space,
so a linear head on them is the same kind of classifier zero-shot prompts give (:mod:`cxr.models.clip_text`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError
from cxr.models.foundation_spec import FoundationBackbone, FoundationEntry, load_strict, read_json
from cxr.models.timm_backbones import TokensToMap

REPO_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_pytorch_model.bin"
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]
NATIVE_SIZE = 224
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# The published image tower (open_clip_config.json's model_cfg.vision_cfg), for model.pretrained=none.
DEFAULT_VISION = {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
                  "timm_proj": "linear", "image_size": NATIVE_SIZE}  # fmt: skip
DEFAULT_CONFIG = {"model_cfg": {"embed_dim": 512, "vision_cfg": DEFAULT_VISION},
                  "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}}  # fmt: skip


class ClipImageEncoder(nn.Module):
    """open_clip's image tower → the unit-norm image embedding (``CLIP.encode_image(x, normalize=True)``)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(x), dim=-1)


def clip_folder(pretrained: str) -> Path:
    """The folder with ``open_clip_config.json`` and the weights: the hub's (fetched on first use) for
    ``imagenet``, else the given folder or the folder of the given weights file."""
    if pretrained == "imagenet":
        from cxr.models import weights

        patterns = [CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES]
        return weights.hf_snapshot(REPO_ID, patterns, command="model.name=biomedclip model.pretrained=imagenet")
    path = Path(pretrained)
    if path.is_dir() or path.is_file():
        return path if path.is_dir() else path.parent
    raise CxrError(f"BiomedCLIP weights not found: {path} (a folder with {CONFIG_FILE} and {WEIGHTS_FILE})")


def read_clip_config(folder: Path) -> dict:
    """``open_clip_config.json`` of a folder, with its ``model_cfg`` checked: a third-party JSON tree, kept as the
    publisher wrote it so the same network is rebuilt."""
    config = read_json(folder / CONFIG_FILE, "open_clip's model config")
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg"} <= model_cfg.keys():
        raise CxrError(f"{folder / CONFIG_FILE}: model_cfg with embed_dim and vision_cfg expected")
    return config


def read_clip_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of an ``open_clip_pytorch_model.bin`` (or ``.safetensors``)."""
    if not path.is_file():
        raise CxrError(f"{path}: missing (BiomedCLIP's weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CxrError(f"{path}: not a weights file ({type(error).__name__}: {error})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CxrError(f"{path}: expected a state dict (name -> tensor)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def weights_path(folder: Path, pretrained: str) -> Path:
    given = Path(pretrained)
    if pretrained != "imagenet" and given.is_file():
        return given
    for name in (WEIGHTS_FILE, "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    return folder / WEIGHTS_FILE


def tower_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of one tower (``visual.`` or ``text.``) without the prefix."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def build_image_tower(pretrained: str, input_size: int, recorded: dict | None) -> FoundationBackbone:
    """BiomedCLIP's image tower at ``input_size`` px: random (``none``, or an artifact's ``recorded`` config) or with
    the ``visual.*`` weights of the hub or a folder/file (strict). ``recorded``: open_clip's config as the artifact
    recorded it, a third-party JSON tree, kept as the publisher wrote it so the same network is rebuilt."""
    from open_clip.model import _build_vision_tower

    state = None
    if recorded is not None:
        config = copy.deepcopy(recorded["open_clip"])
    elif pretrained == "none":
        config = copy.deepcopy(DEFAULT_CONFIG)
    else:
        folder = clip_folder(pretrained)
        config = read_clip_config(folder)
        source = weights_path(folder, pretrained)
        state = tower_state(read_clip_weights(source), "visual.")
    model_cfg = config["model_cfg"]
    vision = dict(model_cfg["vision_cfg"], timm_model_pretrained=False)
    if not vision.get("timm_model_name"):
        raise CxrError("cxr runs open_clip image towers built on timm (vision_cfg.timm_model_name); this one is not")
    try:
        visual = _build_vision_tower(int(model_cfg["embed_dim"]), vision)
    except Exception as error:  # e.g. an input size the patch size does not divide
        raise CxrError(f"open_clip cannot build BiomedCLIP's image tower at {input_size} px: {error}") from error
    if state is not None:
        load_strict(visual, state, str(source), "BiomedCLIP's image tower")
    _set_input_size(visual.trunk, input_size)
    preprocess = config.get("preprocess_cfg") or {}
    mean = tuple(float(v) for v in preprocess.get("mean", OPENAI_MEAN))
    std = tuple(float(v) for v in preprocess.get("std", OPENAI_STD))
    trunk = visual.trunk
    recorded_config = {"open_clip": {"model_cfg": {"embed_dim": model_cfg["embed_dim"],
                                                   "vision_cfg": dict(model_cfg["vision_cfg"])},
                                     "preprocess_cfg": {"mean": list(mean), "std": list(std)}}}  # fmt: skip
    return FoundationBackbone(
        model=ClipImageEncoder(visual),
        num_features=int(model_cfg["embed_dim"]),
        mean=mean,
        std=std,
        img_size=input_size,
        feature_layer=f"visual.trunk.blocks.{len(trunk.blocks) - 1}.norm1",
        cam_reshape=TokensToMap(trunk.num_prefix_tokens, tuple(trunk.patch_embed.grid_size)),
        config=recorded_config,
    )


def _set_input_size(trunk: nn.Module, input_size: int) -> None:
    """Build the timm trunk for ``input_size`` px (open_clip's ``TimmModel`` keeps timm's default size): timm's
    ``set_input_size`` resamples the absolute position embeddings to the new token grid (bicubic)."""
    if tuple(trunk.patch_embed.img_size) == (input_size, input_size):
        return
    patch = trunk.patch_embed.patch_size[0]
    if input_size % patch:
        raise CxrError(f"BiomedCLIP's image tower takes multiples of its {patch} px patches, got {input_size} px")
    trunk.set_input_size(img_size=input_size)


ENTRIES = (
    FoundationEntry(
        name="biomedclip",
        build=build_image_tower,
        source=f"Hugging Face hub {REPO_ID} (open_clip)",
        licence="MIT",
        input_size=NATIVE_SIZE,
        normalisation="open_clip_config.json preprocess_cfg: OpenAI CLIP mean/std, pixels / 255",
        pooling="ViT-B/16 CLS token → linear projection → L2-normalised 512-d embedding",
        published="published (the authors' figures, not this tool's): zero-shot, linear-probe and retrieval results "
        "on biomedical benchmarks in arXiv:2303.00915; none quoted or reproduced here",
        paper="Zhang et al., arXiv:2303.00915 (NEJM AI 2025)",
    ),
)
