"""``cxr localize RUN``: does Grad-CAM point at the finding? Scored against boxes, per finding.

For every (image, finding) with a box in the store (NIH's ``BBox_List_2017.csv`` for the NIH images that have one;
every finding of a synthetic dataset), restricted to one part of the run's split, the Grad-CAM map of that
finding's output is computed whatever the model predicted, and scored in model-input pixels:

- **pointing game** (Zhang et al., 2016, "Top-down neural attention by excitation backprop", ECCV): a hit when the
  map's maximum lies within ``tolerance`` pixels of a box of the finding. Zhang et al. allow 15 px at 224 px; the
  default scales that to the model input (15 / 224 of its side). The maximum of an upsampled coarse map is a
  plateau (flat up to the image edge for a border cell), so its centre is the point, not the plateau's first pixel.
  ``pointing_game_strict`` is the same without tolerance.
- **IoU** of the map thresholded at ``fraction`` × its maximum (default 0.5: pixels >= half the peak) with the
  union of the finding's boxes.
- Two baselines with the pointing game's rule: always pointing at the image centre, and pointing at a uniformly
  random pixel (the share of the image the boxes plus tolerance cover). A map is informative where it beats both.

Grad-CAM's resolution is its target layer's: input / 32 from 224 px, input / 16 below
(``cxr.models.factory.FINE_CAM_BELOW``), so the demo's 128 px inputs give 8 cells a side, which bounds how precisely a
map can point. Writes ``RUN/localize/localize.json``, ``cases.csv``, ``report.md`` and a few overlays.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.evaluation.localization import CamMapping, LocalizationRates, LocalizationResult
from cxr.imaging.preprocessing import to_unit
from cxr.inference.cam import DEFAULT_METHOD, OWN_GATE, CamMethod, grad_cam_batch, overlay, png_bytes
from cxr.inference.eager import TorchPredictor

DEFAULT_FRACTION = 0.5
ZHANG_TOLERANCE = 15 / 224  # Zhang et al. (2016): 15 px at 224 px, as a fraction of the input side
IMAGES_PER_PASS = 32  # images per batched Grad-CAM pass: bounds memory whatever the split's size


def box_mask(boxes: list[tuple[float, float, float, float]], size: int, tolerance: float = 0.0) -> np.ndarray:
    """Pixels (of a ``size`` square) whose centres lie within ``tolerance`` px of any box ``(x, y, w, h)``."""
    centres = np.arange(size) + 0.5
    mask = np.zeros((size, size), dtype=bool)
    for x, y, w, h in boxes:
        # Distance of each pixel centre to the box along each axis (0 inside); Euclidean distance to the box.
        dx = np.maximum(np.maximum(x - centres, centres - (x + w)), 0)
        dy = np.maximum(np.maximum(y - centres, centres - (y + h)), 0)
        mask |= (dy[:, None] ** 2 + dx[None, :] ** 2) <= tolerance**2
    return mask


def peak(cam_map: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the map's maximum: the centre of the plateau of maximal pixels; ``None`` if all zero."""
    top = float(cam_map.max())
    if top <= 0:
        return None
    rows, columns = np.nonzero(cam_map >= top * (1 - 1e-6))
    return int(np.floor(rows.mean())), int(np.floor(columns.mean()))


def pointing_hit(cam_map: np.ndarray, region: np.ndarray) -> bool:
    """Whether the map's :func:`peak` falls in ``region``; an all-zero map (no evidence anywhere) never hits."""
    where = peak(cam_map)
    return where is not None and bool(region[where])


def thresholded_iou(cam_map: np.ndarray, mask: np.ndarray, fraction: float = DEFAULT_FRACTION) -> float:
    """IoU of ``cam_map >= fraction * max`` with ``mask`` (0 for an all-zero map)."""
    peak = float(cam_map.max())
    if peak <= 0:
        return 0.0
    region = cam_map >= fraction * peak
    union = np.logical_or(region, mask).sum()
    return float(np.logical_and(region, mask).sum() / union) if union else 0.0


def localization_cases(store, run: Path, split: str, labels: list[str]) -> pd.DataFrame:
    """The store's boxes of ``split`` images for findings the model predicts, one row per box."""
    if not store.has_boxes:
        raise CxrError(f"store {store.path} has no boxes (its source had no BBox_List_2017.csv): nothing to localize")
    boxes = store.boxes()
    if split != "all":
        parts = pd.read_parquet(run / "split.parquet")
        known = sorted(parts["part"].unique())
        if split not in known:
            raise CxrError(f"{run / 'split.parquet'} has no part {split!r} (parts: {', '.join(known)}, or 'all')")
        boxes = boxes[boxes["image"].isin(parts.loc[parts["part"] == split, "image"])]
    boxes = boxes[boxes["finding"].isin(labels) & (boxes["w"] > 0) & (boxes["h"] > 0)]
    if boxes.empty:
        raise CxrError(f"no boxes for the model's findings among the {split!r} images of {run}")
    return boxes.reset_index(drop=True)


