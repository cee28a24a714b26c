"""The 14 findings as lesions: where each sits in a patient's chest, how it changes anatomy, and its painter.

A patient gets one :class:`Lesion` per finding, planned once (:func:`plan_lesions`) so that a finding keeps its
place across follow-ups and findings that co-occur tend to fall in different lung zones (right/left ×
upper/mid/lower), as separate, readable signs. Which lesions an image shows is decided by its labels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from cxr.labels import FINDINGS
from cxr.synth import opacities, structures
from cxr.synth.anatomy import LEFT, RIGHT, Anatomy, lung_shape
from cxr.synth.lesion import Lesion

Painter = Callable[..., np.ndarray]

ZONE_Y = {"upper": -0.55, "mid": -0.12}
"""Heights of the upper and mid zones; the lower zone is placed relative to each dome (it moves with breathing)."""


def _inside_lung(anatomy: Anatomy, x: float, y: float, side: int, margin: float) -> bool:
    """Whether a disc of radius ``margin`` at (x, y) lies in the lung, clear of the largest heart drawn."""
    xs = np.float32([x, x - margin, x + margin, x, x])
    ys = np.float32([y, y, y, y - margin, y + margin])
    if np.any(side * xs < anatomy.mediastinum_half_width) or np.any(lung_shape(anatomy, None, side, xs, ys) > 0.9):
        return False
    if y + margin > anatomy.dome(side) - 0.12:  # room for deep inspiration or volume loss raising the dome
        return False
    cx, cy, right, left, hh = anatomy.heart
    half_width = 0.7 * (right if x < cx else left) / (right + left) * 2 + margin  # cardiomegaly on an AP film
    return ((x - cx) / half_width) ** 2 + ((y - cy) / (hh * 1.2 + margin)) ** 2 > 1


def _spot(rng: np.random.Generator, anatomy: Anatomy, side: int, zone: str, margin: float) -> tuple | None:
    """A random point of a lung zone where a lesion of radius ``margin`` fits, or None if the zone has no room."""
    y0 = ZONE_Y.get(zone, anatomy.dome(side) - 0.3)
    for _ in range(40):
        x, y = side * rng.uniform(0.3, 0.8), y0 + rng.uniform(-0.16, 0.16)
        if _inside_lung(anatomy, x, y, side, margin):
            return float(x), float(y)
    return None


def _lesion(finding: str, side: int, center=(0.0, 0.0), size: float = 0.0, seed: int = 0, **params) -> Lesion | None:
    if center is None:
        return None
    values = {name: float(value) for name, value in params.items()}
    return Lesion(finding, side, (float(center[0]), float(center[1])), float(size), values, seed)


def _sample(rng: np.random.Generator, anatomy: Anatomy, finding: str, side: int, zone: str) -> Lesion | None:
    """Draw the lesion of ``finding`` in the given zone (ignored by findings with a fixed place); None if no room."""
    u, seed = rng.uniform, int(rng.integers(2**31))
    phases = {"phase_a": u(0, 2 * np.pi), "phase_b": u(0, 2 * np.pi)}
    if finding == "Nodule":
        size = u(0.065, 0.09)
        return _lesion(finding, side, _spot(rng, anatomy, side, zone, size + 0.03), size, seed, **phases)
    if finding == "Mass":
        size = u(0.17, 0.23)
        return _lesion(finding, side, _spot(rng, anatomy, side, zone, size * 0.8), size, seed, **phases)
    if finding == "Infiltration":
        center = _spot(rng, anatomy, side, zone, 0.16)
        return _lesion(finding, side, center, u(0.2, 0.26), seed, patches=rng.integers(6, 11), density=u(0.7, 0.85))
    if finding == "Consolidation":
        center, size = _spot(rng, anatomy, side, zone, 0.16), u(0.26, 0.34)
        if center is None:
            return None
        fissure = center[1] + (1 if zone == "upper" else -1) * size * u(0.45, 0.75)
        return _lesion(finding, side, center, size, seed, fissure=fissure, density=u(0.85, 0.95))
    if finding == "Pneumonia":
        center = _spot(rng, anatomy, side, zone, 0.16)
        return _lesion(finding, side, center, u(0.21, 0.28), seed, density=u(0.7, 0.85))
    if finding == "Atelectasis":
        elevation = u(0.09, 0.14)
        above = u(0.18, 0.26)  # above the dome once it has risen
        center = (side * u(0.5, 0.62), 0.0)
        return _lesion(
            finding,
            side,
            center,
            u(0.32, 0.45),
            seed,
            elevation=elevation,
            above_dome=above,
            tilt=side * u(-0.35, 0.15),
            thickness=u(0.045, 0.065),
            bands=rng.integers(1, 3),
        )
    if finding == "Effusion":
        return _lesion(finding, side, size=u(0.18, 0.36), seed=seed, other=u(0.5, 1.0), density=u(0.85, 0.95))
    if finding == "Pneumothorax":
        return _lesion(finding, side, size=u(0.6, 0.78), seed=seed)
    if finding == "Pleural_Thickening":
        top, bottom = (-1.3, -0.62) if zone == "upper" else (u(-0.6, -0.4), u(0.0, 0.25))
        return _lesion(finding, side, size=u(0.07, 0.1), seed=seed, top=top, bottom=bottom)
    if finding == "Edema":
        return _lesion(
            finding, 0, (0.0, u(-0.08, 0.02)), u(0.3, 0.38), seed, hilar_x=u(0.24, 0.32), density=u(0.6, 0.75)
        )
    if finding == "Fibrosis":
        return _lesion(finding, side, size=u(0.38, 0.52), seed=seed, spacing=u(0.075, 0.095), elevation=u(0.03, 0.06))
    if finding == "Emphysema":
        return _lesion(finding, 0, size=u(0.1, 0.15), seed=seed, lucency=u(1.2, 1.35), bullae=rng.integers(0, 3))
    if finding == "Cardiomegaly":
        return _lesion(finding, 0, size=u(0.55, 0.63), seed=seed)
    if finding == "Hernia":
        center, size = (u(0.0, 0.1), 0.0), u(0.12, 0.16)
        return _lesion(finding, LEFT, center, size, seed, above_dome=u(0.1, 0.16), fluid=u(-0.1, 0.3))
    raise ValueError(f"unknown finding {finding!r}")


# Where each finding may sit: lung zones to choose among, or a fixed place (with the zones it crowds).
PLACES: dict[str, tuple[str, ...]] = {
    "Nodule": ("upper", "mid", "lower"),
    "Mass": ("upper", "mid", "lower"),
    "Infiltration": ("upper", "mid", "lower"),
    "Consolidation": ("upper", "mid"),
    "Pneumonia": ("mid", "lower"),
    "Atelectasis": ("lower",),
    "Effusion": ("lower",),
    "Pneumothorax": ("upper",),
    "Pleural_Thickening": ("upper", "mid"),
}
FIXED = {"Edema": ("mid",), "Fibrosis": ("lower",), "Emphysema": (), "Cardiomegaly": (), "Hernia": ()}


def plan_lesions(rng: np.random.Generator, anatomy: Anatomy) -> dict[str, Lesion]:
    """One lesion per finding for a patient, spread over the six lung zones so co-occurring signs rarely overlap."""
    occupancy = {(side, zone): 0.0 for side in (RIGHT, LEFT) for zone in ("upper", "mid", "lower")}
    for zones in FIXED.values():
        for zone in zones:
            occupancy[(RIGHT, zone)] += 0.5
            occupancy[(LEFT, zone)] += 0.5
    lesions = {}
    for finding in rng.permutation(FINDINGS):
        finding = str(finding)
        if finding in FIXED:
            draw = rng.random()  # fibrosis is mostly bilateral; everything else fixed is central
            side = 0 if finding != "Fibrosis" or draw < 0.8 else (RIGHT if draw < 0.9 else LEFT)
            lesions[finding] = _sample(rng, anatomy, finding, side, "lower")
            continue
        options = [(side, zone) for side in (RIGHT, LEFT) for zone in PLACES[finding]]
        scores = np.array([occupancy[option] for option in options]) + rng.uniform(0, 0.1, len(options))
        if finding == "Effusion" and rng.random() < 0.2:
            lesions[finding] = _sample(rng, anatomy, finding, 0, "lower")  # bilateral
            occupancy[(RIGHT, "lower")] += 1
            occupancy[(LEFT, "lower")] += 1
            continue
        for choice in np.argsort(scores, kind="stable"):
            side, zone = options[int(choice)]
            lesion = _sample(rng, anatomy, finding, side, zone)
            if lesion is not None:
                break
        else:
            raise RuntimeError(f"no room for {finding} in this anatomy")  # a bug: the ranges leave room
        lesions[finding] = lesion
        occupancy[(side, zone)] += 1
    return {finding: lesions[finding] for finding in FINDINGS}


def modify_anatomy(anatomy: Anatomy, lesions: dict[str, Lesion], findings: set[str]) -> Anatomy:
    """Apply the anatomic changes of the present findings (volume loss, hyperinflation, cardiac enlargement)."""
    if "Emphysema" in findings:
        anatomy = structures.hyperinflate(anatomy, lesions["Emphysema"])
    if "Fibrosis" in findings:
        lesion = lesions["Fibrosis"]
        for side in (RIGHT, LEFT) if lesion.side == 0 else (lesion.side,):
            anatomy = anatomy.with_dome(side, anatomy.dome(side) - lesion.params["elevation"])
    if "Atelectasis" in findings:
        lesion = lesions["Atelectasis"]
        anatomy = anatomy.with_dome(lesion.side, anatomy.dome(lesion.side) - lesion.params["elevation"])
    if "Cardiomegaly" in findings:
        anatomy = structures.enlarge_heart(anatomy, lesions["Cardiomegaly"])
    return anatomy


PAINTERS: dict[str, Painter] = {
    # Drawing order: broad pleural and airspace changes first, focal lesions over them, air last.
    "Effusion": structures.effusion,
    "Consolidation": opacities.consolidation,
    "Pneumonia": opacities.pneumonia,
    "Infiltration": opacities.infiltration,
    "Atelectasis": opacities.atelectasis_band,
    "Edema": opacities.edema,
    "Fibrosis": opacities.fibrosis,
    "Mass": opacities.mass,
    "Nodule": opacities.nodule,
    "Pleural_Thickening": structures.pleural_thickening,
    "Hernia": structures.hernia,
    "Cardiomegaly": structures.cardiomegaly,
    "Emphysema": structures.emphysema,
    "Pneumothorax": structures.pneumothorax,
}
INTRAPULMONARY = {"Consolidation", "Pneumonia", "Infiltration", "Atelectasis", "Edema", "Fibrosis", "Mass", "Nodule"}
"""Signs hidden where the heart covers the lung: their footprint (and box) keeps to the visible lung."""
