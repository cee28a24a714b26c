"""Moved to :mod:`cxr.inference.serve.uploads` (the serving package); this name keeps older imports working."""

from cxr.inference.serve.uploads import *  # noqa: F403
