"""``cxr predict``: the shared preprocessing path, folders, unreadable files, the JSON/CSV contract, the CLI."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr.errors import CxrError
from cxr.inference.predict import find_images, load_predictor, predict_images, prediction_record
from cxr.labels import FINDINGS

# A store-like preprocessing that exercises every step: 87.5% center crop, 72 px store, 64 px center crop.
PREPROCESSING = {"crop": 0.875, "store_size": 72, "eval_transform": "center_crop"}


def write_tiny_checkpoint(path: Path, seed: int = 0, config: dict | None = None) -> Path:
    """A random-init ResNet-18 artifact (no training): enough to test everything but what a model has learned."""
    import torch

    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(seed)
    model = create_model("resnet18", len(FINDINGS), input_size=64, labels=list(FINDINGS))
    pre = make_preprocessing(model, PREPROCESSING["store_size"], PREPROCESSING["crop"], PREPROCESSING["eval_transform"])
    # Thresholds differ per finding so that "positive" depends on the right threshold.
    thresholds = {finding: 0.3 + 0.03 * k for k, finding in enumerate(FINDINGS)}
    config = config or {"experiment": "tiny"}
    return write_artifact(path, model, list(FINDINGS), pre, thresholds=thresholds, config=config)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    """Loaded once: building a model costs seconds on a busy 2-core machine."""
    return load_predictor(checkpoint)


@pytest.fixture(scope="module")
def sample_images(sample_dir) -> list[Path]:
    return sorted((sample_dir / "images").glob("*.png"))


def test_record_contract():
    thresholds = {"Mass": 0.5, "Effusion": 0.2, "Nodule": 0.9}
    prediction = prediction_record("x.png", [0.6, 0.7, 0.4], ["Mass", "Effusion", "Nodule"], thresholds)
    record = prediction.to_dict()
    assert list(record) == ["image", "probabilities", "positive", "thresholds"]
    assert record["positive"] == ["Effusion", "Mass"]  # at or above threshold, most probable first
    assert record["thresholds"] == thresholds and record["probabilities"] == {
        "Mass": 0.6,
        "Effusion": 0.7,
        "Nodule": 0.4,
    }
    assert prediction_record("x", [0.5], ["Mass"], {"Mass": 0.5}).positive == ("Mass",)  # at = positive
    assert "heatmaps" not in record and replace(prediction, heatmaps={}).to_dict()["heatmaps"] == {}


def test_predictions_match_the_store_path_of_training(predictor, sample_dir, sample_images, tmp_path):
    """PNG → predict equals PNG → prepare (store) → the evaluation's predict_store: one preprocessing path."""
    from cxr.data.loaders import predict_store
    from cxr.data.prepare import prepare_store

    store = tmp_path / "store"
    prepare_store(sample_dir, store, size=72, crop=0.875, workers=1, progress=False)
    names = [path.name for path in sample_images]
    via_store = predict_store(predictor.artifact, store, names)
    records = predict_images(predictor, sample_images, batch_size=4)
    assert [Path(r["image"]).name for r in records] == names
    direct = np.array([[r["probabilities"][f] for f in FINDINGS] for r in records])
    np.testing.assert_allclose(direct, via_store, atol=1e-5)
    assert len({tuple(np.round(row, 6)) for row in direct}) == len(names)  # the images really differ


def test_batch_size_does_not_change_results(predictor, sample_images):
    one = predict_images(predictor, sample_images[:5], batch_size=1)
    many = predict_images(predictor, sample_images[:5], batch_size=16)
    for a, b in zip(one, many, strict=True):
        assert a["image"] == b["image"]
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-6)


