"""The ``cxr`` command line. One module per pipeline stage registers its commands on :data:`app`.

Heavy imports (torch, lightning, onnxruntime) happen inside the command bodies, so ``cxr --help`` and
``cxr inspect`` start fast.
"""

import sys

from cxr.cli._app import app

# Each import registers its commands on ``app``; the order is the order of ``cxr --help``.
from cxr.cli import synth as _synth  # noqa: E402,F401  synth
from cxr.cli import data as _data  # noqa: E402,F401  inspect, prepare
from cxr.cli import training as _training  # noqa: E402,F401  train
from cxr.cli import evaluation as _evaluation  # noqa: E402,F401  evaluate, compare
from cxr.cli import inference as _inference  # noqa: E402,F401  predict, localize, export, serve
from cxr.cli import demo as _demo  # noqa: E402,F401  demo
from cxr.errors import CxrError


def main() -> None:
    """Entry point of the ``cxr`` console script: user errors print one line and exit 2, not a traceback."""
    try:
        app()
    except CxrError as error:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


__all__ = ["app", "main"]
