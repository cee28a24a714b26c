"""The ``cxr`` command line. One module per pipeline stage registers its commands on :data:`app`.

Heavy imports (torch, lightning, onnxruntime) happen inside the command bodies, so ``cxr --help`` and
``cxr inspect`` start fast.
"""

import sys

from cxr.cli._app import registered_app
from cxr.errors import CxrError

app = registered_app()


TRAIN_EXTRA = frozenset({"torch", "torchvision", "lightning", "torchmetrics", "pyarrow", "pytorch_grad_cam",
                         "matplotlib", "sklearn", "onnx", "onnxscript", "tensorboard"})  # fmt: skip
"""Top-level modules of ``pip install 'cxr[train]'``: a deployment of an exported model runs without them."""


def main() -> None:
    """Entry point of the ``cxr`` console script: user errors print one line and exit 2, not a traceback."""
    try:
        app()
    except CxrError as error:
        _fail(str(error))
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in TRAIN_EXTRA:
            raise
        _fail(f"this command needs {error.name}, part of the training stack: pip install 'cxr[train]'")


def _fail(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    sys.exit(2)


__all__ = ["app", "main"]
