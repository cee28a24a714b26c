"""One received radiograph through the model: probabilities exactly as ``cxr predict`` computes them, and the
Grad-CAM overlay of the positive findings for the Secondary Capture.

The pixels come from :func:`cxr.imaging.decode.decode_grayscale` on the instance's bytes (the path ``cxr predict``
takes for a ``.dcm`` file) and go through the model's :class:`~cxr.imaging.preprocessing.Preprocessing` in
:func:`cxr.inference.predict.predict_arrays`, so the SR's probabilities equal ``cxr predict``'s on the same file.
"""

from __future__ import annotations

import numpy as np

from cxr.inference.cam import grad_cam, map_to_source, overlay
from cxr.inference.predict import predict_arrays


def probabilities(predictor, gray: np.ndarray) -> dict[str, float]:
    """``{label: probability}`` of one decoded radiograph (uint8, source geometry)."""
    row = predict_arrays(predictor, [gray], batch_size=1)[0]
    return {label: float(p) for label, p in zip(predictor.labels, row, strict=True)}


def cam_overlay(predictor, gray: np.ndarray, findings: list[str]) -> np.ndarray:
    """RGB uint8 overlay (source geometry) of the pixel-wise maximum of the findings' Grad-CAM maps; the plain
    radiograph, in RGB, when no finding is positive."""
    if not findings:
        return np.repeat(gray[..., None], 3, axis=2)
    indices = [predictor.labels.index(finding) for finding in findings]
    maps = grad_cam(predictor.model, predictor.preprocessing.model_input(gray), indices)
    height, width = gray.shape
    combined = np.max([map_to_source(cam_map, width, height, predictor.preprocessing) for cam_map in maps], axis=0)
    return overlay(gray, combined)
