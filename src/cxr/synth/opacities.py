"""Signs inside the lung: opacities that replace alveolar air, each with the pattern a radiologist reads.

Every painter takes a :class:`~cxr.synth.lesion.Lesion` (where and how large, fixed per patient so a lesion
stays put across follow-ups), draws onto the :class:`~cxr.synth.radiograph.Layers` of one image and returns the
sign's *footprint*: a map that is large exactly where the sign was drawn, from which the recorded box is taken.

- Nodule: a small (< 3 cm), well-defined round opacity. Mass: a large (> 3 cm), lobulated round opacity.
- Infiltration: several ill-defined, patchy, moderate opacities in one region.
- Consolidation: dense homogeneous lobar opacity with a sharp straight border at a fissure.
- Pneumonia: patchy confluent opacity crossed by air bronchograms (dark branching bronchi in opaque lung).
- Atelectasis: plate-like band opacity with volume loss (the hemidiaphragm rises, see ``findings``).
- Edema: bilateral perihilar ("bat-wing") haze with indistinct vessels.
- Fibrosis: basal, peripheral reticular lines (a coarse net), with some volume loss.
"""

from __future__ import annotations

import numpy as np

from cxr.synth.anatomy import LEFT, RIGHT, Anatomy, Scene, bump, ellipse, smooth_noise, soft_step
from cxr.synth.lesion import Lesion
from cxr.synth.radiograph import Layers


def _lungs(layers: Layers, side: int) -> np.ndarray:
    """The soft mask of one lung (``side``) or both (``0``)."""
    return np.maximum(layers.lungs[RIGHT], layers.lungs[LEFT]) if side == 0 else layers.lungs[side]


def _round_lesion(scene: Scene, lesion: Lesion, lobulation: float) -> np.ndarray:
    """Signed inside-ness of a round lesion whose radius varies with angle (lobulation), in body units."""
    cx, cy = lesion.center
    dx, dy = scene.x - np.float32(cx), scene.y - np.float32(cy)
    angle = np.arctan2(dy, dx)
    a, b = lesion.params["phase_a"], lesion.params["phase_b"]
    radius = lesion.size * (1 + lobulation * (np.sin(3 * angle + a) + 0.6 * np.sin(5 * angle + b)))
    return radius - np.sqrt(dx * dx + dy * dy)


