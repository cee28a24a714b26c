"""CLI command: demo."""

from cxr.cli._app import app
from cxr.demo import demo_command

app.command("demo")(demo_command)
