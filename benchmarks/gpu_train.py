"""GPU training throughput: DenseNet121 @224, fp32 eager vs bf16 AMP + channels_last (the recipe `cxr train` uses).

Synthetic random input, one process, the training step as ``cxr.training.module`` runs it (uint8 batch on the
device → float/255 → CxrNet → BCE → Adam). Prints images/s and peak GPU memory per mode and their ratios
(target: AMP + channels_last ≥ 2.5× fp32 images/s). Not a test.

    python benchmarks/gpu_train.py                       # on a GPU: batch 64, 224 px
    python benchmarks/gpu_train.py --device cpu --size 64 --batch-size 4 --steps 2 --warmup 1   # CPU smoke check
    python benchmarks/gpu_train.py --train-check         # also: a short `cxr train` on the device (AMP path)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from cxr.models.factory import create_model


def measure(args: argparse.Namespace, amp: bool) -> dict:
    """images/s and peak memory of ``args.steps`` training steps after ``args.warmup`` untimed ones."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, 14, head="gap", input_size=args.size).to(device)
    memory_format = torch.channels_last if amp else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    pixels = torch.randint(0, 256, (args.batch_size, 1, args.size, args.size), dtype=torch.uint8, device=device)
    target = torch.randint(0, 2, (args.batch_size, 14), device=device).float()
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)

    def step() -> None:
        images = pixels.float().div_(255).contiguous(memory_format=memory_format)
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            loss = F.binary_cross_entropy_with_logits(model(images).float(), target)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    name = f"{str(dtype).removeprefix('torch.')} AMP + channels_last" if amp else "fp32 eager"
    return {"mode": name, "images_per_s": args.steps * args.batch_size / seconds, "peak_gib": peak}


def train_check(device: str) -> None:
    """One short ``fit`` on a synthetic store on the device: the Lightning AMP + channels_last path end to end."""
    import tempfile
    from pathlib import Path

    import pandas as pd

    from cxr.config import load_config
    from cxr.data.prepare import prepare_store
    from cxr.synth import generate
    from cxr.training.fit import fit

    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "data", images=600, size=64, seed=7, prevalence="flat", workers=4)
        prepare_store(root / "data", root / "store", size=64, crop=1.0, workers=4, progress=False)
        overrides = ["model.pretrained=none", "model.name=resnet18", "model.head=gap", "optim.lr=1e-3"]
        overrides += ["train.epochs=4", "data.rotation=0", "data.shift=0", "task.val_fraction=0.2"]
        overrides += ["data.num_workers=2"]
        start = time.perf_counter()
        result = fit(load_config("multilabel-adam", overrides), root / "store", root / "run", image_size=64,
                     accelerator=accelerator, devices=1, progress=False)  # fmt: skip
        metrics = pd.read_csv(root / "run" / "metrics.csv")
        print(f"train check: precision {result.trainer.precision}, {time.perf_counter() - start:.1f} s, "
              f"val macro AUROC by epoch {metrics['val_macro_auroc'].round(3).tolist()}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--train-check", action="store_true", help="also run a short cxr train on the device")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as `cxr train` runs (Trainer(benchmark=True) on GPU); both modes
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    else:
        print(f"device: cpu ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(f"{args.model} @ {args.size} px, batch {args.batch_size}, {args.steps} timed steps after {args.warmup}")
    results = [measure(args, amp=False), measure(args, amp=True)]
    for result in results:
        print(f"{result['mode']:>32}: {result['images_per_s']:8.1f} images/s, peak {result['peak_gib']:.2f} GiB")
    fp32, amp = results
    print(f"speed-up AMP + channels_last / fp32: {amp['images_per_s'] / fp32['images_per_s']:.2f}x (target >= 2.5x)")
    if args.device.startswith("cuda"):
        print(f"peak memory AMP / fp32: {amp['peak_gib'] / fp32['peak_gib']:.2f}x")
    if args.train_check:
        train_check(args.device)


if __name__ == "__main__":
    main()
