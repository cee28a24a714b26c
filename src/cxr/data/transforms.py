"""The training view: from a store image (uint8 R×R) to a randomly jittered model input (uint8 S×S).

The store already holds the expensive, shared preprocessing (decode, crop, area resize: ``cxr.imaging.decode``); the
deterministic view that validation, test and inference share is :class:`cxr.imaging.preprocessing.Preprocessing`'s.
``TrainView`` adds random rotation, shift and flip as the original's Keras ``ImageDataGenerator``, or CheXNet's random
crop. Pixels stay uint8 until they reach the device: 4× less to copy than float32. With ``data.augment_on=device``
the loader does only the deterministic part (:class:`DeferredTrainView`) and the random part runs batched on the
device (``cxr.data.device_augment``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from cxr.errors import CxrError
from cxr.imaging.preprocessing import center_crop, resize_square, square_side


@dataclass(frozen=True)
class TrainView:
    """Random view of a store image for training: affine jitter, horizontal flip, optional random crop.

    ``rotation`` is the maximum angle in degrees and ``shift`` the maximum translation as a fraction of the side,
    both drawn uniformly in ``[-max, max]`` as Keras' ``ImageDataGenerator(rotation_range, width_shift_range,
    height_shift_range)`` does; uncovered pixels repeat the border (Keras' default ``fill_mode="nearest"``).
    ``random_crop`` takes an ``input_size`` square at a random position instead of the eval view's crop/resize.
    Randomness comes from torch's generator, which Lightning seeds per data-loader worker.
    """

    input_size: int
    eval_transform: str = "resize"
    rotation: float = 0.0
    shift: float = 0.0
    hflip: bool = False
    random_crop: bool = False

    def __call__(self, store_image: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        return self.apply(self.base(store_image), self.draw(generator))

    def draw(self, generator: torch.Generator | None = None) -> tuple[float, ...]:
        """The :data:`DRAWS` uniform numbers one view needs: angle, x shift, y shift, crop row, crop column, flip.

        Shared by the CPU path and the device path (``cxr.data.device_augment``), so both see the same
        parameters for an image in an epoch. The flip's number is drawn only with ``hflip``, as it always was, so
        existing runs keep their augmentation stream.
        """
        draws = torch.rand(5, generator=generator).tolist()
        flip = torch.rand(1, generator=generator).item() if self.hflip else 1.0
        return (*draws, flip)

    def base(self, store_image: np.ndarray) -> np.ndarray:
        """The deterministic start of the view, before any random draw: the store image, resized to the model's
        size in ``resize`` mode (jitter at the model's size: cheaper when shrinking)."""
        side = square_side(store_image)
        if self.random_crop and side < self.input_size:
            raise CxrError(f"cannot crop {self.input_size} px from a {side} px store image")
        if self.eval_transform == "resize" and not self.random_crop:
            return resize_square(store_image, self.input_size)
        return store_image

    def apply(self, image: np.ndarray, draws: tuple[float, ...]) -> np.ndarray:
        """The random part of the view on :meth:`base`'s image, with :meth:`draw`'s numbers."""
        side = image.shape[0]
        if self.rotation > 0 or self.shift > 0:
            image = self._affine(image, draws[0], draws[1], draws[2])
        if self.random_crop:
            y = int(draws[3] * (side - self.input_size + 1))
            x = int(draws[4] * (side - self.input_size + 1))
            image = image[y : y + self.input_size, x : x + self.input_size]
        elif self.eval_transform == "center_crop":
            image = center_crop(image, self.input_size)  # after the jitter, so the border holds real anatomy
        if self.hflip and draws[5] < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)

    def _affine(self, image: np.ndarray, u_angle: float, u_dx: float, u_dy: float) -> np.ndarray:
        side = image.shape[0]
        angle = (2 * u_angle - 1) * self.rotation
        matrix = cv2.getRotationMatrix2D((side / 2 - 0.5, side / 2 - 0.5), angle, 1.0)
        matrix[:, 2] += ((2 * u_dx - 1) * self.shift * side, (2 * u_dy - 1) * self.shift * side)
        return cv2.warpAffine(image, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


DRAWS = 6
"""Uniform numbers per training view (:meth:`TrainView.draw`)."""


@dataclass(frozen=True)
class DeferredTrainView:
    """A :class:`TrainView` split for the device: the loader hands over the deterministic :meth:`TrainView.base`
    image (uint8, as small as the CPU path's) and the view's draws; ``cxr.data.device_augment`` applies them to the
    whole batch on the device. The draws come from the same generator as on the CPU, so the two paths see the same
    angle, shift, crop and flip for an image in an epoch."""

    view: TrainView

    def __call__(
        self, store_image: np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[np.ndarray, tuple[float, ...]]:
        return self.view.base(store_image), self.view.draw(generator)
