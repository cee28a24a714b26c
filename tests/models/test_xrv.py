"""``cxr import torchxrayvision``: parity with torchxrayvision itself on a real NIH image, then the artifact through
predict, evaluate, export, serve, Grad-CAM and fine-tuning with torchxrayvision unimportable.

The classifiers have random weights (calibrated so that probabilities are neither 0 nor 1) saved in the files
torchxrayvision reads from its cache folder: a pickled module for its DenseNets, a state dict for its ResNet.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cxr.cli import app
from cxr.errors import CxrError
from cxr.files import file_sha256
from cxr.imaging.decode import decode_grayscale
from cxr.labels import COMMON_FINDINGS, FINDINGS

xrv = pytest.importorskip("torchxrayvision", reason="the dev extra installs torchxrayvision (parity reference)")

DENSENET = "densenet121-res224-all"
RESNET = "resnet50-res512-all"
SAMPLE = "00000013_003.png"
EXTRA = ("Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum")  # its outputs beyond NIH's 14
runner = CliRunner()


def entry(name: str) -> dict:
    return xrv.models.model_urls[name]


def file_name(name: str) -> str:
    return entry(name)["weights_url"].rsplit("/", 1)[-1]


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


def scaled(pixels: np.ndarray) -> torch.Tensor:
    """torchxrayvision's input for a [0, 1] image: ``xrv.utils.normalize`` of 8-bit pixels, (x / 255) * 2048 - 1024."""
    return torch.from_numpy(pixels) * 2048 - 1024


def calibrate(net: torch.nn.Module, classifier: torch.nn.Linear, inputs: torch.Tensor) -> None:
    """Batch-norm statistics from ``inputs`` and a last layer scaled to logits of spread 1.5: random weights whose
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
        classifier.weight.mul_(1.5 / net(inputs).std())
        classifier.bias.uniform_(-4.0, -1.0)  # low, as CXR findings are: some below their operating points


def sample_input(sample_dir: Path, size: int) -> np.ndarray:
    """The NIH sample as a model input ``(1, 1, size, size)``: centered square, resized (the import's preprocessing)."""
    from cxr.imaging.preprocessing import Preprocessing

    gray = decode_grayscale(sample_dir / "images" / SAMPLE)
    return Preprocessing(size, 1.0, size).model_input(gray)[None]


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_dir) -> tuple[Path, tuple[dict[str, float], dict[str, float]]]:
    """torchxrayvision's cache folder holding random DenseNet-121 weights in its own format (a pickled module), and
    that module's outputs on the NIH sample."""
    folder = tmp_path_factory.mktemp("xrv-cache")
    torch.manual_seed(0)
    net = xrv.models.DenseNet(num_classes=len(entry(DENSENET)["labels"]))
    image = sample_input(sample_dir, 224)
    calibrate(net, net.classifier, scaled(np.concatenate([image, np.random.default_rng(0).random(image.shape, "f")])))
    torch.save(net, folder / file_name(DENSENET))
    return folder, reference(net, DENSENET, image)


