"""Planted group effects: a finding's sign drawn fainter for one group of patients (``cxr synth --group-effect``).

Subgroup evaluation (:mod:`cxr.evaluation.subgroups`) should find a gap where one exists and none where none does.
A synthetic dataset can make that testable: ``Effusion:age>=80:0.3`` draws Effusion at 30% of its strength in
images of patients aged 80 or more (``sex=F``, ``view=AP`` and ``age<N`` select groups the same way). The label
stays positive, so a model misses more of that group's effusions, as Seyyed-Kalantari et al. (Nature Medicine 2021)
found real classifiers do for under-served groups. Without an effect nothing changes: the same seed writes the same
bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cxr.errors import CxrError
from cxr.labels import FINDINGS, canonical_name
from cxr.synth.cohort import ImageRecord

_CONDITION = re.compile(r"^(sex|view)=(\w+)$|^age(>=|<)(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class GroupEffect:
    """``finding`` drawn at ``strength`` (0 = invisible, 1 = unchanged) where ``condition`` holds."""

    finding: str
    condition: str
    strength: float

    @classmethod
    def parse(cls, text: str) -> GroupEffect:
        """``FINDING:CONDITION:STRENGTH``, e.g. ``Effusion:age>=80:0.3`` or ``Mass:sex=F:0.2``."""
        parts = [part.strip() for part in text.split(":")]
        usage = "--group-effect takes FINDING:CONDITION:STRENGTH, e.g. Effusion:age>=80:0.3 or Mass:sex=F:0.2"
        if len(parts) != 3:
            raise CxrError(f"{usage} (got {text!r})")
        try:
            finding = canonical_name(parts[0])
        except ValueError as error:
            raise CxrError(f"{usage}: {error}") from None
        if finding not in FINDINGS:
            raise CxrError(f"{usage}: {parts[0]!r} is not one of the 14 findings")
        if not _CONDITION.match(parts[1]):
            raise CxrError(f"{usage}: condition {parts[1]!r} is not sex=F|M, view=PA|AP, age>=N or age<N")
        try:
            strength = float(parts[2])
        except ValueError:
            strength = -1.0
        if not 0.0 <= strength < 1.0:
            raise CxrError(f"{usage}: strength {parts[2]!r} must be a number in [0, 1)")
        return cls(finding, parts[1], strength)

    def applies(self, record: ImageRecord) -> bool:
        """Whether this image belongs to the group."""
        match = _CONDITION.match(self.condition)
        assert match is not None  # checked by parse
        attribute, value, operator, age = match.groups()
        if attribute is not None:
            return getattr(record, attribute) == value
        return record.age >= float(age) if operator == ">=" else record.age < float(age)


def strengths(record: ImageRecord, effects: tuple[GroupEffect, ...]) -> dict[str, float]:
    """How strongly each of this image's findings is drawn, where an effect makes it fainter than 1."""
    chosen: dict[str, float] = {}
    for effect in effects:
        if effect.finding in record.findings and effect.applies(record):
            chosen[effect.finding] = min(chosen.get(effect.finding, 1.0), effect.strength)
    return chosen
