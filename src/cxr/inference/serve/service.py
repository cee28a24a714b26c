"""The model behind the API: decoding an upload, the prediction (micro-batched), Grad-CAM, the description.

No HTTP in here: errors are :class:`~cxr.inference.serve.uploads.HTTPProblem` with the status they deserve, and the
routes (:mod:`cxr.inference.serve.routes`) turn answers into the pydantic models of :mod:`.schemas`. One lock
serialises the model (Grad-CAM hooks are not thread-safe): the batcher holds it for each batch, Grad-CAM for each
map. Decoding runs outside it, in a bounded pool of its own (:class:`~cxr.inference.serve.uploads.DecodePool`).
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading

import cv2
import numpy as np
from PIL import Image

from cxr import __version__
from cxr.errors import CxrError, ImageDecodeError, ImageTooLargeError
from cxr.imaging.decode import decode_grayscale, is_dicom
from cxr.inference.cam import grad_cam, heatmap_rgba, map_to_source, png_bytes
from cxr.inference.predict import prediction_record
from cxr.inference.predictor import probabilities as predictor_probabilities
from cxr.inference.serve.batching import MicroBatcher
from cxr.inference.serve.schemas import ModelDescription, Prediction
from cxr.inference.serve.telemetry import REQUEST_ID
from cxr.inference.serve.uploads import DecodePool, HTTPProblem, check_dicom_size

PREVIEW_SIZE = 512  # longest side of the preview and heatmaps sent to the page
log = logging.getLogger(__name__)


def sniff_format(data: bytes, filename: str = "") -> str | None:
    """``"png"``, ``"jpeg"`` or ``"dicom"`` from the file's magic bytes (DICOM also by suffix), else ``None``."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if is_dicom(data, filename):
        return "dicom"
    return None


def data_url(pixels: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")


def preview_shape(height: int, width: int, longest: int = PREVIEW_SIZE) -> tuple[int, int]:
    scale = min(1.0, longest / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def decode_upload(data: bytes, kind: str, name: str) -> np.ndarray:
    """``data`` (sniffed as ``kind``) → 8-bit grayscale, or :class:`HTTPProblem` 400/413 saying why not.

    ``name`` is the anonymous name (:func:`~cxr.inference.serve.uploads.anonymous_name`); only the exception's type
    is logged, as its message may quote a value read from the file.
    """
    try:
        if kind == "dicom":
            check_dicom_size(data, name, Image.MAX_IMAGE_PIXELS)
        return decode_grayscale(data, name=name)
    except ImageTooLargeError as error:
        raise HTTPProblem(413, str(error)) from None
    except ImageDecodeError as error:
        raise HTTPProblem(400, str(error)) from None
    except HTTPProblem:
        raise
    except Exception as error:  # a decoder's unexpected failure on hostile input is still the input's fault
        log.warning("request %s: the %s decoder raised %s", REQUEST_ID.get(), kind, type(error).__name__)
        raise HTTPProblem(400, f"{name}: cannot decode this {kind} file") from None


class Service:
    """One predictor, its lock, its decode pool and (with ``batching``: ``(batch_max, wait_ms, on_batch)``) its
    micro-batcher."""

    def __init__(self, predictor, decoder: DecodePool | None = None, batching: tuple | None = None):
        self.predictor = predictor
        self.lock = threading.Lock()
        self.decoder = decoder or DecodePool()
        self.batcher = None
        if batching is not None and batching[0] > 1:
            batch_max, wait_ms, on_batch = batching
            run = lambda batch, tta: predictor_probabilities(predictor, batch, tta)  # noqa: E731
            self.batcher = MicroBatcher(run, batch_max, wait_ms, self.lock, on_batch)

    def decode(self, data: bytes, filename: str) -> np.ndarray:
        if not data:
            raise HTTPProblem(400, "empty upload: send an image in the multipart field 'file'")
        kind = sniff_format(data, filename)
        if kind is None:
            raise HTTPProblem(415, f"{filename or 'upload'}: not a PNG, JPEG or DICOM file")
        return self.decoder.run(decode_upload, data, kind, filename or "upload")

    def cam_findings(self, cam: str | None, positive: list[str]) -> list[str]:
        labels = self.predictor.labels
        if cam in (None, "", "0", "false", "none"):
            return []
        if cam in ("1", "true", "positive"):
            return list(positive)
        if cam == "all":
            return list(labels)
        wanted = [name.strip() for name in cam.split(",") if name.strip()]
        unknown = [name for name in wanted if name not in labels]
        if unknown:
            raise HTTPProblem(400, f"cam: unknown finding(s) {unknown}; this model predicts {labels}")
        return wanted

    def probabilities(self, data: bytes, filename: str, tta: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Decode, preprocess and predict one upload: ``(gray, model input, probabilities)``; with a batcher the
        model call is shared with the requests that arrive meanwhile."""
        if self.batcher is None:
            gray = self.decode(data, filename)
            model_input = self.predictor.preprocessing.model_input(gray)
            with self.lock:
                return gray, model_input, predictor_probabilities(self.predictor, model_input[None], tta)[0]
        with self.batcher.request() as slot:
            gray = self.decode(data, filename)
            model_input = self.predictor.preprocessing.model_input(gray)
            return gray, model_input, slot.submit(model_input, tta)

    def predict(self, data: bytes, filename: str, cam: str | None, preview: bool, tta: bool = False) -> Prediction:
        """The answer to one upload: ``cxr predict``'s record, with a preview and heatmaps (data URLs) if asked."""
        gray, model_input, probabilities = self.probabilities(data, filename, tta)
        predictor = self.predictor
        record = prediction_record(filename or "upload", probabilities, predictor.labels, predictor.thresholds)
        findings = self.cam_findings(cam, list(record.positive))
        shape = preview_shape(*gray.shape)
        answer = Prediction(**record.to_dict())
        if preview:
            answer.preview = data_url(cv2.resize(gray, shape[::-1], interpolation=cv2.INTER_AREA))
        if findings:
            try:
                answer.heatmaps = self.heatmaps(gray, model_input, findings, shape)
            except CxrError as error:  # e.g. an ONNX file whose graph cannot give back its weights
                answer.heatmaps, answer.heatmaps_error = {}, str(error)
        return answer

    def heatmaps(self, gray: np.ndarray, model_input: np.ndarray, findings: list[str], shape) -> dict[str, str]:
        indices = [self.predictor.labels.index(finding) for finding in findings]
        with self.lock:
            maps = grad_cam(self.predictor.model, model_input, indices)
        height, width = gray.shape
        out = {}
        for finding, cam_map in zip(findings, maps, strict=True):
            source = map_to_source(cam_map, width, height, self.predictor.preprocessing)
            small = cv2.resize(source, shape[::-1], interpolation=cv2.INTER_AREA)
            out[finding] = data_url(heatmap_rgba(small))
        return out

    def describe(self) -> ModelDescription:
        predictor = self.predictor
        return ModelDescription(
            labels=list(predictor.labels),
            thresholds=dict(predictor.thresholds),
            preprocessing=predictor.preprocessing.to_dict(),
            package_version=predictor.package_version,
            server_version=__version__,
            backend=predictor.backend,
            model=predictor.path.name,
            architecture=predictor.architecture.to_dict(),
            card=predictor.card.to_dict(),
        )

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        with contextlib.suppress(Exception):
            self.decoder.close()
