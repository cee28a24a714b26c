"""Random weights in the publishers' own checkpoint formats, and plain-torch renderings of the authors' forwards, for
``tests/models/test_vit_checkpoints.py``.

The files are what the authors' training code saves (``{"model": state_dict, "optimizer": ..., "epoch": ...,
"args": Namespace}``) with their key names: EVA-02's masked-image-modelling encoder for EVA-X (hustvl/EVA-X,
baaivision/EVA ``EVA-02/asuka/modeling_pretrain.py``), MAE's ``MaskedAutoencoderViT`` for medical MAE
(lambert-x/medical_mae ``models_mae.py``), built from the shapes of those definitions, not from timm's modules. The
references read the publisher's tensors by their own names (EVA-02's rotary tables included) and follow the authors'
fine-tuning forward: ``models_eva.py``'s ViT with mean pooling and ``eva_x.py``'s pooled norm; ``models_vit.py`` with
``global_pool``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

SIZES = {"small": (384, 6), "base": (768, 12)}
EPS = 1e-6  # both families' LayerNorm


# --- the publishers' files -----------------------------------------------------------------------------------------


def _random(generator: torch.Generator):
    def tensor(*shape: int, scale: float = 0.02, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale + offset

    return tensor


def _eva02_rope(head_dim: int, grid: int = 14) -> tuple[torch.Tensor, torch.Tensor]:
    """EVA-02's ``VisionRotaryEmbeddingFast(dim=head_dim // 2, pt_seq_len=grid)`` tables, (grid², head_dim) each:
    per axis ``head_dim // 4`` frequencies ``10000 ** (-2j / (head_dim / 2))`` at positions 0..grid-1, each repeated
    twice (interleaved pairs), the row axis's half first."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    angles = torch.repeat_interleave(torch.arange(grid).float()[:, None] * freqs, 2, dim=-1)  # (grid, half)
    rows = angles[:, None, :].expand(grid, grid, half)
    cols = angles[None, :, :].expand(grid, grid, half)
    table = torch.cat([rows, cols], dim=-1).reshape(grid * grid, head_dim)
    return table.cos(), table.sin()


def eva_x_state(size: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """EVA-X's MIM checkpoint layout: ViT-S as EVA-02 ``..._SwiGLU_preln_RoPE`` (fused qkv, xformers' packed
    ``w12``), ViT-B as ``..._NaiveSwiGLU_subln_RoPE`` (q/k/v projections, ``w1``/``w2``/``ffn_ln``/``w3``)."""
    dim, heads = SIZES[size]
    hidden, t = int(dim * 4 * 2 / 3), _random(torch.Generator().manual_seed(seed))
    cos, sin = _eva02_rope(dim // heads)
    state = {
        "cls_token": t(1, 1, dim), "mask_token": t(1, 1, dim), "pos_embed": t(1, 197, dim),
        "patch_embed.proj.weight": t(dim, 3, 16, 16), "patch_embed.proj.bias": t(dim),
        "rope.freqs_cos": cos, "rope.freqs_sin": sin,
    }  # fmt: skip
    for i in range(12):
        p = f"blocks.{i}."
        state |= {p + "norm1.weight": t(dim, offset=1.0), p + "norm1.bias": t(dim)}
        if size == "base":
            state |= {p + f"attn.{x}_proj.weight": t(dim, dim) for x in "qkv"}
        else:
            state[p + "attn.qkv.weight"] = t(3 * dim, dim)
        state |= {p + "attn.q_bias": t(dim), p + "attn.v_bias": t(dim)}
        state |= {p + "attn.rope.freqs_cos": cos, p + "attn.rope.freqs_sin": sin}  # the shared module, per block
        state |= {p + "attn.proj.weight": t(dim, dim), p + "attn.proj.bias": t(dim)}
        state |= {p + "norm2.weight": t(dim, offset=1.0), p + "norm2.bias": t(dim)}
        if size == "base":
            state |= {p + "mlp.w1.weight": t(hidden, dim), p + "mlp.w1.bias": t(hidden)}
            state |= {p + "mlp.w2.weight": t(hidden, dim), p + "mlp.w2.bias": t(hidden)}
            state |= {p + "mlp.ffn_ln.weight": t(hidden, offset=1.0), p + "mlp.ffn_ln.bias": t(hidden)}
        else:
            state |= {p + "mlp.w12.weight": t(2 * hidden, dim), p + "mlp.w12.bias": t(2 * hidden)}
        state |= {p + "mlp.w3.weight": t(dim, hidden), p + "mlp.w3.bias": t(dim)}
    state |= {"norm.weight": t(dim, offset=1.0), "norm.bias": t(dim)}
    return state | {"lm_head.weight": t(1024, dim), "lm_head.bias": t(1024)}  # MIM target: MGCA/CLIP features


def mae_state(size: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """medical_mae's ``MaskedAutoencoderViT`` (encoder with timm's block names, final norm, decoder 512 wide)."""
    dim, _ = SIZES[size]
    t, decoder = _random(torch.Generator().manual_seed(seed)), 512
    state = {
        "cls_token": t(1, 1, dim), "pos_embed": t(1, 197, dim), "mask_token": t(1, 1, decoder),
        "patch_embed.proj.weight": t(dim, 3, 16, 16), "patch_embed.proj.bias": t(dim),
        "norm.weight": t(dim, offset=1.0), "norm.bias": t(dim),
        "decoder_embed.weight": t(decoder, dim), "decoder_embed.bias": t(decoder),
        "decoder_pos_embed": t(1, 197, decoder), "decoder_norm.weight": t(decoder, offset=1.0),
        "decoder_norm.bias": t(decoder), "decoder_pred.weight": t(16 * 16 * 3, decoder), "decoder_pred.bias": t(768),
    }  # fmt: skip
    blocks = [("blocks", dim, 12), ("decoder_blocks", decoder, 1)]
    for prefix, width, depth in blocks:
        for i in range(depth):
            p = f"{prefix}.{i}."
            state |= {p + "norm1.weight": t(width, offset=1.0), p + "norm1.bias": t(width)}
            state |= {p + "attn.qkv.weight": t(3 * width, width), p + "attn.qkv.bias": t(3 * width)}
            state |= {p + "attn.proj.weight": t(width, width), p + "attn.proj.bias": t(width)}
            state |= {p + "norm2.weight": t(width, offset=1.0), p + "norm2.bias": t(width)}
            state |= {p + "mlp.fc1.weight": t(4 * width, width), p + "mlp.fc1.bias": t(4 * width)}
            state |= {p + "mlp.fc2.weight": t(width, 4 * width), p + "mlp.fc2.bias": t(width)}
    return state


def publisher_file(path: Path, name: str, state: dict | None = None) -> Path:
    """A training checkpoint as the authors' ``save_model`` writes it (optimizer state left small)."""
    family, size = name.rsplit("-", 1)
    state = state if state is not None else (eva_x_state(size) if family == "eva-x" else mae_state(size))
    args = argparse.Namespace(model=name, input_size=224, mask_ratio=0.9, output_dir="./output")
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 599, "args": args}, path)
    return path


# --- the authors' forward, in plain torch --------------------------------------------------------------------------


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    weights_ = torch.softmax((q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1), dim=-1)
    return (weights_ @ v).transpose(1, 2).flatten(2)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def _embed(state: dict, x: torch.Tensor) -> torch.Tensor:
    tokens = F.conv2d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=16)
    tokens = tokens.flatten(2).transpose(1, 2)
    return torch.cat([state["cls_token"].expand(len(x), -1, -1), tokens], dim=1) + state["pos_embed"]


