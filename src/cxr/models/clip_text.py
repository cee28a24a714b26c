"""A CLIP's text tower for zero-shot classification: BiomedCLIP's PubMedBERT through ``open_clip``.

Zero-shot in the manner of CheXzero (Tiu et al., "Expert-level detection of pathologies from unannotated chest
X-ray images via self-supervised learning", Nature Biomedical Engineering 2022): per label a positive and a
negative prompt; the probability of the finding is the softmax over the pair of image–text similarities scaled by
the model's logit scale ``s`` (CLIP's temperature):

    p = exp(s·<i, t+>) / (exp(s·<i, t+>) + exp(s·<i, t->)) = sigmoid(s·<i, t+ - t->)

with ``i``, ``t±`` unit-norm embeddings. So a zero-shot classifier *is* a linear head with weight ``s·(t+ - t-)``
and no bias on the unit-norm image embedding that ``model.name=biomedclip`` gives (:func:`zero_shot_head`): written
as an ordinary model artifact, it predicts, exports and serves like any other.

The text model's ``config.json`` comes from the hub repository ``text_cfg.hf_model_name`` names (fetched on first
use through :mod:`cxr.models.weights`) or from that folder when it is a local path; its weights are the CLIP
checkpoint's ``text.*`` entries, loaded with strict key checks. The tokenizer files are the CLIP folder's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cxr.errors import CxrError
from cxr.models.biomedclip import clip_folder, read_clip_config, read_clip_weights, tower_state, weights_path
from cxr.models.foundation_spec import load_strict

# Buffers older transformers saved with the weights (BERT's position ids): not parameters, absent from newer models.
_BUFFERS = ("transformer.embeddings.position_ids",)


class ClipText(nn.Module):
    """open_clip's text tower, its tokenizer and the CLIP's logit scale."""

    def __init__(self, tower: nn.Module, tokenizer, logit_scale: torch.Tensor):
        super().__init__()
        self.tower, self.tokenizer = tower, tokenizer
        self.register_buffer("logit_scale", logit_scale.detach().reshape(()).clone())

    @property
    def scale(self) -> float:
        """``exp(logit_scale)``: the temperature that turns cosine similarities into logits."""
        return float(self.logit_scale.exp())

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings ``(len(prompts), embed_dim)``."""
        tokens = self.tokenizer(list(prompts))
        return F.normalize(self.tower(tokens), dim=-1)


def text_config_folder(hf_model_name: str) -> Path:
    """The folder with the text model's ``config.json``: ``hf_model_name`` itself when it is a local folder, else
    that hub repository's file (fetched on first use)."""
    local = Path(hf_model_name)
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise CxrError(f"{local}: text_cfg.hf_model_name names this folder, which has no config.json")
        return local
    from cxr.models import weights

    return weights.hf_file(hf_model_name, "config.json", command="cxr zeroshot (the CLIP's text model config)").parent


def load_clip_text(pretrained: str) -> ClipText:
    """The text tower of the CLIP in ``pretrained`` (``imagenet`` = BiomedCLIP from the hub, or its folder)."""
    from open_clip.model import _build_text_tower
    from open_clip.tokenizer import HFTokenizer

    folder = clip_folder(pretrained)
    config = read_clip_config(folder)
    model_cfg = config["model_cfg"]
    text_cfg = dict(model_cfg.get("text_cfg") or {})
    if not text_cfg.get("hf_model_name"):
        raise CxrError(f"{folder}: cxr's zero-shot runs CLIPs with a Hugging Face text tower (text_cfg.hf_model_name)")
    text_cfg |= {"hf_model_name": str(text_config_folder(text_cfg["hf_model_name"])), "hf_model_pretrained": False}
    tower = _build_text_tower(int(model_cfg["embed_dim"]), text_cfg)
    source = weights_path(folder, pretrained)
    state = read_clip_weights(source)
    if "logit_scale" not in state:
        raise CxrError(f"{source}: no logit_scale (is it a CLIP checkpoint?)")
    text_state = {k: v for k, v in tower_state(state, "text.").items() if k not in _BUFFERS}
    load_strict(tower, text_state, str(source), "the CLIP's text tower")
    tokenizer_kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    try:
        tokenizer = HFTokenizer(str(folder), context_length=int(text_cfg.get("context_length", 77)), **tokenizer_kwargs)
    except Exception as error:
        raise CxrError(f"{folder}: cannot read the tokenizer files ({type(error).__name__}: {error})") from error
    return ClipText(tower.eval(), tokenizer, state["logit_scale"])


def zero_shot_head(text: ClipText, positive: Sequence[str], negative: Sequence[str]) -> tuple[torch.Tensor, float]:
    """``(K, embed_dim)`` weights ``s·(t+ - t-)`` of the linear head that gives the pairwise softmax, and ``s``."""
    if len(positive) != len(negative):
        raise CxrError(f"{len(positive)} positive prompts for {len(negative)} negative ones")
    scale = text.scale
    return scale * (text.encode(positive) - text.encode(negative)), scale
