"""CPU training throughput by precision and memory format, and what ``train.precision=auto`` picks on this CPU.

ResNet-18 (the demo's model: GAP head, random init, 1 channel in), forward + backward + Adam step on random input.
Four variants: fp32, fp32 + channels_last, bf16 autocast, bf16 autocast + channels_last. bf16 pays only on CPUs
that compute it natively (AMX, AVX-512 BF16); elsewhere oneDNN emulates it and it is slower than fp32, which is
why ``auto`` asks :mod:`cxr.training.precision`. The variants run interleaved, round after round, so a machine
shared with other work slows them alike; the table gives the median and range over rounds and the ratio to fp32 within
each round. Where bf16 is emulated its steps take ~10x longer than fp32's, so the run takes minutes on a 2-core machine.

    .venv/bin/python benchmarks/cpu_precision.py [--size 128] [--batch-size 32] [--steps 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from cxr.models.factory import create_model
from cxr.training.precision import auto_precision, cpu_capability, native_bf16

VARIANTS = {
    "fp32": (False, False),
    "fp32+channels_last": (False, True),
    "bf16 autocast": (True, False),
    "bf16+channels_last": (True, True),
}


def make_step(bf16: bool, channels_last: bool, size: int, batch_size: int) -> Callable[[], None]:
    """One training step of a fresh ResNet-18 (same seed for every variant) in the given precision and layout."""
    torch.manual_seed(0)
    model = create_model("resnet18", 14, head="gap", input_size=size)
    images, target = torch.rand(batch_size, 1, size, size), torch.randint(0, 2, (batch_size, 14)).float()
    if channels_last:  # as cxr.training.fit does: the weights and the batch in NHWC
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # what Lightning's bf16-mixed does on CPU
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def images_per_s(step: Callable[[], None], steps: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (allocator, oneDNN)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    native = native_bf16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability {cpu_capability()}")
    print(f"native bf16: {native}; train.precision=auto on CPU -> {auto_precision(on_gpu=False)}")
    print(
        f"ResNet-18, {args.size} px, batch {args.batch_size}, fwd+bwd+Adam, {args.steps} steps x {args.rounds} rounds"
    )
    steps = {name: make_step(*flags, args.size, args.batch_size) for name, flags in VARIANTS.items()}
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    rates: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(images_per_s(step, args.steps, args.batch_size))
    # Each round's ratio to that round's fp32: other work on the machine shifts a round, not one variant of it.
    print(f"{'variant':<20} {'img/s (median)':>14} {'range':>15} {'vs fp32 (median of rounds)':>27}")
    for name, values in rates.items():
        ratios = [value / base for value, base in zip(values, rates["fp32"], strict=True)]
        print(f"{name:<20} {statistics.median(values):14.1f} {min(values):7.1f}-{max(values):<7.1f} "
              f"{statistics.median(ratios):10.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
