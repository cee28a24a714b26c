"""Deploying an exported model without torch: install size and ``cxr predict model.onnx`` start-up, two installs.

Give it two environments: the full one (``pip install 'cxr[train]'``, e.g. this checkout's ``.venv``) and a
deployment one (plain ``pip install cxr``: onnxruntime, no torch). It exports a small random-weight ResNet-18 to ONNX
(no download), then, per environment, sums the size of its ``site-packages`` and times ``cxr predict model.onnx
IMAGE`` end to end (process start, imports, model load, one prediction), alternating the two environments round after
round so a busy machine slows both alike; it prints medians and the ratio.

    python3 -m venv /tmp/deploy && /tmp/deploy/bin/pip install .        # the deployment install
    .venv/bin/python benchmarks/deploy.py --deploy /tmp/deploy [--full .venv] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def site_packages_bytes(venv: Path) -> int:
    """Bytes of every file below the environment's ``site-packages`` (what the install put on disk)."""
    (site,) = list(venv.glob("lib/python*/site-packages"))
    return sum(path.stat().st_size for path in site.rglob("*") if path.is_file() and not path.is_symlink())


def has_torch(venv: Path) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([str(venv / "bin" / "python"), "-c", probe]).returncode == 0


def predict_seconds(venv: Path, model: Path, image: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(venv / "bin" / "cxr"), "predict", str(model), str(image), "--json"], check=True,
                   capture_output=True)  # fmt: skip
    return time.perf_counter() - start


def export_model(folder: Path) -> tuple[Path, Path]:
    import cv2
    import torch

    from cxr.inference.export import export_onnx
    from cxr.labels import FINDINGS
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", len(FINDINGS), head="gap", input_size=128, labels=list(FINDINGS))
    checkpoint = write_artifact(folder / "m.ckpt", model, list(FINDINGS), make_preprocessing(model, 128, 1.0))
    onnx_path = Path(export_onnx(checkpoint, folder / "m.onnx")["path"])
    image = folder / "chest.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 256, (1024, 1024), dtype=np.uint8))
    return onnx_path, image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deploy", type=Path, required=True, help="venv with plain `pip install cxr`")
    parser.add_argument("--full", type=Path, default=Path(sys.prefix), help="venv with cxr[train] (default: this)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    envs = {"full (cxr[train])": args.full, "deploy (cxr)": args.deploy}
    with tempfile.TemporaryDirectory() as folder:
        model, image = export_model(Path(folder))
        for venv in envs.values():
            predict_seconds(venv, model, image)  # warm the page cache: every round then reads the same files
        times: dict[str, list[float]] = {name: [] for name in envs}
        for _ in range(args.rounds):
            for name, venv in envs.items():
                times[name].append(predict_seconds(venv, model, image))
    print(f"`cxr predict model.onnx chest.png` (ResNet-18, 128 px, one 1024x1024 PNG), {args.rounds} rounds")
    print(f"{'install':<20} {'torch':>6} {'site-packages':>14} {'predict s (median)':>19} {'range':>12}")
    for name, venv in envs.items():
        values = times[name]
        print(f"{name:<20} {'yes' if has_torch(venv) else 'no':>6} {site_packages_bytes(venv) / 2**30:11.2f} GiB "
              f"{statistics.median(values):19.2f} {min(values):5.2f}-{max(values):<5.2f}")  # fmt: skip
    full, deploy = (statistics.median(times[name]) for name in envs)
    sizes = [site_packages_bytes(venv) for venv in envs.values()]
    print(f"deploy / full: size {sizes[1] / sizes[0]:.2f}x, predict time {deploy / full:.2f}x")


if __name__ == "__main__":
    main()