def localize_run(
    run: str | Path,
    split: str = "test",
    store: str | Path | None = None,
    fraction: float = DEFAULT_FRACTION,
    tolerance: float | None = None,
    examples: int = 2,
    method: str = DEFAULT_METHOD,
    layer: str | None = None,
    out: str | Path | None = None,
    gate: str | None = OWN_GATE,
) -> LocalizationResult:
    """Score the class activation maps of ``RUN/checkpoints/best.ckpt`` against the store's boxes; write
    ``RUN/localize`` (or ``out``). ``method``: a :class:`~cxr.inference.cam.CamMethod`; ``layer``: a backbone module
    to map instead of the model's own Grad-CAM layer (``benchmarks/cam_methods.py`` compares both); ``gate``: the
    module whose Grad-CAM gates the map (:func:`~cxr.inference.cam.grad_cam_batch`; default the model's, None: none).

    ``tolerance`` is in model-input pixels (default: Zhang et al.'s 15 px at 224, scaled). Returns the result
    written to ``localize.json`` (:class:`~cxr.evaluation.localization.LocalizationResult`).
    """
    if not 0 < fraction <= 1:
        raise CxrError(f"the IoU threshold fraction must be in (0, 1], got {fraction}")
    run = Path(run)
    predictor = TorchPredictor.from_path(run)
    store_path = store or predictor.artifact.config.get("store")
    if not store_path:
        raise CxrError(f"{run} does not record its store: pass --store STORE")
    store = Store(store_path)
    predictor.preprocessing.check_store(store)
    cases = localization_cases(store, run, split, predictor.labels)
    tolerance = ZHANG_TOLERANCE * predictor.input_size if tolerance is None else float(tolerance)
    method = CamMethod(method)
    if gate == OWN_GATE:
        gate = predictor.model.architecture.cam_gate
    for name in filter(None, (layer, gate)):
        try:
            predictor.model.backbone.get_submodule(name)
        except AttributeError:
            raise CxrError(f"{run}: the model has no layer {name!r} (a module name in its backbone)") from None
    out = Path(out) if out else run / "localize"
    (out / "examples").mkdir(parents=True, exist_ok=True)
    for stale in (out / "examples").glob("*.png"):  # a rerun must not list the examples of an earlier one
        stale.unlink()
    cam = functools.partial(grad_cam_batch, predictor.model, method=method, layer=layer, gate=gate)
    scores = pd.DataFrame(_score_cases(cases, store, predictor, cam, tolerance, fraction, examples, out / "examples"))
    mapping = CamMapping(
        name=method.value,
        layer=layer or predictor.model.architecture.cam_layer,
        what="the map of the box's finding, batched as the grad-cam package computes it (cxr.inference.cam)"
        + (f", times the Grad-CAM map of {gate}, rescaled to [0, 1]" if gate else ""),
        gate=gate,
    )
    result = _summarise(scores, run, split, store, fraction, tolerance, mapping)
    (out / "localize.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    scores.to_csv(out / "cases.csv", index=False)
    (out / "report.md").write_text(_report(result, sorted(p.name for p in (out / "examples").glob("*.png"))))
    return result


def _score_cases(cases, store, predictor, cam, tolerance: float, fraction: float, examples: int, out: Path):
    """One scored row per (image, finding) of ``cases``; the first ``examples`` per finding are drawn into ``out``.

    Images go through Grad-CAM :data:`IMAGES_PER_PASS` at a time (:func:`cxr.inference.cam.grad_cam_batch`: one forward
    pass per image, one partial backward pass per finding); the maps are the same as one image at a time.
    """
    pre, size = predictor.preprocessing, predictor.input_size
    groups = list(cases.groupby("row", sort=True))
    rows, shown = [], {}
    for start in range(0, len(groups), IMAGES_PER_PASS):
        part = groups[start : start + IMAGES_PER_PASS]
        views = [pre.view(store.image(int(row))) for row, _ in part]
        findings = [sorted(image_boxes["finding"].unique()) for _, image_boxes in part]
        indices = [[predictor.labels.index(finding) for finding in names] for names in findings]
        maps = cam(to_unit(np.stack(views)[:, None]), indices)
        for (_, image_boxes), view, names, image_maps in zip(part, views, findings, maps, strict=True):
            image = str(image_boxes["image"].iloc[0])
            for finding, cam_map in zip(names, image_maps, strict=True):
                boxes = [
                    pre.store_box_to_input(b.x, b.y, b.w, b.h)
                    for b in image_boxes[image_boxes["finding"] == finding].itertuples()
                ]
                rows.append(_score(image, finding, cam_map, boxes, size, tolerance, fraction))
                if shown.get(finding, 0) < examples:
                    shown[finding] = shown.get(finding, 0) + 1
                    _write_example(out / f"{Path(image).stem}_{finding}.png", view, cam_map, boxes, rows[-1])
    return rows


def _score(image: str, finding: str, cam_map: np.ndarray, boxes, size: int, tolerance: float, fraction: float):
    """The scores of one map against the finding's boxes (model-input pixels), and the two baselines."""
    mask, region = box_mask(boxes, size), box_mask(boxes, size, tolerance)
    return {
        "image": image,
        "finding": finding,
        "hit": pointing_hit(cam_map, region),
        "strict_hit": pointing_hit(cam_map, mask),
        "iou": thresholded_iou(cam_map, mask, fraction),
        "center_hit": bool(region[size // 2, size // 2]),
        "random_hit": float(region.mean()),
    }


def _rates(scores: pd.DataFrame) -> LocalizationRates:
    return LocalizationRates(
        cases=len(scores),
        pointing_game=float(scores["hit"].mean()),
        pointing_game_strict=float(scores["strict_hit"].mean()),
        mean_iou=float(scores["iou"].mean()),
        center_baseline=float(scores["center_hit"].mean()),
        random_baseline=float(scores["random_hit"].mean()),
    )


def _summarise(
    scores: pd.DataFrame, run: Path, split: str, store, fraction: float, tolerance: float, mapping: CamMapping
) -> LocalizationResult:
    return LocalizationResult(
        run=str(run),
        split=split,
        store=str(store.path),
        rule={
            "pointing_game": f"the map's maximum (centre of its plateau) within {tolerance:.1f} px of a box of the "
            "finding (Zhang et al. 2016: 15 px at 224 px, scaled to the input)",
            "pointing_game_strict": "the same, inside a box (no tolerance)",
            "iou": f"map >= {fraction} x its maximum vs the union of the finding's boxes, model-input pixels",
            "center_baseline": "pointing game of always pointing at the image centre",
            "random_baseline": "pointing game of a uniformly random point (share of the image that counts as a hit)",
        },
        tolerance_px=tolerance,
        overall=_rates(scores),
        findings={finding: _rates(group) for finding, group in scores.groupby("finding", sort=True)},
        method=mapping,
    )


def _write_example(path: Path, view: np.ndarray, cam_map: np.ndarray, boxes, case: dict) -> None:
    """Overlay at the model input, upscaled for legibility, with the boxes in white and the map's peak marked."""
    scale = max(1, 256 // view.shape[0])
    big = cv2.resize(view, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    drawn = np.ascontiguousarray(overlay(big, cv2.resize(cam_map, big.shape[::-1], interpolation=cv2.INTER_LINEAR)))
    for x, y, w, h in boxes:
        cv2.rectangle(
            drawn,
            (round(x * scale), round(y * scale)),
            (round((x + w) * scale), round((y + h) * scale)),
            (255, 255, 255),
            1,
        )
    peak_y, peak_x = peak(cam_map) or (cam_map.shape[0] // 2, cam_map.shape[1] // 2)
    centre = (int((peak_x + 0.5) * scale), int((peak_y + 0.5) * scale))
    cv2.drawMarker(drawn, centre, (255, 255, 255) if case["hit"] else (0, 0, 0), cv2.MARKER_CROSS, 4 * scale, 2)
    path.write_bytes(png_bytes(drawn))


def _report(result: LocalizationResult, example_files: list[str]) -> str:
    method = result.method
    lines = [
        f"# Heatmap localization ({method.name}): {result.split} split",
        "",
        f"Run `{result.run}`, store `{result.store}`. {method.name} on the model's `{method.layer}`: {method.what}.",
        "",
        *(f"- {name.replace('_', ' ').capitalize()}: {rule}." for name, rule in result.rule.items()),
        "",
        "| finding | cases | pointing game | strict | mean IoU | center baseline | random baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, item in {**result.findings, "**all**": result.overall}.items():
        lines.append(
            f"| {name} | {item.cases} | {item.pointing_game:.3f} | {item.pointing_game_strict:.3f} | "
            f"{item.mean_iou:.3f} | {item.center_baseline:.3f} | {item.random_baseline:.3f} |"
        )
    lines += ["", "## Examples", "", "White: the boxes; cross: the map's maximum (white when it is a hit).", ""]
    lines += [f"![{name}](examples/{name})" for name in example_files]
    return "\n".join(lines) + "\n"
