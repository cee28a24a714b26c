"""Typed results of ``cxr localize`` (:mod:`cxr.evaluation.localize`): what ``localize.json`` holds.

:class:`LocalizationRates` are the scores of a set of (image, finding) cases (the pointing game with and without
tolerance, the mean IoU and the two baselines), per finding and overall; :class:`LocalizationResult` the whole run
with its rules and the Grad-CAM mapping scored. :meth:`LocalizationResult.to_dict` is ``localize.json``, key for key
and in the order it had before it was typed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class LocalizationRates:
    """Scores over ``cases`` (image, finding) pairs; the baselines score always-centre and uniformly random points."""

    cases: int
    pointing_game: float
    pointing_game_strict: float
    mean_iou: float
    center_baseline: float
    random_baseline: float


@dataclass(frozen=True)
class CamMapping:
    """Which map was scored: the Grad-CAM method, the backbone layer it maps, the layer whose Grad-CAM gates it (if
    any), and what that means."""

    name: str
    layer: str | None
    what: str
    gate: str | None = None


@dataclass(frozen=True)
class LocalizationResult:
    """``cxr localize``'s result: per finding and overall rates, the rules in words, the tolerance used."""

    run: str
    split: str
    store: str
    rule: dict[str, str]  # score name → its rule, in words (the report lists them)
    tolerance_px: float
    overall: LocalizationRates
    findings: dict[str, LocalizationRates]
    method: CamMapping

    def to_dict(self) -> dict[str, object]:
        """``localize.json``."""
        return {
            "run": self.run,
            "split": self.split,
            "store": self.store,
            "rule": self.rule,
            "tolerance_px": self.tolerance_px,
            "overall": asdict(self.overall),
            "findings": {finding: asdict(rates) for finding, rates in self.findings.items()},
            "method": asdict(self.method),
        }


__all__ = ["CamMapping", "LocalizationRates", "LocalizationResult"]
