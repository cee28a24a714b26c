"""CLI commands ``cxr predict``, ``cxr localize``, ``cxr export`` and ``cxr serve``.

Thin wrappers: the work is in :mod:`cxr.inference.predict`, :mod:`cxr.evaluation.localize`,
:mod:`cxr.inference.export` and :mod:`cxr.inference.serve`; heavy imports (torch, onnxruntime, FastAPI) happen
inside the commands.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cxr.cli._app import app
from cxr.errors import CxrError

if TYPE_CHECKING:
    from cxr.inference.predict import Prediction

# The serving defaults, without importing the server (FastAPI) for every command's --help.
BATCH_MAX, BATCH_WAIT_MS = 8, 10.0
TABLE_LIMIT = 1000
"""Above this many images written to a file, ``cxr predict`` prints a summary instead of the table (memory)."""


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt), a run directory, or an exported model.onnx."),
    images: list[Path] = typer.Argument(..., help="PNG, JPEG or DICOM files, or folders (searched recursively)."),
    as_json: bool = typer.Option(False, "--json", help="JSON on stdout: one object for one image, else a list."),
    csv: Path | None = typer.Option(None, "--csv", help="Write Image Index + prob_<finding> rows here as they come."),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="Write one JSON record per line here as they come."),
    resume: bool = typer.Option(False, "--resume", help="Skip images the --csv/--jsonl output already holds; append."),
    cam: Path | None = typer.Option(None, "--cam", help="Write Grad-CAM overlays (.png) and maps (.npy) here."),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per forward pass."),
    workers: int | None = typer.Option(
        None, "--workers", help="Decoding processes (default: every core; 1 decodes in this process)."
    ),
    device: str = typer.Option("cpu", "--device", help="Where a checkpoint runs: cpu, cuda, cuda:1, mps."),
    devices: str | None = typer.Option(
        None, "--devices", help="Several devices, one process each: N (the first N GPUs) or cuda:0,cuda:2 (or cpu,cpu)."
    ),
    tta: bool = typer.Option(False, "--tta", help="Average with the horizontally mirrored image."),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="A checkpoint's arithmetic: fp32, bf16, or auto (bf16 where the CPU has it natively).",
    ),
) -> None:
    """Probability of each finding per image; unreadable files are reported on stderr and skipped (exit 1).

    Files are decoded in a pool of processes while the model runs; records are written to --csv/--jsonl in input
    order as each batch completes, so a killed run continues with --resume. With --devices, each device predicts
    interleaved chunks of the input in its own process, its share of --workers decoding for it.
    """
    from rich.console import Console

    from cxr.inference.devices import parse_devices
    from cxr.inference.outputs import image_keys, open_sinks
    from cxr.inference.predict import find_images, iter_predictions, load_predictor

    errors: list[tuple[str, str]] = []
    stderr = Console(stderr=True)

    def report(image: str, message: str) -> None:
        errors.append((image, message))
        stderr.print(f"[yellow]skipped[/] {image}: {message}", highlight=False, soft_wrap=True)

    if batch_size < 1:
        raise CxrError(f"batch size must be at least 1, got {batch_size}")
    device_list = parse_devices(devices) if devices is not None else None
    if device_list is not None and device != "cpu":
        raise CxrError("--device and --devices: give one of them")
    if device_list is not None and len(device_list) == 1:  # one device: this process runs it
        device, device_list = device_list[0], None
    # With several devices, loaded here only for labels and thresholds.
    predictor = load_predictor(model, device=device, precision=precision)
    found, missing = find_images(images)
    for error in missing:
        report(error["image"], error["error"])
    sinks = open_sinks(predictor.labels, csv, jsonl, resume)
    keys = dict(zip(map(str, found), image_keys(found), strict=True))
    todo = [path for path in found if not sinks or not all(s.holds(str(path), keys[str(path)]) for s in sinks)]
    if resume and len(todo) < len(found):
        stderr.print(f"resuming: {len(found) - len(todo)} of {len(found)} images already in the output")
    single = as_json and len(images) == 1 and images[0].is_file()
    table = [] if not as_json and (not sinks or len(todo) <= TABLE_LIMIT) else None
    count = 0
    try:
        with _progress(stderr, len(todo)) as advance:
            records = iter_predictions(
                predictor, todo, batch_size=batch_size, workers=workers, cam_dir=cam, on_error=report, tta=tta,
                stems=None, devices=device_list, precision=precision,
            )  # fmt: skip
            for prediction in records:
                for sink in sinks:
                    if not sink.holds(prediction.image, keys[prediction.image]):
                        sink.write(prediction, keys[prediction.image])
                if as_json:
                    _echo_json(prediction.to_dict(), count, single)
                elif table is not None:
                    table.append(prediction)
                count += 1
                advance()
    finally:
        for sink in sinks:
            sink.close()
    if as_json and not single:
        typer.echo("[]" if count == 0 else "\n]")
    if count == 0 and len(todo) == len(found):
        raise CxrError(f"no image could be predicted ({len(errors)} skipped)")
    if table:
        _print_predictions(table)
    elif not as_json:
        where = ", ".join(str(sink.path) for sink in sinks)
        typer.echo(f"{count} images predicted ({len(found) - len(todo)} already there) -> {where}")
    if errors:
        raise typer.Exit(1)


def _echo_json(record: dict[str, object], index: int, single: bool) -> None:
    """One record of the JSON answer, streamed: the object alone for one file, else an element of a list."""
    text = json.dumps(record, indent=2)
    if single:
        typer.echo(text)
        return
    indented = "\n".join("  " + line for line in text.splitlines())
    typer.echo(("[\n" if index == 0 else ",\n") + indented, nl=False)


@contextlib.contextmanager
def _progress(console, total: int):
    """A progress bar with images/s on a terminal (nothing otherwise); yields the function that advances it."""
    if not console.is_terminal or total < 2:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TimeRemainingColumn

    speed = "[cyan]{task.fields[rate]} images/s"
    with Progress("predict", BarColumn(), MofNCompleteColumn(), TaskProgressColumn(), speed, TimeRemainingColumn(),
                  console=console, transient=False) as progress:  # fmt: skip
        task = progress.add_task("predict", total=total, rate="-")

        def advance() -> None:
            progress.advance(task)
            rate = progress.tasks[task].speed
            progress.update(task, rate=f"{rate:,.0f}" if rate else "-")

        yield advance


def _print_predictions(predictions: list[Prediction]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if len(predictions) == 1:
        prediction = predictions[0]
        table = Table("finding", "probability", "threshold", "", title=prediction.image, title_justify="left")
        for label, p in sorted(prediction.probabilities.items(), key=lambda item: -item[1]):
            positive = label in prediction.positive
            style = "bold" if positive else ""
            mark = "[bold red]positive[/]" if positive else ""
            table.add_row(label, f"{p:.3f}", f"{prediction.thresholds[label]:.3f}", mark, style=style)
    else:
        table = Table(title_justify="left")
        table.add_column("image", overflow="fold")  # never cut a path: it is how the user finds the file
        table.add_column("positive findings (probability)")
        table.add_column("most probable")
        for prediction in predictions:
            probabilities = prediction.probabilities
            positive = ", ".join(f"{label} ({probabilities[label]:.2f})" for label in prediction.positive) or "—"
            top = max(probabilities, key=probabilities.get)
            table.add_row(prediction.image, positive, f"{top} ({probabilities[top]:.2f})")
    console.print(table)
    if any(prediction.heatmaps is not None for prediction in predictions):
        count = sum(len(prediction.heatmaps or {}) for prediction in predictions)
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
    gate: str = typer.Option(
        "own", "--gate", help="A backbone module whose Grad-CAM gates the map, 'none', or 'own' (the model's record)."
    ),
) -> None:
    """Class activation maps vs boxes: pointing game and IoU per finding → RUN/localize/ (localize.json, report.md)."""
    from rich.console import Console
    from rich.table import Table

    from cxr.evaluation.localize import localize_run
    from cxr.inference.cam import DEFAULT_METHOD, CamMethod

    if method and method not in set(CamMethod):
        raise CxrError(f"unknown --method {method!r}; choose one of: {', '.join(CamMethod)}")
    document = localize_run(
        run,
        split,
        store,
        fraction,
        tolerance,
        examples,
        method=method or DEFAULT_METHOD,
        layer=layer,
        gate=None if gate == "none" else gate,
    )
    columns = ("finding", "cases", "pointing game", "strict", "mean IoU", "center baseline", "random baseline")
    table = Table(*columns, title_justify="left")
    gated = f", gated by Grad-CAM on {document.method.gate}" if document.method.gate else ""
    table.title = f"{document.method.name} on {document.method.layer}{gated}, {split} split"
    for name, item in {**document.findings, "all": document.overall}.items():
        table.add_row(
            name,
            str(item.cases),
            *(f"{value:.3f}" for value in (item.pointing_game, item.pointing_game_strict, item.mean_iou)),
            *(f"{value:.3f}" for value in (item.center_baseline, item.random_baseline)),
        )
    Console().print(table)
    Console().print(f"Report: {Path(run) / 'localize' / 'report.md'}")


@app.command()
def export(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt) or a run directory."),
    out: Path = typer.Option(..., "--out", help="The .onnx file to write."),
    opset: int = typer.Option(18, "--opset", help="ONNX opset (17 or newer)."),
    quantize: str | None = typer.Option(
        None, "--quantize", help="int8: static int8 quantization (faster on CPUs with VNNI/AMX); needs --calibrate."
    ),
    calibrate: Path | None = typer.Option(
        None, "--calibrate", help="The store whose train_val images calibrate (and validate) the int8 model."
    ),
    force: bool = typer.Option(False, "--force", help="Keep an int8 model that loses more than 0.005 macro AUROC."),
) -> None:
    """Export to ONNX (dynamic batch, metadata inside); fails unless onnxruntime matches torch within 1e-4.

    With --quantize int8 --calibrate STORE the file is int8, refused if it loses more than 0.005 macro AUROC on the
    store's validation patients (the metadata records both AUROCs).
    """
    import tempfile

    from cxr.inference.export import export_onnx

    if quantize not in (None, "int8"):
        raise CxrError(f"--quantize {quantize}: only int8 is supported")
    if (quantize is None) != (calibrate is None):
        raise CxrError("--quantize int8 and --calibrate STORE go together")
    if quantize is None:
        result = export_onnx(model, out, opset=opset)
    else:
        from cxr.evaluation.metrics import auroc, macro_average
        from cxr.inference.quantize import quantize_checked

        with tempfile.TemporaryDirectory() as tmp:
            result = export_onnx(model, Path(tmp) / "fp32.onnx", opset=opset)
            out.parent.mkdir(parents=True, exist_ok=True)
            record = quantize_checked(
                Path(result["path"]), out, calibrate, lambda t, p: macro_average(auroc(t, p)), force=force
            )
        result["path"] = str(out)
    typer.echo(
        f"wrote {result['path']} (opset {result['opset']}); parity with torch on {result['checked']} inputs: "
        f"max |Δp| = {result['max_abs_diff']:.2g}"
    )
    if quantize is not None:
        scores = record.macro_auroc
        typer.echo(
            f"int8: macro AUROC {scores['int8']:.4f} vs fp32 {scores['fp32']:.4f} (drop {record.auroc_drop:+.4f}) "
            f"on {record.validation['images']} validation images; calibrated on {record.calibration['images']}"
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
    batch_max: int = typer.Option(
        BATCH_MAX, "--batch-max", help="Predictions that may share one model call (1: no micro-batching)."
    ),
    batch_wait_ms: float = typer.Option(
        BATCH_WAIT_MS, "--batch-wait-ms", help="How long a batch waits for requests still decoding (ms; alone: 0)."
    ),
    precision: str = typer.Option(
        "fp32",
        "--precision",
        help="A checkpoint's arithmetic: fp32, bf16, or auto (bf16 where the CPU has it natively).",
    ),
) -> None:
    """Web page (GET /) and REST API (POST /api/predict, GET /api/model, /healthz, /readyz, /metrics, /docs)."""
    from cxr.inference.serve import run_server, settings_for_cli

    settings = settings_for_cli(
        model, api_key_file, max_upload_mb=max_upload_mb, decode_timeout=decode_timeout, audit=audit,
        load_in_background=load_in_background, batch_max=batch_max, batch_wait_ms=batch_wait_ms, precision=precision,
    )  # fmt: skip
    run_server(
        settings, host=host, port=port, workers=workers, api_key_file=api_key_file, insecure=insecure,
        graceful_timeout=graceful_timeout, limit_concurrency=limit_concurrency,
    )  # fmt: skip
