"""The normal chest of a synthetic patient: anatomy that a patient keeps, and a pose each image varies.

Everything is described in a *body frame*: ``x`` runs from the patient's right (-1, image left, as a PA film is
read) to the patient's left (+1) at the inner rib margins, ``y`` runs downwards with the lung apices near -0.95 and
the costophrenic angles near +0.8. A :class:`Pose` maps the body frame onto the image; :class:`Scene` holds, per
pixel, the body-frame coordinates, so every structure is a vectorised implicit shape (numpy), and thin linear
structures (ribs, vessels, clavicles) are anti-aliased ``cv2`` polylines drawn through the same mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

RIGHT, LEFT = -1, 1
"""Sides as the sign of ``x`` in the body frame (the patient's right lung is on the image's left)."""


@dataclass(frozen=True)
class Anatomy:
    """What stays the same across a patient's follow-ups: body habitus, organ sizes, ribs and vessel tree."""

    sex: str
    aspect: float  # thorax height / width scale
    body_half_width: float  # soft-tissue outline, in units of the thorax half-width
    neck_half_width: float
    shoulder_y: float
    lung_center: tuple[float, float]  # |x|, y of each lung's superellipse centre
    lung_half_axes: tuple[float, float, float]  # lateral, upwards (apex), downwards
    lung_exponent: float
    lung_air: float  # how dark aerated lung is (air depth factor)
    mediastinum_half_width: float
    domes: tuple[float, float]  # dome height of the right and left hemidiaphragm
    dome_curvature: float
    heart: tuple[float, float, float, float, float]  # centre x, centre y, right and left half-widths, half-height
    aortic_knob: tuple[float, float, float]
    ribs: tuple[float, float, float, float]  # first rib y, spacing, thickness, lateral droop
    clavicle: tuple[float, float]  # medial y, rise towards the shoulder
    breast: float  # soft-tissue shadow strength over the bases (0 for most men)
    gastric_bubble: float
    abdomen_y: float  # where the stomach and breasts sit: the left dome in health (disease does not move them)
    vessel_strength: float
    texture_seed: int  # parenchymal texture, the same in every follow-up
    vessels: np.ndarray  # (K, 5): x0, y0, x1, y1, width of each vessel segment, body frame

    def dome(self, side: int) -> float:
        """The height of the hemidiaphragm dome on ``side`` (RIGHT or LEFT)."""
        return self.domes[0 if side == RIGHT else 1]

    def with_dome(self, side: int, height: float) -> Anatomy:
        """This anatomy with the dome on ``side`` moved to ``height``."""
        domes = (height, self.domes[1]) if side == RIGHT else (self.domes[0], height)
        return replace(self, domes=domes)


@dataclass(frozen=True)
class Pose:
    """How one image shows the patient: position, rotation, scale, inspiration, projection and exposure."""

    center: tuple[float, float]  # image position of the body-frame point (0, -0.05), in fractions of the size
    scale: float  # pixels per body unit, as a fraction of the image size
    rotation: float  # radians
    inspiration: float  # dome shift (positive = deeper breath, lower domes)
    view: str  # "PA" or "AP"
    exposure: float  # attenuation-to-brightness curve steepness
    target_mean: float  # mean brightness the processing aims at (automatic exposure control)
    gamma_jitter: float
    noise: float
    blur: float  # unsharpness, as a fraction of the image size
    degraded: bool = False


