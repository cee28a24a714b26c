"""The train/predict contract (:class:`cxr.imaging.preprocessing.Preprocessing`): one image, one model input through
every path that feeds a model, its serialised form, and an ONNX deployment that runs with torch unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.data.loaders import StoreImages, predict_store, store_rows
from cxr.data.prepare import prepare_store
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale
from cxr.imaging.preprocessing import Preprocessing, to_unit
from cxr.inference.predict import predict_images
from cxr.labels import FINDINGS

PRE = Preprocessing(store_size=72, crop=0.875, input_size=64, eval_view="center_crop")


class RecordingModel(torch.nn.Module):
    """A small CNN that keeps every batch it is given (``feature_layer``: the Grad-CAM target)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.feature_layer = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Linear(4, len(FINDINGS))
        self.inputs: list[np.ndarray] = []

    def forward(self, batch):
        self.inputs.append(batch.detach().cpu().numpy().copy())
        return self.head(self.feature_layer(batch).mean(dim=(2, 3)))


class RecordingPredictor:
    """The Predictor interface around :class:`RecordingModel` (what predict and serve call)."""

    backend, package_version, card, architecture = "recording", "0", {}, {"name": "recording"}

    def __init__(self):
        self.model, self.preprocessing, self.path = RecordingModel(), PRE, Path("recording.ckpt")
        self.labels, self.thresholds = list(FINDINGS), dict.fromkeys(FINDINGS, 0.5)

    @property
    def input_size(self) -> int:
        return PRE.input_size

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = self.model(torch.from_numpy(batch))
        return torch.sigmoid(logits).double().numpy()


@pytest.fixture(scope="module")
def sample_store(sample_dir, tmp_path_factory) -> Store:
    out = tmp_path_factory.mktemp("contract") / "store"
    prepare_store(sample_dir, out, size=PRE.store_size, crop=PRE.crop, workers=1, progress=False)
    return Store(out)


