"""RAD-DINO (Pérez-García et al., "Exploring scalable medical image encoders beyond text supervision", Nature Machine
Intelligence 2025, arXiv:2401.10815): a DINOv2 ViT-B/14 trained self-supervised on chest radiographs, published by
Microsoft as ``microsoft/rad-dino`` on the Hugging Face hub (licence MSRLA, research use) and run here with
``transformers``' own ``Dinov2Model``.

The hub folder holds ``config.json`` (the ``Dinov2Config``), ``model.safetensors`` (``Dinov2Model`` keys) and
``preprocessor_config.json`` (a ``BitImageProcessor``: resize the shorter side to 518 px, center crop 518, scale by
1/255, normalise with one mean and std repeated over the three channels). cxr's store already gives square grey
images, so resize + crop is its own ``Preprocessing``; the mean/std are read from that file and applied inside the
model, and the whole processor block is recorded in the artifact. Other input sizes than 518 px work the way
``transformers`` runs them: ``Dinov2Embeddings.interpolate_pos_encoding`` resamples the 37×37 position grid
bicubically to the input's patch grid on every forward pass.

Pooling: ``rad-dino`` returns the CLS token of the last layer (after the final layer norm, ``pooler_output``);
``rad-dino-cls-mean`` concatenates it with the mean of the patch tokens (DINOv2's linear-evaluation features).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import torch
from torch import nn

from cxr.errors import CxrError
from cxr.models.foundation_spec import FoundationBackbone, FoundationEntry, read_json
from cxr.models.timm_backbones import TokensToMap

REPO_ID = "microsoft/rad-dino"
FILES = ["config.json", "model.safetensors", "preprocessor_config.json"]
NATIVE_SIZE = 518
# The published architecture (a DINOv2 ViT-B/14 at 518 px) and processor, used for model.pretrained=none; with
# weights, the folder's own config.json and preprocessor_config.json are read instead. These values are the hub
# files' as written here from the model card; they were not re-read from the hub on this offline build machine.
DEFAULT_CONFIG = {
    "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 14,
    "image_size": NATIVE_SIZE, "mlp_ratio": 4, "layerscale_value": 1.0, "layer_norm_eps": 1e-6,
}  # fmt: skip
DEFAULT_PROCESSOR = {"image_mean": [0.5307] * 3, "image_std": [0.2583] * 3, "size": {"shortest_edge": NATIVE_SIZE},
                     "crop_size": {"height": NATIVE_SIZE, "width": NATIVE_SIZE}, "do_center_crop": True,
                     "resample": 3, "rescale_factor": 1 / 255}  # fmt: skip
POOLINGS = ("cls", "cls-mean")


class RadDinoEncoder(nn.Module):
    """``Dinov2Model`` → pooled features: the CLS token, or CLS ⊕ mean patch token."""

    def __init__(self, dino: nn.Module, pooling: str):
        super().__init__()
        if pooling not in POOLINGS:
            raise CxrError(f"unknown RAD-DINO pooling {pooling!r} (known: {', '.join(POOLINGS)})")
        self.dino, self.pooling = dino, pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.dino(pixel_values=x).last_hidden_state  # after the final layer norm
        cls = tokens[:, 0]
        if self.pooling == "cls":
            return cls
        return torch.cat([cls, tokens[:, 1:].mean(dim=1)], dim=-1)


def weights_folder(pretrained: str) -> Path:
    """The folder holding ``config.json``, ``model.safetensors`` and ``preprocessor_config.json``: the hub's (fetched
    on first use) for ``imagenet``, else the given folder, or the folder of the given weights file."""
    if pretrained == "imagenet":
        from cxr.models import weights

        return weights.hf_snapshot(REPO_ID, FILES, command="model.name=rad-dino model.pretrained=imagenet")
    path = Path(pretrained)
    if path.is_dir():
        return path
    if path.is_file():
        return path.parent
    raise CxrError(f"RAD-DINO weights not found: {path} (a folder with {', '.join(FILES)}, or its model.safetensors)")


def load_pretrained(folder: Path, given: Path):
    """``transformers``' own loader (it renames the hub file's older key names, e.g. ``attention.attention.query``),
    made strict: a missing, unexpected or mis-shaped key is a :class:`CxrError` naming the file and the keys."""
    from transformers import Dinov2Model

    if given.is_file() and given.name != "model.safetensors":
        raise CxrError(f"{given}: RAD-DINO's weights are read as the hub lays them out: model.safetensors beside "
                       "config.json (pass the folder)")  # fmt: skip
    if not (folder / "model.safetensors").is_file():
        raise CxrError(f"{folder / 'model.safetensors'}: missing (RAD-DINO's weights)")
    try:
        dino, info = Dinov2Model.from_pretrained(folder, output_loading_info=True, local_files_only=True)
    except (OSError, ValueError, RuntimeError) as error:
        raise CxrError(f"{folder}: weights do not fit RAD-DINO (Dinov2Model): {str(error)[:600]}") from error
    bad = {key: sorted(info.get(key) or ()) for key in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        listed = ", ".join(f"{key.replace('_', ' ')} {len(keys)} {keys[:4]}" for key, keys in bad.items() if keys)
        raise CxrError(f"{folder / 'model.safetensors'}: weights do not fit RAD-DINO (Dinov2Model): {listed}")
    return dino.train()  # from_pretrained returns eval mode; a built model starts in training mode like any other


def _json_safe(config) -> dict:
    """The config as plain JSON types, without ``_name_or_path`` (the folder it came from: no paths in artifacts)."""
    values = json.loads(config.to_json_string(use_diff=False))
    values.pop("_name_or_path", None)
    return values


def build(pooling: str, pretrained: str, input_size: int, recorded: dict | None) -> FoundationBackbone:
    """A RAD-DINO encoder for ``input_size`` px: random (``none``, or the twin of an artifact's ``recorded``
    config) or with the weights of the hub or a folder/file, loaded with strict key checks. ``recorded``:
    transformers' ``Dinov2Config`` and image processor as the artifact recorded them, a third-party JSON tree, kept
    as the publisher wrote it so the same network is rebuilt."""
    from transformers import Dinov2Config, Dinov2Model

    dino = None
    if recorded is not None:
        config_dict, processor = recorded["dinov2"], recorded["preprocessor"]
    elif pretrained == "none":
        config_dict, processor = dict(DEFAULT_CONFIG), dict(DEFAULT_PROCESSOR)
    else:
        folder = weights_folder(pretrained)
        config_dict = read_json(folder / "config.json", "RAD-DINO's Dinov2Config")
        processor = read_json(folder / "preprocessor_config.json", "RAD-DINO's image processor")
        dino = load_pretrained(folder, Path(pretrained))
    if dino is None:
        dino = Dinov2Model(Dinov2Config(**{k: v for k, v in config_dict.items() if k != "transformers_version"}))
    config = dino.config
    mean, std = _statistics(processor)
    grid = input_size // config.patch_size
    if grid < 1:
        raise CxrError(f"RAD-DINO needs inputs of at least {config.patch_size} px, got {input_size}")
    last = config.num_hidden_layers - 1
    features = config.hidden_size * (1 if pooling == "cls" else 2)
    recorded_config = {"dinov2": _json_safe(config), "preprocessor": processor, "pooling": pooling}
    return FoundationBackbone(
        model=RadDinoEncoder(dino, pooling),
        num_features=features,
        mean=mean,
        std=std,
        img_size=None,  # position embeddings are interpolated to any patch grid
        feature_layer=f"dino.encoder.layer.{last}.norm1",
        cam_reshape=TokensToMap(1, (grid, grid)),
        config=recorded_config,
    )


def _statistics(processor: dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The processor's mean/std (three channels), checked: a missing or odd entry is an error naming it."""
    values = []
    for key in ("image_mean", "image_std"):
        value = processor.get(key)
        if not isinstance(value, list) or len(value) != 3 or not all(isinstance(v, int | float) for v in value):
            raise CxrError(f"RAD-DINO preprocessor_config.json: {key} must be three numbers, got {value!r}")
        values.append(tuple(float(v) for v in value))
    if abs(float(processor.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise CxrError("RAD-DINO preprocessor_config.json: rescale_factor must be 1/255 (cxr feeds pixels / 255)")
    return values[0], values[1]


_DOC = dict(
    source=f"Hugging Face hub {REPO_ID} (transformers Dinov2Model)",
    licence="Microsoft Research Licence Agreement (MSRLA): research use",
    input_size=NATIVE_SIZE,
    normalisation="its preprocessor_config.json: mean 0.5307, std 0.2583 (all channels), pixels / 255",
    paper="Pérez-García et al., Nature Machine Intelligence 2025, arXiv:2401.10815",
    published="published (the authors' figures, not this tool's): linear probes on frozen features, segmentation "
    "and report generation on several chest X-ray datasets in arXiv:2401.10815; none quoted or reproduced here",
)
ENTRIES = (
    FoundationEntry(name="rad-dino", build=partial(build, "cls"), pooling="CLS token (768)", **_DOC),
    FoundationEntry(
        name="rad-dino-cls-mean",
        build=partial(build, "cls-mean"),
        pooling="CLS token ⊕ mean patch token (1536)",
        **_DOC,
    ),
)
