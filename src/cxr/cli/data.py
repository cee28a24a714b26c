"""CLI commands ``cxr inspect`` (summarise a dataset folder without decoding a pixel) and ``cxr prepare``.

Thin wrappers: the work is in :mod:`cxr.data.datasets` and :mod:`cxr.data.prepare`; heavy imports happen inside the
commands. No dataset is special here: every reader gives the same summary and the same store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxr.cli._app import app

if TYPE_CHECKING:
    from cxr.data.datasets import DatasetSummary


@app.command()
def inspect(
    data: Path = typer.Argument(..., help="Dataset folder with its metadata files (images may be absent)."),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as JSON on stdout (keys: the dataset's names)."
    ),
    dataset: str | None = typer.Option(
        None, "--dataset", help="Force the reader: nih, chexpert, mimic, padchest, vindr, rsna, siim, google2019."
    ),
) -> None:
    """Summarise a dataset folder without decoding a pixel: images, patients, findings, split, rejects.

    The dataset is recognised from its files (names and CSV columns); see docs/datasets.md.
    """
    from cxr.data.datasets import inspect_folder

    summary = inspect_folder(data, dataset)
    if as_json:
        typer.echo(json.dumps(summary.to_dict(), indent=2))
    else:
        _print_summary(summary)


def _overview_rows(summary: DatasetSummary) -> list[tuple[str, str]]:
    """The overview table's rows: every dataset's, then those about what only some datasets have."""
    patients = "not identified" if summary.patients is None else f"{summary.patients:,}"
    split = " · ".join(f"{k or 'none'} {v:,}" for k, v in (summary.split or {}).items()) or "none"
    if summary.unlisted is not None:
        split += f" · in no list {summary.unlisted:,}"
    rows = [
        ("files", ", ".join(f"{key}: {name or '[red]absent[/]'}" for key, name in summary.files.items())),
        ("images", f"{summary.images:,} listed, {summary.usable:,} usable ({summary.images_on_disk:,} on disk)"),
        ("patients", patients),
        ("views", " · ".join(f"{k or '?'} {v:,}" for k, v in summary.views.items())),
        ("split", split),
        ("rejects", f"{summary.rejects.count:,}"),
        ("not available", ", ".join(summary.not_available) or "none"),
    ]
    if summary.blacklisted is not None:
        rows.append(("blacklisted", " · ".join(f"{k} {v:,}" for k, v in summary.blacklisted.items()) + " (kept)"))
    if summary.age is not None:
        age = summary.age
        outliers = "" if summary.age_outliers is None else f"; {summary.age_outliers} impossible ages"
        rows.append(("age", f"{age['min']}–{age['max']}, median {age['median']}{outliers}"))
    if summary.sex is not None:
        rows.append(("sex", " · ".join(f"{k or '?'} {v:,}" for k, v in summary.sex.items())))
    if summary.missing_images is not None:
        missing = summary.missing_images
        examples = f" (e.g. {', '.join(missing.examples)})" if missing.count else ""
        rows.append(("missing images", f"{missing.count:,}{examples}"))
    rows.append(("boxes", "none" if summary.boxes is None else f"{summary.boxes:,}"))
    return rows


def _print_summary(summary: DatasetSummary) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    overview = Table(title=f"{summary.dataset} folder {summary.source}", show_header=False, title_justify="left")
    for key, value in _overview_rows(summary):
        overview.add_row(f"[bold]{key}", value)
    console.print(overview)
    uncertain = summary.uncertain
    columns = ["label", "positive", "%"] + (["uncertain"] if uncertain else [])
    findings = Table(*columns, title="The dataset's own labels (an image may have several)", title_justify="left")
    for name, count in summary.findings.items():
        share = 100 * count / summary.usable if summary.usable else 0.0
        findings.add_row(name, f"{count:,}", f"{share:.1f}", *([f"{uncertain[name]:,}"] if uncertain else []))
    console.print(findings)
    common = Table("label", "positive", title="Common vocabulary", title_justify="left")
    for name, count in summary.harmonised.items():
        common.add_row(name, "not available" if count is None else f"{count:,}")
    console.print(common)


@app.command()
def prepare(
    data: Path = typer.Argument(..., help="Dataset folder (see `cxr inspect`): NIH, CheXpert, MIMIC, PadChest, …"),
    out: Path = typer.Option(..., "--out", help="Store folder to write (new, or an interrupted store to resume)."),
    size: int = typer.Option(300, "--size", help="Side of the stored square images, in pixels."),
    crop: float = typer.Option(0.75, "--crop", help="Fraction of the shorter side kept by the centered crop."),
    workers: int | None = typer.Option(None, "--workers", help="Decoding processes (default: all cores)."),
    force: bool = typer.Option(False, "--force", help="Overwrite a store made with other arguments."),
    dataset: str | None = typer.Option(None, "--dataset", help="Force the reader (see `cxr inspect --help`)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the patient-wise split, for datasets without an official one."),
    uncertainty: str = typer.Option(
        "ignore", "--uncertainty", help="CheXpert/MIMIC -1.0 becomes: ones, zeros, or ignore (missing: NaN, never 0)."
    ),
) -> None:
    """Decode every image once into a store: uint8 memmap + index.parquet + rejects.csv + manifest.json.

    Killed and rerun with the same arguments, it resumes where it stopped; on a finished store it does nothing.
    """
    from cxr.data.prepare import prepare_store

    manifest = prepare_store(data, out, size=size, crop=crop, workers=workers, progress=True, force=force,
                             dataset=dataset, seed=seed, uncertainty=uncertainty)  # fmt: skip
    counts = manifest.counts
    typer.echo(f"{out}: {counts.images} images ({counts.train_val} train_val, {counts.test} test), "
               f"{counts.rejected} rejected (see rejects.csv), {size}x{size} px, crop {crop}")  # fmt: skip
