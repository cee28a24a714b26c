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
Prints images/s for each (D: decode alone, M: model alone, P: cxr predict) and P / reference (goal >= 0.85, issue 24),
with the load average; ``--rounds R`` repeats D, M and P back to back R times (on a shared machine the load moves
between phases) and prints the median ratio. With ``--devices`` (e.g.
``--devices 2`` on a machine with two GPUs) it also times ``cxr predict --devices`` (process start and model loading
on each device included) and prints its ratio to P on one device. Not a test.

    .venv/bin/python benchmarks/predict_pipeline.py [--images 300] [--workers N] [--size 112] [--device cpu]
        [--rounds 3] [--devices 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
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
    parser.add_argument("--rounds", type=int, default=1, help="Measure D, M and P this many times, interleaved.")
    args = parser.parse_args()

    from cxr.imaging.preprocessing import to_unit
    from cxr.inference.pipeline import decoded_images
    from cxr.inference.predict import iter_predictions, load_predictor

    gpu = args.device != "cpu"
    formula = "min(D, M)" if gpu else "1/(1/D + 1/M)"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        paths = make_folder(folder, args.images)
        predictor = load_predictor(build(Path(tmp), args.size), device=args.device)
        pre = predictor.preprocessing

        list(decoded_images(paths[:8], pre, 1))  # warm-up: imports, first decode
        views = [item.view for item in decoded_images(paths, pre, args.workers)]
        batches = [
            to_unit(np.stack(views[s : s + args.batch_size]))[:, None] for s in range(0, len(views), args.batch_size)
        ]
        predictor.probabilities(batches[0])  # warm-up
        devices = None
        if args.devices:
            from cxr.inference.devices import parse_devices

            devices = parse_devices(args.devices)

        def pipeline(on: list[str] | None) -> None:
            spread = {"devices": on} if on else {}  # (an older cxr, for a before/after comparison, has no devices)
            records = iter_predictions(predictor, paths, batch_size=args.batch_size, workers=args.workers, **spread)
            assert sum(1 for _ in records) == len(paths)

        rounds = []
        for _ in range(args.rounds):  # D, M and P back to back in each round: a shared machine's load moves
            decode = rate(len(paths), lambda: list(decoded_images(paths, pre, args.workers)))
            model = rate(len(paths), lambda: [predictor.probabilities(batch) for batch in batches])
            piped = rate(len(paths), lambda: pipeline(None))
            spread = rate(len(paths), lambda: pipeline(devices)) if devices else None
            reference = min(decode, model) if gpu else 1 / (1 / decode + 1 / model)
            rounds.append((decode, model, reference, piped, spread, os.getloadavg()[0]))
        load = os.getloadavg()

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}; resnet18 {args.size} px on {args.device}, {args.images} 1024x1024 PNGs, "
          f"{args.workers} decoding processes, batch {args.batch_size}")  # fmt: skip
    for k, (decode, model, reference, piped, spread, load_now) in enumerate(rounds, 1):
        line = (f"round {k} (load {load_now:.1f}): D {decode:6.1f}, M {model:6.1f}, {formula} {reference:6.1f}, "
                f"P {piped:6.1f} images/s; P / {formula} = {piped / reference:.2f}")  # fmt: skip
        if spread is not None:
            line += f"; --devices {args.devices}: {spread:6.1f} images/s = {spread / piped:.2f} x P"
        print(line)
    ratios = [piped / reference for _, _, reference, piped, _, _ in rounds]
    print(f"P / {formula}, median of {len(rounds)} round(s) = {statistics.median(ratios):.2f} (goal >= 0.85)")


if __name__ == "__main__":
    main()
