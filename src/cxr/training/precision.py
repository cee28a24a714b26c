"""What ``train.precision=auto`` means on this machine: bf16 only where the hardware computes it natively.

On a GPU, AMP is always a win: bf16 where the GPU supports it (Ampere and later), else fp16 with loss scaling.

On a CPU, bf16 autocast pays only with native bf16 arithmetic: AMX (Intel Sapphire Rapids and later) or
AVX-512 BF16 (Intel Cooper Lake, AMD Zen 4 and later). There oneDNN runs convolutions and matmuls in bf16 at up
to twice the fp32 rate (measured 1.9x for the demo's ResNet-18 at 128 px with channels_last). Everywhere else
(AVX2-only or plain AVX-512 CPUs, most laptops, the 2-core AMD EPYC the demo is timed on) oneDNN *emulates* bf16 by
converting to fp32 and back, which is slower than fp32 and less accurate: there ``auto`` stays in fp32
(``benchmarks/cpu_precision.py`` measures both on the machine at hand).

The CPU's flags are read by :mod:`cxr.models.hardware` (shared with inference).
"""

from __future__ import annotations

from cxr.models.hardware import NATIVE_BF16_FLAGS, cpu_capability, cpuinfo_flags, native_bf16

__all__ = ["NATIVE_BF16_FLAGS", "auto_precision", "cpu_capability", "cpuinfo_flags", "native_bf16"]


def auto_precision(on_gpu: bool) -> str:
    """The Lightning precision ``auto`` stands for: GPU bf16/fp16 AMP; CPU bf16 AMP only with native bf16."""
    import torch

    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native_bf16() else "32-true"
