"""Signs of the pleura, heart, diaphragm and whole lungs.

- Effusion: fluid filling the base with a meniscus rising laterally; the costophrenic angle and dome vanish.
- Pneumothorax: the lung collapses towards the hilum; the apical/lateral rim is lucent, without lung markings,
  and the visceral pleura shows as a thin white line.
- Pleural_Thickening: a smooth-to-lumpy soft-tissue band along the chest wall or over the apex.
- Cardiomegaly: the cardiac silhouette wider than half the thorax (cardiothoracic ratio > 0.5).
- Emphysema: hyperinflated, hyperlucent lungs with sparse vessels, low flat domes, a narrow heart, bullae.
- Hernia: a hiatal hernia — a rounded retrocardiac opacity above the diaphragm holding an air-fluid level.

Painters have the signature of :mod:`cxr.synth.opacities`; anatomy modifiers take and return an
:class:`~cxr.synth.anatomy.Anatomy`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cxr.synth.anatomy import (
    LEFT,
    RIGHT,
    Anatomy,
    Scene,
    ellipse,
    heart_mask,
    lung_mask,
    lung_shape,
    smooth_noise,
    soft_step,
)
from cxr.synth.lesion import Lesion
from cxr.synth.radiograph import Layers


def effusion(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Basal fluid with a meniscus: higher against the chest wall than medially (the blunted angle)."""
    footprint = scene.zeros()
    sides = (RIGHT, LEFT) if lesion.side == 0 else (lesion.side,)
    for side in sides:
        medial = anatomy.mediastinum_half_width
        lateral = np.clip((side * scene.x - np.float32(medial)) / np.float32(0.97 - medial), 0, 1)
        height = lesion.size * (1.0 if side == sides[0] else lesion.params["other"])
        surface = np.float32(anatomy.dome(side)) - np.float32(height) * (0.35 + 0.65 * lateral**2)
        fluid = soft_step(scene.y - surface, max(0.02, 1 / scene.scale)) * layers.lungs[side]
        footprint = np.maximum(footprint, fluid)
    layers.add_opacity(np.float32(lesion.params["density"]) * footprint)
    return footprint


