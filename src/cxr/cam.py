"""Grad-CAM heatmaps (Selvaraju et al., 2017, arXiv:1610.02391) with the ``grad-cam`` package, and their geometry.

The map is computed at the model input (``S x S``; the target is the model's ``feature_layer``: the last block —
DenseNet's rectified dense block, ResNet's ``layer4`` — from 224 px, their stride-16 block below, see ``cxr.models``)
and normalised to ``[0, 1]`` by ``pytorch_grad_cam``. The model input is a crop of the source image (the store's
centered square, then the eval view's resize or center crop), so :func:`input_region` says which square of the
source the map covers; overlays are drawn in source geometry and are transparent / untinted outside that square.
Grad-CAM installs hooks on the model: callers that share a model between threads (``cxr serve``) hold a lock around
:func:`grad_cam`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cxr.imaging import crop_square


def grad_cam(model, model_input: np.ndarray, label_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps ``float32 (len(label_indices), S, S)`` in ``[0, 1]`` for one model input ``(1, S, S)``.

    One forward/backward pass over the input repeated once per label: the maps of all requested findings cost
    about as much as one batch prediction.
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not label_indices:
        size = model_input.shape[-1]
        return np.zeros((0, size, size), dtype=np.float32)
    device = next(model.parameters()).device
    batch = torch.from_numpy(np.ascontiguousarray(model_input, dtype=np.float32)[None]).to(device)
    batch = batch.expand(len(label_indices), -1, -1, -1).contiguous()
    targets = [ClassifierOutputTarget(int(index)) for index in label_indices]
    with GradCAM(model=model, target_layers=[model.feature_layer]) as cam:
        maps = cam(input_tensor=batch, targets=targets)
    return np.asarray(maps, dtype=np.float32)


def input_region(width: int, height: int, preprocessing: dict) -> tuple[float, float, float]:
    """The square of the source image (``left, top, side`` in source pixels) that the model input shows.

    Store step: centered square of ``crop`` times the shorter side, resized to ``store_size``; eval step:
    ``resize`` keeps all of it, ``center_crop`` keeps the central ``input_size`` store pixels.
    """
    left, top, side = (float(v) for v in crop_square(width, height, float(preprocessing["crop"])))
    store_size, input_size = int(preprocessing["store_size"]), int(preprocessing["input_size"])
    if preprocessing.get("eval_transform") == "center_crop" and store_size > input_size:
        scale = side / store_size
        offset = (store_size - input_size) // 2
        return left + offset * scale, top + offset * scale, input_size * scale
    return left, top, side


def map_to_source(cam_map: np.ndarray, width: int, height: int, preprocessing: dict) -> np.ndarray:
    """Place a model-input map into source geometry ``float32 (height, width)``; zero outside the input region."""
    left, top, side = input_region(width, height, preprocessing)
    canvas = np.zeros((height, width), dtype=np.float32)
    x0, y0 = round(left), round(top)
    x1, y1 = min(width, round(left + side)), min(height, round(top + side))
    if x1 > x0 and y1 > y0:
        canvas[y0:y1, x0:x1] = cv2.resize(
            cam_map.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR
        )
    return canvas


def overlay(gray: np.ndarray, source_map: np.ndarray, image_weight: float = 0.6) -> np.ndarray:
    """RGB ``uint8`` overlay of a source-geometry map on the radiograph (jet colormap, as ``grad-cam`` draws it)."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32) / 255.0
    return show_cam_on_image(rgb, np.clip(source_map, 0, 1), use_rgb=True, image_weight=image_weight)


def heatmap_rgba(source_map: np.ndarray, max_alpha: float = 0.75) -> np.ndarray:
    """RGBA ``uint8`` heatmap to lay over the image in a browser: jet colours, opacity rising with the map."""
    values = np.clip(source_map, 0, 1)
    colours = cv2.applyColorMap(np.uint8(np.rint(values * 255)), cv2.COLORMAP_JET)[..., ::-1]
    # Low activations fade out entirely, so the radiograph stays readable under the overlay.
    alpha = np.clip((values - 0.15) / 0.85, 0, 1) * max_alpha * 255
    return np.dstack([colours, np.rint(alpha).astype(np.uint8)])


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an ``uint8`` L, RGB or RGBA array as PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def safe_stem(name: str) -> str:
    """A file-name-safe stem of an image name (``00000001_000.png`` → ``00000001_000``)."""
    stem = Path(name).stem or "image"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)


def unique_stems(images: Sequence[str]) -> list[str]:
    """One file stem per image; two inputs with the same name (in different folders) get ``-2``, ``-3`` ..."""
    stems, taken = [], set()
    for image in images:
        stem, candidate, n = safe_stem(image), safe_stem(image), 1
        while candidate in taken:
            n += 1
            candidate = f"{stem}-{n}"
        taken.add(candidate)
        stems.append(candidate)
    return stems


def write_heatmaps(predictor, gray: np.ndarray, findings: Sequence[str], out_dir: Path, stem: str) -> dict:
    """Write ``<stem>_<finding>.png`` (overlay, source geometry) and ``.npy`` (raw map at the model input, float32)
    for each finding; return ``{finding: {"overlay": path, "map": path}}``."""
    from cxr.artifact import model_input

    if not findings:  # nothing positive: no preprocessing, no Grad-CAM pass (nor an ONNX file's torch twin)
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = [predictor.labels.index(finding) for finding in findings]
    maps = grad_cam(predictor.model, model_input(gray, predictor.preprocessing), indices)
    height, width = gray.shape
    written = {}
    for finding, cam_map in zip(findings, maps, strict=True):
        base = out_dir / f"{stem}_{finding.replace(' ', '_')}"
        np.save(base.with_suffix(".npy"), cam_map)
        source_map = map_to_source(cam_map, width, height, predictor.preprocessing)
        base.with_suffix(".png").write_bytes(png_bytes(overlay(gray, source_map)))
        written[finding] = {"overlay": str(base.with_suffix(".png")), "map": str(base.with_suffix(".npy"))}
    return written
