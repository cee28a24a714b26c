"""End-to-end training throughput: store → loader → host-to-device copy → augmentation → step, as `cxr train` runs.

One invocation measures, for a baseline and for each lever changed alone (augmentation on the CPU or the device,
``torch.compile`` mode, fused Adam, batch size, loader workers, prefetch, channels_last):

- ``loader_img_s``: the real training loader (``StoreDataModule``, its workers, pinned memory) and the
  ``non_blocking`` copy to the device, no model;
- ``model_only_img_s``: the real LightningModule stepped by a Lightning Trainer on batches already on the device
  (device augmentation, when on, included: it runs in the module's ``on_after_batch_transfer``);
- ``end_to_end_img_s``: both together, as ``cxr train`` runs them (validation and checkpoints left out);

their ratio (end-to-end / model-only: 1.0 when the loader is never the bottleneck), the mean GPU utilisation over
the end-to-end window (NVML via ``torch.cuda.utilization`` or ``nvidia-smi``; null where neither answers) and the
peak GPU memory. Without ``--store`` it writes a synthetic store first (``cxr synth`` + ``cxr prepare``'s code).
Rows are written to the JSON as they finish; rows that would overrun ``--budget-s`` are listed as skipped.

    python benchmarks/gpu_train_e2e.py --budget-s 420                    # on a GPU: the lever table, ~7 min
    python benchmarks/gpu_train_e2e.py --augment-on device --compile none,default,max-autotune --batch-size 64,256
    python benchmarks/gpu_train_e2e.py --smoke --out /tmp/e2e.json       # on a CPU in seconds (tests run this)

Not a test: numbers only mean something on the machine they were measured on (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path

import lightning as L
import torch

from cxr.config import Config, load_config, set_value
from cxr.data.loaders import StoreDataModule
from cxr.data.store import Store
from cxr.data.tasks import build_split
from cxr.imaging.preprocessing import Preprocessing
from cxr.training.fit import _precision, augment_on_device, compile_model, fit_store
from cxr.training.module import CxrModule

RESULTS = Path(__file__).resolve().parent / "results" / "gpu_train_e2e.json"
LEVERS = {  # lever → (config key, parser); the first value given on the command line is the baseline
    "augment_on": ("data.augment_on", str),
    "fused": ("optim.fused", str),  # default (torch's foreach) | fused | foreach | auto
    "batch_size": ("train.batch_size", int),
    "workers": ("data.num_workers", int),
    "prefetch": ("data.prefetch_factor", int),
    "channels_last": ("train.channels_last", lambda text: text.lower() in ("1", "true", "yes", "on")),
    "compile": ("train.compile", str),  # last: compilation (minutes with max-autotune) is the slowest row
}


# The plan: a baseline, then each other value of each lever alone.


def plan(args: argparse.Namespace) -> list[dict]:
    """Rows to measure: the first value of every lever, then one row per further value of one lever."""
    values = {lever: [parse(v) for v in str(getattr(args, lever)).split(",")] for lever, (_, parse) in LEVERS.items()}
    baseline = {lever: options[0] for lever, options in values.items()}
    rows = [dict(baseline, changed=None)]
    for lever, options in values.items():
        rows += [dict(baseline, **{lever: value}, changed=lever) for value in options[1:]]
    return rows


def row_config(args: argparse.Namespace, row: dict) -> Config:
    overrides = [f"model.name={args.model}", "model.pretrained=none", "model.head=gap"]
    # Nearly all of the store in the training part: fewer epoch boundaries in the timed window (a real epoch of
    # NIH is 86,524 images; an epoch boundary drains and refills the loader's pipeline).
    overrides += ["task.split=ratio", "task.ratios=[0.98,0.01,0.01]"]
    config = load_config(args.experiment, overrides)
    for lever, (key, _) in LEVERS.items():
        set_value(config, key, row[lever])
    config.train.precision = args.precision
    return config


# The three measurements.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(L.Callback):
    """Wall time of the batches after ``warmup`` (compilation, cuDNN autotuning and worker start-up excluded)."""

    def __init__(self, warmup: int, device: torch.device, on_start=None):
        self.warmup, self.device, self.on_start = warmup, device, on_start
        self.start = self.end = None
        self.batches = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            sync(self.device)
            if self.on_start is not None:
                self.on_start()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if self.start is not None:
            self.batches += 1

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.end = time.perf_counter()


def _trainer(config: Config, device: torch.device, steps: int, timer: StepTimer) -> L.Trainer:
    """The Trainer settings of ``cxr.training.fit.build_trainer`` that touch speed; no validation, no files."""
    on_gpu = device.type == "cuda"
    return L.Trainer(
        accelerator="gpu" if on_gpu else "cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        precision=_precision(config, on_gpu),
        benchmark=on_gpu,
        use_distributed_sampler=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def loader_only(datamodule: StoreDataModule, device: torch.device, batches: int, warmup: int) -> float:
    """img/s of the training loader and the copy to the device (pinned + non_blocking on a GPU, as Lightning).

    One DataLoader over as many epochs as needed, as Lightning keeps it: persistent workers are not restarted.
    """
    loader = datamodule.train_dataloader()
    seen, start, index, epoch = 0, None, 0, 0
    while True:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            if index == warmup:
                sync(device)
                start = time.perf_counter()
            moved = [t.to(device, non_blocking=device.type == "cuda") for t in batch]
            if start is not None:
                seen += len(moved[0])
            index += 1
            if index >= warmup + batches:
                sync(device)
                return seen / (time.perf_counter() - start)
        epoch += 1


class Repeat:
    """The same device-resident batch ``times`` times (a list would be read as several dataloaders)."""

    def __init__(self, batch: tuple, times: int):
        self.batch, self.times = batch, times

    def __len__(self) -> int:
        return self.times

    def __iter__(self):
        return (self.batch for _ in range(self.times))


def model_only(module: CxrModule, config: Config, datamodule: StoreDataModule, device, steps: int, warmup: int):
    """img/s of the Lightning step on device-resident batches (one batch of the real loader, reused)."""
    batch = next(iter(datamodule.train_dataloader()))
    batch = tuple(t.to(device) for t in batch)
    timer = StepTimer(warmup, device)
    trainer = _trainer(config, device, warmup + steps, timer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer.fit(module, train_dataloaders=Repeat(batch, warmup + steps))
    return timer.batches * len(batch[0]) / (timer.end - timer.start), _peak_gib(device), batch


class SyncCounter(L.Callback):
    """Host synchronisations per step after the first, by CUDA's sync debug mode (a warning per synchronising call)."""

    def __init__(self):
        self.on, self.steps = False, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx: int) -> None:
        if batch_idx == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            self.on = True

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        self.steps += self.on

    def on_train_end(self, trainer, module) -> None:
        torch.cuda.set_sync_debug_mode("default")