def pneumothorax(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Collapse of one lung towards its hilum: a lucent rim without markings outside a visible pleural line."""
    side, keep = lesion.side, lesion.size  # keep: the collapsed lung's linear size relative to the normal lung
    anchor_x, anchor_y = side * 0.3, anatomy.dome(side) - 0.1
    # The collapsed lung is the normal lung shape shrunk towards the anchor (more at the apex and laterally).
    shrunk_x = np.float32(anchor_x) + (scene.x - np.float32(anchor_x)) / np.float32(keep)
    shrunk_y = np.float32(anchor_y) + (scene.y - np.float32(anchor_y)) / np.float32(keep)
    level = lung_shape(anatomy, scene, side, shrunk_x, shrunk_y)
    collapsed = soft_step(1 - level, 0.04)
    lung = layers.lungs[side]
    rim = lung * (1 - collapsed)
    # The visceral pleural line: a thin band of the collapsed lung's edge.
    width = max(0.014, 0.6 / scene.scale) * anatomy.lung_exponent / (keep * anatomy.lung_half_axes[0])
    line = np.clip(1 - np.abs(level - 1) / np.float32(width), 0, 1) * lung * (1 - layers.heart)
    layers.air_gain *= 1 + np.float32(0.45) * rim - np.float32(0.15) * collapsed * lung
    layers.vessel_keep *= 1 - rim
    layers.extra += np.float32(0.12) * line
    return np.maximum(rim, line)


def pleural_thickening(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """A soft-tissue band inside the chest wall: lateral (mid zone) or an apical cap (upper zone)."""
    side, thickness = lesion.side, lesion.size
    ax, ay_up, ay_down = anatomy.lung_half_axes
    inner = replace(anatomy, lung_half_axes=(ax - thickness, ay_up - thickness, ay_down))
    lumpy = 0.12 * scene.sample(smooth_noise(lesion.seed, 20))
    band = layers.lungs[side] * soft_step(lung_shape(inner, scene, side) - 1 + lumpy, 0.08)
    top, bottom = lesion.params["top"], lesion.params["bottom"]
    window = soft_step(scene.y - np.float32(top), 0.05) * soft_step(np.float32(bottom) - scene.y, 0.05)
    band = band * window * soft_step(side * scene.x - np.float32(anatomy.lung_center[0] - 0.15), 0.05)
    # The thickened pleura is tissue in its own right, not only lost air at the thin lung edge.
    layers.add_opacity(0.95 * band)
    layers.extra += np.float32(0.15) * band
    return band


def enlarge_heart(anatomy: Anatomy, lesion: Lesion) -> Anatomy:
    """Cardiomegaly: widen the heart to the lesion's cardiothoracic ratio, keeping it on the diaphragm."""
    cx, cy, right, left, hh = anatomy.heart
    factor = 2 * lesion.size / (right + left)
    return replace(anatomy, heart=(cx, cy - 0.04, right * factor, left * factor, hh * 1.1))


def cardiomegaly(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """The heart's visible silhouette (the enlargement itself is an anatomy change)."""
    return heart_mask(anatomy, scene) * soft_step(np.float32(max(anatomy.domes) + 0.05) - scene.y, 0.03)


def hyperinflate(anatomy: Anatomy, lesion: Lesion) -> Anatomy:
    """Emphysema: larger, darker lungs with fewer vessels, low flat domes and a narrow (tubular) heart."""
    cx, cy, right, left, hh = anatomy.heart
    ax, ay_up, ay_down = anatomy.lung_half_axes
    drop = lesion.size
    return replace(
        anatomy,
        domes=(anatomy.domes[0] + drop, anatomy.domes[1] + drop),
        dome_curvature=anatomy.dome_curvature * 0.4,
        lung_half_axes=(ax * 1.04, ay_up * 1.04, ay_down + drop),
        lung_air=anatomy.lung_air * lesion.params["lucency"],
        vessel_strength=anatomy.vessel_strength * 0.55,
        heart=(cx, cy + drop, right * 0.85, left * 0.85, hh * 0.95),
    )


def emphysema(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Bullae in the upper zones (thin-walled lucent spaces without vessels); the footprint is both lungs."""
    rng = np.random.default_rng(lesion.seed)
    for _ in range(int(lesion.params["bullae"])):
        side = rng.choice([RIGHT, LEFT])
        cx, cy, radius = side * rng.uniform(0.45, 0.65), rng.uniform(-0.75, -0.45), rng.uniform(0.1, 0.16)
        level = ellipse(scene, cx, cy, radius, radius * 0.9)
        inside = soft_step(1 - level, 0.15) * layers.lungs[side]
        layers.air_gain *= 1 + np.float32(0.18) * inside
        layers.vessel_keep *= 1 - inside
        layers.extra += np.float32(0.04) * np.clip(1 - np.abs(level - 1) / 0.08, 0, 1) * layers.lungs[side]
    return np.maximum(layers.lungs[RIGHT], layers.lungs[LEFT])


def hernia(scene: Scene, anatomy: Anatomy, layers: Layers, lesion: Lesion) -> np.ndarray:
    """Hiatal hernia: a round retrocardiac mass above the diaphragm with gas over a flat fluid level."""
    cx, cy = lesion.center
    level = ellipse(scene, cx, cy, lesion.size, lesion.size * 0.85)
    inside = soft_step(1 - level, 0.08)
    fluid_line = np.float32(cy + lesion.params["fluid"] * lesion.size)
    gas = inside * soft_step(fluid_line - scene.y, 0.6 / scene.scale) * soft_step(0.85 - level, 0.08)
    wall = np.clip(1 - np.abs(level - 1) / 0.12, 0, 1)
    layers.extra += np.float32(0.05) * wall + np.float32(0.04) * inside - np.float32(0.3) * gas
    return np.maximum(inside, wall)


def lung_after(anatomy: Anatomy, scene: Scene, side: int, elevation: float) -> np.ndarray:
    """Where a lung was before its dome rose by ``elevation`` (the volume lost to atelectasis or fibrosis)."""
    before = lung_mask(anatomy.with_dome(side, anatomy.dome(side) + elevation), scene, side)
    return np.clip(before - lung_mask(anatomy, scene, side), 0, 1)
