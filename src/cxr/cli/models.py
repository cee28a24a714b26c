"""CLI commands ``cxr import torchxrayvision NAME`` and ``cxr import keras FILE.h5``: another project's classifier as a
cxr model.

Thin wrappers: the work is in :mod:`cxr.models.xrv` and :mod:`cxr.models.keras_import`, imported inside the commands
(they need torch).
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
    typer.echo(f"wrote {record.out}: {record.architecture}, {len(record.labels)} outputs")
    if record.source.dropped_outputs:
        typer.echo(f"dropped (not in cxr's vocabulary): {', '.join(record.source.dropped_outputs)}")
    if record.source.without_op_thresh:
        typer.echo(f"threshold 0.5 (no operating point): {', '.join(record.source.without_op_thresh)}")


@import_app.command("keras")
def import_keras(
    file: Path = typer.Argument(..., help="A Keras 2 HDF5 file: model.save (full model) or save_weights."),
    out: Path = typer.Option(..., "--out", help="The model artifact to write (.ckpt)."),
    layout: str = typer.Option(
        "auto", "--layout", help="auto (full model: original; weights only: chexnet-keras), original, chexnet-keras."
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Output names in the file's order, comma-separated (default: the layout's)."
    ),
) -> None:
    """Import a Keras 2 DenseNet: the original NIH project's six .hdf5 models or CheXNet-Keras' weights. Read with
    h5py only (no Keras, no TensorFlow); every weight matched by layer name and shape."""
    from cxr.models.keras_import import import_keras as run_import

    record = run_import(file, out, layout, labels)
    typer.echo(
        f"wrote {record.out}: {record.architecture} ({record.source.layout} layout), {record.input_size} px, "
        f"outputs {', '.join(record.source.outputs)}"
    )
    if record.source.preset:
        preset = record.source.preset
        typer.echo(f"preprocessing of preset {preset}; its reported AUROCs: cxr evaluate ... --preset {preset}")
