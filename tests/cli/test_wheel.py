"""The wheel `pip wheel .` builds works outside any checkout: presets and the web page travel inside it.

The wheel is installed into a folder of its own (``pip install --target``, no dependencies: they are this venv's)
and put first on ``PYTHONPATH``; every command runs from a temporary folder, so nothing of the checkout is reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cxr.labels import FINDINGS

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, str]:
    """The environment of a process that imports cxr from the built wheel."""
    root = tmp_path_factory.mktemp("wheel")
    # --no-build-isolation: the build backend is this venv's setuptools (pinned in requirements.lock), so nothing
    # is downloaded to build.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", str(REPO),
         "--wheel-dir", str(root / "dist")],
        check=True, cwd=root, capture_output=True,
    )  # fmt: skip
    (wheel,) = (root / "dist").glob("cxr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "cxr/configs/experiments/demo.yaml" in names and "cxr/inference/static/index.html" in names
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(root / "site"), str(wheel)],
        check=True,
        capture_output=True,
    )
    return {**os.environ, "PYTHONPATH": str(root / "site"), "OMP_NUM_THREADS": "1"}


def _cxr(env: dict[str, str], cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "cxr.cli", *args], env=env, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_the_installed_wheel_runs_synth_prepare_train_predict(installed, tmp_path):
    where = subprocess.run(
        [sys.executable, "-c", "import cxr, cxr.config as c; print(cxr.__file__); print(c.experiments_dirs()[-1])"],
        env=installed, cwd=tmp_path, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    site = installed["PYTHONPATH"]
    assert all(path.startswith(site) for path in where), where  # the wheel's copy, not the checkout's
    _cxr(installed, tmp_path, "synth", "data", "--images", "60", "--size", "32", "--prevalence", "flat",
         "--workers", "1")  # fmt: skip
    _cxr(installed, tmp_path, "prepare", "data", "--out", "store", "--size", "32", "--crop", "1.0", "--workers", "1")
    _cxr(installed, tmp_path, "train", "--experiment", "demo", "--store", "store", "--out", "run", "--image-size", "32",
         "--epochs", "1", "--no-progress", "data.num_workers=0", "task.val_fraction=0.2")  # fmt: skip
    image = next((tmp_path / "data").rglob("*.png"))
    output = _cxr(installed, tmp_path, "predict", "run/checkpoints/best.ckpt", str(image), "--json")
    prediction = json.loads(output)  # one image: one object
    assert prediction["image"] == str(image) and list(prediction["probabilities"]) == list(FINDINGS)
