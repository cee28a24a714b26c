"""Moved to :mod:`cxr.inference.serve.security` (the serving package); this name keeps older imports working."""

from cxr.inference.serve.security import *  # noqa: F403
