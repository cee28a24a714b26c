"""What ``train.precision=auto`` means on this machine: bf16 only where the hardware computes it natively.

On a GPU, AMP is always a win: bf16 where the GPU supports it (Ampere and later), else fp16 with loss scaling.

On a CPU, bf16 autocast pays only with native bf16 arithmetic: AMX (Intel Sapphire Rapids and later) or
AVX-512 BF16 (Intel Cooper Lake, AMD Zen 4 and later). There oneDNN runs convolutions and matmuls in bf16 at up
to twice the fp32 rate (measured 1.9x for the demo's ResNet-18 at 128 px with channels_last). Everywhere else
(AVX2-only or plain AVX-512 CPUs, most laptops, the 2-core AMD EPYC the demo is timed on) oneDNN *emulates* bf16 by
converting to fp32 and back, which is slower than fp32 and less accurate: there ``auto`` stays in fp32
(``benchmarks/cpu_precision.py`` measures both on the machine at hand).

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


def auto_precision(on_gpu: bool) -> str:
    """The Lightning precision ``auto`` stands for: GPU bf16/fp16 AMP; CPU bf16 AMP only with native bf16."""
    import torch

    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native_bf16() else "32-true"
