"""Published test AUROCs to print beside ours: the original project's per preset, and CheXNet's.

All values are keyed by NIH's spelling of the finding (map by name, never by position). Sources, as recorded in
``docs/experiments.md``:

- The seed: "NIH-Chest-X-rays-Classification", an AWS SageMaker sandbox project (Keras, DenseNet169; its README
  is ``seed-readme.txt``). Per-class test AUROC as its notebooks reported them, on the official test list. Its
  thresholds and validation split were flawed (see ``experiments.md``), but the AUROCs are threshold-free.
- CheXNet: Rajpurkar, Irvin, et al. (2017), "CheXNet: Radiologist-Level Pneumonia Detection on Chest X-Rays with
  Deep Learning", arXiv:1711.05225 v3, Table 2. Note: CheXNet tested on a random patient split of NIH, not the
  official ``test_list.txt``, so its numbers are a reference point, not a paired comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr.labels import ANY_FINDING, FINDINGS


@dataclass(frozen=True)
class Reference:
    """One published result: a name for column headers, a citation, per-label AUROC, and macro/micro if given."""

    name: str
    citation: str
    auroc: dict[str, float]
    macro_auroc: float | None = None
    micro_auroc: float | None = None


SEED_CITATION = (
    "NIH-Chest-X-rays-Classification (AWS SageMaker sandbox project; docs/seed-readme.txt), reported test AUROC"
)

_SEED_PER_CLASS = {  # alphabetical order of cxr.labels.FINDINGS, as the original printed them
    "multilabel-adam": (".73 .59 .68 .78 .79 .71 .68 .68 .70 .75 .71 .69 .63 .75", 0.70, 0.80),
    "multilabel-sgd": (".73 .72 .70 .80 .80 .80 .70 .64 .69 .78 .73 .72 .66 .84", 0.74, 0.82),
    "multilabel-balanced": (".73 .80 .71 .82 .80 .82 .78 .84 .69 .78 .73 .72 .70 .85", 0.77, 0.83),
    "disease-only": (".73 .79 .65 .81 .79 .84 .77 .73 .67 .73 .71 .70 .63 .82", 0.74, 0.83),
}


def _seed_references() -> dict[str, Reference]:
    references = {
        preset: Reference(
            name=f"original {preset}",
            citation=SEED_CITATION,
            auroc=dict(zip(FINDINGS, (float(v) for v in values.split()), strict=True)),
            macro_auroc=macro,
            micro_auroc=micro,
        )
        for preset, (values, macro, micro) in _SEED_PER_CLASS.items()
    }
    references["binary-fibrosis"] = Reference("original binary-fibrosis", SEED_CITATION, {"Fibrosis": 0.79})
    references["binary-finding"] = Reference("original binary-finding", SEED_CITATION, {ANY_FINDING: 0.70})
    return references


SEED: dict[str, Reference] = _seed_references()
"""The original project's reported test results per preset name (the names of ``configs/experiments``)."""

CHEXNET = Reference(
    name="CheXNet",
    citation="Rajpurkar et al. (2017), CheXNet, arXiv:1711.05225 v3, Table 2 (random patient split, not official)",
    auroc={
        "Atelectasis": 0.8094,
        "Cardiomegaly": 0.9248,
        "Effusion": 0.8638,
        "Infiltration": 0.7345,
        "Mass": 0.8676,
        "Nodule": 0.7802,
        "Pneumonia": 0.7680,
        "Pneumothorax": 0.8887,
        "Consolidation": 0.7901,
        "Edema": 0.8878,
        "Emphysema": 0.9371,
        "Fibrosis": 0.8047,
        "Pleural_Thickening": 0.8062,
        "Hernia": 0.9164,
    },
    macro_auroc=0.841,
)
"""CheXNet's per-class test AUROC (Rajpurkar et al., 2017, v3) and its reported mean over the 14 findings."""


def references_for(preset: str | None) -> list[Reference]:
    """The reference columns for a report: the original's result for ``preset`` (when it has one), then CheXNet."""
    seed = SEED.get(preset) if preset else None
    return [seed, CHEXNET] if seed else [CHEXNET]
