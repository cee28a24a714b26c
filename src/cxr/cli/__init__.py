"""The ``cxr`` command line. One module per pipeline stage registers its commands on :data:`app`.

Heavy imports (torch, lightning, onnxruntime) happen inside the command bodies, so ``cxr --help`` and
``cxr inspect`` start fast.
"""

import sys

from cxr.cli._app import registered_app
from cxr.errors import CxrError

app = registered_app()


def main() -> None:
    """Entry point of the ``cxr`` console script: user errors print one line and exit 2, not a traceback."""
    try:
        app()
    except CxrError as error:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {error}", highlight=False)
        sys.exit(2)


__all__ = ["app", "main"]
