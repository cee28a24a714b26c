"""CLI command ``cxr train``; :mod:`cxr.training.fit` (Lightning, torch) is imported inside it (see :mod:`cxr.cli`)."""

from __future__ import annotations

from pathlib import Path

import typer

from cxr.cli._app import app
from cxr.config import load_config


def _devices(text: str) -> int | str:
    """``--devices``: a count ("2"), a list ("0,1"), or "auto" — as Lightning takes them."""
    return int(text) if text.isdigit() else text


@app.command()
def train(
    overrides: list[str] = typer.Argument(None, help="Config overrides key=value with dotted keys, e.g. optim.lr=1e-3"),
    experiment: str = typer.Option(..., "--experiment", "-e", help="Preset name (e.g. chexnet) or a YAML path."),
    store: list[Path] = typer.Option(
        None, "--store", help="Store prepared by `cxr prepare`; repeat to train on several (else data.stores)."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory to create (or to continue with --resume)."),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum epochs (train.epochs)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per step per device."),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Model input size; also needed to use a store of another size or crop."
    ),
    model: str | None = typer.Option(None, "--model", help="An architecture: densenet121, resnet18, ... (README)."),
    accelerator: str = typer.Option("auto", "--accelerator", help="auto, cpu, gpu ..."),
    devices: str = typer.Option("auto", "--devices", help="Devices per node: a count, a list, or auto."),
    num_nodes: int = typer.Option(1, "--num-nodes", help="Nodes (torchrun / SLURM set the ranks)."),
    strategy: str = typer.Option("auto", "--strategy", help="auto, ddp, ..."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.ckpt."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Rich progress bar."),
) -> None:
    """Train a preset on a store into a run directory (config, split, checkpoints, metrics, validation predictions).

    Several stores (e.g. NIH and CheXpert): --store A --store B, with task.target=common for every label they give;
    a label one store lacks is masked on its rows.

    Several GPUs: --devices 4 --strategy ddp. Several nodes: start the same command on every node under torchrun
    (torchrun --nnodes 2 --nproc-per-node 4 --rdzv-endpoint HOST:29500 $(which cxr) train ... --devices 4
    --num-nodes 2 --strategy ddp) or srun (one task per GPU); the run directory must be on a shared filesystem.
    """
    flags = {"train.epochs": epochs, "train.batch_size": batch_size, "model.name": model}
    config_overrides = [f"{key}={value}" for key, value in flags.items() if value is not None] + list(overrides or [])
    config = load_config(experiment, config_overrides)
    from cxr.training.fit import fit  # Lightning and torch (seconds): only once the config is known to be valid

    result = fit(
        config,
        list(store or []),
        out,
        image_size=image_size,
        resume=resume,
        accelerator=accelerator,
        devices=_devices(devices),
        num_nodes=num_nodes,
        strategy=strategy,
        progress=progress,
    )
    if result.trainer.is_global_zero:
        typer.echo(f"run written to {result.run_dir}")