def host_syncs_per_step(module: CxrModule, config: Config, batch: tuple, device, steps: int = 5) -> dict | None:
    """Synchronising calls per training step on device-resident batches, and where the first of them come from.

    Catches a per-step ``.item()``/``isfinite`` check (there should be none: ``train.check_finite_every``); the
    check every N batches itself shows as one sync per N steps. None on a CPU.
    """
    if device.type != "cuda":
        return None
    counter = SyncCounter()
    trainer = _trainer(config, device, 1 + steps, counter)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, train_dataloaders=Repeat(batch, 1 + steps))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return {"per_step": round(len(syncs) / max(counter.steps, 1), 2),
            "where": sorted({f"{Path(w.filename).name}:{w.lineno}" for w in syncs})[:10]}  # fmt: skip


def end_to_end(module: CxrModule, config: Config, datamodule: StoreDataModule, device, steps: int, warmup: int):
    """img/s, mean GPU utilisation and peak memory of the Lightning fit on the real loader."""
    sampler = UtilisationSampler(device)
    timer = StepTimer(warmup, device, on_start=sampler.start)
    trainer = _trainer(config, device, warmup + steps, timer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        utilisation = sampler.stop()
    images = timer.batches * config.train.batch_size
    return images / (timer.end - timer.start), utilisation, _peak_gib(device)


def _peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None


class UtilisationSampler:
    """Mean GPU utilisation (%) between ``start`` and ``stop``, sampled every 0.2 s; None without NVML/nvidia-smi."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.running = device, [], False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        if self.device.type == "cuda" and self._read() is not None:
            self.running = True
            self.thread.start()

    def stop(self) -> float | None:
        if self.running:
            self.running = False
            self.thread.join()
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None

    def _run(self) -> None:
        while self.running:
            value = self._read()
            if value is not None:
                self.samples.append(value)
            time.sleep(0.2)

    def _read(self) -> float | None:
        with contextlib.suppress(Exception):
            return float(torch.cuda.utilization(self.device))
        if shutil.which("nvidia-smi"):
            index = self.device.index or 0
            command = ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            with contextlib.suppress(Exception):
                return float(subprocess.run(command, capture_output=True, text=True, timeout=5).stdout.strip())
        return None


# One row.


def measure_row(args: argparse.Namespace, row: dict, store: Store, device: torch.device) -> dict:
    config = fit_store(row_config(args, row), store, image_size=args.size)
    split = build_split(store.index, config.task)
    on_gpu = device.type == "cuda"
    datamodule = StoreDataModule(
        store, split, config.data, config.train.batch_size, pin_memory=on_gpu, seed=0,
        augment_on_device=augment_on_device(config, on_gpu),
    )  # fmt: skip
    torch.manual_seed(0)
    module = CxrModule(config, split.outputs, Preprocessing.from_config(config.data))
    if config.train.channels_last:
        module.model.to(memory_format=torch.channels_last)
    compile_model(module.model, config.train.compile)
    loader = loader_only(datamodule, device, args.steps, args.warmup)
    model, model_peak, batch = model_only(module, config, datamodule, device, args.steps, args.warmup)
    try:  # a diagnostic: its failure must not cost the row
        syncs = host_syncs_per_step(module, config, batch, device)
    except Exception as error:
        syncs = {"error": f"{type(error).__name__}: {error}"[:300]}
    e2e, utilisation, e2e_peak = end_to_end(module, config, datamodule, device, args.steps, args.warmup)
    train_images = len(split.rows("train"))
    return {
        **row,
        "train_images": train_images,
        "epochs_per_measurement": round((args.warmup + args.steps) * config.train.batch_size / train_images, 2),
        "augment_on_resolved": "device" if augment_on_device(config, on_gpu) else "cpu",
        "precision": _precision(config, on_gpu),
        "loader_img_s": round(loader, 1),
        "model_only_img_s": round(model, 1),
        "end_to_end_img_s": round(e2e, 1),
        "end_to_end_over_model_only": round(e2e / model, 3),
        "gpu_utilisation_pct": utilisation,
        "peak_memory_gib": e2e_peak,
        "peak_memory_model_only_gib": model_peak,
        "host_syncs": syncs,
    }


# The store, the run, the record.


def synthetic_store(root: Path, images: int, size: int, workers: int) -> Path:
    from cxr.data.prepare import prepare_store
    from cxr.synth import generate

    generate(root / "data", images=images, size=size, seed=0, prevalence="flat", workers=workers)
    prepare_store(root / "data", root / "store", size=size, crop=1.0, workers=workers, progress=False)
    return root / "store"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def run(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory(prefix="cxr-e2e-") as tmp:
        store_path = Path(args.store) if args.store else synthetic_store(Path(tmp), args.images, args.size,
                                                                           args.synth_workers)  # fmt: skip
        store = Store(store_path)
        record = {
            "benchmark": "gpu_train_e2e",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "device": device_name(device),
            "model": args.model,
            "image_size": args.size,
            "experiment": args.experiment,
            "store": {
                "path": str(args.store) if args.store else "synthetic",
                "images": len(store.index),
                "size": store.size,
            },  # fmt: skip
            "steps": args.steps,
            "warmup": args.warmup,
            "torch": torch.__version__,
            "lightning": L.__version__,
            "cuda": torch.version.cuda,
            "command": " ".join(sys.argv),
            "smoke": args.smoke,
            "setup_s": round(time.perf_counter() - started, 1),
            "rows": [],
            "skipped": [],
        }
        slowest = None
        for row in plan(args):
            elapsed = time.perf_counter() - started
            if slowest is not None and elapsed + slowest > args.budget_s:
                record["skipped"].append(row)
                log(f"skipped (budget {args.budget_s} s, {elapsed:.0f} s used): {row}")
                continue
            row_start = time.perf_counter()
            try:
                result = measure_row(args, row, store, device)
            except Exception as error:  # a lever that fails here (compile on a machine without a compiler) is a result
                traceback.print_exc()
                result = {**row, "error": f"{type(error).__name__}: {error}"[:500]}
            result["seconds"] = round(time.perf_counter() - row_start, 1)
            slowest = max(slowest or 0.0, result["seconds"])
            record["rows"].append(result)
            log(json.dumps(result))
            write(record, args.out)
    baseline = record["rows"][0] if record["rows"] else {}
    for key in ("batch_size", "precision", "loader_img_s", "model_only_img_s", "end_to_end_img_s",
                "end_to_end_over_model_only", "gpu_utilisation_pct", "peak_memory_gib", "augment_on", "compile",
                "fused", "workers"):  # fmt: skip
        record[key] = baseline.get(key)
    record["total_s"] = round(time.perf_counter() - started, 1)
    write(record, args.out)
    return record


def write(record: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def log(line: str) -> None:
    print(line, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--store", help="a store to read (default: synthesise one at --size px)")
    parser.add_argument("--images", type=int, default=8192, help="images in the synthetic store")
    parser.add_argument("--synth-workers", type=int, default=os.cpu_count())
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--experiment", default="multilabel-adam")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--precision", default="auto", help="train.precision (auto: bf16 AMP on a GPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compilation, autotuning)")
    parser.add_argument("--budget-s", type=float, default=420, help="start no row that would end after this")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model and store: checks the script runs")
    levers = parser.add_argument_group("levers (comma lists: the first value is the baseline, others vary alone)")
    levers.add_argument("--augment-on", default="device,cpu")
    levers.add_argument("--compile", default="none,default,max-autotune")
    levers.add_argument("--fused", default="default,fused")
    levers.add_argument("--batch-size", default="64,256")
    levers.add_argument("--workers", default="8,16")
    levers.add_argument("--prefetch", default="2")
    levers.add_argument("--channels-last", default="false")
    args = parser.parse_args(argv)
    if args.smoke:  # tiny everything; levers that need no compiler
        smoke = dict(device="cpu", model="resnet18", size=32, images=80, synth_workers=1, steps=2, warmup=1,
                     budget_s=120, augment_on="cpu,device", compile="none", fused="default,fused", batch_size="8",
                     workers="0,1", prefetch="2", channels_last="false")  # fmt: skip
        for key, value in smoke.items():
            if parser.get_default(key) == getattr(args, key):
                setattr(args, key, value)
        torch.set_num_threads(1)  # a shared test machine: OpenMP threads spin when the cores are oversubscribed
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.device.startswith("cuda"):
        log(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, lightning {L.__version__}")
    record = run(args)
    baseline = record["rows"][0] if record["rows"] else {}
    log(
        f"baseline: loader {baseline.get('loader_img_s')} img/s, model-only {baseline.get('model_only_img_s')}, "
        f"end-to-end {baseline.get('end_to_end_img_s')} ({baseline.get('end_to_end_over_model_only')} of model-only)"
    )
    log(f"{len(record['rows'])} rows, {len(record['skipped'])} skipped, {record['total_s']} s → {args.out}")
    return record


if __name__ == "__main__":
    main()
