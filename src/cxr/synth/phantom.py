"""A synthetic patient and their radiographs: :func:`sample_patient` once, :func:`render` per image."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from cxr.labels import FINDINGS
from cxr.synth import structures
from cxr.synth.anatomy import LEFT, RIGHT, Anatomy, Pose, Scene, posed, sample_anatomy
from cxr.synth.findings import INTRAPULMONARY, PAINTERS, modify_anatomy, plan_lesions
from cxr.synth.lesion import Lesion
from cxr.synth.radiograph import Layers, expose, normal_layers

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Patient:
    """What a patient keeps across follow-ups: anatomy and the place of every finding they may show."""

    patient_id: int
    anatomy: Anatomy
    lesions: dict[str, Lesion]


@dataclass
class Radiograph:
    """One rendered image: 8-bit pixels, one box per drawn finding (x, y, w, h in pixels), the density map."""

    image: np.ndarray
    boxes: dict[str, Box]
    density: np.ndarray


def sample_patient(rng: np.random.Generator, patient_id: int, sex: str) -> Patient:
    """Draw a patient's anatomy and lesion plan."""
    anatomy = sample_anatomy(rng, sex)
    return Patient(patient_id, anatomy, plan_lesions(rng, anatomy))


def footprint_box(footprint: np.ndarray, threshold: float = 0.1) -> Box | None:
    """The bounding box (x, y, w, h; NIH's convention, pixels) of where a footprint exceeds ``threshold``."""
    mask = footprint > threshold
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)


def _fade(before: Layers, after: Layers, strength: float) -> None:
    """Move every layer of ``after`` back towards ``before``, keeping ``strength`` of the change a sign made."""

    def blend(old: np.ndarray, new: np.ndarray) -> np.ndarray:
        return (old + np.float32(strength) * (new - old)).astype(new.dtype)

    for name, value in list(vars(after).items()):
        old = getattr(before, name)
        faded = {key: blend(old[key], array) for key, array in value.items()} if isinstance(value, dict) else None
        setattr(after, name, faded if faded is not None else blend(old, value))


def render(
    patient: Patient, pose: Pose, findings: Iterable[str], size: int, rng: np.random.Generator,
    strength: Mapping[str, float] | None = None,
) -> Radiograph:  # fmt: skip
    """Render one radiograph of ``patient`` in ``pose`` showing ``findings``; ``rng`` draws only the film noise.

    ``strength`` (finding -> factor below 1) draws a finding's sign fainter (a planted group effect,
    :mod:`cxr.synth.effects`): the density layers end that fraction of the way from before the sign to after it;
    its box is unchanged. Raises ``RuntimeError`` if a finding leaves no visible sign (a bug: every label must be
    drawn).
    """
    strength = strength or {}
    present = set(findings)
    unknown = present - set(FINDINGS)
    if unknown:
        raise ValueError(f"unknown findings: {sorted(unknown)}")
    anatomy = modify_anatomy(posed(patient.anatomy, pose), patient.lesions, present)
    scene = Scene(size, pose, anatomy.aspect)
    layers = normal_layers(anatomy, scene)
    footprints = {}
    for finding, painter in PAINTERS.items():
        if finding in present:
            lesion = patient.lesions[finding].placed(anatomy)
            before = copy.deepcopy(layers) if finding in strength else None
            footprints[finding] = painter(scene, anatomy, layers, lesion)
            if before is not None:
                _fade(before, layers, strength[finding])
    for finding in present & {"Atelectasis", "Fibrosis"}:
        # Volume loss: where the lung was before its dome rose is part of the sign.
        lesion = patient.lesions[finding]
        for side in (RIGHT, LEFT) if lesion.side == 0 else (lesion.side,):
            lost = structures.lung_after(anatomy, scene, side, lesion.params["elevation"])
            footprints[finding] = np.maximum(footprints[finding], lost)
    boxes = {}
    for finding, footprint in footprints.items():
        if finding in INTRAPULMONARY:
            footprint = footprint * (1 - layers.heart)
        box = footprint_box(footprint)
        if box is None:
            raise RuntimeError(f"{finding} left no visible sign (patient {patient.patient_id})")
        boxes[finding] = box
    density = layers.density()
    return Radiograph(expose(density, pose, rng), boxes, density)
