"""Pixel arrays → 8-bit grey: the depth mapping and the one colour conversion, shared by both decoders.

PNG/JPEG (:mod:`cxr.imaging.decode`) and DICOM (:mod:`cxr.imaging.dicom`) colour images become grey here, by the
same weights, so a radiograph looks the same whatever format it came in.
"""

from __future__ import annotations

import cv2
import numpy as np


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map a deeper image to 8 bits by its own range (min -> 0, max -> 255); a flat image becomes all zeros."""
    if pixels.dtype == np.uint8:
        return pixels
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (pixels.astype(np.float32) - low) * np.float32(255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def color_to_gray(pixels: np.ndarray, rgb: bool = False) -> np.ndarray:
    """Colour ``(H, W, C)`` -> 8-bit grey: ITU-R 601-2 luma (Pillow's ``L`` weights, in OpenCV's fixed point), then
    deeper images by their own range, as :func:`to_uint8` maps grey ones. The package's one colour conversion.

    Channels are BGR(A), as OpenCV decodes, or RGB(A) with ``rgb`` (DICOM RGB, YBR and PALETTE COLOR). Depths that
    ``cv2.cvtColor`` does not take (32-bit integers, float64) go through float32, plenty for an 8-bit result.
    """
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        pixels = pixels.astype(np.float32)
    codes = {3: cv2.COLOR_RGB2GRAY, 4: cv2.COLOR_RGBA2GRAY} if rgb else {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
    code = codes.get(pixels.shape[2])
    return to_uint8(cv2.cvtColor(pixels, code) if code is not None else pixels[..., 0])
