"""The optimizer and learning-rate schedule of a run, from the ``optim.*`` keys.

Three things a modern fine-tuning recipe needs beyond "Adam on all parameters":

- AdamW's decoupled weight decay (Loshchilov & Hutter, ICLR 2019) applied to weight matrices and kernels only:
  decaying norm scales, biases and a ViT's position embedding or class token pulls them towards 0, which they have no
  reason to be near (the convention of timm, BEiT and MAE's fine-tuning code).
- Layer-wise learning-rate decay (BEiT, Bao et al., ICLR 2022; MAE, He et al., CVPR 2022): in a ViT the blocks near
  the input hold the most general pretrained features and move least; block ``i`` of ``L`` learns at
  ``lr · layer_decay ** (L + 1 − i)``, the embeddings at ``layer_decay ** (L + 1)``, the final norm and head at ``lr``.
- A per-step cosine schedule with linear warm-up (Loshchilov & Hutter, ICLR 2017 "SGDR"; Goyal et al. 2017 for the
  warm-up): the warm-up keeps the first, large AdamW updates from wrecking pretrained weights while the adaptive
  moments are still noise.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from cxr.config import Config, OptimConfig
from cxr.errors import CxrError

BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
"""A transformer block's parameter: ``...blocks.<i>.<rest>`` (timm's ViT, DeiT, BEiT, EVA naming)."""


def decay_exempt(model: nn.Module) -> set[str]:
    """Names of the parameters that AdamW does not decay: 0- and 1-D tensors (norm scales and shifts, biases, layer
    scales), anything named ``*.bias``, and what a submodule lists in its ``no_weight_decay()`` (timm's models name
    their position embeddings and tokens there)."""
    exempt = {name for name, param in model.named_parameters() if param.ndim <= 1 or name.endswith(".bias")}
    for prefix, module in model.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            exempt |= {f"{prefix}.{name}" if prefix else name for name in listed()}
    return exempt


def layer_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each trainable parameter's depth for layer-wise LR decay, and the number of blocks ``L``.

    Depth ``i + 1`` for ``blocks.<i>.``, 0 for what is registered before the first block (patch embedding, tokens,
    position embedding), ``L + 1`` for what comes after (final norm, pooling, head). Only models with one sequence of
    blocks qualify (ViTs); a CNN, or a model with staged blocks (ConvNeXt's ``stages.<s>.blocks.<i>``, Swin's
    ``layers.<s>.blocks.<i>``), is an error rather than a guess at their depth order.
    """
    names = [name for name, param in model.named_parameters() if param.requires_grad]
    matches = {name: BLOCK.search(name) for name in names}
    prefixes = sorted({name[: match.start()] for name, match in matches.items() if match})
    if len(prefixes) != 1:
        found = (
            f"{len(prefixes)} block sequences ({', '.join(p or '<root>' for p in prefixes[:4])})"
            if prefixes
            else ("no 'blocks.<i>.' parameters")
        )
        raise CxrError(
            f"optim.layer_decay needs a model with one sequence of transformer blocks named 'blocks.<i>.' (a ViT); "
            f"this model has {found}. Set optim.layer_decay=1.0 for CNNs, ConvNeXt and Swin"
        )
    blocks = 1 + max(int(match.group(1)) for match in matches.values() if match)
    first = next(k for k, name in enumerate(names) if matches[name])
    depths = {}
    for k, name in enumerate(names):
        match = matches[name]
        depths[name] = int(match.group(1)) + 1 if match else (0 if k < first else blocks + 1)
    return depths, blocks