def sample_anatomy(rng: np.random.Generator, sex: str) -> Anatomy:
    """Draw a patient's normal anatomy; ranges follow adult PA radiographs (cardiothoracic ratio 0.38–0.48)."""
    u = rng.uniform
    dome_right = u(0.42, 0.58)
    ctr = u(0.38, 0.47)  # cardiothoracic ratio = the heart's half-width, since the thorax half-width is 1
    right_share = u(0.3, 0.38)  # the right heart border lies closer to the midline than the left
    heart_half_height = u(0.36, 0.42)
    return Anatomy(
        sex=sex,
        aspect=u(0.93, 1.08),
        body_half_width=u(1.12, 1.4),
        neck_half_width=u(0.3, 0.42),
        shoulder_y=u(-1.12, -1.0),
        lung_center=(u(0.5, 0.54), u(0.25, 0.35)),
        lung_half_axes=(u(0.44, 0.48), u(1.2, 1.3), u(0.65, 0.8)),
        lung_exponent=u(2.2, 2.8),
        lung_air=u(0.48, 0.6),
        mediastinum_half_width=u(0.15, 0.2),
        domes=(dome_right, dome_right + u(0.02, 0.09)),  # the left dome sits a little lower
        dome_curvature=u(0.2, 0.3),
        heart=(
            u(-0.02, 0.04),
            dome_right + u(0.1, 0.16) - 0.5 * heart_half_height,
            2 * ctr * right_share,
            2 * ctr * (1 - right_share),
            heart_half_height,
        ),
        aortic_knob=(u(0.14, 0.18), u(-0.4, -0.32), u(0.06, 0.08)),
        ribs=(u(-1.0, -0.92), u(0.15, 0.17), u(0.045, 0.055), u(0.3, 0.42)),
        clavicle=(u(-0.9, -0.8), u(0.06, 0.16)),
        breast=u(0.5, 1.0) if sex == "F" else u(0.0, 0.25),
        gastric_bubble=u(0.0, 1.0) if rng.random() < 0.75 else 0.0,
        abdomen_y=dome_right + u(0.02, 0.09),
        vessel_strength=u(0.13, 0.18),
        texture_seed=int(rng.integers(2**31)),
        vessels=_vessel_tree(rng),
    )


def _vessel_tree(rng: np.random.Generator) -> np.ndarray:
    """Pulmonary vessels: trunks fanning out of each hilum, bifurcating and tapering towards the periphery."""
    segments: list[tuple[float, float, float, float, float]] = []
    for side in (RIGHT, LEFT):
        hilum = (side * rng.uniform(0.2, 0.26), rng.uniform(-0.08, 0.02))
        for angle in np.linspace(-1.35, 1.4, 10) + rng.uniform(-0.12, 0.12, 10):
            stack = [(hilum[0], hilum[1], float(angle), rng.uniform(0.14, 0.22), rng.uniform(0.024, 0.034), 0)]
            while stack:
                x, y, a, length, width, depth = stack.pop()
                x1, y1 = x + side * np.cos(a) * length, y + np.sin(a) * length
                segments.append((x, y, x1, y1, width))
                if depth < 3:
                    for turn in (-1, 1):
                        a1 = a + turn * rng.uniform(0.15, 0.55)
                        stack.append((x1, y1, a1, length * rng.uniform(0.6, 0.9), width * 0.65, depth + 1))
    return np.asarray(segments, dtype=np.float32)


def sample_pose(rng: np.random.Generator, view: str, degraded: bool = False) -> Pose:
    """Draw one image's pose and exposure; ``degraded`` images are the poor ones a blacklist would list."""
    u = rng.uniform
    return Pose(
        center=(0.5 + u(-0.025, 0.025), 0.5 + u(-0.02, 0.02)),
        scale=u(0.35, 0.41),
        rotation=u(-0.06, 0.06) + (rng.choice([-1, 1]) * u(0.25, 0.4) if degraded else 0.0),
        inspiration=u(-0.05, 0.05) - (0.05 if view == "AP" else 0.0),
        view=view,
        exposure=u(1.4, 2.4),
        target_mean=u(0.36, 0.62),
        gamma_jitter=u(-0.15, 0.15),
        noise=u(0.008, 0.025) * (3 if degraded else 1),
        blur=u(0.002, 0.005) * (3 if degraded else 1),
        degraded=degraded,
    )


def posed(anatomy: Anatomy, pose: Pose) -> Anatomy:
    """The anatomy as this image shows it: inspiration moves the domes; an AP film magnifies the heart."""
    cx, cy, right, left, hh = anatomy.heart
    magnify = 1.06 if pose.view == "AP" else 1.0
    return replace(
        anatomy,
        domes=(anatomy.domes[0] + pose.inspiration, anatomy.domes[1] + pose.inspiration),
        abdomen_y=anatomy.abdomen_y + pose.inspiration,
        heart=(cx, cy + pose.inspiration, right * magnify, left * magnify, hh * magnify),
    )


