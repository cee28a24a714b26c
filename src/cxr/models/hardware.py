"""Whether this CPU computes bf16 natively, read from its feature flags: what ``train.precision=auto`` (training),
``cxr embed --precision auto`` and ``cxr serve --precision auto`` decide by (:mod:`cxr.training.precision` says why).

``torch.backends.cpu.get_cpu_capability()`` is not enough to decide: it says ``AVX512`` for CPUs with and without
the bf16 extension. The decision reads the CPU's feature flags, from PyTorch's own cpuinfo probes
(``torch.cpu._is_amx_tile_supported`` / ``_is_avx512_bf16_supported``, private but present since torch 2.1) and,
should a later torch drop them, from ``/proc/cpuinfo`` (Linux); elsewhere (macOS, Windows without the probes, ARM)
the answer is "no", which costs speed, never correctness.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
"""``/proc/cpuinfo`` flags of native bf16 arithmetic (AMX's bf16 tiles, AVX-512's bf16 dot products)."""


def cpu_capability() -> str:
    """The SIMD level PyTorch dispatches its own CPU kernels to (``AVX2``, ``AVX512``, ...), for reports."""
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU listed in ``/proc/cpuinfo``; empty where the file does not exist."""
    try:
        text = path.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


@lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX-512 BF16), so bf16 autocast is faster than fp32."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if all(callable(probe) for probe in probes):
        try:
            return any(bool(probe()) for probe in probes)
        except RuntimeError:  # a torch built without cpuinfo: fall back to the kernel's view of the CPU
            pass
    return bool(cpuinfo_flags() & NATIVE_BF16_FLAGS)
