"""Benchmark: the fastest CPU path for a cxr model, measured — torch eager, onnxruntime fp32, onnxruntime int8.

For ResNet-18 and DenseNet-121 (random init, GAP head, 224 px, 14 findings) written as model artifacts and exported
with ``cxr export``'s own code path, times in one run, interleaved round by round so that a machine shared with other
work slows every variant alike:

- torch eager fp32 (``inference_mode``), and with ``channels_last`` memory format;
- torch bf16 autocast (and + ``channels_last``), only where this CPU computes bf16 natively (AMX or AVX-512 BF16,
  detected with :func:`cxr.training.precision.native_bf16`, never assumed);
- onnxruntime fp32 with every graph optimisation and all cores, with basic optimisations only, and with one thread;
- onnxruntime int8 static quantization, per-channel weights, uint8 activations, in QDQ and in QOperator format,
  calibrated (MinMax) on images of a synthetic NIH-format dataset (``cxr synth``) through the model's preprocessing.

Batch 1 and 16. Prints the median latency (ms), images/s and the ratio to torch fp32 of the same round, and what
each variant costs in accuracy: these are random-init twins (no trained 224 px model fits a quick run), so the cost
is the max and mean |Δp| against torch fp32 on held-out synthetic images (the calibration images are not among
them) and the rank agreement of the probabilities (mean per-finding Spearman rho). Reports the load average.
Not a test.

    .venv/bin/python benchmarks/cpu_backends.py [--models resnet18 densenet121] [--repeats 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cxr.labels import FINDINGS
from cxr.training.precision import cpu_capability, native_bf16

BATCHES = (1, 16)


def build(name: str, size: int, folder: Path):
    """A random-init artifact, its predictor and its ONNX export (``cxr export``'s path, parity checked)."""
    from cxr.inference.eager import TorchPredictor
    from cxr.inference.export import export_onnx
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model(name, len(FINDINGS), head="gap", input_size=size, labels=list(FINDINGS))
    checkpoint = write_artifact(folder / f"{name}.ckpt", model, list(FINDINGS), make_preprocessing(model, size, 1.0))
    onnx_path = Path(export_onnx(checkpoint, folder / f"{name}.onnx")["path"])
    return TorchPredictor.from_path(checkpoint), onnx_path


def synthetic_inputs(folder: Path, preprocessing, count: int) -> np.ndarray:
    """``count`` synthetic radiographs (``cxr synth``, flat prevalence) as model inputs ``(N, 1, S, S)``."""
    from cxr.imaging.decode import decode_grayscale
    from cxr.synth import generate

    data = folder / "synth"
    if not data.exists():  # one dataset for every model
        generate(data, images=count, size=256, seed=3, prevalence="flat", workers=1)
    paths = sorted(data.rglob("*.png"))[:count]
    return np.stack([preprocessing.model_input(decode_grayscale(path)) for path in paths])


def folded(onnx_path: Path, out: Path) -> Path:
    """The graph after onnxruntime's basic optimisations (constant folding, Conv+BatchNorm fusion), saved: torch's
    exporter computes the zero bias of a bias-free convolution with ``Constant`` → ``Expand`` nodes, where the QOperator
    quantizer expects an initializer."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    return out


def quantize(onnx_path: Path, calibration: np.ndarray, fmt: str) -> Path:
    """Static int8 quantization of ``onnx_path``: per-channel int8 weights, uint8 activations (the x86 fast path),
    MinMax calibration on ``calibration``; ``fmt`` ``QDQ`` or ``QOperator``."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": calibration[k : k + 1]} for k in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    prepared = onnx_path.with_name(onnx_path.stem + ".pre.onnx")
    if not prepared.exists():
        plain = folded(onnx_path, onnx_path.with_name(onnx_path.stem + ".folded.onnx"))
        quant_pre_process(str(plain), str(prepared), skip_symbolic_shape=True)
    out = onnx_path.with_name(f"{onnx_path.stem}.int8-{fmt.lower()}.onnx")
    quantize_static(
        str(prepared), str(out), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return out


def ort_session(path: Path, threads: int, level: str) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"image": batch})[0]


