"""CLI commands ``cxr embed`` (frozen embeddings of a store) and ``cxr probe`` (linear heads on them, as a run).

The work is in :mod:`cxr.probe`, imported inside the commands (torch, scikit-learn). ``--preset`` reads a probe preset
(:mod:`cxr.probe.presets`, e.g. ``probe-rad-dino``): options given on the command line win over it.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app


@app.command()
def embed(
    model: str = typer.Argument(
        ..., help="A model artifact (.ckpt) or run folder, a backbone name (model.name), or a probe preset."
    ),
    store: Path = typer.Argument(..., help="Store prepared by `cxr prepare`."),
    out: Path = typer.Option(..., "--out", help="Embeddings folder to write (or to finish after an interruption)."),
    pretrained: str | None = typer.Option(
        None, "--pretrained", help="A backbone name's weights: imagenet, none, or a file."
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="A backbone name's input size (default: store's)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per forward pass (and per chunk)."),
    workers: int = typer.Option(
        0, "--workers", min=0, help="Loader processes reading the store while the model runs (0: in this process)."
    ),
    precision: str = typer.Option("auto", "--precision", help="auto (bf16 where native), 32, or bf16."),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    force: bool = typer.Option(False, "--force", help="Overwrite embeddings made with other arguments."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Rich progress bar."),
) -> None:
    """One feature vector per store image (the input of the model's final linear layer), resumable after a kill.

    MODEL may name a probe preset (e.g. probe-rad-dino): its model, weights, input size and batch size, which the
    options override."""
    from cxr.probe.embed import embed_store
    from cxr.probe.presets import embed_settings

    settings = embed_settings(model, pretrained=pretrained, image_size=image_size, batch_size=batch_size)
    manifest = embed_store(settings.model, store, out, settings.pretrained, settings.image_size,
                           settings.batch_size, workers, precision, device, progress, force)  # fmt: skip
    typer.echo(f"embeddings written to {out}: {manifest.images} images x {manifest.dims} dims "
               f"({manifest.precision})")  # fmt: skip


@app.command()
def probe(
    embeddings: Path = typer.Argument(..., help="Embeddings folder from `cxr embed`."),
    overrides: list[str] = typer.Argument(None, help="task.* overrides, e.g. task.target=Fibrosis"),
    store: Path = typer.Option(..., "--store", help="The store the embeddings were made from (labels, split)."),
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    preset: str | None = typer.Option(None, "--preset", help="A probe preset, e.g. probe-rad-dino."),
    fractions: str | None = typer.Option(
        None, "--fractions", help="Fractions of the training patients, e.g. 0.01,0.1,1 (label efficiency)."
    ),
    c_grid: str | None = typer.Option(
        None, "--c-grid", help="Inverse L2 strengths to choose from on validation, e.g. 0.01,0.1,1 (default 1e-4..1e2)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the patient draw of each fraction and the solver."),
) -> None:
    """Logistic regression per label on frozen embeddings (L2 strength chosen on validation), written as a run that
    `cxr evaluate`, `predict`, `export` and `serve` use; several fractions add a label-efficiency table and plot."""
    from cxr.probe.presets import probe_settings
    from cxr.probe.run import probe_run

    settings = probe_settings(preset, fractions=fractions, c_grid=c_grid)
    result = probe_run(
        embeddings, store, out, settings.fractions, seed, list(overrides or []), settings.experiment, settings.c_grid
    )
    for row in result.results:
        low, high = row.scores.macro_auroc_ci
        typer.echo(f"fraction {row.fraction:g}: {row.train_patients} patients, {row.train_images} images, "
                   f"test macro AUROC {row.scores.macro_auroc:.3f} (95% CI {low:.3f}-{high:.3f})")  # fmt: skip
    typer.echo(f"run written to {out}; score it with `cxr evaluate {out}`")
