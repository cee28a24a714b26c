"""CPU training throughput and size of registry models at one input size (default 224 px).

Images per second of a training step (forward + backward + AdamW step on a random batch, after one warm-up step),
random init, and the model's trainable parameters with a 14-output ``gap`` head. Two rates: per second of wall
time, and per second of this process's CPU time (with ``--threads 1``, the default, that is one core's work, which
other jobs sharing the machine barely change; the wall rate drops with them). The README's model table quotes the
CPU-time rate. Not a test.

    python benchmarks/model_throughput.py [--models densenet121 ...] [--size 224] [--steps 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from datetime import date

import torch
import torch.nn.functional as F

from cxr.models.factory import count_parameters, create_model

MODELS = ["densenet121", "resnet50", "convnext_atto", "convnext_tiny", "efficientnet_b0", "vit_small_patch16_224"]


def images_per_s(
    name: str, size: int, batch_size: int, steps: int, optimizer_class: type = torch.optim.AdamW
) -> tuple[float, float, int]:
    """(training images per wall second, per CPU second, trainable parameters) of ``name`` at ``size`` px."""
    torch.manual_seed(0)
    model = create_model(name, 14, head="gap", input_size=size).train()
    optimizer = optimizer_class(model.parameters(), lr=1e-4)
    images, target = torch.rand(batch_size, 1, size, size), torch.randint(0, 2, (batch_size, 14)).float()

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, oneDNN kernels
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    images = steps * batch_size
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return images / wall, images / cpu, count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{date.today()} {platform.processor() or platform.machine()}, load average {os.getloadavg()[0]:.1f}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}; batch {args.batch_size}, {args.size} px, "
        f"{args.steps} steps"
    )
    for name in args.models:
        wall, cpu, params = images_per_s(name, args.size, args.batch_size, args.steps)
        print(f"{name:>24}: {params / 1e6:6.1f} M params, {wall:6.2f} train img/s wall, {cpu:6.2f} per CPU second")


if __name__ == "__main__":
    main()