@pytest.fixture(scope="module")
def imported(cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("xrv-model") / "xrv.ckpt"
    args = ["import", "torchxrayvision", DENSENET, "--out", str(out), "--cache-dir", str(cache[0])]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "18 outputs" in result.output and "dropped" not in result.output
    return out


def reference(
    net: torch.nn.Module, name: str, pixels: np.ndarray, op_norm: bool = True
) -> tuple[dict[str, float], dict[str, float]]:
    """torchxrayvision's outputs of ``net`` on ``pixels`` ``(1, 1, S, S)`` in [0, 1], by label of ``name``:
    ``sigmoid(logits)`` (its forward without ``op_threshs``) and, with ``op_norm``, its default forward (``op_norm``
    of them; else ``{}``)."""
    labels = entry(name)["labels"]
    normed = {}
    with torch.no_grad():
        net.op_threshs, net.apply_sigmoid = None, True
        sigmoid = dict(zip(labels, net(scaled(pixels))[0].tolist(), strict=True))
        if op_norm:
            net.op_threshs = torch.tensor(entry(name)["op_threshs"])  # as its loader sets them
            normed = dict(zip(labels, net(scaled(pixels))[0].tolist(), strict=True))
    return sigmoid, normed


@pytest.fixture(scope="module")
def expected(cache) -> tuple[dict[str, float], dict[str, float]]:
    """torchxrayvision's outputs on the NIH sample (:func:`reference`) of the model saved in :func:`cache`."""
    return cache[1]


@pytest.fixture
def no_xrv(monkeypatch):
    """torchxrayvision unimportable from here on, as where the `xrv` extra is not installed."""
    for name in [name for name in sys.modules if name == "torchxrayvision" or name.startswith("torchxrayvision.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import torchxrayvision  # noqa: F401


def test_every_classifier_keeps_all_its_outputs_in_its_order():
    from cxr.models.xrv import kept_outputs, xrv_models

    models = xrv_models()
    for short in ("all", "nih", "pc", "chex", "rsna", "mimic_nb", "mimic_ch"):
        full = models[f"densenet121-res224-{short}"]
        assert models[short].url == full.url and full.architecture == "xrv-densenet121" and full.input_size == 224
    assert models[RESNET].architecture == "xrv-resnet50" and models[RESNET].input_size == 512
    for model in models.values():
        rows, labels, dropped = kept_outputs(model.labels)
        assert labels == [label for label in model.labels if label] and dropped == []  # every non-empty output
        assert [model.labels[row] for row in rows] == labels and set(labels) <= set(COMMON_FINDINGS)
    assert kept_outputs(models["densenet121-res224-rsna"].labels)[1:] == (["Pneumonia", "Lung Opacity"], [])
    assert len(kept_outputs(models["densenet121-res224-nih"].labels)[1]) == 14
    assert len(kept_outputs(models[DENSENET].labels)[1]) == 18


def test_missing_weights_offline_and_unknown_names_are_clear_errors(tmp_path, monkeypatch):
    """Offline (``CXR_OFFLINE=1``) a missing weights file is one line naming the command, the file's URL and the
    folder, and nothing is written (downloading it: tests/models/test_weights.py)."""
    monkeypatch.setenv("CXR_OFFLINE", "1")
    out = tmp_path / "m.ckpt"
    with pytest.raises(CxrError) as error:
        runner.invoke(app, ["import", "torchxrayvision", RESNET, "--out", str(out), "--cache-dir", str(tmp_path)],
                      catch_exceptions=False)  # fmt: skip
    message = str(error.value)
    assert f"cxr import torchxrayvision {RESNET} needs {file_name(RESNET)}, which is not in {tmp_path}" in message
    assert entry(RESNET)["weights_url"] in message and "CXR_OFFLINE=1" in message and "\n" not in message
    assert not out.exists() and not list(tmp_path.iterdir())
    with pytest.raises(CxrError, match="unknown torchxrayvision classifier 'densenet121-res999'.*resnet50-res512-all"):
        runner.invoke(app, ["import", "torchxrayvision", "densenet121-res999", "--out", str(out)],
                      catch_exceptions=False)  # fmt: skip
    (tmp_path / file_name(DENSENET)).write_bytes(b"truncated download")
    with pytest.raises(CxrError, match="could not load it as densenet121-res224-all"):
        runner.invoke(app, ["import", "torchxrayvision", DENSENET, "--out", str(out), "--cache-dir", str(tmp_path)],
                      catch_exceptions=False)  # fmt: skip
    assert not out.exists()


def test_the_import_without_torchxrayvision_says_which_extra_to_install(tmp_path, no_xrv):
    with pytest.raises(CxrError, match=r"needs torchxrayvision: pip install 'cxr\[xrv\]'"):
        runner.invoke(app, ["import", "torchxrayvision", DENSENET, "--out", str(tmp_path / "m.ckpt")],
                      catch_exceptions=False)  # fmt: skip


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_artifact_records_its_labels_thresholds_preprocessing_and_source(imported, cache):
    from cxr.models.artifact import read_checkpoint

    checkpoint, _ = read_checkpoint(imported)
    meta = checkpoint["cxr"]
    labels = [label for label in entry(DENSENET)["labels"] if label]
    assert meta["labels"] == labels and len(labels) == 18  # its order, all its outputs
    op_threshs = dict(zip(entry(DENSENET)["labels"], entry(DENSENET)["op_threshs"], strict=True))
    assert meta["thresholds"] == pytest.approx({label: op_threshs[label] for label in labels})
    architecture = {key: meta["architecture"][key] for key in ("name", "head", "dropout", "in_chans", "mean", "std")}
    assert architecture == {"name": "xrv-densenet121", "head": "gap", "dropout": 0.0, "in_chans": 1,
                            "mean": [0.5], "std": [1 / 2048]}  # fmt: skip
    assert meta["preprocessing"] == {"store_size": 224, "crop": 1.0, "input_size": 224, "eval_transform": "resize"}
    record = meta["config"]["imported"]
    assert record["weights"] == DENSENET and record["file"] == str(cache[0] / file_name(DENSENET))
    assert record["dropped_outputs"] == [] and record["sha256"] == file_sha256(cache[0] / file_name(DENSENET))
    assert checkpoint["state_dict"]["model.backbone.conv0.weight"].shape == (64, 1, 7, 7)  # one channel, no repeat


def test_probabilities_equal_torchxrayvision_on_a_real_nih_image(imported, expected, sample_dir):
    """Same pixels in: cxr's probabilities are xrv's sigmoid(logits) to 1e-4, and its op_norm'd outputs cross 0.5
    exactly where ours cross the imported thresholds."""
    from cxr.inference.eager import TorchPredictor

    predictor = TorchPredictor.from_path(imported)
    assert predictor.labels == [label for label in entry(DENSENET)["labels"] if label] and len(predictor.labels) == 18
    ours = predictor.probabilities(sample_input(sample_dir, 224))[0]
    theirs = np.array([expected[0][label] for label in predictor.labels])
    normed = np.array([expected[1][label] for label in predictor.labels])
    assert np.abs(ours - theirs).max() <= 1e-4
    assert ours.min() > 1e-3 and ours.max() < 1 - 1e-3 and ours.std() > 0.02  # not saturated: a real comparison
    thresholds = np.array([predictor.thresholds[label] for label in predictor.labels])
    assert ((ours >= thresholds) == (normed >= 0.5)).all()
    assert 0 < (ours >= thresholds).sum() < len(thresholds)  # both decisions occur


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_resnet50_at_512_px_from_its_state_dict_file(tmp_path, sample_dir):
    """torchxrayvision's ResNet-50 reads a torchvision state dict; ours is 512 px in and equal to it to 1e-4."""
    import torchvision

    torch.manual_seed(1)
    net = torchvision.models.resnet50(weights=None, num_classes=len(entry(RESNET)["labels"]))
    net.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    pixels = sample_input(sample_dir, 512)
    calibrate(net, net.fc, scaled(pixels))
    torch.save(net.state_dict(), tmp_path / file_name(RESNET))
    out = tmp_path / "resnet.ckpt"
    result = runner.invoke(app, ["import", "torchxrayvision", RESNET, "--out", str(out), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "threshold 0.5 (no operating point): Lung Lesion, Enlarged Cardiomediastinum" in result.output

    from cxr.inference.eager import TorchPredictor

    predictor = TorchPredictor.from_path(out)
    assert predictor.input_size == 512 and predictor.architecture.name == "xrv-resnet50"
    assert len(predictor.labels) == 18 and predictor.thresholds["Lung Lesion"] == 0.5
    theirs = reference(xrv.models.get_model(RESNET, cache_dir=str(tmp_path)).eval(), RESNET, pixels, False)[0]
    ours = predictor.probabilities(pixels)[0]
    assert np.abs(ours - [theirs[label] for label in predictor.labels]).max() <= 1e-4 and ours.std() > 0.02


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_predict_evaluate_export_serve_and_grad_cam_without_torchxrayvision(imported, tmp_path, no_xrv):
    from fastapi.testclient import TestClient

    from cxr.inference.serve import create_app
    from cxr.synth import generate

    data = generate(tmp_path / "synth", images=6, size=96, seed=3, prevalence="flat", workers=1)
    predictions = tmp_path / "predictions.csv"
    result = runner.invoke(app, ["predict", str(imported), str(data), "--csv", str(predictions)])
    assert result.exit_code == 0, result.output

    metrics_json = tmp_path / "metrics.json"
    labels = next(Path(data).glob("Data_Entry*.csv"))
    result = runner.invoke(app, ["evaluate", "--predictions", str(predictions), "--labels", str(labels),
                                 "--resamples", "20", "--json", str(metrics_json)])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(metrics_json.read_text())  # scored on what NIH's labels provide: its 14 findings
    assert metrics["n_images"] == 6 and set(metrics["labels"]) == set(FINDINGS)
    assert {f"prob_{label}" for label in EXTRA} <= set(pd.read_csv(predictions).columns)  # predicted all the same
    assert set(metrics["not_available"]) == set(EXTRA)  # and listed as not scored

    onnx_path = tmp_path / "xrv.onnx"
    result = runner.invoke(app, ["export", str(imported), "--out", str(onnx_path)])
    assert result.exit_code == 0, result.output  # refused (no file) beyond 1e-4 of torch
    image = sorted(Path(data).rglob("*.png"))[0]
    with TestClient(create_app(onnx_path)) as client:
        files = {"file": ("x.png", image.read_bytes(), "image/png")}
        answer = client.post("/api/predict?cam=Effusion", files=files)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert set(served["probabilities"]) == set(FINDINGS) | set(EXTRA)  # the server shows all 18
    row = pd.read_csv(predictions).set_index("Image Index").loc[image.name]
    assert max(abs(p - row[f"prob_{label}"]) for label, p in served["probabilities"].items()) <= 1e-4
    # Grad-CAM on the rectified last dense block, through the torch twin the ONNX file's weights rebuild
    assert set(served["heatmaps"]) == {"Effusion"}
    assert np.asarray(decode_data_url(served["heatmaps"]["Effusion"])).std() > 0


def test_fine_tuning_starts_from_the_imported_weights(imported, no_xrv):
    """``model.name=xrv-densenet121 model.init_from=MODEL.ckpt``: the imported weights, then optimizer steps that
    lower the loss on a batch (at 32 px: the backbone does not depend on the input size)."""
    from cxr.config import load_config
    from cxr.imaging.preprocessing import Preprocessing
    from cxr.models.artifact import read_checkpoint
    from cxr.training.module import CxrModule

    overrides = ["model.name=xrv-densenet121", f"model.init_from={imported}", "model.head=gap", "model.dropout=0",
                 "model.pretrained=none", "data.input_size=32", "data.store_size=32", "optim.lr=1e-3"]  # fmt: skip
    config = load_config(None, overrides)
    outputs = ["Effusion", "Mass"]  # another task: the backbone is loaded, the head starts afresh
    module = CxrModule(config, outputs, Preprocessing(32, 1.0, 32))
    source = {k.removeprefix("model."): v for k, v in read_checkpoint(imported)[0]["state_dict"].items()}
    tuned = module.model.state_dict()
    backbone = [key for key in tuned if key.startswith("backbone.")]
    assert backbone and all(torch.equal(tuned[key], source[key]) for key in backbone)

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8, generator=generator)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    optimizers, _ = module.configure_optimizers()
    optimizer = optimizers[0]
    module.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = module._loss(module.model(module._images(pixels)), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    conv0 = module.model.backbone.conv0.weight.detach()
    assert not torch.equal(conv0, source["backbone.conv0.weight"])


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_predict_in_a_process_where_torchxrayvision_cannot_be_imported(imported, expected, sample_dir, tmp_path):
    """`cxr predict` on the PNG itself (decode, centered square, resize) gives torchxrayvision's numbers without it."""
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
    probabilities = json.loads(result.stdout)["probabilities"]
    assert set(probabilities) == set(FINDINGS) | set(EXTRA)
    assert max(abs(p - expected[0][label]) for label, p in probabilities.items()) <= 1e-4
