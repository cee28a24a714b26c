"""Benchmark: ``cxr synth`` throughput (images/s), one worker vs all cores, and the per-image cost of each stage.

Target (issue 3): 1,000 images at 256 px "well under a minute" on 2 cores. The run also checks that the outputs of
1 and N workers are byte-identical (the determinism contract), and times rendering alone vs PNG encoding.

    .venv/bin/python benchmarks/synth.py [--images 1000] [--size 256] [--workers N]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from cxr.synth import generate, plan_cohort, render_record


def digest(root: Path) -> str:
    """One hash over every file's relative path and bytes."""
    total = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        total.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return total.hexdigest()


def timed_generate(out: Path, images: int, size: int, workers: int) -> float:
    start = time.perf_counter()
    generate(out, images=images, size=size, seed=0, prevalence="nih", workers=workers)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} cores; {args.images} images at {args.size} px")

    # Stage costs, in this process: rendering (numpy + cv2) vs PNG encoding.
    records = plan_cohort(200, 0, "nih")
    start = time.perf_counter()
    pixels = [render_record(record, args.size, 0)[0] for record in records]
    render_ms = (time.perf_counter() - start) / len(records) * 1000
    start = time.perf_counter()
    for image in pixels:
        Image.fromarray(image, "L").save(io.BytesIO(), format="PNG")
    encode_ms = (time.perf_counter() - start) / len(records) * 1000
    print(f"per image: render {render_ms:.1f} ms, PNG encode {encode_ms:.1f} ms")

    with tempfile.TemporaryDirectory() as scratch:
        one = timed_generate(Path(scratch) / "one", args.images, args.size, 1)
        many = timed_generate(Path(scratch) / "many", args.images, args.size, args.workers)
        same = digest(Path(scratch) / "one") == digest(Path(scratch) / "many")
    print(f"1 worker:  {one:6.1f} s  {args.images / one:7.1f} images/s")
    print(f"{args.workers} workers: {many:6.1f} s  {args.images / many:7.1f} images/s  (speed-up {one / many:.2f}x)")
    print(f"byte-identical across worker counts: {same}")
    if not same:
        raise SystemExit("outputs differ between worker counts")
    per_minute = np.floor(60 * args.images / many)
    print(f"=> {per_minute:.0f} images per minute at {args.size} px with {args.workers} workers")


if __name__ == "__main__":
    main()