def torch_call(model: torch.nn.Module, channels_last: bool, bf16: bool) -> Callable[[np.ndarray], np.ndarray]:
    model = model.eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)

    def call(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            inputs = torch.from_numpy(batch)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            return torch.sigmoid(model(inputs).float()).numpy()

    return call


def variants(predictor, onnx_path: Path, calibration: np.ndarray, threads: int) -> dict[str, Callable]:
    model = predictor.model
    found = {"torch fp32": torch_call(model, False, False), "torch fp32 channels_last": torch_call(model, True, False)}
    if native_bf16():
        found["torch bf16"] = torch_call(model, False, True)
        found["torch bf16 channels_last"] = torch_call(model, True, True)
    found["ort fp32"] = ort_session(onnx_path, threads, "ORT_ENABLE_ALL")
    found["ort fp32 basic-opt"] = ort_session(onnx_path, threads, "ORT_ENABLE_BASIC")
    found["ort fp32 1 thread"] = ort_session(onnx_path, 1, "ORT_ENABLE_ALL")
    for fmt in ("QDQ", "QOperator"):
        found[f"ort int8 {fmt}"] = ort_session(quantize(onnx_path, calibration, fmt), threads, "ORT_ENABLE_ALL")
    return found


def median_ms(call: Callable, batch: np.ndarray, repeats: int) -> float:
    call(batch)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = [np.argsort(np.argsort(x, axis=0), axis=0).astype(float) for x in (a, b)]
    rho = [np.corrcoef(ranks[0][:, k], ranks[1][:, k])[0, 1] for k in range(a.shape[1])]
    return float(np.mean(rho))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "densenet121"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="Synthetic images: half calibrate, half are scored.")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            predictor, onnx_path = build(name, args.size, Path(tmp))
            images = synthetic_inputs(Path(tmp), predictor.preprocessing, args.images)
            calibration, held_out = images[: len(images) // 2], images[len(images) // 2 :]
            calls = variants(predictor, onnx_path, calibration, threads)
            reference = np.concatenate([calls["torch fp32"](held_out[k : k + 8]) for k in range(0, len(held_out), 8)])
            cost = {}
            for variant, call in calls.items():
                probs = np.concatenate([call(held_out[k : k + 8]) for k in range(0, len(held_out), 8)])
                delta = np.abs(probs - reference)
                cost[variant] = (delta.max(), delta.mean(), spearman(probs, reference))
            for batch_size in BATCHES:
                batch = np.ascontiguousarray(np.resize(held_out, (batch_size, *held_out.shape[1:])))
                times: dict[str, list[float]] = {variant: [] for variant in calls}
                for _ in range(args.rounds):
                    for variant, call in calls.items():
                        times[variant].append(median_ms(call, batch, args.repeats))
                for variant in calls:
                    ratio = statistics.median(
                        fp32 / own for fp32, own in zip(times["torch fp32"], times[variant], strict=True)
                    )
                    ms = statistics.median(times[variant])
                    rows.append((name, batch_size, variant, ms, batch_size * 1000 / ms, ratio, *cost[variant]))
                    print(f"  {name} batch {batch_size} {variant}: {ms:.1f} ms, x{ratio:.2f} of torch fp32", flush=True)
    load = os.getloadavg()
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs ({cpu_capability()}, native bf16: "
          f"{native_bf16()}), {threads} threads; torch {torch.__version__}; load average {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}; median of {args.repeats} calls, {args.rounds} interleaved rounds")  # fmt: skip
    print("\n| model | batch | variant | ms | images/s | speed vs torch fp32 | max abs dp | mean abs dp | rho |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name, batch, variant, ms, rate, ratio, worst, mean, rho in rows:
        print(f"| {name} | {batch} | {variant} | {ms:.1f} | {rate:.1f} | {ratio:.2f} | {worst:.2g} | {mean:.2g} | "
              f"{rho:.4f} |")  # fmt: skip


if __name__ == "__main__":
    main()
