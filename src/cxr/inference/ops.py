"""Moved to :mod:`cxr.inference.serve.telemetry` (the serving package); this name keeps older imports working."""

from cxr.inference.serve.telemetry import *  # noqa: F403
