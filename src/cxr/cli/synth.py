"""CLI commands: synth (see the module docstring of cxr.cli)."""

from cxr.cli._app import app  # noqa: F401
