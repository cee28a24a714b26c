"""CLI command ``cxr synth``: write a synthetic NIH-format dataset (see :mod:`cxr.synth`, imported inside it)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Output folder (created; must not exist or be empty)."),
    images: int = typer.Option(1000, "--images", help="Number of images."),
    size: int = typer.Option(256, "--size", help="Image width and height in pixels."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes byte-identical files."),
    prevalence: str = typer.Option("nih", "--prevalence", help="Label frequencies: 'nih' (NIH's) or 'flat'."),
    workers: int | None = typer.Option(None, "--workers", help="Rendering processes (default: all cores)."),
    layout: str = typer.Option("nih", "--layout", help="File layout: 'nih' (ChestX-ray14's) or 'chexpert'."),
    group_effect: list[str] = typer.Option(
        [],
        "--group-effect",
        help="Draw a finding fainter in one group: FINDING:CONDITION:STRENGTH, e.g. "
        "Effusion:age>=80:0.3 or Mass:sex=F:0.2 (repeatable).",
    ),
) -> None:
    """Write a synthetic dataset in NIH ChestX-ray14's layout (PNGs, metadata CSV, split lists, blacklist, boxes), or
    with --layout chexpert in CheXpert's (train.csv/valid.csv, JPEGs, uncertain and blank labels)."""
    from cxr.synth import generate
    from cxr.synth.effects import GroupEffect

    effects = tuple(GroupEffect.parse(text) for text in group_effect)
    path = generate(out, images=images, size=size, seed=seed, prevalence=prevalence, workers=workers, progress=True,
                    layout=layout, effects=effects)  # fmt: skip
    typer.echo(f"wrote {images} images ({size} px, {prevalence} prevalence, seed {seed}, {layout} layout) to {path}")
