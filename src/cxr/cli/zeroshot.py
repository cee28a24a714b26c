"""CLI command ``cxr zeroshot MODEL STORE --out RUN``: a CLIP's zero-shot classifier as a run ``cxr evaluate`` scores.

The work is in :mod:`cxr.training.zeroshot`, imported inside the command (it needs torch and open_clip).
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app


@app.command()
def zeroshot(
    model: str = typer.Argument(..., help="A CLIP: 'biomedclip' (weights fetched on first use) or its folder."),
    store: Path = typer.Argument(..., help="Store prepared by `cxr prepare`."),
    out: Path = typer.Option(..., "--out", help="Run directory to create."),
    prompts: Path | None = typer.Option(
        None, "--prompts", help="YAML label: {positive: ..., negative: ...}; replaces the default pairs it names."
    ),
    experiment: str | None = typer.Option(None, "--experiment", "-e", help="Preset for the task and split."),
    image_size: int | None = typer.Option(None, "--image-size", help="Model input size (default: the CLIP's)."),
    overrides: list[str] = typer.Argument(None, help="Config overrides key=value, e.g. task.val_fraction=0.2"),
) -> None:
    """Zero-shot classification from text prompts (positive vs negative per label, softmax over the pair with the
    CLIP's logit scale), written as a run (config, split, model artifact, validation predictions): score it with
    `cxr evaluate RUN`; predict, export and serve its checkpoints/best.ckpt like any model."""
    from cxr.training.zeroshot import zeroshot_run

    run = zeroshot_run(model, store, out, prompts, experiment, list(overrides or []), image_size)
    typer.echo(f"zero-shot run written to {run}; score it with `cxr evaluate {run}`")