class Scene:
    """The pixel grid of one image in body-frame coordinates, and drawing helpers through the same mapping."""

    def __init__(self, size: int, pose: Pose, aspect: float):
        self.size = size
        self.scale = pose.scale * size  # pixels per body unit along x
        cos, sin = np.cos(pose.rotation), np.sin(pose.rotation)
        linear = np.array([[cos, -sin], [sin, cos]]) @ np.diag([self.scale, self.scale * aspect])
        offset = np.array(pose.center) * size - linear @ np.array([0.0, -0.05])
        self.affine = np.hstack([linear, offset[:, None]])  # body (x, y, 1) -> pixel (column, row)
        inverse = np.linalg.inv(linear)
        col, row = np.meshgrid(np.arange(size, dtype=np.float32), np.arange(size, dtype=np.float32))
        dc, dr = col - np.float32(offset[0]), row - np.float32(offset[1])
        self.x = (np.float32(inverse[0, 0]) * dc + np.float32(inverse[0, 1]) * dr).astype(np.float32)
        self.y = (np.float32(inverse[1, 0]) * dc + np.float32(inverse[1, 1]) * dr).astype(np.float32)
        self._memo: dict[tuple, np.ndarray] = {}

    def memo(self, key: tuple, compute) -> np.ndarray:
        """``compute()``, once per ``key`` for this image (read-only): a lung's shape and mask are needed by the
        normal chest, by its air depth and by volume-loss footprints alike."""
        if key not in self._memo:
            layer = compute()
            layer.flags.writeable = False
            self._memo[key] = layer
        return self._memo[key]

    def zeros(self) -> np.ndarray:
        """A float32 layer of the image's shape."""
        return np.zeros((self.size, self.size), np.float32)

    def sample(self, grid: np.ndarray, extent: float = 1.5) -> np.ndarray:
        """Look up a body-frame field (a square grid over ``[-extent, extent]²``) at every pixel, bilinearly."""
        n = grid.shape[0]
        factor = np.float32((n - 1) / (2 * extent))
        map_x = (self.x + np.float32(extent)) * factor
        map_y = (self.y + np.float32(extent)) * factor
        return cv2.remap(grid.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        """Body-frame points (..., 2) to pixel coordinates (column, row)."""
        points = np.asarray(points, np.float64)
        return points @ self.affine[:, :2].T + self.affine[:, 2]

    def polylines(self, curves, widths, values) -> np.ndarray:
        """Anti-aliased polylines (body-frame points, widths in body units, values in [0, 1]) as a float layer.

        ``curves`` is a list of (n, 2) arrays or one (K, n, 2) array. Lines thinner than a pixel are drawn one pixel
        wide and proportionally fainter, so they fade out smoothly at small image sizes instead of aliasing.
        """
        canvas = np.zeros((self.size, self.size), np.uint8)
        lengths = [len(curve) for curve in curves]
        points = np.concatenate(list(curves)) if not isinstance(curves, np.ndarray) else curves.reshape(-1, 2)
        pixels = np.round(self.to_pixels(points) * 16).astype(np.int32)  # 4 fractional bits (shift=4)
        thickness = np.asarray(widths, np.float64) * self.scale
        levels = np.round(255 * np.asarray(values) * np.minimum(1.0, thickness)).astype(int).tolist()
        pixel_widths = np.maximum(1, np.round(thickness)).astype(int).tolist()
        ends = np.cumsum(lengths).tolist()
        curves = [pixels[end - n : end] for end, n in zip(ends, lengths, strict=True)]
        # One cv2 call per run of consecutive curves of the same value and width: cv2 draws a call's curves one
        # after the other, so the canvas is the same as curve by curve, with a fraction of the calls (vessel trees
        # have hundreds of short segments).
        start = 0
        for k in range(1, len(curves) + 1):
            if k == len(curves) or (levels[k], pixel_widths[k]) != (levels[start], pixel_widths[start]):
                if levels[start] > 0:
                    cv2.polylines(canvas, curves[start:k], False, levels[start], pixel_widths[start], cv2.LINE_AA, 4)
                start = k
        return canvas.astype(np.float32) / 255


def smooth_noise(seed: int, cells: int, grid: int = 96) -> np.ndarray:
    """A body-frame random field with blobs about ``grid / cells`` grid points wide, zero mean, unit spread."""
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (grid, grid), interpolation=cv2.INTER_CUBIC)
    return (field - field.mean()) / (field.std() + 1e-6)


def bump(radius: np.ndarray) -> np.ndarray:
    """A smooth blob profile with compact support: 1 at the centre, 0 from ``radius`` 1 outwards."""
    inside = np.clip(1 - radius * radius, 0, 1)
    return inside * inside


def soft_step(value: np.ndarray, width: float) -> np.ndarray:
    """0 below ``-width``, 1 above ``+width``, linear between: a blurred edge of an implicit shape."""
    step = value / (2 * width)  # in place from here: the same arithmetic as 0.5 + value / (2 * width), no temporaries
    step += 0.5
    return np.clip(step, 0.0, 1.0, out=step)


