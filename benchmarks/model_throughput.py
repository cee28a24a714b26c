"""CPU training throughput and size of registry models at one input size (default 224 px).

Images/s of a training step (forward + backward + AdamW step on a random batch, after one warm-up step), random
init, the model's trainable parameters with a 14-output ``gap`` head. The numbers in the README's model table come
from this script. Not a test.

    python benchmarks/model_throughput.py [--models densenet121 convnext_atto ...] [--size 224] [--steps 3]
"""

from __future__ import annotations

import argparse
import platform
import time
from datetime import date

import torch
import torch.nn.functional as F

from cxr.models.factory import count_parameters, create_model

MODELS = ["densenet121", "resnet50", "convnext_atto", "convnext_tiny", "efficientnet_b0", "vit_small_patch16_224"]


def images_per_s(name: str, size: int, batch_size: int, steps: int) -> tuple[float, int]:
    """(training images/s, trainable parameters) of ``name`` at ``size`` px."""
    torch.manual_seed(0)
    model = create_model(name, 14, head="gap", input_size=size).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images, target = torch.rand(batch_size, 1, size, size), torch.randint(0, 2, (batch_size, 14)).float()

    def step() -> None:
        loss = F.binary_cross_entropy_with_logits(model(images), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size / (time.perf_counter() - start), count_parameters(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(
        f"{date.today()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; batch {args.batch_size}, {args.size} px, {args.steps} steps"
    )
    for name in args.models:
        rate, params = images_per_s(name, args.size, args.batch_size, args.steps)
        print(f"{name:>24}: {params / 1e6:6.1f} M params, {rate:6.1f} train img/s")


if __name__ == "__main__":
    main()
