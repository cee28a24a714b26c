"""Training losses on logits ``(B, K)`` and targets ``(B, K)`` in which NaN marks a label the dataset does not give.

A label a dataset does not provide is missing, never negative: counting it as 0 would teach the model that the
finding is absent from every image of that dataset. The loss leaves those entries out (their gradient is exactly 0)
and averages over the entries that are provided.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy over the provided (non-NaN) entries, their mean; ``pos_weight`` per output, as
    ``F.binary_cross_entropy_with_logits``. 0 (with zero gradient) for a batch with no provided entry."""
    provided = ~torch.isnan(target)
    per_entry = F.binary_cross_entropy_with_logits(
        logits.float(), torch.where(provided, target, 0.0), pos_weight=pos_weight, reduction="none"
    )
    return torch.where(provided, per_entry, 0.0).sum() / provided.sum().clamp(min=1)
