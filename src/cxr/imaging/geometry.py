"""The store's geometry: the centered square crop and boxes mapped from source pixels into store pixels.

Pure arithmetic on sizes and coordinates (scalars or arrays, no pixels), shared by ``cxr prepare``, the store's
boxes and the heatmaps' placement on the source image.
"""

from __future__ import annotations

import numpy as np

from cxr.errors import CxrError


def crop_square(width, height, crop: float):
    """The centered square kept by ``crop`` (fraction of the shorter side): ``(left, top, side)`` in pixels.

    Works on scalars or arrays of sizes (one per image); rounding is half-to-even, as Python's ``round``.
    """
    if not 0 < crop <= 1:
        raise CxrError(f"crop must be a fraction in (0, 1], got {crop}")
    width, height = np.asarray(width, dtype=np.int64), np.asarray(height, dtype=np.int64)
    side = np.maximum(1, np.rint(crop * np.minimum(width, height))).astype(np.int64)
    return (width - side) // 2, (height - side) // 2, side


def box_to_store(x, y, w, h, source_width, source_height, crop: float, size: int):
    """Map a box from source pixels (NIH ``BBox_List_2017.csv``: x, y, w, h in the PNG's pixels) to store pixels.

    Works on scalars or NumPy arrays (sizes per box too). The box is clipped to the stored square, so a box partly
    outside the crop shrinks, and one wholly outside it gets zero width or height. Returns floats ``(x, y, w, h)``.
    """
    left, top, side = crop_square(source_width, source_height, crop)
    scale = size / side
    x, y, w, h = (np.asarray(v, dtype=np.float64) for v in (x, y, w, h))
    x0, x1 = (np.clip((v - left) * scale, 0, size) for v in (x, x + w))
    y0, y1 = (np.clip((v - top) * scale, 0, size) for v in (y, y + h))
    result = (x0, y0, x1 - x0, y1 - y0)
    return tuple(float(v) for v in result) if np.ndim(x0) == 0 else result
