"""The Typer application every ``cxr`` sub-command registers on."""

import typer

app = typer.Typer(
    name="cxr",
    help="Chest X-ray classification on NIH ChestX-ray14: synth, inspect, prepare, train, evaluate, explain, serve.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
