"""``cxr import torchxrayvision``: parity with torchxrayvision itself on a real NIH image, then the artifact through
predict, evaluate, export, serve, Grad-CAM and fine-tuning with torchxrayvision unimportable.

The classifiers have random weights (calibrated so that probabilities are neither 0 nor 1) saved in the files
torchxrayvision reads from its cache folder: a pickled module for its DenseNets, a state dict for its ResNet.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cxr.cli import app
from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale
from cxr.labels import FINDINGS

xrv = pytest.importorskip("torchxrayvision", reason="the dev extra installs torchxrayvision (parity reference)")

DENSENET = "densenet121-res224-all"
RESNET = "resnet50-res512-all"
SAMPLE = "00000013_003.png"
runner = CliRunner()


def entry(name: str) -> dict:
    return xrv.models.model_urls[name]


def file_name(name: str) -> str:
    return entry(name)["weights_url"].rsplit("/", 1)[-1]


def scaled(pixels: np.ndarray) -> torch.Tensor:
    """torchxrayvision's input for a [0, 1] image: ``xrv.utils.normalize`` of 8-bit pixels, (x / 255) * 2048 - 1024."""
    return torch.from_numpy(pixels) * 2048 - 1024


def calibrate(net: torch.nn.Module, classifier: torch.nn.Linear, inputs: torch.Tensor) -> None:
    """Batch-norm statistics from ``inputs`` and a last layer scaled to logits of about ±2: random weights whose
    probabilities are not saturated, so the parity test compares numbers that can differ."""
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: one pass sets the running statistics to the batch's
            module.reset_running_stats()
    net.train()
    with torch.no_grad():
        net(inputs)
    net.eval()
    with torch.no_grad():
        classifier.weight.normal_()
        classifier.bias.uniform_(-0.5, 0.5)
        logits = net(inputs)
        classifier.weight.mul_(1.5 / logits.std())


def sample_input(sample_dir: Path, size: int) -> np.ndarray:
    """The NIH sample as a cxr model input ``(1, 1, size, size)``: centered square, resized (the import's preprocessing)."""
    from cxr.imaging.preprocessing import Preprocessing

    gray = decode_grayscale(sample_dir / "images" / SAMPLE)
    return Preprocessing(size, 1.0, size).model_input(gray)[None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_dir) -> Path:
    """torchxrayvision's cache folder holding random DenseNet-121 weights, in its own format (a pickled module)."""
    folder = tmp_path_factory.mktemp("xrv-cache")
    torch.manual_seed(0)
    net = xrv.models.DenseNet(num_classes=len(entry(DENSENET)["labels"]))
    image = torch.from_numpy(sample_input(sample_dir, 224))
    noise = torch.rand(3, 1, 224, 224)
    calibrate(net, net.classifier, scaled(torch.cat([image, noise]).numpy()))
    torch.save(net, folder / file_name(DENSENET))
    return folder