def test_positive_follows_thresholds(predictor, sample_images):
    for record in predict_images(predictor, sample_images[:3]):
        expected = {f for f, p in record["probabilities"].items() if p >= record["thresholds"][f]}
        assert set(record["positive"]) == expected
        probabilities = [record["probabilities"][f] for f in record["positive"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert set(record["probabilities"]) == set(FINDINGS)


def test_folders_are_searched_and_bad_files_skipped(predictor, sample_images, tmp_path):
    from PIL import Image

    nested = tmp_path / "study" / "series"
    nested.mkdir(parents=True)
    shutil.copy(sample_images[0], tmp_path / "study" / "a.PNG")
    Image.open(sample_images[1]).convert("L").save(nested / "b.jpg", quality=95)
    (nested / "notes.txt").write_text("not an image")
    (nested / "broken.png").write_bytes(sample_images[2].read_bytes()[:2000])  # truncated
    (nested / "empty.dcm").write_bytes(b"")
    errors = []
    paths = [tmp_path / "study", tmp_path / "missing.png"]
    records = predict_images(predictor, paths, on_error=lambda *error: errors.append(error))
    assert sorted(Path(r["image"]).name for r in records) == ["a.PNG", "b.jpg"]
    assert sorted(Path(image).name for image, _ in errors) == ["broken.png", "empty.dcm", "missing.png"]
    assert all(message for _, message in errors)


def test_found_images_are_sorted_and_filtered(tmp_path):
    for name in ("b.png", "a.dcm", "c.jpeg", "d.txt", "sub/e.DICOM"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    images, errors = find_images([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in images] == ["a.dcm", "b.png", "c.jpeg", "sub/e.DICOM"]
    assert errors == []
    assert find_images([tmp_path / "sub" / "nothing"])[1][0]["error"] == "no such file or directory"


def test_model_path_errors(tmp_path, checkpoint):
    with pytest.raises(CxrError, match="model not found"):
        load_predictor(tmp_path / "nope.ckpt")
    with pytest.raises(CxrError, match="best.ckpt"):
        load_predictor(tmp_path)
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CxrError, match="not a cxr model"):
        load_predictor(tmp_path / "junk.ckpt")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "best.ckpt")
    assert load_predictor(run).labels == list(FINDINGS)  # a run directory means its best checkpoint
    with pytest.raises(CxrError, match="batch size"):
        predict_images(tmp_path / "junk.ckpt", [], batch_size=0)


def test_model_card_reads_the_runs_test_metrics(tmp_path, checkpoint):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(checkpoint, run / "checkpoints" / "best.ckpt")
    card = load_predictor(run).card
    assert card.test_auroc is None and card.experiment == "tiny" and card.architecture == "resnet18"
    assert "not a medical device" in card.disclaimer
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "metrics.json").write_text(json.dumps({"macro_auroc": 0.8123}))
    assert load_predictor(run).card.test_auroc == pytest.approx(0.8123)
    # A config that names its store by path (as every run's does): the card shows the folder's name, not its path.
    config = {"experiment": "x", "store": str(tmp_path / "St-Elsewhere-cohort" / "store-300")}
    recorded = write_tiny_checkpoint(tmp_path / "recorded.ckpt", config=config)
    assert load_predictor(recorded).card.trained_on == "store-300"


# --- the CLI -------------------------------------------------------------------------------------------------------


def invoke(*args: str):
    from cxr.cli import app

    # A wide terminal, so rich's tables keep each path on one line whatever the path of the checkout.
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})


def test_cli_json_is_one_object_for_one_image_and_a_list_for_several(checkpoint, predictor, sample_images):
    one = invoke("predict", checkpoint, sample_images[0], "--json")
    assert one.exit_code == 0, one.output
    record = json.loads(one.stdout)
    assert record["image"] == str(sample_images[0]) and set(record) == {
        "image",
        "probabilities",
        "positive",
        "thresholds",
    }
    expected = predict_images(checkpoint, [sample_images[0]])[0]
    np.testing.assert_allclose(
        list(record["probabilities"].values()), list(expected["probabilities"].values()), atol=1e-6
    )
    several = invoke("predict", checkpoint, *sample_images[:3], "--json")
    assert several.exit_code == 0
    assert [r["image"] for r in json.loads(several.stdout)] == [str(p) for p in sample_images[:3]]


