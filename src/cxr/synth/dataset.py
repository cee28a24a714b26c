"""Write a synthetic dataset in NIH ChestX-ray14's exact layout, rendering images in parallel processes.

Layout and formats copy the NIH release (and ``../shared/data/nih-sample``): ``images_001/images/*.png``
(8-bit grayscale, a few RGBA), ``Data_Entry_2017_v2020.csv`` (CRLF line ends), ``train_val_list.txt`` and
``test_list.txt`` (no newline after the last name), ``blacklist.csv`` (header ``black``, CR-only line ends) and
``BBox_List_2017.csv`` (``Infiltrate`` spelled as NIH does, x/y/w/h in the PNG's pixels). Each image's randomness
comes from ``(seed, image index)`` and each patient's from ``(seed, patient id)``, so the bytes written do not
depend on the number of workers.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import lru_cache
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.synth.anatomy import sample_pose
from cxr.synth.cohort import ImageRecord, plan_cohort
from cxr.synth.effects import GroupEffect, strengths
from cxr.synth.layouts import chexpert_path, chexpert_tables
from cxr.synth.phantom import Box, Patient, render, sample_patient

DATA_ENTRY = "Data_Entry_2017_v2020.csv"
DATA_ENTRY_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
BBOX_LIST = "BBox_List_2017.csv"
BBOX_HEADER = "Image Index,Finding Label,Bbox [x,y,w,h],,,"
BBOX_SPELLING = {"Infiltration": "Infiltrate"}
FIELDS_OF_VIEW_MM = (420.0, 427.856, 424.784, 392.7)  # NIH detectors: 2500×0.168, 2992×0.143, 3056×0.139 ...
MIN_SIZE, MAX_SIZE = 32, 4096
LAYOUTS = ("nih", "chexpert")
CHUNK = 16


@lru_cache(maxsize=64)
def patient(seed: int, patient_id: int, sex: str) -> Patient:
    """The patient with this id in the dataset of this seed (cached: follow-ups share one patient)."""
    return sample_patient(np.random.default_rng([seed, 1, patient_id]), patient_id, sex)


def render_record(
    record: ImageRecord, size: int, seed: int, effects: tuple[GroupEffect, ...] = ()
) -> tuple[np.ndarray, dict[str, Box]]:
    """The pixels and boxes of one dataset image; blacklisted images are degraded (rotated, blurred, noisy);
    ``effects`` draw some findings fainter in their group (:mod:`cxr.synth.effects`)."""
    rng = np.random.default_rng([seed, 2, record.index])
    pose = sample_pose(rng, record.view, degraded=record.blacklisted)
    faint = strengths(record, effects)
    radiograph = render(patient(seed, record.patient_id, record.sex), pose, record.findings, size, rng, faint)
    return radiograph.image, radiograph.boxes


PNG_COMPRESS_LEVEL = 1
"""zlib level of the PNGs: the same pixels as the default (6) in ~65% of its encoding time, files ~10% larger."""


def _write_png(path: Path, image: np.ndarray, rgba: bool) -> None:
    from PIL import Image

    if rgba:  # as NIH's few RGBA files: gray in R, G and B, opaque alpha
        image = np.dstack([image, image, image, np.full_like(image, 255)])
        Image.fromarray(image, "RGBA").save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        Image.fromarray(image, "L").save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _render_chunk(
    out: str, size: int, seed: int, records: list[ImageRecord], layout: str = "nih", effects: tuple = ()
) -> list[tuple[int, dict[str, Box]]]:
    results = []
    for record in records:
        image, boxes = render_record(record, size, seed, effects)
        if layout == "chexpert":
            _write_jpeg(Path(out) / chexpert_path(record), image)
        else:
            _write_png(Path(out) / record.folder / "images" / record.name, image, record.rgba)
        results.append((record.index, boxes))
    return results


def _write_jpeg(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "L").save(path, format="JPEG", quality=95)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; threads inside would oversubscribe


def _render_all(
    out: Path, size: int, seed: int, records: list[ImageRecord], workers: int, layout: str = "nih",
    effects: tuple[GroupEffect, ...] = (),
) -> Iterator[tuple]:  # fmt: skip
    chunks = [records[i : i + CHUNK] for i in range(0, len(records), CHUNK)]
    if workers == 1:
        for chunk in chunks:
            yield from _render_chunk(str(out), size, seed, chunk, layout, effects)
        return
    # Not fork: the caller may hold threads (torch, a progress bar) that a forked child would inherit mid-state.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
        futures = [pool.submit(_render_chunk, str(out), size, seed, chunk, layout, effects) for chunk in chunks]
        for future in as_completed(futures):
            yield from future.result()


def _number(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def write_metadata(
    out: Path, records: list[ImageRecord], boxes: dict[int, dict[str, Box]], size: int, seed: int
) -> None:
    """Write the CSVs and lists beside the images, byte for byte in NIH's formats."""
    fov = np.random.default_rng([seed, 3]).choice(FIELDS_OF_VIEW_MM, size=len(records))
    rows = [DATA_ENTRY_HEADER]
    for record, field_of_view in zip(records, fov, strict=True):
        spacing = _number(round(field_of_view / size, 6))
        rows.append(
            f"{record.name},{record.finding_labels},{record.follow_up},{record.patient_id},{record.age},"
            f"{record.sex},{record.view},{size},{size},{spacing},{spacing}"
        )
    (out / DATA_ENTRY).write_bytes(("\r\n".join(rows) + "\r\n").encode())
    for split, filename in (("train_val", "train_val_list.txt"), ("test", "test_list.txt")):
        names = sorted(record.name for record in records if record.split == split)
        (out / filename).write_bytes("\n".join(names).encode())
    black = sorted(record.name for record in records if record.blacklisted)
    (out / "blacklist.csv").write_bytes("\r".join(["black", *black]).encode())
    box_rows = sorted(
        (BBOX_SPELLING.get(finding, finding), record.index, record.name, box)
        for record in records
        for finding, box in boxes[record.index].items()
    )
    lines = [BBOX_HEADER] + [f"{name},{label},{','.join(map(_number, box))}" for label, _, name, box in box_rows]
    (out / BBOX_LIST).write_bytes(("\n".join(lines) + "\n").encode())


