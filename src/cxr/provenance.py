"""What a result was computed with: package versions and the machine, recorded in runs, checkpoints and stores.

A seeded run repeats bit for bit only on the same kind of machine with the same versions of these packages (float
reductions are ordered differently by other CPUs' kernels and by other library releases), so every run folder
(``environment.json``), checkpoint and store manifest says which they were.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

# The packages whose versions change numbers: the training engine, the numerics, the ONNX runtime.
PACKAGES = ("cxr", "torch", "torchvision", "lightning", "numpy", "opencv-python-headless", "onnxruntime", "timm")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions, read from package metadata (nothing is imported); None where a package is absent."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """Names of the visible CUDA devices; empty when torch is not loaded (nothing is imported for this) or no GPU."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


@dataclass(frozen=True)
class Environment:
    """The machine and package versions a result was computed with; ``time`` (UTC, ISO 8601) when it was taken."""

    versions: dict[str, str | None]  # package → installed version (None: absent)
    python: str
    platform: str
    cpu: str
    gpus: list[str]
    time: str | None = None

    def to_dict(self) -> dict[str, object]:
        """The ``environment`` block of runs (``environment.json``), checkpoints and store manifests."""
        when = {"time": self.time} if self.time is not None else {}
        return when | {"versions": self.versions, "python": self.python, "platform": self.platform, "cpu": self.cpu,
                       "gpus": self.gpus}  # fmt: skip


def environment(timestamp: bool = True) -> Environment:
    """Versions, Python, OS, CPU and GPUs of this process, with the time it was taken (UTC) unless ``timestamp`` is
    false (a store's manifest: a resumed or parallel prepare must write the same bytes)."""
    return Environment(
        versions=package_versions(),
        python=platform.python_version(),
        platform=platform.platform(),
        cpu=cpu_name(),
        gpus=gpu_names(),
        time=datetime.now(UTC).isoformat(timespec="seconds") if timestamp else None,
    )
