"""``cxr export``: a self-contained ONNX file (metadata, dynamic batch) that matches torch, or no file at all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.errors import CxrError
from cxr.inference.eager import TorchPredictor
from cxr.inference.export import ExportParityError, export_onnx
from cxr.inference.onnx import METADATA_KEY, OnnxPredictor, parity_inputs, read_metadata
from cxr.inference.predict import load_predictor, predict_images
from cxr.labels import FINDINGS


def tiny_checkpoint(path: Path, name: str = "resnet18", size: int = 64, labels=FINDINGS, head: str = "gap") -> Path:
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(3)
    model = create_model(name, len(labels), head=head, input_size=size, labels=list(labels))
    thresholds = {label: 0.25 + 0.02 * k for k, label in enumerate(labels)}
    pre = make_preprocessing(model, size + 8, 0.8, "center_crop")
    return write_artifact(path, model, list(labels), pre, thresholds=thresholds, config={"experiment": "tiny"})


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path, dict]:
    folder = tmp_path_factory.mktemp("export")
    checkpoint = tiny_checkpoint(folder / "tiny.ckpt")
    result = export_onnx(checkpoint, folder / "onnx" / "model.onnx")
    return checkpoint, Path(result["path"]), result


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_export_writes_metadata_and_checks_parity(exported):
    import onnx

    checkpoint, onnx_path, result = exported
    assert onnx_path.is_file() and result["max_abs_diff"] <= 1e-4 and result["checked"] > 1
    assert not list(onnx_path.parent.glob("*.partial")) and not list(onnx_path.parent.glob("*.data"))  # one file
    model = onnx.load(str(onnx_path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    metadata, spec = read_metadata(onnx_path)
    torch_side = TorchPredictor.from_path(checkpoint)
    assert metadata["labels"] == list(FINDINGS)
    assert metadata["thresholds"] == torch_side.thresholds
    assert metadata["preprocessing"] == torch_side.preprocessing.to_dict()
    assert metadata["package_version"] == torch_side.package_version
    assert metadata["model_card"]["experiment"] == "tiny" and spec.labels == tuple(FINDINGS)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_onnx_matches_torch_at_any_batch_size(exported, batch):
    checkpoint, onnx_path, _ = exported
    inputs = np.random.default_rng(batch).random((batch, 1, 64, 64), dtype=np.float32)
    expected = TorchPredictor.from_path(checkpoint).probabilities(inputs)
    np.testing.assert_allclose(OnnxPredictor(onnx_path).probabilities(inputs), expected, atol=1e-4)


def test_predict_with_onnx_needs_only_the_file(exported, sample_dir, tmp_path):
    checkpoint, onnx_path, _ = exported
    alone = tmp_path / "elsewhere" / "model.onnx"
    alone.parent.mkdir()
    alone.write_bytes(onnx_path.read_bytes())
    images = sorted((sample_dir / "images").glob("*.png"))[:3]
    via_onnx = predict_images(alone, images)
    via_torch = predict_images(checkpoint, images)
    for a, b in zip(via_onnx, via_torch, strict=True):
        assert a["image"] == b["image"] and a["thresholds"] == b["thresholds"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
    assert load_predictor(alone).backend == "onnxruntime"


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_grad_cam_from_the_onnx_file_equals_the_checkpoints(exported, sample_dir, tmp_path):
    """The torch twin rebuilt from the ONNX initializers gives the checkpoint's heatmaps."""
    checkpoint, onnx_path, _ = exported
    image = sample_dir / "images" / "00000013_003.png"
    from_torch = predict_images(checkpoint, [image], cam_dir=tmp_path / "torch")[0]
    from_onnx = predict_images(onnx_path, [image], cam_dir=tmp_path / "onnx")[0]
    assert from_torch["positive"] and set(from_torch["heatmaps"]) == set(from_onnx["heatmaps"])
    for finding, files in from_torch["heatmaps"].items():
        np.testing.assert_allclose(np.load(files["map"]), np.load(from_onnx["heatmaps"][finding]["map"]), atol=1e-4)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_parity_failure_fails_loudly_and_leaves_no_file(tmp_path, monkeypatch):
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt", labels=("Mass", "Effusion"))
    original = OnnxPredictor.probabilities
    monkeypatch.setattr(OnnxPredictor, "probabilities", lambda self, batch: original(self, batch) + 2e-4)
    with pytest.raises(ExportParityError, match="max |Δp|"):
        export_onnx(checkpoint, tmp_path / "model.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.ckpt"]


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_densenet_and_the_seed_head_export(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "dense.ckpt", name="densenet121", size=32, head="seed", labels=("Hernia",))
    result = export_onnx(checkpoint, tmp_path / "dense.onnx")
    assert result["max_abs_diff"] <= 1e-4
    inputs = parity_inputs(32)
    expected = TorchPredictor.from_path(checkpoint).probabilities(inputs)
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "dense.onnx").probabilities(inputs), expected, atol=1e-4)


def test_foreign_or_incompatible_onnx_is_refused(exported, tmp_path):
    import onnx

    _, onnx_path, _ = exported
    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(CxrError, match="without cxr metadata"):
        load_predictor(tmp_path / "foreign.onnx")
    metadata = read_metadata(onnx_path)[0] | {"format_version": 99}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(tmp_path / "future.onnx"))
    with pytest.raises(CxrError, match="format version 99"):
        load_predictor(tmp_path / "future.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(CxrError, match="not an ONNX model"):
        load_predictor(tmp_path / "junk.onnx")


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_cli_export(exported, tmp_path):
    from typer.testing import CliRunner

    from cxr.cli import app

    checkpoint, _, _ = exported
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert "max |Δp|" in result.stdout and (tmp_path / "m.onnx").is_file()
    result = CliRunner().invoke(app, ["export", str(checkpoint), "--out", str(tmp_path / "old.onnx"), "--opset", "13"])
    assert result.exit_code != 0 and "opset 13" in str(result.exception)
