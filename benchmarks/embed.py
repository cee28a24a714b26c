"""``cxr embed`` throughput against the same model's bare forward on preloaded batches, in one run.

The bare forward is the ceiling: the store's images already decoded into one float tensor in memory, the model run
batch after batch under the same precision, nothing written. ``cxr embed`` (:func:`cxr.probe.embed.embed_store`)
adds what a real run needs: reading the memory-mapped store, the eval view, the copy to float, writing the rows into
the preallocated array, the journal (fdatasync every 2 s), building the model and writing ``encoder.ckpt``. The goal
is a ratio of at least 0.9. Both are timed twice, alternating, and the better of each is kept (other jobs on a
shared machine slow one pass or the other). Not a test.

    python benchmarks/embed.py [--model resnet18] [--images 1024] [--size 128] [--batch-size 64] [--workers 0 1]
                               [--device cpu|cuda] [--precision auto|32|bf16]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr.data.prepare import prepare_store
from cxr.data.store import Store
from cxr.imaging.preprocessing import to_unit
from cxr.probe.embed import embed_store
from cxr.probe.encoder import Embedder, load_encoder, use_bf16
from cxr.synth import generate


def bare_forward(model: str, store: Store, batch_size: int, precision: str, device: str) -> float:
    """Images per second of the model's forward (through the embedding hook) on batches already in memory."""
    torch.manual_seed(0)
    encoder = load_encoder(model, store, pretrained="none", device=device)
    embedder = Embedder(encoder.model, use_bf16(precision, device))
    pixels = np.asarray(store.images[store.index["row"].to_numpy()])
    batches = [to_unit(torch.from_numpy(pixels[i : i + batch_size])[:, None]).to(device)
               for i in range(0, len(pixels), batch_size)]  # fmt: skip
    embedder(batches[0])  # warm-up: oneDNN / cuDNN kernels
    _sync(device)
    start = time.perf_counter()
    for batch in batches:
        embedder(batch)
    _sync(device)
    return len(pixels) / (time.perf_counter() - start)


def cxr_embed(model: str, store: Store, out: Path, batch_size: int, workers: int, precision: str, device: str) -> float:
    """Images per second of a whole ``embed_store`` call, model construction and encoder file included."""
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(0)
    start = time.perf_counter()
    embed_store(model, store.path, out, pretrained="none", batch_size=batch_size, workers=workers,
                precision=precision, device=device, progress=False)  # fmt: skip
    _sync(device)
    return len(store) / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", images=args.images, size=args.size, seed=0, prevalence="flat", workers=1)
        prepare_store(root / "data", root / "store", size=args.size, crop=1.0, workers=1, progress=False)
        store = Store(root / "store")
        bf16 = use_bf16(args.precision, args.device)
        print(f"{args.model} at {args.size} px, {len(store)} images, batch {args.batch_size}, {args.device}, "
              f"{'bf16' if bf16 else 'fp32'}, torch threads {torch.get_num_threads()}, "
              f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")  # fmt: skip
        for workers in args.workers:
            bare, embedded = [], []
            for _ in range(args.repeats):
                bare.append(bare_forward(args.model, store, args.batch_size, args.precision, args.device))
                embedded.append(cxr_embed(args.model, store, root / "emb", args.batch_size, workers, args.precision,
                                          args.device))  # fmt: skip
            print(f"--workers {workers}: bare forward {max(bare):.1f} images/s, cxr embed {max(embedded):.1f} "
                  f"images/s, ratio {max(embedded) / max(bare):.2f} (passes: bare {[round(v, 1) for v in bare]}, "
                  f"embed {[round(v, 1) for v in embedded]})")  # fmt: skip


if __name__ == "__main__":
    main()
