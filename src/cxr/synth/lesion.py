"""A finding's sign in one patient (:class:`Lesion`): what ``findings`` plans and every painter draws.

In a module of its own so that ``findings`` (which plans lesions and picks their painters) and the painters
(``opacities``, ``structures``) can all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cxr.synth.anatomy import LEFT, Anatomy


@dataclass(frozen=True)
class Lesion:
    """One finding's sign in one patient: side (RIGHT, LEFT, or 0 when bilateral/central), place and size."""

    finding: str
    side: int
    center: tuple[float, float] = (0.0, 0.0)
    size: float = 0.0
    params: dict[str, float] = field(default_factory=dict)
    seed: int = 0

    def placed(self, anatomy: Anatomy) -> Lesion:
        """This lesion with a dome-relative height (``above_dome``) resolved against this image's anatomy."""
        if "above_dome" not in self.params:
            return self
        dome = anatomy.dome(self.side or LEFT)
        return Lesion(
            self.finding,
            self.side,
            (self.center[0], dome - self.params["above_dome"]),
            self.size,
            self.params,
            self.seed,
        )
