"""CLI command ``cxr import torchxrayvision NAME --out MODEL.ckpt``: another project's classifier as a cxr model.

A thin wrapper: the work is in :mod:`cxr.models.xrv`, imported inside the command (it needs torch).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app

import_app = typer.Typer(
    help="Turn a pretrained classifier of another project into a cxr model artifact.",
    no_args_is_help=True,
)
app.add_typer(import_app, name="import")


@import_app.command("torchxrayvision")
def import_torchxrayvision(
    name: str = typer.Argument(..., help="Its weights name, e.g. densenet121-res224-all, -nih, resnet50-res512-all."),
    out: Path = typer.Option(..., "--out", help="The model artifact to write (.ckpt)."),
    cache_dir: Path | None = typer.Option(
        None,
        "--cache-dir",
        help="Folder of its weights file, downloaded there if absent (default ~/.torchxrayvision/models_data).",
    ),
) -> None:
    """Import a torchxrayvision classifier (its weights downloaded into its cache folder on first use; CXR_OFFLINE=1
    forbids it): all its labels, input size, normalisation and operating points. Needs torchxrayvision (the xrv extra
    of cxr); the artifact does not."""
    from cxr.models.xrv import import_torchxrayvision as run_import

    record = run_import(name, out, cache_dir)
    typer.echo(f"wrote {record['out']}: {record['architecture']}, {len(record['labels'])} outputs")
    if record["dropped_outputs"]:
        typer.echo(f"dropped (not in cxr's vocabulary): {', '.join(record['dropped_outputs'])}")
    if record["without_op_thresh"]:
        typer.echo(f"threshold 0.5 (no operating point): {', '.join(record['without_op_thresh'])}")
