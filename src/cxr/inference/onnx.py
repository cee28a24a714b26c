"""An exported ``model.onnx`` as a predictor: onnxruntime for the network, its metadata for everything else.

``cxr export`` writes the artifact's labels, preprocessing, thresholds, version and model card as JSON under the
``cxr`` key of the ONNX ``metadata_props``, so an ``.onnx`` file alone is enough to predict and to serve. The graph
takes ``image`` ``float32 (B, 1, S, S)`` in ``[0, 1]`` and returns ``probabilities`` ``(B, K)`` (sigmoid included).

Grad-CAM needs gradients, which onnxruntime does not give. The export keeps every weight as an initializer named
after its torch parameter, so :attr:`OnnxPredictor.model` rebuilds the torch twin of the graph from the file alone
(checked against onnxruntime before use): ``cxr predict model.onnx --cam`` and ``cxr serve model.onnx`` draw
heatmaps without the checkpoint.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from cxr.errors import CxrError
from cxr.models.spec import ModelCard, ModelSpec

METADATA_KEY = "cxr"
FORMAT = "cxr-onnx"
FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
WEIGHT_PREFIX = "model."  # the exported graph wraps the classifier as attribute ``model`` (see cxr.inference.export)
PARITY_TOLERANCE = 1e-4
"""Most |Δp| allowed between onnxruntime and torch: at export, and for the Grad-CAM twin rebuilt from a file."""


def read_metadata(path: str | Path) -> tuple[dict, ModelSpec]:
    """The ``cxr`` metadata of an exported model and its validated :class:`ModelSpec`; :class:`CxrError` if the file
    is not one of our exports."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise CxrError(f"model not found: {path}")
    try:
        # Metadata only: the weights may be large and are not needed here.
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise CxrError(f"{path}: not an ONNX model ({type(error).__name__}: {error})") from error
    return _parse_metadata(path, {prop.key: prop.value for prop in model.metadata_props})


def _parse_metadata(path: Path, props: dict[str, str]) -> tuple[dict, ModelSpec]:
    if METADATA_KEY not in props:
        raise CxrError(f"{path}: an ONNX model without cxr metadata; export it with `cxr export` from a checkpoint")
    try:
        metadata = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise CxrError(f"{path}: corrupt cxr metadata ({error})") from error
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise CxrError(f"{path}: metadata is not of format {FORMAT!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise CxrError(
            f"{path}: exported with format version {metadata.get('format_version')}, this cxr reads version "
            f"{FORMAT_VERSION}; export it again with this version of cxr"
        )
    return metadata, ModelSpec.from_dict(metadata, f"{path}: cxr metadata")


def parity_inputs(size: int, seed: int = 0) -> np.ndarray:
    """Five model inputs ``(5, 1, S, S)``: uniform noise, black, white, a smooth gradient and a bright disc."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0.0, 1.0, size, dtype=np.float32)
    yy, xx = np.meshgrid(ramp, ramp, indexing="ij")
    disc = (((yy - 0.5) ** 2 + (xx - 0.4) ** 2) < 0.06).astype(np.float32) * 0.8 + 0.1
    images = [rng.random((size, size), dtype=np.float32), np.zeros((size, size), np.float32)]
    images += [np.ones((size, size), np.float32), (yy + xx) / 2, disc]
    return np.stack(images)[:, None]


class OnnxPredictor:
    """The :class:`~cxr.inference.predictor.Predictor` interface over onnxruntime (CPU unless providers are given)."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CxrError(f"model not found: {self.path}")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # warnings about unused initialisers are noise for users
        try:
            self.session = ort.InferenceSession(
                os.fspath(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:
            raise CxrError(f"{self.path}: not an ONNX model onnxruntime can load ({error})") from error
        # The metadata as onnxruntime reads it: the `onnx` package (and protobuf) is not needed to serve.
        metadata, self.spec = _parse_metadata(self.path, dict(self.session.get_modelmeta().custom_metadata_map))
        self.labels: list[str] = list(self.spec.labels)
        self.preprocessing = self.spec.preprocessing
        self.thresholds: dict[str, float] = dict(self.spec.thresholds)
        self.package_version: str = self.spec.package_version
        card = metadata.get("model_card")
        self.card: ModelCard = ModelCard.from_dict(card, self.spec) if isinstance(card, dict) else self.spec.card()
        self.architecture = self.spec.architecture

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities ``(B, K)`` for model inputs ``float32 (B, 1, S, S)`` in ``[0, 1]``."""
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        (probabilities,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(probabilities, dtype=np.float64)

    @cached_property
    def model(self):
        """The torch twin of the graph (for Grad-CAM), rebuilt from the initializers; eval mode, CPU."""
        # Local: the ONNX predictor runs on onnxruntime alone; only the Grad-CAM twin needs torch (and onnx).
        try:
            import onnx
            import torch
            from onnx import numpy_helper

            from cxr.models.factory import rebuild_model
        except ImportError as error:
            raise CxrError(
                f"Grad-CAM needs torch and onnx, not installed here ({error.name}): pip install 'cxr[train]'"
            ) from error

        graph = onnx.load(os.fspath(self.path)).graph
        weights = {
            item.name.removeprefix(WEIGHT_PREFIX): torch.from_numpy(numpy_helper.to_array(item).copy())
            for item in graph.initializer
            if item.name.startswith(WEIGHT_PREFIX)
        }
        twin = rebuild_model(self.architecture, self.labels, self.input_size)
        result = twin.load_state_dict(weights, strict=False)
        # BatchNorm's step counters are not part of the graph; everything else must be there.
        missing = [key for key in result.missing_keys if not key.endswith("num_batches_tracked")]
        if missing:
            raise CxrError(f"{self.path}: the graph lacks weights Grad-CAM needs ({', '.join(missing[:3])} ...)")
        twin.eval()
        inputs = parity_inputs(self.input_size)
        with torch.inference_mode():
            reference = torch.sigmoid(twin(torch.from_numpy(inputs))).double().numpy()
        difference = float(np.abs(self.probabilities(inputs) - reference).max())
        if not difference <= PARITY_TOLERANCE:
            raise CxrError(f"{self.path}: cannot rebuild the torch model for Grad-CAM (max |Δp| = {difference:.3g})")
        return twin
