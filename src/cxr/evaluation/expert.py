"""Scoring NIH predictions against Google's radiologist labels (Majkowska et al., Radiology 2020).

NIH's labels were mined from reports by NLP and are noisy; the expert file re-labels 4,376 NIH images for four
findings by adjudicated radiologist reads. A model with NIH's 14 outputs is scored on them with these rules, chosen
because each expert label covers what the NIH labels split:

- ``Pneumothorax``: the model's Pneumothorax probability;
- ``Nodule or mass``: the maximum of its Nodule and Mass probabilities;
- ``Airspace opacity``: the maximum of its Consolidation, Pneumonia and Infiltration probabilities;
- ``Fracture``: its Fracture probability, which an NIH model does not have: reported as not available.

An expert label is scored only when every output its rule needs is among the predictions; otherwise it is listed
under ``not_available`` with the outputs it lacks. Only images both files cover are scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.base import LabelledDataset
from cxr.data.datasets.google import is_expert_file, read_file
from cxr.data.datasets.nih import read_image_list
from cxr.errors import CxrError
from cxr.evaluation.predictions import ScoredSet, read_predictions

RULES: dict[str, tuple[str, ...]] = {
    "Pneumothorax": ("Pneumothorax",),
    "Nodule or mass": ("Nodule", "Mass"),
    "Airspace opacity": ("Consolidation", "Pneumonia", "Infiltration"),
    "Fracture": ("Fracture",),
}
"""Expert label -> the model outputs whose maximum scores it."""

LABEL_SET = "google2019"


def expert_probabilities(labels: list[str], probabilities: np.ndarray) -> tuple[list[str], np.ndarray, dict[str, str]]:
    """Apply :data:`RULES` to a model's outputs: ``(expert labels scored, (n, K) probabilities, not available)``."""
    scored, columns, not_available = [], [], {}
    for expert, outputs in RULES.items():
        lacking = [name for name in outputs if name not in labels]
        if lacking:
            not_available[expert] = f"the predictions have no {', '.join(lacking)} output"
            continue
        scored.append(expert)
        columns.append(probabilities[:, [labels.index(name) for name in outputs]].max(axis=1))
    if not scored:
        raise CxrError(f"the predictions have none of the outputs the expert labels need ({RULES})")
    return scored, np.stack(columns, axis=1), not_available


def join_expert(
    images: np.ndarray,
    labels: list[str],
    probabilities: np.ndarray,
    expert: LabelledDataset,
    restrict_to: list[str] | None = None,
) -> tuple[ScoredSet, dict[str, str]]:
    """The images both the predictions and the expert labels cover (optionally only those of a list), scored with
    :data:`RULES`. Raises :class:`CxrError` when they share no image."""
    scored, derived, not_available = expert_probabilities(labels, probabilities)
    position = pd.Index(expert.images["image"])
    keep = position.get_indexer(images) >= 0
    if restrict_to is not None:
        keep &= np.isin(images, np.asarray(restrict_to, dtype=str))
    if not keep.any():
        raise CxrError("the predictions and the expert labels share no image (are they NIH image names?)")
    rows = position.get_indexer(images[keep])
    targets = expert.labels.iloc[rows][scored].to_numpy(np.uint8)
    data = ScoredSet(
        labels=scored,
        images=np.asarray(images[keep], dtype=str),
        patient_ids=expert.images["patient_id"].iloc[rows].to_numpy(),
        targets=targets,
        probabilities=derived[keep],
    )
    return data, not_available


def load_expert_predictions(
    predictions: str | Path, labels_csv: str | Path, images_list: str | Path | None = None
) -> tuple[ScoredSet, dict[str, str]]:
    """A predictions CSV joined with Google's expert labels file (gz or not)."""
    images, labels, probabilities = read_predictions(predictions)
    restrict = read_image_list(images_list) if images_list is not None else None
    return join_expert(images, labels, probabilities, read_file(Path(labels_csv)), restrict)


__all__ = ["LABEL_SET", "RULES", "expert_probabilities", "is_expert_file", "join_expert", "load_expert_predictions"]