def parameter_groups(model: nn.Module, spec: OptimConfig) -> list[dict]:
    """Parameter groups with their own ``lr`` (``lr_scale`` · ``optim.lr``) and ``weight_decay``.

    Adam and SGD keep one group with every parameter (and their coupled L2 ``weight_decay`` on all of them, as
    before: a resumed run's optimizer state must fit); AdamW exempts :func:`decay_exempt`; ``layer_decay`` < 1 splits
    by :func:`layer_depths`.
    """
    if spec.name != "adamw" and spec.layer_decay == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    exempt = decay_exempt(model) if spec.name == "adamw" else set()
    depths, blocks = layer_depths(model) if spec.layer_decay != 1.0 else ({}, 0)
    groups: dict[tuple[float, float], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = spec.layer_decay ** (blocks + 1 - depths[name]) if depths else 1.0
        decay = 0.0 if name in exempt else spec.weight_decay
        group = groups.setdefault(
            (scale, decay), {"params": [], "lr": spec.lr * scale, "lr_scale": scale, "weight_decay": decay}
        )
        group["params"].append(param)
    return list(groups.values())


def kernel_options(choice: str, on_cuda: bool) -> dict[str, bool]:
    """``optim.fused`` → the optimizer's ``fused`` / ``foreach`` arguments. ``auto`` takes the fused kernel (one launch
    for all parameters) on CUDA and torch's default elsewhere, where fused kernels are not faster on every CPU."""
    if choice == "fused" or (choice == "auto" and on_cuda):
        return {"fused": True}
    if choice == "foreach":
        return {"foreach": True}
    return {}


def build_optimizer(model: nn.Module, spec: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer ``optim.name`` over :func:`parameter_groups`, with :func:`kernel_options` for the device of the
    model's parameters (Lightning has moved the model there before it asks for the optimizer)."""
    groups = parameter_groups(model, spec)
    on_cuda = any(p.is_cuda for group in groups for p in group["params"])
    kernels = kernel_options(spec.fused, on_cuda)
    if spec.name == "sgd":
        return torch.optim.SGD(
            groups, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=spec.weight_decay,
            **kernels,
        )  # fmt: skip
    kind = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return kind(groups, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, **kernels)


@dataclass
class WarmupCosine:
    """The LR multiplier at optimizer step ``t`` (0 = the first step):

    - warm-up, ``t < W``: ``(t + 1) / W``, so the first step already learns and step ``W − 1`` reaches the full rate;
    - then ``f + (1 − f) · (1 + cos(π · (t − W) / (T − W))) / 2``: 1 at ``t = W``, ``(1 + f) / 2`` halfway, ``f`` (the
      ratio ``min_lr / lr``) at ``t = T``, and ``f`` after.

    A plain object (not a closure) so ``LambdaLR`` saves its fields in the checkpoint.
    """

    warmup_steps: int
    total_steps: int
    floor: float

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_schedule(
    optimizer: torch.optim.Optimizer, spec: OptimConfig, total_steps: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``optim.scheduler=cosine`` over ``total_steps`` optimizer steps (all epochs; accumulation counted), with
    ``optim.warmup_epochs`` of them converted to steps. ``min_lr`` scales with each group's ``lr_scale``."""
    warmup = round(spec.warmup_epochs * total_steps / max(1, epochs))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total_steps, spec.min_lr / spec.lr))


def check_recipe(config: Config) -> None:
    """Combinations and ranges of the optimisation keys that cannot work, refused before a run folder exists."""
    optim, train = config.optim, config.train
    if optim.decay > 0 and optim.scheduler != "none":
        raise CxrError(f"optim.decay (Keras time decay, set per step) and optim.scheduler={optim.scheduler} cannot "
                       "be combined: the per-step decay would undo every plateau reduction or cosine step")  # fmt: skip
    if optim.scheduler == "cosine":
        if not 0 <= optim.min_lr <= optim.lr:
            raise CxrError(f"optim.min_lr={optim.min_lr} must lie between 0 and optim.lr={optim.lr}")
        if not 0 <= optim.warmup_epochs < train.epochs:
            raise CxrError(f"optim.warmup_epochs={optim.warmup_epochs} must be at least 0 and below "
                           f"train.epochs={train.epochs}")  # fmt: skip
    if not 0 < optim.layer_decay <= 1:
        raise CxrError(f"optim.layer_decay={optim.layer_decay} must be in (0, 1]; 1.0 turns it off")
    if not 0 <= train.ema < 1:
        raise CxrError(f"train.ema={train.ema} must be in [0, 1): the EMA decay per step (e.g. 0.999), 0 = off")
    if train.loss == "auc_margin" and train.pos_weight:
        raise CxrError("train.pos_weight weights the BCE; train.loss=auc_margin compares class means and has none")
    if train.auc_margin <= 0:
        raise CxrError(f"train.auc_margin={train.auc_margin} must be above 0")
    if train.accumulate < 1:
        raise CxrError(f"train.accumulate={train.accumulate} must be 1 or more batches per optimizer step")