def _rotate(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """EVA-02's rope: ``t * cos + rotate_half(t) * sin`` with interleaved pairs (x1, x2) -> (-x2, x1)."""
    pairs = t.reshape(*t.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return t * cos + rotated * sin


def eva_reference(state: dict, x: torch.Tensor, size: str) -> torch.Tensor:
    """``models_eva.VisionTransformer`` (mean pooling, rope on the patch tokens only) with ``eva_x.py``'s pooled norm:
    the MIM encoder's final norm after pooling."""
    dim, heads = SIZES[size]
    h = _embed(state, x)
    cos, sin = state["rope.freqs_cos"], state["rope.freqs_sin"]
    for i in range(12):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], EPS)
        if size == "base":
            q = F.linear(y, state[p + "attn.q_proj.weight"], state[p + "attn.q_bias"])
            k = F.linear(y, state[p + "attn.k_proj.weight"])
            v = F.linear(y, state[p + "attn.v_proj.weight"], state[p + "attn.v_bias"])
        else:
            bias = torch.cat([state[p + "attn.q_bias"], torch.zeros(dim), state[p + "attn.v_bias"]])
            q, k, v = F.linear(y, state[p + "attn.qkv.weight"], bias).chunk(3, dim=-1)
        q, k, v = (_heads(t, heads) for t in (q, k, v))
        q = torch.cat([q[:, :, :1], _rotate(q[:, :, 1:], cos, sin)], dim=2)
        k = torch.cat([k[:, :, :1], _rotate(k[:, :, 1:], cos, sin)], dim=2)
        h = h + F.linear(_attention(q, k, v), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        y = F.layer_norm(h, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], EPS)
        if size == "base":
            hidden = F.silu(F.linear(y, state[p + "mlp.w1.weight"], state[p + "mlp.w1.bias"]))
            hidden = hidden * F.linear(y, state[p + "mlp.w2.weight"], state[p + "mlp.w2.bias"])
            w = state[p + "mlp.ffn_ln.weight"]
            hidden = F.layer_norm(hidden, w.shape, w, state[p + "mlp.ffn_ln.bias"], EPS)
        else:  # xformers' SwiGLU: the packed output viewed as (2, hidden), the first half gated
            gate, value = (
                F.linear(y, state[p + "mlp.w12.weight"], state[p + "mlp.w12.bias"]).unflatten(-1, (2, -1)).unbind(-2)
            )
            hidden = F.silu(gate) * value
        h = h + F.linear(hidden, state[p + "mlp.w3.weight"], state[p + "mlp.w3.bias"])
    return F.layer_norm(h[:, 1:].mean(1), (dim,), state["norm.weight"], state["norm.bias"], EPS)


def mae_reference(state: dict, x: torch.Tensor, size: str) -> torch.Tensor:
    """``models_vit.VisionTransformer(global_pool=True)`` as the authors fine-tune it: the encoder, the mean of the
    patch tokens, a new ``fc_norm`` (LayerNorm at its initial identity; the pretraining's final norm deleted)."""
    dim, heads = SIZES[size]
    h = _embed(state, x)
    for i in range(12):
        p = f"blocks.{i}."
        y = F.layer_norm(h, (dim,), state[p + "norm1.weight"], state[p + "norm1.bias"], EPS)
        qkv = F.linear(y, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(len(x), -1, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        h = h + F.linear(_attention(q, k, v), state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        y = F.layer_norm(h, (dim,), state[p + "norm2.weight"], state[p + "norm2.bias"], EPS)
        y = F.gelu(F.linear(y, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        h = h + F.linear(y, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
    return F.layer_norm(h[:, 1:].mean(1), (dim,), None, None, EPS)