def test_cli_table_csv_and_exit_code(checkpoint, sample_images, tmp_path):
    from cxr.evaluation.predictions import read_predictions

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    csv = tmp_path / "out" / "predictions.csv"
    result = invoke("predict", checkpoint, sample_images[0], sample_images[1], broken, "--csv", csv)
    assert result.exit_code == 1  # something was skipped
    assert "broken.png" in result.stderr
    assert sample_images[0].name in result.stdout  # the table still lists what could be predicted
    images, labels, probabilities = read_predictions(csv)  # the format `cxr evaluate --predictions` scores
    assert list(images) == [sample_images[0].name, sample_images[1].name] and labels == list(FINDINGS)
    assert ((probabilities > 0) & (probabilities < 1)).all()


def test_cli_nothing_predictable_is_a_user_error(checkpoint, tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    result = invoke("predict", checkpoint, tmp_path / "x.png")
    assert result.exit_code != 0
    assert isinstance(result.exception, CxrError) and "no image could be predicted" in str(result.exception)


def test_csv_keeps_paths_when_two_files_share_a_name(checkpoint, sample_images, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(sample_images[0], tmp_path / folder / "IM0001.png")
    csv = tmp_path / "predictions.csv"
    result = invoke("predict", checkpoint, tmp_path / "a", tmp_path / "b", "--csv", csv)
    assert result.exit_code == 0, result.output
    ids = pd.read_csv(csv)["Image Index"].tolist()
    assert sorted(ids) == sorted([str(tmp_path / "a" / "IM0001.png"), str(tmp_path / "b" / "IM0001.png")])


def test_bf16_precision_runs_the_model_in_bf16_channels_last_close_to_fp32(tmp_path, monkeypatch):
    """``precision="bf16"``: autocast and NHWC weights (the CPU path that pays where bf16 is native), probabilities
    within bf16's rounding of fp32's; ``auto`` follows the CPU's flags; an ONNX file refuses bf16 with its name."""
    import torch

    from conftest import tiny_checkpoint
    from cxr.inference import eager

    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    batch = np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32)
    fp32, bf16 = load_predictor(checkpoint), load_predictor(checkpoint, precision="bf16")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    conv = bf16.model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32
    calls = []
    bf16.model.register_forward_hook(lambda module, args, output: calls.append(output.dtype))
    expected, got = fp32.probabilities(batch), bf16.probabilities(batch)
    assert calls == [torch.bfloat16] and got.dtype == np.float64
    assert np.abs(got - expected).max() < 0.02 and not np.array_equal(got, expected)
    monkeypatch.setattr(eager, "native_bf16", lambda: True)
    assert eager.resolve_precision("auto") == "bf16" and eager.resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(eager, "native_bf16", lambda: False)
    assert eager.resolve_precision("auto") == "fp32" and eager.resolve_precision("bf16") == "bf16"
    with pytest.raises(CxrError, match="precision must be one of"):
        eager.resolve_precision("fp16")
    onnx = tmp_path / "tiny.onnx"
    onnx.write_bytes(b"not read")
    with pytest.raises(CxrError, match="tiny.onnx: --precision bf16 applies to a checkpoint"):
        load_predictor(onnx, precision="bf16")


def test_cli_precision_reaches_the_model(checkpoint, sample_images):
    """``cxr predict --precision bf16`` answers within bf16's rounding of the fp32 run, not equal to it; a value
    outside fp32/bf16/auto is refused with the choices."""
    fp32 = json.loads(invoke("predict", checkpoint, *sample_images[:2], "--json", "--workers", "1").stdout)
    result = invoke("predict", checkpoint, *sample_images[:2], "--json", "--workers", "1", "--precision", "bf16")
    assert result.exit_code == 0, result.output
    bf16 = json.loads(result.stdout)
    for a, b in zip(fp32, bf16, strict=True):
        assert a["image"] == b["image"]
        differences = [abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"]]
        assert max(differences) < 0.02 and max(differences) > 0
    refused = invoke("predict", checkpoint, sample_images[0], "--precision", "fp16")
    assert refused.exit_code != 0 and "precision must be one of fp32, bf16, auto" in str(refused.exception)