def test_one_image_gives_one_model_input_through_every_path(sample_dir, sample_store):
    """Training's validation view and evaluate (from the store), predict, serve and Grad-CAM (from the file)."""
    from fastapi.testclient import TestClient

    from cxr.inference.serve import create_app

    path = sorted((sample_dir / "images").glob("*.png"))[0]
    expected = PRE.model_input(decode_grayscale(path))
    assert expected.shape == (1, 64, 64) and expected.dtype == np.float32

    row = store_rows(sample_store, [path.name])
    pixels, _ = StoreImages(sample_store, row, None, PRE.view)[0]  # the validation dataset's item
    np.testing.assert_array_equal(to_unit(pixels.numpy()), expected)  # (1, S, S) as the loader batches it

    artifact = RecordingPredictor()  # predict_store reads .model, .preprocessing, .labels
    predict_store(artifact, sample_store, [path.name], tta=True)
    original, mirrored = artifact.model.inputs
    np.testing.assert_array_equal(original[0], expected)
    np.testing.assert_array_equal(mirrored[0], expected[..., ::-1])  # TTA: the mirror of the same input

    predictor = RecordingPredictor()
    predict_images(predictor, [path])
    np.testing.assert_array_equal(predictor.model.inputs[-1][0], expected)

    served = RecordingPredictor()
    with TestClient(create_app("unused", predictor=served)) as client:
        answer = client.post("/api/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(served.model.inputs[-1][0], expected)

    cam = RecordingPredictor()
    cam.thresholds = dict.fromkeys(FINDINGS, 0.0)  # every finding positive: Grad-CAM runs on the model input
    predict_images(cam, [path], cam_dir=sample_store.path.parent / "cams")
    np.testing.assert_array_equal(cam.model.inputs[-1][0], expected)


def test_preprocessing_round_trips_and_refuses_what_it_cannot_do():
    assert Preprocessing.from_dict(PRE.to_dict()) == PRE
    assert json.loads(json.dumps(PRE.to_dict())) == PRE.to_dict()  # plain types: JSON, weights_only checkpoints
    legacy = {**PRE.to_dict(), "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preprocessing.from_dict(legacy) == PRE  # normalisation lives in the model; older files are still read
    with pytest.raises(CxrError, match="missing \\['input_size'\\]"):
        Preprocessing.from_dict({k: v for k, v in PRE.to_dict().items() if k != "input_size"})
    with pytest.raises(CxrError, match="unknown \\['letterbox'\\]"):
        Preprocessing.from_dict({**PRE.to_dict(), "letterbox": True})
    with pytest.raises(CxrError, match="center_crop needs store_size >= input_size"):
        Preprocessing(store_size=32, crop=1.0, input_size=64, eval_view="center_crop")
    with pytest.raises(CxrError, match="crop must be in"):
        Preprocessing(store_size=64, crop=1.5, input_size=64)
    store = type("FakeStore", (), {"size": 72, "crop": 0.75, "path": "elsewhere"})()
    with pytest.raises(CxrError, match="store elsewhere was prepared at 72 px, crop 0.75"):
        PRE.check_store(store)


NO_TORCH = textwrap.dedent(
    """
    import sys
    # As on a deployment without the training stack: importing any of these raises ImportError.
    for name in ("torch", "torchvision", "lightning", "torchmetrics", "pytorch_grad_cam", "onnx", "onnxscript"):
        sys.modules[name] = None
    """
)


def _run_without_torch(code: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH + textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_onnx_predict_and_serve_run_with_torch_unimportable(tmp_path, sample_dir):
    """``cxr predict model.onnx`` and the server's API give the checkpoint's probabilities (1e-4) without torch."""
    from cxr.inference.eager import TorchPredictor
    from cxr.inference.export import export_onnx
    from cxr.models.artifact import write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(5)
    model = create_model("resnet18", len(FINDINGS), head="gap", input_size=64, labels=list(FINDINGS))
    checkpoint = write_artifact(tmp_path / "m.ckpt", model, list(FINDINGS), PRE)
    onnx_path = Path(export_onnx(checkpoint, tmp_path / "m.onnx")["path"])
    images = sorted((sample_dir / "images").glob("*.png"))[:2]
    expected = [record["probabilities"] for record in predict_images(TorchPredictor.from_path(checkpoint), images)]

    out = _run_without_torch(
        f"""
        from cxr.cli import main
        sys.argv = ["cxr", "predict", {str(onnx_path)!r}, {str(images[0])!r}, {str(images[1])!r}, "--json"]
        try:
            main()
        finally:
            assert "torch" not in [name for name, module in sys.modules.items() if module is not None]
        """,
        tmp_path,
    )
    records = json.loads(out)
    for record, reference in zip(records, expected, strict=True):
        assert max(abs(record["probabilities"][k] - reference[k]) for k in FINDINGS) <= 1e-4

    out = _run_without_torch(
        f"""
        import json
        from fastapi.testclient import TestClient
        from cxr.inference.serve import create_app
        with TestClient(create_app({str(onnx_path)!r})) as client:
            data = open({str(images[0])!r}, "rb").read()
            answer = client.post("/api/predict?cam=all", files={{"file": ("x.png", data, "image/png")}})
        print(json.dumps({{"status": answer.status_code, **answer.json()}}))
        """,
        tmp_path,
    )
    served = json.loads(out)
    assert served["status"] == 200
    assert max(abs(served["probabilities"][k] - expected[0][k]) for k in FINDINGS) <= 1e-4
    assert served["heatmaps"] == {} and "pip install 'cxr[train]'" in served["heatmaps_error"]  # says what is missing


def test_a_training_command_without_torch_says_which_extra_to_install(tmp_path):
    argv = ["cxr", "train", "--experiment", "demo", "--store", "s", "--out", "o"]
    code = f"from cxr.cli import main\nsys.argv = {argv!r}\nmain()"
    result = subprocess.run([sys.executable, "-c", NO_TORCH + code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "part of the training stack: pip install 'cxr[train]'" in result.stderr
