"""``cxr export``: a checkpoint → a self-contained ``model.onnx`` that checks its own parity with torch.

The graph is the model plus a sigmoid (input ``image`` ``float32 (B, 1, S, S)`` in ``[0, 1]``, output
``probabilities`` ``(B, K)``), exported with torch's dynamo-based exporter at opset 18 with a dynamic batch
axis and the weights inside the file, under their torch names. The artifact's labels, preprocessing,
thresholds, version and model card go into ``metadata_props`` (see :mod:`cxr.inference.onnx`), so
``cxr predict model.onnx`` needs nothing else; the exporter's debugging records (stack traces naming this machine's
paths) are removed, and so are absolute paths in the recorded training config. Before the file is moved into place,
onnxruntime and torch must agree on a few inputs within ``tolerance`` (max |Δp|); otherwise the export fails and leaves
nothing.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import torch

from cxr import __version__
from cxr.errors import CxrError
from cxr.files import replacing
from cxr.inference.eager import TorchPredictor
from cxr.inference.onnx import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    METADATA_KEY,
    OUTPUT_NAME,
    PARITY_TOLERANCE,
    OnnxPredictor,
    parity_inputs,
)

DEFAULT_OPSET = 18  # the dynamo exporter's native opset; anything >= 17 has every op these CNNs use


class ExportParityError(CxrError):
    """onnxruntime's probabilities differ from torch's by more than the tolerance."""


def export_onnx(
    model_path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, tolerance: float = PARITY_TOLERANCE
) -> dict:
    """Export the checkpoint ``model_path`` to ``out``; return ``{"path", "opset", "max_abs_diff", "checked"}``.

    Raises :class:`ExportParityError` (and writes no file) when onnxruntime and torch disagree by more than
    ``tolerance`` on the parity inputs (:func:`parity_inputs`), at two batch sizes.
    """
    import onnx

    if opset < 17:
        raise CxrError(f"opset {opset} is too old; use 17 or newer")
    predictor = TorchPredictor.from_path(model_path)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    size = predictor.input_size
    graph = _WithSigmoid(predictor.model).eval()
    example = torch.rand(2, 1, size, size, generator=torch.Generator().manual_seed(0))
    with replacing(out) as partial:  # a failed export or parity check leaves no file behind
        # The exporter reports its progress on stdout; `cxr export` prints its own summary instead.
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(
                graph,
                (example,),
                os.fspath(partial),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                opset_version=opset,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
                external_data=False,
                # Unoptimised, every weight stays an initializer named after its parameter (onnxruntime fuses
                # BatchNorm into the convolutions when it loads the graph, so speed is the same), and the file
                # can rebuild its torch twin for Grad-CAM (cxr.inference.onnx.OnnxPredictor.model).
                optimize=False,
            )
        model = onnx.load(os.fspath(partial))
        strip_debug_metadata(model)
        _set_metadata(model, export_metadata(predictor))
        onnx.checker.check_model(model)
        onnx.save(model, os.fspath(partial))
        max_diff, checked = check_parity(predictor, partial, tolerance)
    return {"path": str(out), "opset": opset, "max_abs_diff": max_diff, "checked": checked}


class _WithSigmoid(torch.nn.Module):
    """The exported graph: the classifier's logits through a sigmoid, so ONNX users get probabilities."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(image))


def export_metadata(predictor) -> dict:
    """The JSON document stored under the ``cxr`` key of the ONNX metadata: the format header, the model card and
    the artifact's :class:`~cxr.models.spec.ModelSpec` without paths of this machine (``ModelSpec.portable``)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_by": __version__,
        "exported_from": predictor.path.name,
        "model_card": predictor.card.to_dict(),
    } | predictor.spec.portable().to_dict()


def strip_debug_metadata(model) -> None:
    """Remove what the exporter records for debugging from every graph, node and value: its Python stack traces (the
    absolute paths of cxr's and torch's sources on this machine), module hierarchies, FX node names and the exported
    program's signature. None of it is needed to run the graph; an exported model should not tell where it was made."""
    graphs = [model.graph]
    for graph in graphs:  # and the subgraphs of control-flow nodes, as they are found
        graphs += [a.g for node in graph.node for a in node.attribute if a.HasField("g")]
        graphs += [g for node in graph.node for a in node.attribute for g in a.graphs]
        del graph.metadata_props[:]
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
        for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
            del value.metadata_props[:]
            value.doc_string = ""
    for function in model.functions:
        del function.metadata_props[:]
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""


def _set_metadata(model, metadata: dict) -> None:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True, default=_json_default)
    model.producer_name, model.producer_version = "cxr", __version__
    model.doc_string = f"cxr chest X-ray classifier: {', '.join(metadata['labels'])}"


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def check_parity(torch_predictor, onnx_path: str | Path, tolerance: float = PARITY_TOLERANCE) -> tuple[float, int]:
    """Max |Δp| between torch and onnxruntime on :func:`parity_inputs` (batch 5 and batch 1); raise if > tolerance."""
    onnx_predictor = OnnxPredictor(onnx_path)
    inputs = parity_inputs(torch_predictor.input_size)
    reference = torch_predictor.probabilities(inputs)
    differences = [np.abs(onnx_predictor.probabilities(inputs) - reference).max()]
    differences.append(np.abs(onnx_predictor.probabilities(inputs[:1]) - reference[:1]).max())
    max_diff = float(max(differences))
    if not max_diff <= tolerance:  # also catches NaN
        raise ExportParityError(
            f"ONNX export of {torch_predictor.path} disagrees with torch: max |Δp| = {max_diff:.3g} > {tolerance:g}"
        )
    return max_diff, int(len(inputs) + 1)
