"""The registry of chest X-ray foundation backbones usable as ``model.name``: fine-tuned with a cxr head, or frozen
(``CxrNet.backbone`` returns their pooled features).

Each family lives in its own module and lists its entries (:class:`cxr.models.foundation_spec.FoundationEntry`:
builder, source, licence, input size, normalisation, pooling, published figures); this module only collects them:

- :mod:`cxr.models.rad_dino`: ``rad-dino``, ``rad-dino-cls-mean`` (``transformers``' ``Dinov2Model``);
- :mod:`cxr.models.biomedclip`: ``biomedclip`` (``open_clip``'s image tower; its text tower for zero-shot is
  :mod:`cxr.models.clip_text`).

``model.pretrained``: ``imagenet`` (the default of every preset) means the family's *published* weights, fetched on
first use through :mod:`cxr.models.weights` into the Hugging Face cache; ``none`` builds the published architecture
with random weights; a folder (the hub's layout) or a weights file always works offline. The artifact records the
backbone's own config (``ArchitectureSpec.backbone_config``), so a checkpoint rebuilds without the network.
"""

from __future__ import annotations

from cxr.errors import CxrError
from cxr.models import biomedclip, rad_dino
from cxr.models.foundation_spec import FoundationBackbone, FoundationEntry

FOUNDATION_MODELS: dict[str, FoundationEntry] = {entry.name: entry for entry in (*rad_dino.ENTRIES,
                                                                                   *biomedclip.ENTRIES)}  # fmt: skip
"""``model.name`` → its entry."""


def is_foundation_name(name: str) -> bool:
    return name in FOUNDATION_MODELS


def build_foundation_backbone(
    name: str, head: str, input_size: int, pretrained: str, recorded: dict | None = None
) -> FoundationBackbone:
    """Build the registered backbone ``name`` for ``(B, 3, input_size, input_size)`` inputs (see the module doc for
    ``pretrained``; ``recorded`` is an artifact's ``backbone_config``: the family's own configuration, a third-party
    JSON tree, kept as the publisher wrote it so the same network is rebuilt)."""
    if name not in FOUNDATION_MODELS:
        raise CxrError(f"unknown foundation model {name!r} (known: {', '.join(FOUNDATION_MODELS)})")
    if head != "gap":
        raise CxrError(f"{name} gives pooled transformer features: use model.head=gap (head {head!r} flattens a map)")
    return FOUNDATION_MODELS[name].build(str(pretrained), int(input_size), recorded)


def set_grad_checkpointing(encoder) -> None:
    """Activation checkpointing of the wrapped transformer (``transformers``' or timm's own switch)."""
    inner = getattr(encoder, "dino", None)
    if inner is not None:  # transformers 5 renamed the switch; older releases have only the first name
        enable = getattr(inner, "activation_checkpointing_enable", None) or inner.gradient_checkpointing_enable
        enable()
        return
    encoder.visual.set_grad_checkpointing(True)


def model_table() -> str:
    """The README's table of the registry, one row per name (generated, so docs and code cannot drift)."""
    rows = ["| `model.name` | source | licence | input | normalisation | pooling | published |", "|---" * 7 + "|"]
    for entry in FOUNDATION_MODELS.values():
        rows.append(f"| `{entry.name}` | {entry.source} | {entry.licence} | {entry.input_size} px | "
                    f"{entry.normalisation} | {entry.pooling} | {entry.published} |")  # fmt: skip
    return "\n".join(rows)
