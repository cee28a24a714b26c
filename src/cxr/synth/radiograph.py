"""From anatomy to an 8-bit radiograph: density layers of a normal chest, their sum, and the film's processing.

The model is projection radiography reduced to its essentials: soft tissue attenuates in proportion to the
body's thickness, aerated lung subtracts attenuation in proportion to its air depth, bone and vessels add some.
Findings act on the layers (:mod:`cxr.synth.findings`): fluid or tissue replaces alveolar air (``opacity``),
free pleural air adds lucency (``air_gain``), lost lung markings fade (``vessel_keep``). Brightness then follows
an exponential attenuation curve, a percentile window and a gamma that aims at a random target mean, as
automatic exposure control and histogram-based processing of digital radiographs do; so the mean brightness of
an image says nothing about its findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from cxr.synth.anatomy import (
    LEFT,
    RIGHT,
    Anatomy,
    Pose,
    Scene,
    ellipse,
    heart_mask,
    lung_mask,
    lung_shape,
    smooth_noise,
    soft_step,
)


@dataclass
class Layers:
    """Per-pixel density layers of one image (float32, image-shaped)."""

    tissue: np.ndarray
    air: np.ndarray
    bone: np.ndarray
    vessels: np.ndarray
    extra: np.ndarray
    lungs: dict[int, np.ndarray]
    heart: np.ndarray
    opacity: np.ndarray = field(default=None)  # type: ignore[assignment]
    air_gain: np.ndarray = field(default=None)  # type: ignore[assignment]
    vessel_keep: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        shape = self.tissue.shape
        self.opacity = np.zeros(shape, np.float32) if self.opacity is None else self.opacity
        self.air_gain = np.ones(shape, np.float32) if self.air_gain is None else self.air_gain
        self.vessel_keep = np.ones(shape, np.float32) if self.vessel_keep is None else self.vessel_keep

    def add_opacity(self, opacity: np.ndarray) -> None:
        """Replace a fraction of the lung air (fluid, pus, tissue): opacities combine like independent absorbers."""
        np.multiply(1 - self.opacity, 1 - np.clip(opacity, 0, 1), out=self.opacity)
        np.subtract(1, self.opacity, out=self.opacity)

    def density(self) -> np.ndarray:
        """Total attenuation at each pixel."""
        clear = 1 - self.opacity
        added = self.tissue + self.bone + self.extra + self.vessels * self.vessel_keep * clear
        return added - self.air * self.air_gain * clear


def body_thickness(anatomy: Anatomy, scene: Scene) -> np.ndarray:
    """Soft-tissue thickness: a cylinder-like body narrowing to the neck above the shoulders."""
    shoulders = 1 / (1 + np.exp((np.float32(anatomy.shoulder_y) - scene.y) / np.float32(0.06)))
    half_width = anatomy.neck_half_width + (anatomy.body_half_width + 0.2 - anatomy.neck_half_width) * shoulders
    half_width = half_width - np.float32(0.1) * np.clip(scene.y - np.float32(0.7), 0, None)
    return np.sqrt(np.clip(1 - (scene.x / half_width) ** 2, 0, 1))


def rib_curves(anatomy: Anatomy) -> tuple[list[np.ndarray], list[float], list[float]]:
    """Posterior ribs (arching out from the spine), fainter anterior ribs, and the two clavicles."""
    first, spacing, thickness, droop = anatomy.ribs
    t = np.linspace(0, 1, 12)
    curves, widths, values = [], [], []
    for side in (RIGHT, LEFT):
        for k in range(10):
            y0 = first + k * spacing
            slope = droop + 0.015 * k
            x = side * (0.07 + 0.97 * t)
            curves.append(np.stack([x, y0 - 0.09 * np.sin(np.pi * t) + slope * t**2.5], axis=1))
            widths.append(thickness * (1 + 0.15 * k / 9))
            values.append(1.0)
            # The anterior rib continues from the lateral end, running medially and down.
            xa = side * (1.04 - 0.6 * t)
            curves.append(np.stack([xa, y0 + slope + 0.45 * t - 0.08 * np.sin(np.pi * t)], axis=1))
            widths.append(thickness * 1.2)
            values.append(0.35)
        medial_y, rise = anatomy.clavicle
        xc = side * (0.08 + 0.75 * t)
        curves.append(np.stack([xc, medial_y - rise * t + 0.03 * np.sin(2 * np.pi * t)], axis=1))
        widths.append(0.075)
        values.append(1.0)
    return curves, widths, values


def normal_layers(anatomy: Anatomy, scene: Scene) -> Layers:
    """The density layers of this patient's chest without findings."""
    x, y = scene.x, scene.y
    tissue = body_thickness(anatomy, scene)
    heart = heart_mask(anatomy, scene)
    knob_x, knob_y, knob_r = anatomy.aortic_knob
    knob = 0.8 * soft_step(1 - ellipse(scene, knob_x, knob_y, knob_r, 1.3 * knob_r), 0.3)
    lungs = {side: lung_mask(anatomy, scene, side) for side in (RIGHT, LEFT)}
    air = scene.zeros()
    for side, mask in lungs.items():
        # Air depth: thickest in the lung's centre, thinning to the pleura and into the costophrenic recesses.
        depth = np.sqrt(np.clip(1 - lung_shape(anatomy, scene, side), 0, 1))
        air += mask * (np.float32(0.35) + np.float32(0.65) * depth)
    # Parenchymal texture: the lung is not a uniform air space (a fixed pattern per patient).
    coarse, fine = smooth_noise(anatomy.texture_seed, 14), smooth_noise(anatomy.texture_seed + 1, 40)
    texture = scene.sample(coarse) + 0.5 * scene.sample(fine)
    air *= (1 - np.float32(0.95) * heart) * (1 - knob) * np.float32(anatomy.lung_air) * (1 + np.float32(0.05) * texture)
    tissue = tissue + np.float32(0.02) * heart
    # Trachea and main bronchi: an air column in the upper mediastinum.
    extra = -0.16 * soft_step(0.045 - np.abs(x), 0.02) * soft_step(-0.28 - y, 0.03) * soft_step(y + 1.4, 0.05)
    extra = extra - 0.12 * scene.polylines(
        [np.array([[0, -0.3], [-0.22, -0.08]]), np.array([[0, -0.3], [0.24, -0.06]])], [0.06, 0.055], [1.0, 1.0]
    )
    # Spine: faint vertebral bodies with end plates, seen through the mediastinum and the abdomen.
    extra += 0.07 * soft_step(0.085 - np.abs(x), 0.02) * (0.8 + 0.2 * np.cos(y * np.float32(2 * np.pi / 0.15)))
    if anatomy.breast > 0:
        for side in (RIGHT, LEFT):
            breast = soft_step(1 - ellipse(scene, side * 0.62, anatomy.abdomen_y + 0.15, 0.45, 0.35), 0.4)
            extra += 0.14 * anatomy.breast * breast
    if anatomy.gastric_bubble > 0:
        bubble = soft_step(1 - ellipse(scene, 0.45, anatomy.abdomen_y + 0.16, 0.14, 0.08), 0.25)
        extra -= 0.3 * anatomy.gastric_bubble * bubble * soft_step(y - anatomy.abdomen_y - 0.05, 0.03)
    lung_any = np.maximum(lungs[RIGHT], lungs[LEFT])
    vessels = scene.polylines(
        anatomy.vessels[:, :4].reshape(-1, 2, 2), anatomy.vessels[:, 4], np.ones(len(anatomy.vessels))
    )
    # The hila: pulmonary arteries and bronchi where each side's vessel tree starts.
    hila = sum(
        soft_step(1 - ellipse(scene, float(seg[0]), float(seg[1]) + 0.04, 0.08, 0.14), 0.5)
        for seg in anatomy.vessels[[0, len(anatomy.vessels) // 2]]
    )
    # Vessels behind the heart are hidden by it.
    vessels = (vessels + np.float32(0.6) * hila) * lung_any * (1 - heart) * np.float32(anatomy.vessel_strength)
    # Bone fades where it overlies the thick mediastinum and outside the body.
    fade = soft_step(tissue - 0.05, 0.05) * (0.3 + 0.7 * soft_step(np.abs(x) - anatomy.mediastinum_half_width, 0.05))
    bone = np.float32(0.07) * scene.polylines(*rib_curves(anatomy)) * fade
    return Layers(
        tissue=tissue.astype(np.float32),
        air=air.astype(np.float32),
        bone=bone.astype(np.float32),
        vessels=vessels.astype(np.float32),
        extra=extra.astype(np.float32),
        lungs=lungs,
        heart=heart,
    )


def expose(density: np.ndarray, pose: Pose, rng: np.random.Generator) -> np.ndarray:
    """Turn attenuation into an 8-bit image: unsharpness, attenuation curve, auto-window, target mean, noise."""
    size = density.shape[0]
    density = cv2.GaussianBlur(density, (0, 0), max(0.3, pose.blur * size))
    signal = 1 - np.exp(-np.float32(pose.exposure) * np.clip(density, 0, None))
    low, high = np.percentile(signal[::2, ::2], [0.5, 99.5])
    signal = np.clip((signal - low) / max(high - low, 1e-6), 0, 1)
    # Choose the gamma that brings the mean to the target (bisection on a subsample: fast and deterministic).
    sample = np.ascontiguousarray(signal[::3, ::3])  # the same values; 14 passes over it read it faster packed
    lo, hi = -2.0, 2.0
    for _ in range(14):
        mid = (lo + hi) / 2
        if np.mean(sample ** np.float32(np.exp(mid))) > pose.target_mean:
            lo = mid
        else:
            hi = mid
    gamma = np.exp((lo + hi) / 2 + pose.gamma_jitter)
    signal = signal ** np.float32(gamma)
    # Quantum noise, plus a little low-frequency mottle. A smaller image averages more detector pixels per pixel,
    # so its noise is lower (as if downsampled from a 256-px film).
    level = pose.noise * min(1.0, size / 256) ** 0.5
    noise = rng.standard_normal((size, size), dtype=np.float32) * np.float32(level)
    coarse = rng.standard_normal((max(2, size // 16), max(2, size // 16)), dtype=np.float32)
    noise += cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * np.float32(level * 0.5)
    image = np.clip(signal + noise, 0, 1) * 255
    return np.round(image).astype(np.uint8)
