"""What the API answers, as pydantic models: the OpenAPI schema at ``/docs`` describes every answer from these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class Problem(BaseModel):
    """Every error: what went wrong, in one sentence."""

    detail: str


class Prediction(BaseModel):
    """``cxr predict --json`` for one upload; ``image`` is ``upload`` (plus the file's suffix), never its name."""

    model_config = ConfigDict(extra="allow")
    image: str
    probabilities: dict[str, float]
    positive: list[str]
    thresholds: dict[str, float]
    preview: str | None = None
    heatmaps: dict[str, str] | None = None
    heatmaps_error: str | None = None


class ModelDescription(BaseModel):
    """``GET /api/model``: what the model predicts and how it sees an image, and its card (passed through)."""

    labels: list[str]
    thresholds: dict[str, float]
    preprocessing: dict[str, Any]
    package_version: str | None
    server_version: str
    backend: str
    model: str
    architecture: dict[str, Any]
    card: dict[str, Any]


class Health(BaseModel):
    status: str
    model: str


class Readiness(BaseModel):
    status: str


ERRORS = {
    400: "Bad request: not multipart, no 'file' field, undecodable file, unknown finding in 'cam'",
    401: "Missing or wrong API key (when the server has keys)",
    413: "Upload over the size limit, or an image over the pixel limit",
    415: "Not a PNG, JPEG or DICOM file",
    422: "Decoding this file took longer than the server's time limit",
    503: "Model not loaded yet (or failed to load), or every decode thread busy",
}


def errors(*codes: int) -> dict:
    """The ``responses`` of a route that may answer these error codes, each with :class:`Problem`."""
    return {code: {"model": Problem, "description": ERRORS[code]} for code in codes}


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM."}
                    },
                }
            }
        },
    }
}
