"""Typed results of ``cxr compare``: what :mod:`cxr.evaluation.compare` computes, renders and writes.

Two documents, both written as ``comparison.json``: :class:`PairedComparison` (runs scored on the same images, paired
bootstrap differences against the first run) and :class:`SideBySide` (``--external``: each set with its own CI,
nothing paired). They replace nested dicts read by key string; :meth:`to_dict` gives the file's layout, key for key
and in the same order as before the records were typed (``tests/evaluation/test_compare.py`` pins the keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr.evaluation.results import Interval

MACRO = "macro"  # the key of the macro average beside the labels


@dataclass(frozen=True)
class AurocWithCi:
    """One AUROC with its patient-level bootstrap interval (``None`` where it could not be computed)."""

    auroc: float | None
    auroc_ci: Interval

    def to_dict(self) -> dict[str, float | None | Interval]:
        return {"auroc": self.auroc, "auroc_ci": self.auroc_ci}


@dataclass(frozen=True)
class PairedDifference:
    """``run - reference`` on one label (or the macro average), its paired interval and two-sided p-value."""

    difference: float
    ci: Interval
    p_value: float

    def to_dict(self) -> dict[str, float | Interval]:
        return {"difference": self.difference, "ci": self.ci, "p_value": self.p_value}


@dataclass(frozen=True)
class PairedBootstrap:
    """How the paired intervals were drawn: one resample of whole patients shared by every run."""

    resamples: int
    seed: int
    level: float
    unit: str = "patient"
    paired: bool = True

    def to_dict(self) -> dict[str, str | int | float | bool]:
        return {"unit": self.unit, "resamples": self.resamples, "seed": self.seed, "level": self.level,
                "paired": self.paired}  # fmt: skip


@dataclass(frozen=True)
class SubgroupGaps:
    """The subgroup gaps of every set side by side (:func:`cxr.evaluation.subgroup_report.gaps_side_by_side`)."""

    header: list[str]
    rows: list[list[str]]

    def to_dict(self) -> dict[str, list]:
        return {"header": self.header, "rows": self.rows}


def _gaps(gaps: SubgroupGaps | None) -> dict[str, dict[str, list]]:
    return {} if gaps is None else {"subgroup_gaps": gaps.to_dict()}


@dataclass(frozen=True)
class PairedComparison:
    """Runs on the same images: AUROCs of each run by label and ``macro``; differences of the others vs the first."""

    runs: list[str]
    labels: list[str]
    n_images: int
    n_patients: int
    bootstrap: PairedBootstrap
    auroc: dict[str, dict[str, AurocWithCi]]  # run → label | "macro" → AUROC
    differences: dict[str, dict[str, PairedDifference]]  # run (not the first) → label | "macro" → difference
    subgroup_gaps: SubgroupGaps | None = None

    @property
    def keys(self) -> list[str]:
        """The rows of every table: the labels, then ``macro``."""
        return [*self.labels, MACRO]

    def to_dict(self) -> dict[str, object]:
        """The ``comparison.json`` document."""
        return {
            "runs": self.runs,
            "labels": self.labels,
            "n_images": self.n_images,
            "n_patients": self.n_patients,
            "bootstrap": self.bootstrap.to_dict(),
            "auroc": {run: {key: value.to_dict() for key, value in entry.items()} for run, entry in self.auroc.items()},
            "differences": {
                run: {key: value.to_dict() for key, value in entry.items()} for run, entry in self.differences.items()
            },  # fmt: skip
        } | _gaps(self.subgroup_gaps)


@dataclass(frozen=True)
class SideBySide:
    """Sets on different images (``cxr compare --external``): each AUROC with its own CI; ``None`` where a set did
    not score a label, with the reason in ``not_available`` where its metrics give one."""

    split: str
    sets: list[str] = field(default_factory=list)
    kind: dict[str, str] = field(default_factory=dict)  # set → "internal", "external (nih)", "expert labels (...)"
    n_images: dict[str, int] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    auroc: dict[str, dict[str, AurocWithCi | None]] = field(default_factory=dict)  # set → label | "macro" → AUROC
    not_available: dict[str, dict[str, str]] = field(default_factory=dict)  # set → label → reason
    subgroup_gaps: SubgroupGaps | None = None

    @property
    def keys(self) -> list[str]:
        return [*self.labels, MACRO]

    def to_dict(self) -> dict[str, object]:
        """The ``comparison.json`` document of ``--external``."""
        return {
            "split": self.split,
            "sets": self.sets,
            "kind": self.kind,
            "n_images": self.n_images,
            "labels": self.labels,
            "auroc": {
                name: {key: None if value is None else value.to_dict() for key, value in entry.items()}
                for name, entry in self.auroc.items()
            },  # fmt: skip
            "not_available": self.not_available,
        } | _gaps(self.subgroup_gaps)


__all__ = ["MACRO", "AurocWithCi", "PairedBootstrap", "PairedComparison", "PairedDifference", "SideBySide",
           "SubgroupGaps"]  # fmt: skip
