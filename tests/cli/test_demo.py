"""`cxr demo`'s stage list and its output folder handling (the full demo runs in `make demo`, not in the suite)."""

from __future__ import annotations

import pytest
from rich.console import Console

from cxr.cli.demo import DemoRecipe, _fresh_output, demo_stages
from cxr.errors import CxrError

pytestmark = pytest.mark.slow  # whole pipelines: every test here trains or runs one


def test_the_stages_cover_the_pipeline_in_order(tmp_path):
    names = [stage.name for stage in demo_stages(tmp_path, DemoRecipe())]
    assert names == ["synthesize", "inspect", "prepare", "train", "evaluate", "localize", "export", "predict"]
    train = next(stage for stage in demo_stages(tmp_path, DemoRecipe()) if stage.name == "train").args()
    assert train[:3] == ["train", "--experiment", "demo"]


def test_a_previous_demo_output_is_replaced_but_nothing_else(tmp_path):
    console = Console(quiet=True)
    previous = tmp_path / "demo-output"
    (previous / "data").mkdir(parents=True)
    (previous / "data" / "old.png").write_bytes(b"x")
    _fresh_output(previous, console)
    assert previous.is_dir() and not any(previous.iterdir())

    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("keep me")
    with pytest.raises(CxrError, match="not a previous demo's output"):
        _fresh_output(foreign, console)
    assert (foreign / "chapter1.tex").read_text() == "keep me"


def test_a_stage_that_exits_non_zero_stops_the_demo():
    import typer
    from typer.main import get_command

    from cxr.cli.demo import _invoke

    app = typer.Typer()

    @app.command()
    def skipped(code: int = 1) -> None:
        raise typer.Exit(code)  # how `cxr predict` reports a skipped file

    @app.command()
    def fine() -> None:
        pass

    command = get_command(app)
    _invoke(command, ["fine"], "fine")
    with pytest.raises(CxrError, match="'predict' failed with exit code 1"):
        _invoke(command, ["skipped"], "predict")


@pytest.mark.parametrize(("native", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    """The demo's preset leaves ``train.precision`` at ``auto``: fp32 where bf16 would be emulated (slower), bf16
    autocast where the CPU has it natively (AMX / AVX-512 BF16); an explicit precision is kept either way."""
    from cxr.config import load_config
    from cxr.training import precision
    from cxr.training.fit import _precision

    monkeypatch.setattr(precision, "native_bf16", lambda: native)
    config = load_config("demo")
    assert config.train.precision == "auto"
    assert _precision(config, on_gpu=False) == expected
    assert _precision(load_config("demo", ["train.precision=32-true"]), on_gpu=False) == "32-true"


def test_native_bf16_flags_are_read_from_cpuinfo(tmp_path):
    """The fallback detector reads the flags line; plain AVX-512 (emulated bf16) does not count as native."""
    from cxr.training.precision import NATIVE_BF16_FLAGS, cpuinfo_flags

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw\n\nprocessor\t: 1\n")
    assert not cpuinfo_flags(cpuinfo) & NATIVE_BF16_FLAGS
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpuinfo_flags(cpuinfo) & NATIVE_BF16_FLAGS == {"avx512_bf16", "amx_bf16"}
    assert cpuinfo_flags(tmp_path / "missing") == frozenset()


def test_demo_json_keeps_its_keys(tmp_path):
    """``demo.json`` is DemoSummary.to_dict: the keys and the total as before the summary was typed."""
    from cxr.cli.demo import _summary

    (tmp_path / "run" / "eval" / "test").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "test" / "metrics.json").write_text('{"macro_auroc": 0.91, "micro_auroc": 0.88}')
    (tmp_path / "run" / "localize").mkdir()
    (tmp_path / "run" / "localize" / "localize.json").write_text('{"findings": {"Mass": {"pointing_game": 0.75}}}')
    summary = _summary(tmp_path, {"synthesize": 1.2, "train": 10.0})
    assert summary.to_dict() == {
        "timings": {"synthesize": 1.2, "train": 10.0},
        "total_seconds": 11.2,
        "macro_auroc": 0.91,
        "micro_auroc": 0.88,
        "report": str(tmp_path / "run" / "eval" / "test" / "report.html"),
        "pointing_game": {"Mass": 0.75},
    }
    assert list(summary.to_dict()) == [
        "timings",
        "total_seconds",
        "macro_auroc",
        "micro_auroc",
        "report",
        "pointing_game",
    ]
