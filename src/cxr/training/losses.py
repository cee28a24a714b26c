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


def auc_margin(logits: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The AUC-margin (AUC-M) surrogate of Yuan, Yan, Sonka and Yang, "Large-scale Robust Deep AUC Maximization: A
    New Surrogate Loss and Empirical Studies on Medical Image Classification" (ICCV 2021), per output, on the
    scores ``h = sigmoid(logit)`` of the batch's provided entries, averaged over the outputs:

        Var(h | y=1) + Var(h | y=0) + max(0, margin − E[h | y=1] + E[h | y=0])²

    The square hinge pushes the mean positive score ``margin`` above the mean negative one; the variances keep each
    class's scores together, so ranking (AUROC), not calibration, is what is optimised. The paper optimises the
    population objective through an equivalent min-max form (auxiliary ``a``, ``b``, ``α`` and its PESG optimizer);
    here it is estimated on each mini-batch with the class means of the batch, which needs no second optimizer but
    is biased when a batch holds few positives. An output whose batch lacks one class contributes only the variance
    of the class it has. Probabilities of a model trained on it are scores, not calibrated probabilities.
    """
    scores = torch.sigmoid(logits.float())
    provided = ~torch.isnan(target)
    positive = (provided & (target == 1)).float()
    negative = (provided & (target == 0)).float()
    n_pos, n_neg = positive.sum(dim=0), negative.sum(dim=0)
    mean_pos = (scores * positive).sum(dim=0) / n_pos.clamp(min=1)
    mean_neg = (scores * negative).sum(dim=0) / n_neg.clamp(min=1)
    var_pos = ((scores - mean_pos) ** 2 * positive).sum(dim=0) / n_pos.clamp(min=1)
    var_neg = ((scores - mean_neg) ** 2 * negative).sum(dim=0) / n_neg.clamp(min=1)
    both = (n_pos > 0) & (n_neg > 0)
    hinge = torch.where(both, torch.relu(margin - mean_pos + mean_neg) ** 2, 0.0)
    per_output = var_pos + var_neg + hinge
    present = (n_pos + n_neg) > 0
    return torch.where(present, per_output, 0.0).sum() / present.sum().clamp(min=1)