@pytest.fixture(scope="module")
def imported(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xrv-model") / "xrv.ckpt"
    result = runner.invoke(app, ["import", "torchxrayvision", DENSENET, "--out", str(out), "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    assert "dropped (not among cxr's findings): Lung Lesion, Fracture, Lung Opacity, Enlarged Cardiomediastinum" in (
        result.output
    )
    return out


def reference(name: str, cache: Path, sigmoid_only: bool = True) -> torch.nn.Module:
    """torchxrayvision's own model from ``cache``: ``sigmoid(logits)`` without ``op_norm``, or its default forward."""
    net = xrv.models.get_model(name, cache_dir=str(cache)).eval()
    if sigmoid_only:
        net.op_threshs = None
        net.apply_sigmoid = True
    return net


@pytest.fixture
def no_xrv(monkeypatch):
    """torchxrayvision unimportable from here on, as where the `xrv` extra is not installed."""
    for name in [name for name in sys.modules if name == "torchxrayvision" or name.startswith("torchxrayvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import torchxrayvision  # noqa: F401


def test_missing_weights_and_unknown_names_are_clear_errors(tmp_path):
    out = tmp_path / "m.ckpt"
    with pytest.raises(CxrError) as error:
        runner.invoke(app, ["import", "torchxrayvision", RESNET, "--out", str(out), "--cache-dir", str(tmp_path)],
                      catch_exceptions=False)  # fmt: skip
    message = str(error.value)
    assert str(tmp_path / file_name(RESNET)) in message and entry(RESNET)["weights_url"] in message
    assert "Nothing is downloaded" in message and not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(CxrError, match="unknown torchxrayvision classifier 'densenet121-res999'.*resnet50-res512-all"):
        runner.invoke(app, ["import", "torchxrayvision", "densenet121-res999", "--out", str(out)],
                      catch_exceptions=False)  # fmt: skip
    (tmp_path / file_name(DENSENET)).write_bytes(b"truncated download")
    with pytest.raises(CxrError, match="could not load it as densenet121-res224-all"):
        runner.invoke(app, ["import", "torchxrayvision", DENSENET, "--out", str(out), "--cache-dir", str(tmp_path)],
                      catch_exceptions=False)  # fmt: skip
    assert not out.exists()


def test_artifact_records_its_labels_thresholds_preprocessing_and_source(imported, cache):
    from cxr.models.artifact import load_artifact

    artifact = load_artifact(imported)
    labels = [label for label in entry(DENSENET)["labels"] if label in FINDINGS]
    assert artifact.labels == labels and len(labels) == 14  # its order, its NIH findings
    op_threshs = dict(zip(entry(DENSENET)["labels"], entry(DENSENET)["op_threshs"], strict=True))
    assert artifact.thresholds == pytest.approx({label: op_threshs[label] for label in labels})
    assert artifact.architecture == {"name": "xrv-densenet121", "head": "gap", "dropout": 0.0, "in_chans": 1}
    assert artifact.preprocessing.to_dict() == {"store_size": 224, "crop": 1.0, "input_size": 224,
                                                "eval_transform": "resize"}  # fmt: skip
    record = artifact.config["imported"]
    assert record["weights"] == DENSENET and record["file"] == str(cache / file_name(DENSENET))
    assert record["dropped_outputs"] == ["Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert artifact.model.backbone.conv0.in_channels == 1


def test_probabilities_equal_torchxrayvision_on_a_real_nih_image(imported, cache, sample_dir):
    """Same pixels in: cxr's probabilities are xrv's sigmoid(logits) to 1e-4, and its op_norm'd outputs cross 0.5
    exactly where ours cross the imported thresholds."""
    from cxr.inference.eager import TorchPredictor

    predictor = TorchPredictor.from_path(imported)
    pixels = sample_input(sample_dir, 224)
    ours = predictor.probabilities(pixels)[0]
    rows = [entry(DENSENET)["labels"].index(label) for label in predictor.labels]
    with torch.no_grad():
        theirs = reference(DENSENET, cache)(scaled(pixels))[0, rows].numpy()
        normed = reference(DENSENET, cache, sigmoid_only=False)(scaled(pixels))[0, rows].numpy()
    assert np.abs(ours - theirs).max() <= 1e-4
    assert 0.005 < ours.min() and ours.max() < 0.995 and ours.std() > 0.05  # not saturated: a real comparison
    thresholds = np.array([predictor.thresholds[label] for label in predictor.labels])
    assert ((ours >= thresholds) == (normed >= 0.5)).all()
    assert 0 < (ours >= thresholds).sum() < len(rows)  # both decisions occur

    # `cxr predict` on the PNG itself (decode, center square, resize) gives the same numbers.
    result = runner.invoke(app, ["predict", str(imported), str(sample_dir / "images" / SAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert max(abs(record["probabilities"][label] - p) for label, p in zip(predictor.labels, theirs)) <= 1e-4


def test_resnet50_at_512_px_from_its_state_dict_file(tmp_path, sample_dir):
    """torchxrayvision's ResNet-50 reads a torchvision state dict; ours is 512 px in and equal to it to 1e-4."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None, num_classes=len(entry(RESNET)["labels"]))
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    pixels = sample_input(sample_dir, 512)
    calibrate(net, net.fc, scaled(np.concatenate([pixels, np.random.default_rng(0).random(pixels.shape, "f")])))
    torch.save(net.state_dict(), tmp_path / file_name(RESNET))
    out = tmp_path / "resnet.ckpt"
    result = runner.invoke(app, ["import", "torchxrayvision", RESNET, "--out", str(out), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "threshold 0.5" not in result.output  # its two findings without an operating point are not NIH's

    from cxr.inference.eager import TorchPredictor

    predictor = TorchPredictor.from_path(out)
    assert predictor.input_size == 512 and predictor.architecture["name"] == "xrv-resnet50"
    rows = [entry(RESNET)["labels"].index(label) for label in predictor.labels]
    with torch.no_grad():
        theirs = reference(RESNET, tmp_path)(scaled(pixels))[0, rows].numpy()
    ours = predictor.probabilities(pixels)[0]
    assert np.abs(ours - theirs).max() <= 1e-4 and ours.std() > 0.05


def test_predict_evaluate_export_serve_and_grad_cam_without_torchxrayvision(imported, tmp_path, no_xrv):
    from fastapi.testclient import TestClient

    from cxr.inference.serve import create_app
    from cxr.synth import generate

    data = generate(tmp_path / "synth", images=12, size=96, seed=3, prevalence="flat", workers=1)
    predictions, cams = tmp_path / "predictions.csv", tmp_path / "cams"
    result = runner.invoke(app, ["predict", str(imported), str(data), "--csv", str(predictions), "--cam", str(cams)])
    assert result.exit_code == 0, result.output
    assert list(cams.glob("*.png")), "Grad-CAM overlays of the positive findings"
    heatmap = np.load(next(cams.glob("*.npy")))
    assert heatmap.ndim == 2 and np.isfinite(heatmap).all() and heatmap.max() > heatmap.min()

    metrics_json = tmp_path / "metrics.json"
    labels = next(Path(data).glob("Data_Entry*.csv"))
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--labels", str(labels),
                                 "--resamples", "20", "--json", str(metrics_json)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_json.read_text())
    assert metrics["n_images"] == 12 and set(metrics["labels"]) == set(FINDINGS)

    onnx_path = tmp_path / "xrv.onnx"
    result = runner.invoke(app, ["export", str(imported), "--out", str(onnx_path)])
    assert result.exit_code == 0, result.output  # refused (no file) beyond 1e-4 of torch
    image = next(Path(data).rglob("*.png")).read_bytes()
    answers = {}
    for model in (imported, onnx_path):
        with TestClient(create_app(model)) as client:
            answer = client.post("/api/predict?cam=Effusion", files={"file": ("x.png", image, "image/png")})
        assert answer.status_code == 200, answer.text
        answers[model.suffix] = answer.json()
        assert set(answer.json()["heatmaps"]) == {"Effusion"}
    ckpt, onnx = answers[".ckpt"]["probabilities"], answers[".onnx"]["probabilities"]
    assert max(abs(ckpt[label] - onnx[label]) for label in ckpt) <= 1e-4


def test_fine_tuning_starts_from_the_imported_weights(imported, no_xrv):
    """``model.name=xrv-densenet121 model.init_from=MODEL.ckpt``: the imported weights, then optimizer steps that
    lower the loss on a batch (at 64 px: the backbone does not depend on the input size)."""
    from cxr.config import load_config
    from cxr.imaging.preprocessing import Preprocessing
    from cxr.models.artifact import load_artifact
    from cxr.training.module import CxrModule

    overrides = ["model.name=xrv-densenet121", f"model.init_from={imported}", "model.head=gap", "model.dropout=0",
                 "model.pretrained=none", "data.input_size=64", "data.store_size=64", "optim.lr=1e-3"]  # fmt: skip
    config = load_config(None, overrides)
    outputs = ["Effusion", "Mass"]  # another task: the backbone is loaded, the head starts afresh
    module = CxrModule(config, outputs, Preprocessing(64, 1.0, 64))
    source = load_artifact(imported).model.state_dict()
    tuned = module.model.state_dict()
    backbone = [key for key in tuned if key.startswith("backbone.")]
    assert backbone and all(torch.equal(tuned[key], source[key]) for key in backbone)

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (8, 1, 64, 64), dtype=torch.uint8, generator=generator)
    target = torch.randint(0, 2, (8, len(outputs)), generator=generator).float()
    optimizers, _ = module.configure_optimizers()
    optimizer = optimizers[0]
    module.train()
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = module._loss(module.model(module._images(pixels)), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    conv0 = module.model.backbone.conv0.weight.detach()
    assert not torch.equal(conv0, source["backbone.conv0.weight"])


def test_predict_in_a_process_where_torchxrayvision_cannot_be_imported(imported, sample_dir, tmp_path):
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torchxrayvision"] = None  # as without the xrv extra
        from cxr.cli import main
        sys.argv = ["cxr", "predict", {str(imported)!r}, {str(sample_dir / "images" / SAMPLE)!r}, "--json"]
        main()
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads(result.stdout)["probabilities"]) == set(FINDINGS)
