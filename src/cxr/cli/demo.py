"""``cxr demo``: the whole pipeline on a synthetic NIH-format dataset, on a laptop CPU, in minutes.

Every stage runs through the same CLI commands a user types (so the demo also proves the CLI contract),
each timed; the run ends by printing the macro AUROC, where the report is, and how to open the web viewer.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cxr.cli._app import app, registered_app
from cxr.errors import CxrError


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo generates and trains. Sized for ≤ 5 minutes on 2 CPU cores (see README, "The demo")."""

    images: int = 2400
    synth_size: int = 128  # rendered at the store's scale: 4x fewer pixels than 256, same findings
    seed: int = 0
    store_size: int = 112
    experiment: str = "demo"
    epochs: int = 8
    batch_size: int = 32
    workers: int = 2
    predict_images: int = 4
    extra_overrides: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class Stage:
    """One demo stage: a ``cxr`` command line, built when the stage starts (it may read earlier outputs)."""

    name: str
    args: Callable[[], list[str]]


def demo_stages(out: Path, recipe: DemoRecipe) -> list[Stage]:
    """The CLI invocations of the demo, in order."""
    data, store, run = out / "data", out / "store", out / "run"
    onnx_path = out / "model.onnx"
    return [
        Stage(
            "synthesize",
            lambda: [
                "synth",
                str(data),
                "--images",
                str(recipe.images),
                "--size",
                str(recipe.synth_size),
                "--seed",
                str(recipe.seed),
                "--prevalence",
                "flat",
                "--workers",
                str(recipe.workers),
            ],
        ),
        Stage("inspect", lambda: ["inspect", str(data)]),
        Stage(
            "prepare",
            lambda: [
                "prepare",
                str(data),
                "--out",
                str(store),
                "--size",
                str(recipe.store_size),
                "--crop",
                "1.0",
                "--workers",
                str(recipe.workers),
            ],
        ),
        Stage(
            "train",
            lambda: [
                "train",
                "--experiment",
                recipe.experiment,
                "--store",
                str(store),
                "--out",
                str(run),
                "--epochs",
                str(recipe.epochs),
                "--batch-size",
                str(recipe.batch_size),
                *recipe.extra_overrides,
            ],
        ),
        Stage("evaluate", lambda: ["evaluate", str(run), "--split", "test"]),
        Stage("localize", lambda: ["localize", str(run)]),
        Stage("export", lambda: ["export", str(run / "checkpoints" / "best.ckpt"), "--out", str(onnx_path)]),
        Stage(
            "predict",
            lambda: [
                "predict",
                str(onnx_path),
                *_sample_images(data, out / "samples", recipe.predict_images),
                "--cam",
                str(out / "cams"),
            ],
        ),
    ]


def _sample_images(data: Path, samples: Path, count: int) -> list[str]:
    """Copy the first ``count`` test-list images into ``samples`` (what a user would point ``predict`` at)."""
    samples.mkdir(parents=True, exist_ok=True)
    names = Path(data, "test_list.txt").read_text().split()[:count]
    found = {path.name: path for path in data.rglob("*.png")}
    for name in names:
        shutil.copyfile(found[name], samples / name)
    return [str(samples / name) for name in names]


@dataclass(frozen=True)
class DemoSummary:
    """What the demo measured: seconds per stage, the synthetic test AUROC and the heatmaps' pointing game."""

    timings: dict[str, float]  # stage → seconds
    macro_auroc: float
    micro_auroc: float
    report: str  # the evaluation report's path
    pointing_game: dict[str, float | None]  # finding → share of boxes the heatmap's maximum points into

    @property
    def total_seconds(self) -> float:
        return round(sum(self.timings.values()), 1)

    def to_dict(self) -> dict[str, object]:
        """``demo.json``."""
        return {
            "timings": self.timings,
            "total_seconds": self.total_seconds,
            "macro_auroc": self.macro_auroc,
            "micro_auroc": self.micro_auroc,
            "report": self.report,
            "pointing_game": self.pointing_game,
        }


def run_demo(out: Path, recipe: DemoRecipe | None = None, console: Console | None = None) -> DemoSummary:
    """Run every stage; return the timings and results (also saved as ``demo.json``)."""
    from typer.main import get_command

    recipe = recipe or DemoRecipe()
    console = console or Console()
    _fresh_output(out, console)
    command = get_command(registered_app())
    timings: dict[str, float] = {}
    stages = demo_stages(out, recipe)
    for number, stage in enumerate(stages, 1):
        console.rule(f"[bold]{number}/{len(stages)} {stage.name}[/]")
        start = time.perf_counter()
        _invoke(command, stage.args(), stage.name)
        timings[stage.name] = round(time.perf_counter() - start, 1)
        console.print(f"[green]✓ {stage.name}[/] in {timings[stage.name]:.1f} s")
    summary = _summary(out, timings)
    (out / "demo.json").write_text(json.dumps(summary.to_dict(), indent=2))
    _print_summary(console, out, summary)
    return summary


def _fresh_output(out: Path, console: Console) -> None:
    """An empty ``out``: a previous demo's output (with ``data/`` or ``demo.json``) is replaced, anything else kept."""
    if out.exists() and any(out.iterdir()):
        if not ((out / "data").is_dir() or (out / "demo.json").is_file()):
            raise CxrError(f"{out} is not empty and is not a previous demo's output: choose another --out")
        console.print(f"Replacing the previous demo output in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _invoke(command: Callable, args: list[str], stage: str) -> None:
    """Run one stage; any non-zero exit stops the demo. Outside standalone mode click *returns* the code of a
    ``typer.Exit`` (``cxr predict`` exits 1 when it skipped a file) and raises ``SystemExit`` for ``sys.exit``."""
    try:
        code = command.main(args, standalone_mode=False, prog_name="cxr")
    except SystemExit as exit_:
        code = exit_.code
    if code not in (0, None):
        raise CxrError(f"demo stage {stage!r} failed with exit code {code}")


def _summary(out: Path, timings: dict[str, float]) -> DemoSummary:
    metrics = json.loads((out / "run" / "eval" / "test" / "metrics.json").read_text())
    localize_path = out / "run" / "localize" / "localize.json"
    localization = json.loads(localize_path.read_text()) if localize_path.exists() else {}
    return DemoSummary(
        timings=timings,
        macro_auroc=metrics["macro_auroc"],
        micro_auroc=metrics["micro_auroc"],
        report=str(out / "run" / "eval" / "test" / "report.html"),
        pointing_game={k: v.get("pointing_game") for k, v in localization.get("findings", {}).items()},
    )


def _print_summary(console: Console, out: Path, summary: DemoSummary) -> None:
    table = Table(title="cxr demo", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for name, seconds in summary.timings.items():
        table.add_row(name, f"{seconds:.1f}")
    table.add_row("[bold]total[/]", f"[bold]{summary.total_seconds:.1f}[/]")
    console.print(table)
    console.print(f"Synthetic test macro AUROC: [bold]{summary.macro_auroc:.3f}[/] (micro {summary.micro_auroc:.3f})")
    console.print(f"Report: {summary.report}")
    console.print(
        f"Web viewer: [bold]cxr serve {out / 'run' / 'checkpoints' / 'best.ckpt'}[/]  → http://127.0.0.1:8000"
    )


def demo_command(out: Path = typer.Option(Path("demo-output"), "--out", help="Folder for every demo output.")) -> None:
    """Run the whole pipeline on synthetic NIH-format data (synth → … → predict) in a few CPU minutes."""
    run_demo(out)


app.command("demo")(demo_command)