def generate(
    out: str | os.PathLike,
    images: int = 1000,
    size: int = 256,
    seed: int = 0,
    prevalence: str = "nih",
    workers: int | None = None,
    progress: bool = False,
    layout: str = "nih",
    effects: tuple[GroupEffect, ...] = (),
) -> Path:
    """Write a synthetic NIH-format dataset of ``images`` radiographs (``size`` px square) to ``out``; return it.

    ``prevalence`` is ``"nih"`` (NIH's label frequencies, No Finding ~54%) or ``"flat"`` (every finding ~21%).
    ``workers`` processes render in parallel (default: all cores); the output is byte-identical for a seed
    whatever the number of workers. ``layout`` ``"chexpert"`` writes the same cohort as CheXpert ships its data
    (:mod:`cxr.synth.layouts`). ``effects`` plant group effects (a finding drawn fainter in one group; listed in
    ``group_effects.json``; none: the files are exactly those without the option). Raises
    :class:`~cxr.errors.CxrError` for bad arguments or a non-empty ``out``.
    """
    out = Path(out)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise CxrError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    if workers is not None and workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CxrError(f"{out} already exists and is not an empty folder; choose another output or remove it")
    if layout not in LAYOUTS:
        raise CxrError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    records = plan_cohort(images, seed, prevalence)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "nih":
        for folder in sorted({record.folder for record in records}):
            (out / folder / "images").mkdir(parents=True, exist_ok=True)
    workers = min(workers or os.cpu_count() or 1, max(1, len(records) // CHUNK))
    boxes: dict[int, dict[str, Box]] = {}
    results = _render_all(out, size, seed, records, workers, layout, tuple(effects))
    if progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"rendering {len(records)} images", total=len(records))
            for index, image_boxes in results:
                boxes[index] = image_boxes
                bar.advance(task)
    else:
        boxes.update(results)
    if layout == "chexpert":
        for name, content in chexpert_tables(records, seed).items():
            (out / name).write_bytes(content)
    else:
        write_metadata(out, records, boxes, size, seed)
    if effects:
        planted = [{"finding": e.finding, "condition": e.condition, "strength": e.strength} for e in effects]
        (out / "group_effects.json").write_text(json.dumps(planted, indent=2) + "\n")
    return out
