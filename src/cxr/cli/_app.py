"""The Typer application every ``cxr`` sub-command registers on."""

import importlib

import typer

app = typer.Typer(
    name="cxr",
    help="Chest X-ray classification (NIH ChestX-ray14, CheXpert, MIMIC-CXR, PadChest, VinDr-CXR, RSNA, SIIM): "
    "synth, inspect, prepare, train, evaluate, explain, probe, serve, DICOM.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

STAGES = ("synth", "data", "training", "evaluation", "inference", "pacs", "models", "zeroshot", "probe", "demo")
"""The modules of ``cxr.cli`` that register commands; this order is the order of ``cxr --help``."""


def registered_app() -> typer.Typer:
    """:data:`app` with every stage's commands on it (importing a stage module registers its commands).

    The stage modules are imported by name, so this module (which they all import) imports none of them.
    """
    for stage in STAGES:
        importlib.import_module(f"cxr.cli.{stage}")
    return app
