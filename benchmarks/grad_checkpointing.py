"""Peak CPU memory of one training step with and without ``model.grad_checkpointing`` (activation checkpointing).

Each measurement runs in a fresh subprocess (peak RSS only ever grows): build the model, note the peak RSS, run one
forward + backward on a random batch, note the peak again. The difference is what the step added (activations kept
for the backward, gradients, the allocator's slack); the ratio of the two differences is what checkpointing saves.
Also prints the CPU time of each step, one thread (checkpointing recomputes the blocks' forward in the backward).
Not a test.

    python benchmarks/grad_checkpointing.py [--models densenet121 convnext_tiny] [--size 224] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure(name: str, size: int, batch_size: int, checkpointing: bool) -> dict:
    """One step in this process: peak RSS before and after, step time."""
    import torch
    import torch.nn.functional as F

    from cxr.models.factory import create_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model(name, 14, head="gap", input_size=size, grad_checkpointing=checkpointing).train()
    images, target = torch.rand(batch_size, 1, size, size), torch.randint(0, 2, (batch_size, 14)).float()
    before = _peak_mib()
    start = time.process_time()  # CPU time: other jobs on a shared machine barely change it
    F.binary_cross_entropy_with_logits(model(images), target).backward()
    seconds = time.process_time() - start
    return {"before_mib": before, "after_mib": _peak_mib(), "seconds": seconds}


def _in_subprocess(name: str, size: int, batch_size: int, checkpointing: bool) -> dict:
    args = [sys.executable, __file__, "--child", name, str(size), str(batch_size), str(int(checkpointing))]
    return json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["densenet121", "resnet50", "convnext_tiny"])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, size, batch, flag = args.child
        print(json.dumps(measure(name, int(size), int(batch), bool(int(flag)))))
        return
    print(
        f"one training step, batch {args.batch_size}, {args.size} px, CPU, 1 thread: MiB added to the peak RSS by "
        "the step, its CPU seconds"
    )
    for name in args.models:
        plain = _in_subprocess(name, args.size, args.batch_size, False)
        ckpt = _in_subprocess(name, args.size, args.batch_size, True)
        added = [run["after_mib"] - run["before_mib"] for run in (plain, ckpt)]
        print(
            f"{name:>16}: without {added[0]:7.0f} MiB {plain['seconds']:5.2f} s | with {added[1]:7.0f} MiB "
            f"{ckpt['seconds']:5.2f} s | memory ratio {added[1] / added[0]:.2f}, time ratio "
            f"{ckpt['seconds'] / plain['seconds']:.2f}"
        )


if __name__ == "__main__":
    main()
