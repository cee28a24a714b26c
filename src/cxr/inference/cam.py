"""Class activation maps — Grad-CAM (Selvaraju et al., 2017, arXiv:1610.02391) and its variants Grad-CAM++
(Chattopadhay et al., 2018, arXiv:1710.11063), HiResCAM (Draelos & Carin, 2020, arXiv:2011.08891) and LayerCAM (Jiang
et al., 2021, IEEE TIP 30) — as the ``grad-cam`` package computes them, and their geometry.

The map is computed at the model input (``S x S``; the target is the model's ``feature_layer``: the last block —
DenseNet's rectified dense block, ResNet's ``layer4`` — from 224 px, their stride-16 block below, see ``cxr.models``)
and normalised to ``[0, 1]`` exactly as ``pytorch_grad_cam.GradCAM`` does; :func:`grad_cam_batch` computes those
maps for many images with a fraction of the package's work (``tests/inference/test_cam.py`` checks they agree). The
model input is a crop of the source image (the store's centered square, then the eval view's resize or center crop), so
:meth:`Preprocessing.input_region <cxr.imaging.preprocessing.Preprocessing.input_region>` says which square of
the source the map covers; overlays are drawn in source geometry and are
transparent / untinted outside that square. Grad-CAM installs a hook on the model and switches its weights'
``requires_grad`` off while it runs: callers that share a model between threads (``cxr serve``) hold a lock around
:func:`grad_cam`.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

import cv2
import numpy as np

from cxr.imaging.preprocessing import Preprocessing


class CamMethod(StrEnum):
    """How activations ``A`` (C, h, w) and the gradients ``G`` of a logit with respect to them make a map (each then
    ReLU'd, min-max scaled and resized as the ``grad-cam`` package does)."""

    GRADCAM = "gradcam"  # channel weights = spatial mean of G; the weighted sum of A
    GRADCAM_PLUS_PLUS = "gradcam++"  # weights from second/third-order terms of G, positive gradients only
    HIRESCAM = "hirescam"  # the element-wise product G * A summed over channels (no spatial averaging)
    LAYERCAM = "layercam"  # ReLU(G) * A summed over channels: positive evidence per location


DEFAULT_METHOD = CamMethod.LAYERCAM
"""The method of ``cxr predict --cam``, ``cxr serve``, ``cxr dicom-node`` and ``cxr localize``. Chosen by
``benchmarks/cam_methods.py`` on the demo's model against its synthetic boxes (``docs/benchmarks.md``, "Heatmaps"):
LayerCAM on the stride-8 map pointed at the box of 9 of 14 findings >= 80 % of the time (mean 0.835), every other
method and layer at most 8; on the last stage it also beat Grad-CAM (6 vs 4 of 14). On the longer-trained model of the
demo's current recipe it is still the best single map (11 of 14, mean 0.911); gated by Grad-CAM on layer3 (a model's
``cam_gate``), LayerCAM on layer1 does better still (14 of 14 on the demo's test split)."""


OWN_GATE = "own"
"""``gate=OWN_GATE``: the model's recorded ``cam_gate`` (its artifact's ``architecture.cam_gate``; no gate if unset)."""


def grad_cam(model, model_input: np.ndarray, label_indices: Sequence[int], method: str = DEFAULT_METHOD) -> np.ndarray:
    """Maps ``float32 (len(label_indices), S, S)`` in ``[0, 1]`` for one model input ``(1, S, S)``, gated as the model
    records (:func:`grad_cam_batch`)."""
    return grad_cam_batch(model, np.asarray(model_input)[None], [list(label_indices)], method=method)[0]


def grad_cam_batch(
    model,
    model_inputs: np.ndarray,
    label_indices: Sequence[Sequence[int]],
    chunk: int = 32,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    gate: str | None = OWN_GATE,
) -> list[np.ndarray]:
    """Grad-CAM maps of several inputs ``(N, 1, S, S)``: per input ``i``, ``float32 (len(label_indices[i]), S, S)``.

    The maps are ``pytorch_grad_cam.GradCAM``'s (``tests/inference/test_cam.py`` compares them), computed with less
    work: one forward pass per input, not one per (input, label), and per label only the backward pass from the logits
    to the target layer, not through the whole network and its weights. The inputs of a chunk share each pass: in eval
    mode nothing mixes samples, so the gradient of a sum of logits, one per input, is every input's own gradient.
    ``cxr localize`` maps hundreds of images this way. ``method``: a :class:`CamMethod`; ``layer``: another target
    than the model's ``feature_layer``, by its module name in the backbone (e.g. an earlier stage).

    ``gate``: a backbone module whose Grad-CAM map multiplies each map (both at the input's size and in ``[0, 1]``; the
    product min-max scaled again): a fine map of an early stage, where a finding's own sign and its neighbours' look
    alike, kept where a later stage's class-discriminative map agrees — the pairing of Guided Grad-CAM (Selvaraju et
    al., 2017: Grad-CAM times a pixel-level map) and LayerCAM's use of several stages (Jiang et al., 2021), both maps
    from one backward pass. :data:`OWN_GATE` (default): the model's ``architecture.cam_gate``; ``None``: no gate.
    """
    import torch

    method = CamMethod(method)
    target = model.backbone.get_submodule(layer) if layer else model.feature_layer
    if gate == OWN_GATE:  # a model without an architecture record (a bare module with a feature_layer) has no gate
        gate = getattr(getattr(model, "architecture", None), "cam_gate", None)
    targets = [target] + ([model.backbone.get_submodule(gate)] if gate else [])
    model.eval()
    device = next(model.parameters()).device
    inputs = np.ascontiguousarray(model_inputs, dtype=np.float32)
    size, maps = inputs.shape[-1], []
    for start in range(0, len(inputs), chunk):
        wanted = [[int(index) for index in indices] for indices in label_indices[start : start + chunk]]
        if not any(wanted):
            maps += [np.zeros((0, size, size), np.float32) for _ in wanted]
            continue
        captured = _activations_and_gradients(
            model, targets, torch.from_numpy(inputs[start : start + chunk]).to(device), wanted
        )
        (activations, gradients), gated = captured[0], captured[1:]
        for i, indices in enumerate(wanted):
            image_maps = _cam_maps(method, activations[i], gradients[: len(indices), i], size)
            for gate_activations, gate_gradients in gated:
                gate_maps = _cam_maps(CamMethod.GRADCAM, gate_activations[i], gate_gradients[: len(indices), i], size)
                image_maps = _unit_range_each(image_maps * gate_maps)
            maps.append(image_maps.astype(np.float32, copy=False))
    return maps


def _activations_and_gradients(model, targets, batch, wanted: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per target layer: its activations ``(N, C, h, w)`` (after the model's ``cam_reshape``, if any) and, per round
    ``r``, the gradient of input ``i``'s logit ``wanted[i][r]`` with respect to them, ``(R, N, C, h, w)`` (zero where
    input ``i`` has fewer labels).

    The layers below the first target the forward reaches run without autograd (the weights' ``requires_grad`` is off
    meanwhile, and that target's output re-enters the graph as a leaf), so only the layers above it keep activations
    for the backward; the later targets' outputs are captured on the way and get their gradients in the same pass.
    """
    import torch

    captured: dict[int, torch.Tensor] = {}

    def hook(position: int):
        def capture(module, args, output):
            if position in captured:  # a module run twice: its first output is the one mapped
                return None
            if not captured:  # the first target reached: from here on the forward builds a graph
                output = output.detach().requires_grad_()
            captured[position] = output
            return output

        return capture

    parameters = [p for p in model.parameters() if p.requires_grad]
    handles = [target.register_forward_hook(hook(position)) for position, target in enumerate(targets)]
    try:
        for parameter in parameters:
            parameter.requires_grad_(False)
        with torch.enable_grad():
            logits = model(batch)
            outputs = [captured[position] for position in range(len(targets))]
            rounds = max(len(indices) for indices in wanted)
            selectors = torch.zeros((rounds, *logits.shape), dtype=logits.dtype, device=logits.device)
            for i, indices in enumerate(wanted):
                selectors[range(len(indices)), i, indices] = 1
            gradients = [
                torch.autograd.grad(logits, outputs, selectors[r], retain_graph=r < rounds - 1) for r in range(rounds)
            ]
    finally:
        for handle in handles:
            handle.remove()
        for parameter in parameters:
            parameter.requires_grad_(True)
    # Transformers' targets are tokens (B, N, C) or NHWC maps: the model's ``cam_reshape`` rearranges activations
    # and gradients alike into (B, C, h, w) (a rearrangement, so the reshaped gradient is the reshaped map's).
    reshape = getattr(model, "cam_reshape", None) or (lambda tensor: tensor)
    return [
        (
            reshape(output.detach()).float().cpu().numpy(),
            torch.stack([reshape(per_round[position]) for per_round in gradients]).float().cpu().numpy(),
        )
        for position, output in enumerate(outputs)
    ]


def _cam_maps(method: CamMethod, activations: np.ndarray, gradients: np.ndarray, size: int) -> np.ndarray:
    """Maps ``(R, size, size)`` of one input from its activations ``(C, h, w)`` and gradients ``(R, C, h, w)``, step
    for step as the ``grad-cam`` package's class of the same method: the channel-summed map, ReLU, min-max scaled,
    bilinearly resized to the input, min-max scaled again."""
    if method == CamMethod.GRADCAM:
        weights = np.mean(gradients, axis=(2, 3))
        cams = (weights[:, :, None, None] * activations[None]).sum(axis=1)
    elif method == CamMethod.GRADCAM_PLUS_PLUS:
        squared = gradients**2
        cubed = squared * gradients
        # Chattopadhay et al.'s eq. 19 with an epsilon, and no weight where the gradient is 0, as the package does.
        alpha = squared / (2 * squared + np.sum(activations, axis=(1, 2))[None, :, None, None] * cubed + 1e-6)
        alpha = np.where(gradients != 0, alpha, 0)
        weights = np.sum(np.maximum(gradients, 0) * alpha, axis=(2, 3))
        cams = (weights[:, :, None, None] * activations[None]).sum(axis=1)
    elif method == CamMethod.HIRESCAM:
        cams = (gradients * activations[None]).sum(axis=1)
    else:  # LayerCAM
        cams = (np.maximum(gradients, 0) * activations[None]).sum(axis=1)
    cams = np.maximum(cams, 0)
    out = np.empty((len(cams), size, size), dtype=np.float32)
    for r, cam in enumerate(cams):
        out[r] = _unit_range(np.maximum(cv2.resize(_unit_range(cam).astype(np.float32), (size, size)), 0))
    return out


def _unit_range_each(maps: np.ndarray) -> np.ndarray:
    """:func:`_unit_range` of each map of ``(R, h, w)`` (``R`` may be 0: an image with no finding asked for)."""
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    return maps / (1e-7 + maps.max(axis=(1, 2), keepdims=True))


def _unit_range(image: np.ndarray) -> np.ndarray:
    """``pytorch_grad_cam``'s scaling: shift the minimum to 0, divide by the maximum (+1e-7: an empty map stays 0)."""
    image = image - np.min(image)
    return image / (1e-7 + np.max(image))


def map_to_source(cam_map: np.ndarray, width: int, height: int, preprocessing: Preprocessing) -> np.ndarray:
    """Place a model-input map into source geometry ``float32 (height, width)``; zero outside the input region."""
    left, top, side = preprocessing.input_region(width, height)
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
    if not findings:  # nothing positive: no preprocessing, no Grad-CAM pass (nor an ONNX file's torch twin)
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = [predictor.labels.index(finding) for finding in findings]
    maps = grad_cam(predictor.model, predictor.preprocessing.model_input(gray), indices)
    height, width = gray.shape
    written = {}
    for finding, cam_map in zip(findings, maps, strict=True):
        base = out_dir / f"{stem}_{finding.replace(' ', '_')}"
        np.save(base.with_suffix(".npy"), cam_map)
        source_map = map_to_source(cam_map, width, height, predictor.preprocessing)
        base.with_suffix(".png").write_bytes(png_bytes(overlay(gray, source_map)))
        written[finding] = {"overlay": str(base.with_suffix(".png")), "map": str(base.with_suffix(".npy"))}
    return written
