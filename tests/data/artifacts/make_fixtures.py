"""How the legacy artifact fixtures in this folder were made (run once, with cxr at commit 5ef3c69).

``tests/test_artifact_compat.py`` loads them with today's code and checks the probabilities recorded here with the
code that wrote them (``legacy_probabilities.npy``, on ``cxr.inference.onnx.parity_inputs(64)``). The model is timm's
``test_resnet`` (0.37 M parameters, so the files stay small) at 64 px with three outputs, random weights, thresholds
set as ``cxr evaluate`` would, and a training config naming a store under a distinctive folder, as a run's
checkpoint does. Run from the repository root: ``PYTHONPATH=src python tests/data/artifacts/make_fixtures.py``.
"""

from pathlib import Path

import numpy as np
import torch

from cxr.inference.eager import TorchPredictor
from cxr.inference.export import export_onnx
from cxr.inference.onnx import parity_inputs
from cxr.models.artifact import make_preprocessing, set_thresholds, write_artifact
from cxr.models.factory import create_model

HERE = Path(__file__).resolve().parent
LABELS = ["Cardiomegaly", "Effusion", "Pleural_Thickening"]
CONFIG = {"experiment": "legacy-fixture", "store": "/home/alice/StMungos-cohort/store-64", "task": {"target": "x"}}

if __name__ == "__main__":
    torch.manual_seed(0)
    model = create_model("test_resnet", len(LABELS), input_size=64, labels=LABELS).eval()
    checkpoint = write_artifact(HERE / "legacy.ckpt", model, LABELS, make_preprocessing(model, 64, 1.0), config=CONFIG)
    set_thresholds(checkpoint, {"Cardiomegaly": 0.31, "Effusion": 0.5, "Pleural_Thickening": 0.07})
    export_onnx(checkpoint, HERE / "legacy.onnx")
    np.save(HERE / "legacy_probabilities.npy", TorchPredictor.from_path(checkpoint).probabilities(parity_inputs(64)))
