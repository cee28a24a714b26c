"""The registry of chest X-ray ViTs with publisher checkpoints (:mod:`cxr.models.vit_checkpoints` builds and loads
them): one entry per ``model.name`` with its timm architecture, the key mapping of the publisher's checkpoint, the
authors' input size, normalisation and pooling, where the weights are, their licence and published figures.

Figures are the authors' published ones (NIH ChestX-ray14 official test split, mean AUROC over the 14 findings,
224 px), not results of this tool.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyMapping:
    """How a publisher's state dict becomes timm's: ``renames`` (regex, replacement) applied in order to every key;
    ``dropped`` (regex, why) keys of the pretraining that the encoder has no place for; ``fresh`` timm weights the
    checkpoint may lack, left as timm initialises them (as the authors' fine-tuning starts them)."""

    renames: tuple[tuple[str, str], ...] = ()
    dropped: tuple[tuple[str, str], ...] = ()
    fresh: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublishedWeights:
    """Where a publisher's file is: a Hugging Face repo (``hf_repo``, ``filename``, pinned ``revision``) or a URL."""

    filename: str
    page: str  # where a person finds and downloads it
    hf_repo: str | None = None
    revision: str | None = None
    url: str | None = None


@dataclass(frozen=True)
class XrayVit:
    family: str
    timm_class: str  # "eva" (timm.models.eva.Eva) or "vit" (timm.models.vision_transformer.VisionTransformer)
    kwargs: dict = field(hash=False)
    keys: KeyMapping
    wrappers: tuple[str, ...]  # where the state dict sits in the checkpoint, first match wins
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    pooling: str
    weights: PublishedWeights
    licence: str
    paper: str
    published: str  # the authors' figure, marked as published
    antialias: bool = False  # resampling the position embeddings for other input sizes, as the authors' code does
    input_size: int = 224  # the pretraining and fine-tuning size


_ROPE = (r"(^|\.)rope\.freqs_(cos|sin)$", "rotary tables, recomputed by timm for the input grid")
_MIM = (r"^(mask_token|lm_head\..*)$", "masked-image-modelling token and prediction head (pretraining only)")
_HEAD = (r"^head\.(weight|bias)$", "a fine-tuned classifier: cxr's head (model.head=gap) replaces it")
# The MIM final norm becomes the norm after pooling, as the authors' eva_x.py (through timm's filter) loads it.
_EVA_NORM = (r"^norm\.", "fc_norm.")
_EVA_X_NOTE = (
    "mean of the patch tokens, then LayerNorm (fc_norm; the MIM final norm), as eva_x.py and --use_mean_pooling"
)
# EVA-X's fine-tuning normalisation (classification/utils/datasets.py, for 'eva' models); grey repeated to RGB.
_EVA_X_MEAN, _EVA_X_STD = (0.49185243,) * 3, (0.28509309,) * 3
_EVA_X_PAPER = "Yao et al. 2024, arXiv:2405.05237 (npj Digital Medicine 2025); github.com/hustvl/EVA-X"
_EVA_X_KWARGS = dict(patch_size=16, depth=12, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, use_rot_pos_emb=True,
                     ref_feat_shape=(14, 14), global_pool="avg")  # fmt: skip
_EVA_X_HF, _EVA_X_REV = "MapleF/eva_x", "2552ff757b3acbd8114dd0b9caaad94bcbf29afb"


def _eva_x_weights(size: str) -> PublishedWeights:
    filename = f"eva_x_{size}_patch16_merged520k_mim.pt"
    return PublishedWeights(filename, f"https://huggingface.co/{_EVA_X_HF}", _EVA_X_HF, _EVA_X_REV)


EVA_X_SMALL = XrayVit(
    family="EVA-X",
    timm_class="eva",
    kwargs=dict(_EVA_X_KWARGS, embed_dim=384, num_heads=6),
    keys=KeyMapping(
        # ViT-S: fused qkv with q_bias/v_bias (timm's names too); xformers' SwiGLU packs w1 and w2 into w12.
        renames=((r"\.mlp\.w12\.", ".mlp.fc1."), (r"\.mlp\.w3\.", ".mlp.fc2."), _EVA_NORM),
        dropped=(_ROPE, _MIM, _HEAD),
    ),
    wrappers=("model_ema", "model", "module", "state_dict"),  # eva_x.py's order
    mean=_EVA_X_MEAN,
    std=_EVA_X_STD,
    pooling=_EVA_X_NOTE,
    weights=_eva_x_weights("small"),
    licence="MIT",
    paper=_EVA_X_PAPER,
    published="83.3 (published; ViT-S/16, 30 epochs fine-tuning)",
    antialias=True,
)

EVA_X_BASE = XrayVit(
    family="EVA-X",
    timm_class="eva",
    kwargs=dict(_EVA_X_KWARGS, embed_dim=768, num_heads=12, qkv_fused=False, scale_mlp=True),
    keys=KeyMapping(
        # ViT-B (EVA-02's sub-LN layout): separate q/k/v projections whose biases sit apart; a normalised SwiGLU.
        renames=(
            (r"\.attn\.q_bias$", ".attn.q_proj.bias"),
            (r"\.attn\.v_bias$", ".attn.v_proj.bias"),
            (r"\.mlp\.w1\.", ".mlp.fc1_g."),
            (r"\.mlp\.w2\.", ".mlp.fc1_x."),
            (r"\.mlp\.ffn_ln\.", ".mlp.norm."),
            (r"\.mlp\.w3\.", ".mlp.fc2."),
            _EVA_NORM,
        ),
        dropped=(_ROPE, _MIM, _HEAD),
    ),
    wrappers=("model_ema", "model", "module", "state_dict"),
    mean=_EVA_X_MEAN,
    std=_EVA_X_STD,
    pooling=_EVA_X_NOTE,
    weights=_eva_x_weights("base"),
    licence="MIT",
    paper=_EVA_X_PAPER,
    published="83.5 (published; ViT-B/16, 10 epochs fine-tuning)",
    antialias=True,
)

# medical_mae's fine-tuning normalisation for chest X-rays (util/datasets.py build_transform), grey repeated to RGB.
_MAE_MEAN, _MAE_STD = (0.5056,) * 3, (0.252,) * 3
_MAE_PAPER = "Xiao et al., WACV 2023, arXiv:2210.12843; github.com/lambert-x/medical_mae"
_MAE_KWARGS = dict(patch_size=16, depth=12, mlp_ratio=4, qkv_bias=True, global_pool="avg", fc_norm=True)
_MAE_KEYS = KeyMapping(
    dropped=(
        (r"^(mask_token|decoder_.*)$", "MAE decoder and mask token (pretraining only)"),
        # main_finetune_chestxray.py builds models_vit with global_pool: the encoder's final norm is deleted and
        # a new fc_norm after pooling starts at LayerNorm's identity.
        (r"^norm\.(weight|bias)$", "the pretraining encoder's final norm, which the authors' fine-tuning deletes"),
        _HEAD,
    ),
    fresh=("fc_norm.weight", "fc_norm.bias"),
)
_MAE_POOLING = "mean of the patch tokens, then a fresh LayerNorm (fc_norm), as models_vit.py with global_pool"
_MAE_PAGE = "https://github.com/lambert-x/medical_mae#fine-tuning-with-pre-trained-checkpoints (Google Drive)"


def _drive(file_id: str) -> str:
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


MAE_VIT_SMALL = XrayVit(
    family="medical MAE",
    timm_class="vit",
    kwargs=dict(_MAE_KWARGS, embed_dim=384, num_heads=6),
    keys=_MAE_KEYS,
    wrappers=("model",),  # util/misc.py save_model: {"model", "optimizer", "epoch", "scaler", "args"}
    mean=_MAE_MEAN,
    std=_MAE_STD,
    pooling=_MAE_POOLING,
    weights=PublishedWeights("vit-s_CXR_0.3M_mae.pth", _MAE_PAGE, url=_drive("1Yok1RemqP27iKJ5BUuoHhLRBB1GycITx")),
    licence="Apache-2.0",
    paper=_MAE_PAPER,
    published="82.3 (published; ViT-S/16 pretrained on 0.3M X-rays, 75 epochs fine-tuning)",
)

MAE_VIT_BASE = XrayVit(
    family="medical MAE",
    timm_class="vit",
    kwargs=dict(_MAE_KWARGS, embed_dim=768, num_heads=12),
    keys=_MAE_KEYS,
    wrappers=("model",),
    mean=_MAE_MEAN,
    std=_MAE_STD,
    pooling=_MAE_POOLING,
    weights=PublishedWeights(
        "the 'ViT-Base/16, X-rays (0.5M), MAE' pretrained file",  # the README table names no file
        _MAE_PAGE,
        url=_drive("10wqOFCkhyWp6JdSFADrH6Xu9e1am3gXJ"),
    ),
    licence="Apache-2.0",
    paper=_MAE_PAPER,
    published="83.0 (published; ViT-B/16 pretrained on 0.5M X-rays; repository README)",
)

XRAY_VITS: dict[str, XrayVit] = {
    "eva-x-small": EVA_X_SMALL,
    "eva-x-base": EVA_X_BASE,
    "mae-vit-small": MAE_VIT_SMALL,
    "mae-vit-base": MAE_VIT_BASE,
}
"""``model.name`` → entry; ``cxr.models.factory.create_model`` builds these through :mod:`.vit_checkpoints`."""
