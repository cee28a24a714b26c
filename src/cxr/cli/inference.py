"""CLI commands ``cxr predict``, ``cxr localize``, ``cxr export`` and ``cxr serve``.

Thin wrappers: the work is in :mod:`cxr.inference.predict`, :mod:`cxr.evaluation.localize`,
:mod:`cxr.inference.export` and :mod:`cxr.inference.serve`; heavy imports (torch, onnxruntime, FastAPI) happen
inside the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cxr.cli._app import app
from cxr.errors import CxrError


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt), a run directory, or an exported model.onnx."),
    images: list[Path] = typer.Argument(..., help="PNG, JPEG or DICOM files, or folders (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout: one object for one image, else a list."),
    csv: Path | None = typer.Option(None, "--csv", help="Also write Image Index + prob_<finding> columns here."),
    cam: Path | None = typer.Option(None, "--cam", help="Write Grad-CAM overlays (.png) and maps (.npy) here."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally mirrored image."),
) -> None:
    """Probability of each finding per image; unreadable files are reported on stderr and skipped (exit 1)."""
    from rich.console import Console

    from cxr.inference.predict import predict_images

    errors: list[tuple[str, str]] = []
    stderr = Console(stderr=True)

    def report(image: str, message: str) -> None:
        errors.append((image, message))
        stderr.print(f"[yellow]skipped[/] {image}: {message}", highlight=False, soft_wrap=True)

    records = predict_images(model, images, batch_size=batch_size, cam_dir=cam, on_error=report, tta=tta)
    if not records:
        raise CxrError(f"no image could be predicted ({len(errors)} skipped)")
    if csv is not None:
        _write_csv(records, csv)
    if as_json:
        typer.echo(json.dumps(records[0] if len(images) == 1 and images[0].is_file() else records, indent=2))
    else:
        _print_predictions(records)
    if errors:
        raise typer.Exit(1)


def _write_csv(records: list[dict], path: Path) -> None:
    """The predictions CSV ``cxr evaluate --predictions`` reads: ``Image Index`` (the file name, or the path where
    two files share a name), ``prob_<label>``."""
    import pandas as pd

    labels = list(records[0]["probabilities"])
    table = pd.DataFrame([[r["probabilities"][label] for label in labels] for r in records], columns=labels)
    table = table.add_prefix("prob_")
    names = [Path(r["image"]).name for r in records]
    if len(set(names)) < len(names):  # same file name in two folders (common in DICOM exports): keep the paths
        names = [str(r["image"]) for r in records]
    table.insert(0, "Image Index", names)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.9g")


def _print_predictions(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(records) == 1:
        record = records[0]
        table = Table("finding", "probability", "threshold", "", title=record["image"], title_justify="left")
        for label, p in sorted(record["probabilities"].items(), key=lambda item: -item[1]):
            positive = label in record["positive"]
            style = "bold" if positive else ""
            mark = "[bold red]positive[/]" if positive else ""
            table.add_row(label, f"{p:.3f}", f"{record['thresholds'][label]:.3f}", mark, style=style)
    else:
        table = Table(title_justify="left")
        table.add_column("image", overflow="fold")  # never cut a path: it is how the user finds the file
        table.add_column("positive findings (probability)")
        table.add_column("most probable")
        for record in records:
            probabilities = record["probabilities"]
            positive = ", ".join(f"{label} ({probabilities[label]:.2f})" for label in record["positive"]) or "—"
            top = max(probabilities, key=probabilities.get)
            table.add_row(record["image"], positive, f"{top} ({probabilities[top]:.2f})")
    console.print(table)
    if any("heatmaps" in record for record in records):
        count = sum(len(record.get("heatmaps", {})) for record in records)
        console.print(f"{count} Grad-CAM overlays written (one per image and positive finding).")


@app.command()
def localize(
    run: Path = typer.Argument(..., help="A run directory (RUN/checkpoints/best.ckpt, RUN/split.parquet)."),
    split: str = typer.Option("test", "--split", help="Part of the run's split to score: test, val, train or all."),
    store: Path | None = typer.Option(None, "--store", help="The store (default: the one the run records)."),
    fraction: float = typer.Option(0.5, "--fraction", help="IoU: the map is thresholded at this x its maximum."),
    tolerance: float | None = typer.Option(
        None, "--tolerance", help="Pointing game tolerance in model-input px (default: 15 px at 224, scaled)."
    ),
    examples: int = typer.Option(2, "--examples", help="Overlay examples to write per finding."),
    method: str = typer.Option(
        "", "--method", help="gradcam, gradcam++, hirescam or layercam (default: the one predict and serve use)."
    ),
    layer: str | None = typer.Option(None, "--layer", help="Map this backbone module instead (e.g. layer3)."),
) -> None:
    """Class activation maps vs boxes: pointing game and IoU per finding → RUN/localize/ (localize.json, report.md)."""
    from rich.console import Console
    from rich.table import Table

    from cxr.evaluation.localize import localize_run
    from cxr.inference.cam import DEFAULT_METHOD, CamMethod

    if method and method not in set(CamMethod):
        raise CxrError(f"unknown --method {method!r}; choose one of: {', '.join(CamMethod)}")
    document = localize_run(
        run, split, store, fraction, tolerance, examples, method=method or DEFAULT_METHOD, layer=layer
    )
    columns = ("finding", "cases", "pointing game", "strict", "mean IoU", "center baseline", "random baseline")
    table = Table(*columns, title_justify="left")
    table.title = f"{document['method']['name']} on {document['method']['layer']}, {split} split"
    for name, item in {**document["findings"], "all": document["overall"]}.items():
        table.add_row(
            name,
            str(item["cases"]),
            *(f"{item[key]:.3f}" for key in ("pointing_game", "pointing_game_strict", "mean_iou")),
            *(f"{item[key]:.3f}" for key in ("center_baseline", "random_baseline")),
        )
    Console().print(table)
    Console().print(f"Report: {Path(run) / 'localize' / 'report.md'}")


@app.command()
def export(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt) or a run directory."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17 or newer)."),
) -> None:
    """Export to ONNX (dynamic batch, metadata inside); fails unless onnxruntime matches torch within 1e-4."""
    from cxr.inference.export import export_onnx

    result = export_onnx(model, out, opset=opset)
    typer.echo(
        f"wrote {result['path']} (opset {result['opset']}); parity with torch on {result['checked']} inputs: "
        f"max |Δp| = {result['max_abs_diff']:.2g}"
    )


@app.command()
def serve(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt), a run directory, or an exported model.onnx."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to listen on. Beyond loopback (0.0.0.0: every interface) needs a key."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(
        1, "--workers", help="Worker processes; each loads its own model (ResNet-18: ~0.45-0.5 GB private memory each)."
    ),
    max_upload_mb: float = typer.Option(20, "--max-upload-mb", help="Larger uploads are refused with 413."),
    api_key_file: Path | None = typer.Option(
        None,
        "--api-key-file",
        envvar="CXR_API_KEY_FILE",
        help="API keys, one per line ('#' comments); with them (or CXR_API_KEY) /api/... needs 'Bearer KEY'.",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow listening beyond loopback without an API key."),
    decode_timeout: float = typer.Option(
        30, "--decode-timeout", help="Seconds a decode may take; longer is answered 422 (busy decoders: 503)."
    ),
    audit: Path | None = typer.Option(
        None, "--audit", help="Append one JSON line per prediction here (time, request id, SHA-256, model, output)."
    ),
    graceful_timeout: float = typer.Option(
        30, "--graceful-timeout", help="On SIGTERM, seconds to let requests in flight finish."
    ),
    load_in_background: bool = typer.Option(
        False, "--load-in-background", help="Listen at once and load the model meanwhile (/readyz: 503 until done)."
    ),
    limit_concurrency: int | None = typer.Option(
        None, "--limit-concurrency", help="Connections at once; more are answered 503 (default: no limit)."
    ),
) -> None:
    """Web page (GET /) and REST API (POST /api/predict, GET /api/model, /healthz, /readyz, /metrics, /docs)."""
    from cxr.inference.serve import run_server

    run_server(
        model,
        host=host,
        port=port,
        workers=workers,
        max_upload_mb=max_upload_mb,
        api_key_file=api_key_file,
        insecure=insecure,
        decode_timeout=decode_timeout,
        audit=audit,
        graceful_timeout=graceful_timeout,
        load_in_background=load_in_background,
        limit_concurrency=limit_concurrency,
    )