def ellipse(scene: Scene, cx: float, cy: float, rx: float, ry: float, tilt: float = 0.0) -> np.ndarray:
    """The normalised radius of an (optionally tilted) ellipse at each pixel: < 1 inside."""
    dx, dy = scene.x - np.float32(cx), scene.y - np.float32(cy)
    if tilt:
        cos, sin = np.float32(np.cos(tilt)), np.float32(np.sin(tilt))
        dx, dy = cos * dx + sin * dy, -sin * dx + cos * dy
    return np.sqrt((dx / np.float32(rx)) ** 2 + (dy / np.float32(ry)) ** 2)


def dome_height(anatomy: Anatomy, scene: Scene, side: int) -> np.ndarray:
    """The hemidiaphragm's height at each pixel's ``x``: highest mid-lung, falling to the costophrenic angle."""
    lateral = (np.abs(scene.x) - np.float32(0.5)) / np.float32(0.45)
    return np.float32(anatomy.dome(side)) + np.float32(anatomy.dome_curvature) * lateral**2


def lung_shape(
    anatomy: Anatomy, scene: Scene | None, side: int, x: np.ndarray | None = None, y: np.ndarray | None = None
) -> np.ndarray:
    """The superellipse level of one lung (< 1 inside, 0 at its centre), before the dome cut.

    Evaluated at every pixel (computed once per image and lung geometry: read-only), or at body-frame points ``x``,
    ``y`` (e.g. a shrunken lung's coordinates).
    """
    if x is None and y is None and scene is not None:
        key = ("lung_shape", side, anatomy.lung_center, anatomy.lung_half_axes, anatomy.lung_exponent)
        return scene.memo(key, lambda: _lung_shape(anatomy, side, scene.x, scene.y))
    return _lung_shape(anatomy, side, scene.x if x is None else x, scene.y if y is None else y)


def _lung_shape(anatomy: Anatomy, side: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    cx, cy = anatomy.lung_center
    ax, ay_up, ay_down = anatomy.lung_half_axes
    p = np.float32(anatomy.lung_exponent)
    ay = np.where(y < cy, np.float32(ay_up), np.float32(ay_down))
    return np.abs((x - np.float32(side * cx)) / np.float32(ax)) ** p + np.abs((y - np.float32(cy)) / ay) ** p


def lung_mask(anatomy: Anatomy, scene: Scene, side: int) -> np.ndarray:
    """Soft mask of one lung: the superellipse, above its dome, lateral to the mediastinum (read-only, see
    :meth:`Scene.memo`)."""
    key = ("lung_mask", side, anatomy.lung_center, anatomy.lung_half_axes, anatomy.lung_exponent,
           anatomy.dome(side), anatomy.dome_curvature, anatomy.mediastinum_half_width)  # fmt: skip
    return scene.memo(key, lambda: _lung_mask(anatomy, scene, side))


def _lung_mask(anatomy: Anatomy, scene: Scene, side: int) -> np.ndarray:
    edge = 1.5 / scene.scale  # about a pixel and a half
    inside = soft_step(1 - lung_shape(anatomy, scene, side), 2 * edge)
    above_dome = soft_step(dome_height(anatomy, scene, side) - scene.y, edge)
    lateral = soft_step(side * scene.x - np.float32(anatomy.mediastinum_half_width), 2 * edge)
    return inside * above_dome * lateral


def heart_mask(anatomy: Anatomy, scene: Scene) -> np.ndarray:
    """Soft mask of the cardiac silhouette: a half-ellipse each side of its centre, sitting on the diaphragm.

    The right border (right atrium) lies close to the spine, the left (left ventricle) further out; their sum is
    the cardiothoracic ratio (times the thorax width).
    """
    cx, cy, right, left, hh = anatomy.heart
    dx = scene.x - np.float32(cx)
    half_width = np.where(dx < 0, np.float32(right), np.float32(left))
    # The apex sits low on the left: the left half leans down a little.
    dy = scene.y - np.float32(cy) - np.float32(0.12) * np.clip(dx, 0, None)
    radius = np.sqrt((dx / half_width) ** 2 + (dy / np.float32(hh)) ** 2)
    return soft_step(1 - radius, 1.5 / (scene.scale * min(right, hh)))


def heart_width(anatomy: Anatomy) -> float:
    """The transverse diameter of the heart in thorax half-widths (= the cardiothoracic ratio times 2)."""
    return anatomy.heart[2] + anatomy.heart[3]
