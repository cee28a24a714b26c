"""``python -m cxr.cli`` (what torchrun and srun launch)."""

from cxr.cli import main

main()
