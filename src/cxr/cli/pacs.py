"""CLI command ``cxr dicom-node``: the model as a DICOM node in a hospital's PACS.

A thin wrapper: the work is in :mod:`cxr.pacs` (pynetdicom, highdicom: ``pip install 'cxr[pacs]'``), imported inside
the command.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app


@app.command("dicom-node")
def dicom_node(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt), a run directory, or an exported model.onnx."),
    send_to: str | None = typer.Option(
        None, "--send-to", help="Where results go by C-STORE: HOST:PORT:AET (the PACS)."
    ),
    stow_url: str | None = typer.Option(
        None, "--stow-url", help="Also (or instead) send results by STOW-RS to this DICOMweb root (URL/studies)."
    ),
    ae_title: str = typer.Option("CXR", "--ae-title", help="This node's AE title (called and calling)."),
    port: int = typer.Option(11112, "--port", help="DICOM port to listen on."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0: every interface)."),
    allow: list[str] = typer.Option(
        [], "--allow", help="AET@HOST allowed to associate (repeatable; HOST * = any). Default: the --send-to PACS."
    ),
    secondary_capture: bool = typer.Option(
        False, "--secondary-capture", help="Also send a Secondary Capture: Grad-CAM overlay and banner burned in."
    ),
    audit: Path | None = typer.Option(
        None, "--audit", help="Append one JSON line per instance here (time, id, SHA-256, model, probabilities)."
    ),
    max_instance_mb: float = typer.Option(64, "--max-instance-mb", help="Larger instances: 0xA700 out of resources."),
    queue_size: int = typer.Option(8, "--queue", help="Instances waiting for the model; more: 0xA700."),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", help="Also serve Prometheus /metrics (the node's counters) on this port, same host."
    ),
    retry_seconds: float = typer.Option(
        300, "--retry-seconds", help="How long results are retried while the PACS is unreachable, then counted failed."
    ),
) -> None:
    """Receive radiographs by C-STORE, send back an SR (and a Secondary Capture) into the same study."""
    from cxr.pacs.run import node_settings, run_node

    settings = node_settings(
        ae_title, port, send_to, allow, host, secondary_capture, max_instance_mb, queue_size, retry_seconds, stow_url
    )
    status = run_node(model, settings, audit, metrics_port)
    typer.echo(status.counts_text())
