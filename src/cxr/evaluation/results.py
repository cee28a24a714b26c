"""Typed evaluation results: what ``cxr evaluate`` computes, what the report and ``cxr compare`` read.

One record per label (:class:`LabelResult`) and one per scored set (:class:`EvaluationResult`) replace the nested
dicts that used to travel by key string. ``metrics.json`` is generated from them (:meth:`EvaluationResult.to_dict`)
and read back (:meth:`EvaluationResult.from_dict`), so its layout (``docs/architecture.md``, "metrics.json") has one
definition. Optional parts (where the set came from, the external store, the expert label set, subgroups) are
``None`` when absent and then left out of the file, as before. Subgroup records (:mod:`cxr.evaluation.subgroups`)
live here too so the file has a single owner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

Interval = list[float]
"""A ``[low, high]`` percentile bootstrap interval (NaN, written null, where it is undefined)."""


@dataclass
class OperatingPoint:
    """One label at one threshold (``probability >= threshold`` is positive), with the confusion counts."""

    threshold: float
    sensitivity: float
    specificity: float
    ppv: float
    npv: float
    f1: float
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass
class Reliability:
    """A reliability curve over equal-width probability bins (NaN where a bin is empty)."""

    bin_lower: list[float]
    bin_upper: list[float]
    count: list[int]
    mean_predicted: list[float]
    observed: list[float]


@dataclass
class LabelResult:
    """Everything scored for one output label on one set of images."""

    auroc: float
    auprc: float
    prevalence: float
    brier: float
    ece: float
    auroc_ci: Interval
    n_pos: int
    n: int
    thresholds: dict[str, OperatingPoint]  # by rule (youden, f1_max, sensitivity_90)
    reliability: Reliability

    @classmethod
    def from_dict(cls, entry: dict) -> LabelResult:
        thresholds = {rule: OperatingPoint(**point) for rule, point in entry["thresholds"].items()}
        return cls(**(entry | {"thresholds": thresholds, "reliability": Reliability(**entry["reliability"])}))


@dataclass
class BootstrapSettings:
    """How the confidence intervals were drawn: whole patients resampled, percentile intervals."""

    unit: str
    resamples: int
    seed: int
    level: float
    method: str


@dataclass
class Calibration:
    """Calibration pooled over every (image, label) pair of the summary labels."""

    bins: int
    ece: float
    brier: float
    reliability: Reliability


@dataclass
class StoreScored:
    """Which store a run was scored on, and whether it is another dataset than the run's (external validation)."""

    dataset: str
    store: str
    external: bool
    trained_on: list[str]
    unlabelled: int


@dataclass
class FindingInGroup:
    """One finding in one patient group: discrimination, rates at the run's thresholds, and the TPR gap."""

    auroc: float
    auroc_ci: Interval
    tpr: float
    fpr: float
    tpr_gap: float
    tpr_gap_ci: Interval
    gap_excludes_0: bool
    prevalence: float
    n_pos: int


@dataclass
class Underdiagnosis:
    """Among a group's images with at least one finding, the share the model calls normal (``definition`` says how
    "normal" was read), its CI, and its gap to the other groups (same rule as the TPR gap)."""

    rate: float
    ci: Interval
    definition: str
    n_sick: int
    gap: float
    gap_ci: Interval
    gap_excludes_0: bool


@dataclass
class GroupResult:
    """One group of one attribute (``sex`` ``F``, ``age`` ``80+``, ``sex*age`` ``F*80+``)."""

    n_images: int
    n_patients: int
    macro_auroc: float
    macro_auroc_ci: Interval
    macro_n_findings: int
    findings: dict[str, FindingInGroup]
    underdiagnosis: Underdiagnosis

    @classmethod
    def from_dict(cls, entry: dict) -> GroupResult:
        findings = {name: FindingInGroup(**value) for name, value in entry["findings"].items()}
        return cls(**(entry | {"findings": findings, "underdiagnosis": Underdiagnosis(**entry["underdiagnosis"])}))


@dataclass
class SubgroupSettings:
    """What the subgroup numbers rest on: the thresholds (one rule, chosen where), the age bins, the gap rule and
    the images each attribute could not place in a group."""

    rule: str
    thresholds: dict[str, float]
    thresholds_chosen_on: str
    age_bins: list[float]
    gap: str
    missing: dict[str, int]
    sources: dict[str, str]


@dataclass
class EvaluationResult:
    """One scored set: per-label records, macro/micro AUROC with CIs, calibration, and the optional parts."""

    findings: dict[str, LabelResult]
    macro_auroc: float
    macro_auroc_ci: Interval
    micro_auroc: float
    micro_auroc_ci: Interval
    n_images: int
    n_patients: int
    labels: list[str]
    macro_labels: list[str]
    thresholds_chosen_on: str
    bootstrap: BootstrapSettings
    calibration: Calibration
    per_label: str | None = None
    source: dict[str, object] | None = None
    store_scored: StoreScored | None = None
    label_set: str | None = None
    expert_rules: dict[str, list[str]] | None = None
    not_available: dict[str, str] | None = None
    report: str | None = None
    subgroups: dict[str, dict[str, GroupResult]] | None = None
    subgroup_settings: SubgroupSettings | None = None

    def to_dict(self) -> dict:
        """The ``metrics.json`` document: every field, optional ones only where set."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, document: dict) -> EvaluationResult:
        """Read a ``metrics.json`` document (as written by :meth:`to_dict`); ``ValueError`` naming what is wrong."""
        try:
            return cls._from_dict(document)
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"not a cxr metrics document: {type(error).__name__} {error}") from None

    @classmethod
    def _from_dict(cls, document: dict) -> EvaluationResult:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in document.items() if key in known}
        values["findings"] = {label: LabelResult.from_dict(e) for label, e in document["findings"].items()}
        values["bootstrap"] = BootstrapSettings(**document["bootstrap"])
        calibration = document["calibration"]
        curve = Reliability(**calibration["reliability"])
        values["calibration"] = Calibration(**(calibration | {"reliability": curve}))
        if document.get("store_scored") is not None:
            values["store_scored"] = StoreScored(**document["store_scored"])
        if document.get("subgroups") is not None:
            values["subgroups"] = {attribute: {group: GroupResult.from_dict(entry) for group, entry in groups.items()}
                                   for attribute, groups in document["subgroups"].items()}  # fmt: skip
        if document.get("subgroup_settings") is not None:
            values["subgroup_settings"] = SubgroupSettings(**document["subgroup_settings"])
        return cls(**values)


def _plain(value):
    """Dataclasses as dicts, recursively (``dataclasses.asdict`` for one, the same for dicts and lists of them)."""
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


__all__ = [
    "BootstrapSettings",
    "Calibration",
    "EvaluationResult",
    "FindingInGroup",
    "GroupResult",
    "Interval",
    "LabelResult",
    "OperatingPoint",
    "Reliability",
    "StoreScored",
    "SubgroupSettings",
    "Underdiagnosis",
]
