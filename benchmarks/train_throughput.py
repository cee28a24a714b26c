"""CPU training throughput, and why training reads a store instead of PNGs.

1. Training images/s (forward + backward + Adam step, random input) on CPU at 64 and 224 px.
2. Loader images/s for one epoch of the seed's training view (rotation, shift, flip at 300 px): from the uint8
   store memmap vs decoding the source PNGs every epoch (decode → 8-bit L → 75% crop → area resize → same view),
   one process each. Source: the real NIH sample's 1024×1024 PNGs (../shared/data/nih-sample), cycled. Target: the
   store ≥ 20× faster. Prints the ratios measured in this run. Not a test.

    python benchmarks/train_throughput.py [--models resnet18 densenet121] [--steps 3] [--images 300]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from model_throughput import images_per_s  # this folder: scripts run as `python benchmarks/NAME.py`

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-sample"


def train_images_per_s(name: str, size: int, batch_size: int, steps: int) -> float:
    """Training images per wall second (Adam), measured by ``model_throughput.images_per_s``."""
    return images_per_s(name, size, batch_size, steps, optimizer_class=torch.optim.Adam)[0]


def loader_images_per_s(sample: Path, images: int) -> tuple[float, float]:
    """(store, PNG) images/s for ``images`` items of the seed's training view at 300 px."""
    from cxr.data.prepare import prepare_store
    from cxr.data.store import Store
    from cxr.data.transforms import TrainView
    from cxr.imaging.decode import decode_grayscale, preprocess

    view = TrainView(300, rotation=15, shift=0.15, hflip=True)
    pngs = sorted((sample / "images").glob("*.png"))
    with tempfile.TemporaryDirectory() as tmp:
        prepare_store(sample, Path(tmp) / "store", size=300, crop=0.75, workers=1, progress=False)
        store = Store(Path(tmp) / "store")
        rows = store.index["row"].to_numpy()
        start = time.perf_counter()
        for item in range(images):
            torch.from_numpy(view(store.images[rows[item % len(rows)]]).copy())  # as cxr.data.loaders.StoreImages
        from_store = images / (time.perf_counter() - start)
    start = time.perf_counter()
    for item in range(images):
        torch.from_numpy(view(preprocess(decode_grayscale(pngs[item % len(pngs)]), 300, 0.75)).copy())
    from_png = images / (time.perf_counter() - start)
    return from_store, from_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=300, help="items per loader measurement")
    parser.add_argument("--skip-train", action="store_true", help="only the loader comparison")
    args = parser.parse_args()
    print(f"CPU: {torch.get_num_threads()} threads, torch {torch.__version__}")
    for name in [] if args.skip_train else args.models:
        rates = {size: train_images_per_s(name, size, args.batch_size, args.steps) for size in (64, 224)}
        print(f"train {name:>12}: {rates[64]:7.1f} images/s @64 px, {rates[224]:6.1f} images/s @224 px "
              f"(batch {args.batch_size}, {args.steps} steps)")  # fmt: skip
    from_store, from_png = loader_images_per_s(SAMPLE, args.images)
    print(f"loader, seed's training view @300 px: store {from_store:.0f} images/s, PNG decode {from_png:.1f} images/s")
    print(f"store / PNG: {from_store / from_png:.0f}x (target >= 20x)")


if __name__ == "__main__":
    main()
