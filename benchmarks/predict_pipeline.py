"""Benchmark: ``cxr predict`` on a folder of full-size PNGs against the decoding and model rates it is built from.

Copies the real 1024x1024 NIH sample PNGs (``tests/fixtures/nih-sample``) into a temporary folder until it holds
``--images`` files, writes a random-init ResNet-18 artifact (the demo's model: 112 px, 14 findings, GAP head), then
measures in one run, each after one untimed warm-up pass over a few files:

- D: decoding + preprocessing alone (the pipeline's own decoder, ``cxr.inference.pipeline.decoded_images``) in
  ``--workers`` processes, pool start included;
- M: the model alone on preloaded batches of ``--batch-size`` (``predictor.probabilities``);
- P: the pipeline ``cxr predict`` runs (``cxr.inference.predict.iter_predictions``: the pool decodes while the model
  runs), records consumed as they come, pool start included.

On a CPU, decoding and the model share the cores, so the reference is 1/(1/D + 1/M) (the rate of doing one after the
other with every core on each); on a GPU (``--device cuda``) they run side by side and the reference is min(D, M).
Prints images/s for each and P / reference (goal >= 0.85, issue 24), with the load average. With ``--devices`` (e.g.
``--devices 2`` on a machine with two GPUs) it also times ``cxr predict --devices`` (process start and model loading
on each device included) and prints its ratio to P on one device. Not a test.

    .venv/bin/python benchmarks/predict_pipeline.py [--images 300] [--workers N] [--size 112] [--device cpu]
        [--devices 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from cxr.labels import FINDINGS

SAMPLE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "nih-sample" / "images"


def make_folder(folder: Path, images: int) -> list[Path]:
    sources = sorted(SAMPLE.glob("*.png"))
    paths = []
    for k in range(images):
        path = folder / f"{k:06d}_{sources[k % len(sources)].name}"
        shutil.copyfile(sources[k % len(sources)], path)
        paths.append(path)
    return paths


def build(folder: Path, size: int) -> Path:
    import torch

    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", len(FINDINGS), head="gap", input_size=size, labels=list(FINDINGS))
    return write_artifact(folder / "resnet18.ckpt", model, list(FINDINGS), make_preprocessing(model, size, 1.0))


def rate(images: int, run) -> float:
    start = time.perf_counter()
    run()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=112, help="Model input (and store) size; the demo's is 112.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--devices", default=None, help="Also time cxr predict --devices (N, or cuda:0,cuda:1).")
    args = parser.parse_args()

    from cxr.imaging.preprocessing import to_unit
    from cxr.inference.devices import parse_devices
    from cxr.inference.pipeline import decoded_images
    from cxr.inference.predict import iter_predictions, load_predictor

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_folder(folder, args.images)
        predictor = load_predictor(build(Path(tmp), args.size), device=args.device)
        pre = predictor.preprocessing

        list(decoded_images(paths[:8], pre, 1))  # warm-up: imports, first decode
        views = [item.view for item in decoded_images(paths, pre, args.workers)]
        decode = rate(len(paths), lambda: list(decoded_images(paths, pre, args.workers)))

        batches = [
            to_unit(np.stack(views[s : s + args.batch_size]))[:, None] for s in range(0, len(views), args.batch_size)
        ]
        predictor.probabilities(batches[0])  # warm-up
        model = rate(len(paths), lambda: [predictor.probabilities(batch) for batch in batches])

        def pipeline() -> None:
            count = sum(1 for _ in iter_predictions(predictor, paths, batch_size=args.batch_size, workers=args.workers))
            assert count == len(paths), count

        piped = rate(len(paths), pipeline)
        spread = None
        if args.devices:
            devices = parse_devices(args.devices)

            def on_devices() -> None:
                records = iter_predictions(
                    predictor, paths, batch_size=args.batch_size, workers=args.workers, devices=devices
                )
                assert sum(1 for _ in records) == len(paths)

            spread = rate(len(paths), on_devices)
        load = os.getloadavg()

    gpu = args.device != "cpu"
    reference = min(decode, model) if gpu else 1 / (1 / decode + 1 / model)
    formula = "min(D, M)" if gpu else "1/(1/D + 1/M)"
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; resnet18 {args.size} px on {args.device}, {args.images} 1024x1024 PNGs, "
          f"{args.workers} decoding processes, batch {args.batch_size}")  # fmt: skip
    print(f"D  decode alone:          {decode:7.1f} images/s")
    print(f"M  model alone:           {model:7.1f} images/s")
    print(f"   {formula + ':':22} {reference:7.1f} images/s")
    print(f"P  cxr predict pipeline:  {piped:7.1f} images/s")
    print(f"P / {formula} = {piped / reference:.2f} (goal >= 0.85)")
    if spread is not None:
        print(f"P  --devices {args.devices}: {spread:7.1f} images/s, {spread / piped:.2f} x P on {args.device}")


if __name__ == "__main__":
    main()
