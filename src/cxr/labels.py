"""The label vocabulary of NIH ChestX-ray14, defined once.

The canonical order is alphabetical, as the original project used it (see ``docs/experiments.md``). Files
written by others (CheXNet-style predictions, the literature's tables) use other orders: always map by
name with :func:`reorder`, never by position.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
)
"""The 14 findings, in the project's canonical (alphabetical) order, spelled as NIH spells them."""

NO_FINDING = "No Finding"
LABELS: tuple[str, ...] = (*FINDINGS, NO_FINDING)
"""The 14 findings plus "No Finding" (all 14 zeros): the columns of the store's index."""

ANY_FINDING = "Any Finding"
"""The target of the binary "any finding vs No Finding" screen (1 - "No Finding"); not a store column."""

CHEXNET_ORDER: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The order of Wang et al. (2017) and CheXNet (Rajpurkar et al., 2017) tables."""

ALIASES: dict[str, str] = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening"}
"""Other spellings found in NIH files: ``BBox_List_2017.csv`` writes ``Infiltrate``."""


def canonical_name(name: str, vocabulary: Sequence[str] | None = None) -> str:
    """Return the canonical spelling of a finding or "No Finding"; raise ``ValueError`` for an unknown one.

    ``vocabulary`` defaults to NIH's labels (what NIH's own files may name); model outputs and predictions files
    use :data:`COMMON_LABELS`, since a model trained on other datasets may output e.g. "Lung Opacity".
    """
    known = LABELS if vocabulary is None else tuple(vocabulary)
    name = name.strip()
    name = ALIASES.get(name, name)
    if name not in known and name != ANY_FINDING:
        raise ValueError(f"unknown finding {name!r} (known: {', '.join(known)})")
    return name


def parse_finding_labels(text: str) -> list[str]:
    """Parse NIH's ``Finding Labels`` cell (``"Effusion|Mass"`` or ``"No Finding"``) into canonical names.

    Raises ``ValueError`` for an unknown name, an empty cell, or "No Finding" combined with a finding.
    """
    parts = [p for p in (s.strip() for s in str(text).split("|")) if p]
    if not parts:
        raise ValueError("empty 'Finding Labels'")
    names = [canonical_name(p) for p in parts]
    if ANY_FINDING in names:
        raise ValueError(f"unknown finding {ANY_FINDING!r} in {text!r}")
    if NO_FINDING in names and len(names) > 1:
        raise ValueError(f"'{NO_FINDING}' combined with findings in {text!r}")
    return names


def reorder(values: dict[str, float], order: Sequence[str] = FINDINGS) -> list[float]:
    """Values of a name-keyed mapping in ``order``; raise ``KeyError`` naming any missing label."""
    missing = [name for name in order if name not in values]
    if missing:
        raise KeyError(f"missing labels: {', '.join(missing)}")
    return [values[name] for name in order]


def check_names(names: Iterable[str]) -> list[str]:
    """Canonicalise a list of label names (e.g. a model's outputs), rejecting unknown ones and duplicates."""
    out = [canonical_name(n, COMMON_LABELS) for n in names]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate label names in {out}")
    return out


EXTRA_FINDINGS: tuple[str, ...] = (
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "Support Devices",
)
"""Findings other datasets label and NIH does not, spelled as CheXpert (Irvin et al., AAAI 2019) spells them."""

COMMON_FINDINGS: tuple[str, ...] = (*FINDINGS, *EXTRA_FINDINGS)
"""The common vocabulary's findings: NIH's 14 first (so an NIH model's outputs are a prefix), then the others."""

COMMON_LABELS: tuple[str, ...] = (*COMMON_FINDINGS, NO_FINDING)
"""Every label of the common vocabulary. A dataset that cannot provide one leaves it NaN (missing), never 0."""
