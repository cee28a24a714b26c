"""Benchmark: CPU inference latency, torch eager vs onnxruntime, at batch 1 and 8, for ResNet-18 and DenseNet-121.

Each model (random init, 224 px, 14 findings) is written as a model artifact, exported with ``cxr export``'s own
code path (parity-checked), then timed on the same random inputs in one run: torch eager (``inference_mode``,
eval) and onnxruntime (CPU provider), with the same number of threads. Reports the median latency of
``--repeats`` calls after warm-up and the ratio ONNX / torch (target, issue 6: ONNX batch-1 <= 0.8x torch).
Not a test.

    .venv/bin/python benchmarks/inference.py [--models resnet18 densenet121] [--size 224] [--repeats 30]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxr.labels import FINDINGS

BATCHES = (1, 8)


def median_ms(call, inputs: np.ndarray, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        call(inputs)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(inputs)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def build(name: str, size: int, folder: Path) -> tuple[Path, Path]:
    """A random-init artifact and its ONNX export (through ``cxr.inference.export``, parity check included)."""
    from cxr.inference.export import export_onnx
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(name, len(FINDINGS), head="gap", input_size=size, labels=list(FINDINGS))
    checkpoint = write_artifact(folder / f"{name}.ckpt", model, list(FINDINGS), make_preprocessing(model, size, 1.0))
    result = export_onnx(checkpoint, folder / f"{name}.onnx")
    print(f"{name}: exported, parity max |Δp| = {result['max_abs_diff']:.2g}", flush=True)
    return checkpoint, Path(result["path"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    from cxr.inference.eager import TorchPredictor
    from cxr.inference.onnx import OnnxPredictor

    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} threads; torch "
          f"{torch.__version__}; median of {args.repeats} calls after {args.warmup} warm-up", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            checkpoint, onnx_path = build(name, args.size, Path(tmp))
            eager = TorchPredictor.from_path(checkpoint)
            runtime = OnnxPredictor(onnx_path, threads=args.threads)
            for batch in BATCHES:
                inputs = np.random.default_rng(batch).random((batch, 1, args.size, args.size), dtype=np.float32)
                torch_ms = median_ms(eager.probabilities, inputs, args.repeats, args.warmup)
                onnx_ms = median_ms(runtime.probabilities, inputs, args.repeats, args.warmup)
                rows.append((name, batch, torch_ms, onnx_ms))
                print(f"  {name} batch {batch}: torch {torch_ms:.1f} ms, onnxruntime {onnx_ms:.1f} ms", flush=True)

    print("\n| model | batch | torch eager (ms) | onnxruntime (ms) | ONNX / torch |\n|---|---:|---:|---:|---:|")
    for name, batch, torch_ms, onnx_ms in rows:
        print(f"| {name} | {batch} | {torch_ms:.1f} | {onnx_ms:.1f} | {onnx_ms / torch_ms:.2f} |")
    batch_one = [onnx_ms / torch_ms for _, batch, torch_ms, onnx_ms in rows if batch == 1]
    verdict = "met" if max(batch_one) <= 0.8 else "NOT met"
    print(f"\nTarget ONNX batch-1 latency <= 0.8x torch: {verdict} (worst ratio {max(batch_one):.2f})")


if __name__ == "__main__":
    main()
