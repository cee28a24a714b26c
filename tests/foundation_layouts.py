"""Random-weight RAD-DINO and BiomedCLIP folders in their publishers' own layouts, written by the publishers' own
libraries (``transformers``' ``save_pretrained``, ``open_clip``'s state dict in ``open_clip_pytorch_model.bin``), with
small configs so tests stay fast. Shared by ``test_foundation.py`` and ``test_zeroshot.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

BERT_NAME = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"  # what BiomedCLIP's open_clip_config.json names
# A WordPiece vocabulary big enough for the default prompts (unknown words become [UNK], as they would in any BERT).
WORDS = ("no", "chest", "x", "-", "ray", "showing", "with", "normal", "finding", "findings", "atelectasis",
         "cardiomegaly", "consolidation", "edema", "effusion", "emphysema", "fibrosis", "hernia", "infiltration",
         "mass", "nodule", "pleural", "thickening", "pneumonia", "pneumothorax", "lung", "opacity", "lesion",
         "fracture", "enlarged", "cardiomediastinum", "support", "devices", "of", "the", "a", "acute")  # fmt: skip


def rad_dino_folder(out: Path, seed: int = 0) -> Path:
    """``config.json`` + ``model.safetensors`` + ``preprocessor_config.json`` of a 2-layer DINOv2 at 518 px, patch
    14 (so 224 px inputs interpolate the position grid, as the real model does), the published processor values."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=518,
                          layerscale_value=1.0)  # fmt: skip
    model = Dinov2Model(config).eval()
    with torch.no_grad():  # random everywhere, layer scales and norms included
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
    model.save_pretrained(out)
    processor = BitImageProcessor(size={"shortest_edge": 518}, crop_size={"height": 518, "width": 518},
                                  do_center_crop=True, image_mean=[0.5307] * 3, image_std=[0.2583] * 3,
                                  resample=3, do_convert_rgb=True)  # fmt: skip
    processor.save_pretrained(out)
    return out


def _text_config(out: Path) -> Path:
    from transformers import BertConfig

    out.mkdir(parents=True, exist_ok=True)
    BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=64, max_position_embeddings=256).save_pretrained(out)  # fmt: skip
    return out


def _tokenizer(out: Path) -> None:
    from transformers import BertTokenizer

    vocab = out / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n", encoding="utf-8")
    BertTokenizer(str(vocab), do_lower_case=True, model_max_length=256).save_pretrained(out)


def biomedclip_folders(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """``(publisher, reference, text_config)``: the hub layout (``open_clip_config.json`` naming the real text model
    repository, ``open_clip_pytorch_model.bin``, tokenizer files); a copy whose ``hf_model_name`` points at the local
    text config folder, which ``open_clip.create_model('local-dir:…')`` reads with no network; that folder."""
    import open_clip

    text_config = _text_config(root / "text-config")
    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"timm_model_name": "test_vit", "timm_model_pretrained": False, "timm_pool": "",
                       "timm_proj": "linear", "image_size": 224},
        "text_cfg": {"hf_model_name": BERT_NAME, "hf_tokenizer_name": BERT_NAME, "hf_proj_type": "mlp",
                     "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
    }  # fmt: skip
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                          "std": [0.26862954, 0.26130258, 0.27577711]}}  # fmt: skip
    publisher = root / "biomedclip"
    publisher.mkdir(parents=True)
    _tokenizer(publisher)
    reference = root / "reference"
    shutil.copytree(publisher, reference)
    local = json.loads(json.dumps(config))
    local["model_cfg"]["text_cfg"] |= {"hf_model_name": str(text_config), "hf_tokenizer_name": str(text_config)}
    (reference / "open_clip_config.json").write_text(json.dumps(local), encoding="utf-8")
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{reference}", pretrained_text=False)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn_like(parameter) * 0.2)
        model.logit_scale.fill_(2.0)
    torch.save(model.state_dict(), publisher / "open_clip_pytorch_model.bin")
    shutil.copy(publisher / "open_clip_pytorch_model.bin", reference / "open_clip_pytorch_model.bin")
    (publisher / "open_clip_config.json").write_text(json.dumps(config), encoding="utf-8")
    return publisher, reference, text_config


def serve_text_config(monkeypatch, text_config: Path) -> list:
    """Make :func:`cxr.models.weights.hf_file` answer the text model's ``config.json`` from ``text_config`` (the
    hub cache a first run would have filled), recording each request; any other request fails the test."""
    from cxr.models import weights

    asked = []

    def fake_hf_file(repo_id, filename, revision=None, *, command=""):
        asked.append((repo_id, filename))
        assert (repo_id, filename) == (BERT_NAME, "config.json"), (repo_id, filename)
        return text_config / "config.json"

    monkeypatch.setattr(weights, "hf_file", fake_hf_file)
    return asked
