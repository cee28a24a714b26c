"""Everything ``cxr serve`` can be told, in one typed, validated object, whether it comes from the CLI or from the
environment (what ``cxr serve --workers N`` hands its worker processes, and what an operator sets for
``uvicorn --factory cxr.inference.serve:app_from_environment``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cxr.errors import CxrError
from cxr.inference.serve.batching import BATCH_MAX, BATCH_WAIT_MS
from cxr.inference.serve.security import KEY_ENV, KEY_FILE_ENV, api_keys, keys_from_environment

ENVIRONMENT = {
    "model": "CXR_SERVE_MODEL",
    "max_upload_mb": "CXR_SERVE_MAX_UPLOAD_MB",
    "decode_timeout": "CXR_SERVE_DECODE_TIMEOUT",
    "audit": "CXR_SERVE_AUDIT",
    "load_in_background": "CXR_SERVE_BACKGROUND_LOAD",
    "batch_max": "CXR_SERVE_BATCH_MAX",
    "batch_wait_ms": "CXR_SERVE_BATCH_WAIT_MS",
    "precision": "CXR_SERVE_PRECISION",
}
"""The variable of each setting; API keys come from ``CXR_API_KEY`` and ``CXR_API_KEY_FILE`` (:mod:`.security`)."""
FALSE = ("", "0", "false", "no")


class ServeSettings(BaseModel):
    """One server's settings. ``api_keys``: keys one of which ``/api/…`` requests must present (none: open API).
    ``decode_timeout`` seconds per decode in a pool of ``decode_threads``; ``audit``: the file to append one JSON line
    per prediction to; ``batch_max``/``batch_wait_ms``: micro-batching (:mod:`.batching`; ``batch_max=1`` is off);
    ``precision``: a checkpoint's arithmetic (:func:`cxr.inference.eager.resolve_precision`: fp32, bf16 or auto)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path
    max_upload_mb: float = Field(20.0, gt=0)
    api_keys: tuple[str, ...] = ()
    decode_timeout: float = Field(30.0, gt=0)
    decode_threads: int = Field(2, ge=1)
    audit: Path | None = None
    load_in_background: bool = False
    batch_max: int = Field(BATCH_MAX, ge=1)
    batch_wait_ms: float = Field(BATCH_WAIT_MS, ge=0)
    precision: Literal["fp32", "bf16", "auto"] = "fp32"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _checked_keys(cls, keys) -> tuple[str, ...]:
        """Each key as :func:`~.security.api_keys` accepts it (length, characters), duplicates dropped."""
        checked: list[str] = []
        for key in keys or ():
            checked.extend(api_keys(key))
        return tuple(dict.fromkeys(checked))

    @classmethod
    def of(cls, **values) -> ServeSettings:
        """Settings from keyword arguments, a wrong value being a :class:`CxrError` naming the setting."""
        try:
            return cls(**values)
        except ValidationError as error:
            where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
            raise CxrError(f"invalid server settings ({where})") from None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, model: str | Path | None = None
    ) -> ServeSettings:
        """The settings a worker process reads (``CXR_SERVE_*``, ``CXR_API_KEY``, ``CXR_API_KEY_FILE``)."""
        environ = os.environ if environ is None else environ
        values: dict = {"api_keys": keys_from_environment(dict(environ))}
        for name, variable in ENVIRONMENT.items():
            if environ.get(variable):
                values[name] = environ[variable]
        if "load_in_background" in values:
            values["load_in_background"] = values["load_in_background"].lower() not in FALSE
        if model is not None:
            values["model"] = model
        if "model" not in values:
            raise CxrError(f"no model to serve: set {ENVIRONMENT['model']}")
        return cls.of(**values)

    def to_environment(self, key_file: str | Path | None = None) -> dict[str, str]:
        """The variables that give a worker process these settings (keys through their file, never their values)."""
        environ = {
            ENVIRONMENT["model"]: str(self.model.resolve()),
            ENVIRONMENT["max_upload_mb"]: str(self.max_upload_mb),
            ENVIRONMENT["decode_timeout"]: str(self.decode_timeout),
            ENVIRONMENT["load_in_background"]: "1" if self.load_in_background else "",
            ENVIRONMENT["batch_max"]: str(self.batch_max),
            ENVIRONMENT["batch_wait_ms"]: str(self.batch_wait_ms),
            ENVIRONMENT["precision"]: self.precision,
        }
        if key_file is not None:
            environ[KEY_FILE_ENV] = str(Path(key_file).resolve())
        if self.audit is not None:
            environ[ENVIRONMENT["audit"]] = str(self.audit.resolve())
        return environ


__all__ = ["ENVIRONMENT", "KEY_ENV", "ServeSettings"]
