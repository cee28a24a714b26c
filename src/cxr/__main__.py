"""``python -m cxr``."""

from cxr.cli import main

main()