def nodule(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """A small, sharply marginated round opacity, denser than lung (often partly calcified)."""
    inside = soft_step(_round_lesion(scene, lesion, 0.03), 0.7 / scene.scale)
    layers.add_opacity(0.95 * inside)
    layers.extra += np.float32(0.06) * inside
    return inside


def mass(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """A large lobulated round opacity with a slightly soft margin."""
    inside = soft_step(_round_lesion(scene, lesion, 0.07), max(0.015, 0.8 / scene.scale))
    layers.add_opacity(0.92 * inside)
    layers.extra += np.float32(0.04) * inside
    return inside


def infiltration(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Patchy ill-defined opacities: a cluster of soft blobs of moderate density, mottled."""
    rng = np.random.default_rng(lesion.seed)
    total = scene.zeros()
    for _ in range(int(lesion.params["patches"])):
        angle, distance = rng.uniform(0, 2 * np.pi), lesion.size * np.sqrt(rng.uniform(0, 1))
        cx = lesion.center[0] + distance * np.cos(angle)
        cy = lesion.center[1] + 0.8 * distance * np.sin(angle)
        radius = rng.uniform(0.06, 0.1)
        total = np.maximum(total, bump(ellipse(scene, cx, cy, 1.6 * radius, 1.6 * radius * rng.uniform(0.7, 1.2))))
    mottle = 0.75 + 0.25 * scene.sample(smooth_noise(lesion.seed, 40))
    opacity = np.clip(total * mottle, 0, 1) * np.float32(lesion.params["density"]) * _lungs(layers, lesion.side)
    layers.add_opacity(opacity)
    return opacity / lesion.params["density"]


def consolidation(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Dense, homogeneous airspace opacity filling part of a lobe, cut sharply by a fissure.

    An upper-zone lesion lies above the (horizontal) fissure, a mid-zone one below it, against the heart border.
    """
    cx, cy = lesion.center
    fissure = np.float32(lesion.params["fissure"])
    sharp = soft_step(fissure - scene.y if cy < lesion.params["fissure"] else scene.y - fissure, 0.6 / scene.scale)
    region = soft_step(1 - ellipse(scene, cx, cy, lesion.size * 1.25, lesion.size), 0.35)
    opacity = np.float32(lesion.params["density"]) * sharp * region * _lungs(layers, lesion.side)
    layers.add_opacity(opacity)
    return opacity / lesion.params["density"]


def pneumonia(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Patchy confluent opacity, irregular margins, with air bronchograms running through it."""
    cx, cy = lesion.center
    margin = 0.25 * scene.sample(smooth_noise(lesion.seed, 12))
    region = soft_step(1 - ellipse(scene, cx, cy, lesion.size * 1.15, lesion.size) + margin, 0.3)
    patchy = 0.7 + 0.3 * scene.sample(smooth_noise(lesion.seed + 1, 28))
    opacity = region * np.clip(patchy, 0, 1) * np.float32(lesion.params["density"]) * _lungs(layers, lesion.side)
    # Air bronchograms: a small bronchial tree, entering from the hilar side, kept aerated inside the opacity.
    rng = np.random.default_rng(lesion.seed)
    start = np.array([cx - lesion.side * lesion.size * 0.9, cy - lesion.size * 0.3])
    curves, widths = [], []
    for angle in rng.uniform(-0.6, 0.9, 3):
        direction = np.array([lesion.side * np.cos(angle), np.sin(angle)])
        mid = start + direction * lesion.size * rng.uniform(0.8, 1.1)
        curves.append(np.stack([start, mid]))
        widths.append(0.032)
        for turn in (-0.45, 0.45):
            end_dir = np.array([lesion.side * np.cos(angle + turn), np.sin(angle + turn)])
            curves.append(np.stack([mid, mid + end_dir * lesion.size * rng.uniform(0.5, 0.8)]))
            widths.append(0.024)
    bronchi = scene.polylines(curves, widths, [1.0] * len(curves))
    layers.add_opacity(opacity * (1 - np.float32(0.85) * bronchi))
    return region * _lungs(layers, lesion.side)


def atelectasis_band(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Plate-like (discoid) atelectasis: one or two dense, slightly oblique bands in the lower zone."""
    cx, cy = lesion.center
    tilt, thickness = lesion.params["tilt"], lesion.params["thickness"]
    curves, widths = [], []
    for k in range(int(lesion.params["bands"])):
        offset = np.array([0.0, -k * 3.2 * thickness])
        half = np.array([np.cos(tilt), np.sin(tilt)]) * lesion.size / 2 * (1 - 0.25 * k)
        mid_sag = np.array([0.0, 0.02])
        curves.append(np.stack([(cx, cy) - half + offset, (cx, cy) + mid_sag + offset, (cx, cy) + half + offset]))
        widths.append(thickness)
    band = scene.polylines(curves, widths, [1.0] * len(curves)) * _lungs(layers, lesion.side)
    layers.add_opacity(0.9 * band)
    return band


def edema(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Bilateral perihilar haze fading towards the periphery, with blurred (indistinct) vessels."""
    haze = scene.zeros()
    for side in (RIGHT, LEFT):
        radius = ellipse(scene, side * lesion.params["hilar_x"], lesion.center[1], lesion.size, lesion.size * 1.25)
        haze = np.maximum(haze, bump(radius / 1.4))
    mottle = 0.85 + 0.15 * scene.sample(smooth_noise(lesion.seed, 30))
    opacity = haze * mottle * np.float32(lesion.params["density"]) * _lungs(layers, 0)
    layers.add_opacity(opacity)
    layers.vessel_keep *= 1 - 0.6 * haze
    return haze * _lungs(layers, 0)


def fibrosis(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Basal, peripheral reticulation: a coarse irregular net of lines over a faint haze."""
    spacing = np.float32(lesion.params["spacing"])
    warp_x = 0.8 * scene.sample(smooth_noise(lesion.seed, 18))
    warp_y = 0.8 * scene.sample(smooth_noise(lesion.seed + 1, 18))
    net = scene.zeros()
    for angle in (0.3, 1.35, 2.4):
        phase = (scene.x * np.float32(np.cos(angle)) + scene.y * np.float32(np.sin(angle))) / spacing
        line = np.abs(np.sin(np.pi * (phase + warp_x * np.float32(np.cos(angle)) + warp_y * np.float32(np.sin(angle)))))
        net = np.maximum(net, np.clip(1 - line / np.float32(0.35), 0, 1))
    sides = (RIGHT, LEFT) if lesion.side == 0 else (lesion.side,)
    zone = scene.zeros()
    for side in sides:
        base = soft_step(scene.y - np.float32(anatomy.dome(side) - lesion.size), 0.12)
        lateral = soft_step(side * scene.x - np.float32(0.3), 0.1)
        zone = np.maximum(zone, base * lateral * layers.lungs[side])
    layers.add_opacity(zone * (np.float32(0.5) * net + np.float32(0.15)))
    return zone
