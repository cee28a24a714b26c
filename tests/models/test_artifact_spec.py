"""The typed artifact description (:mod:`cxr.models.spec`): one validation on write and on read for checkpoints and
ONNX files, old files read identically, and no path of the machine that made a model in what leaves the run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing
from cxr.inference.onnx import OnnxPredictor, parity_inputs
from cxr.inference.predict import load_predictor
from cxr.models.artifact import load_artifact, make_preprocessing, read_checkpoint, write_artifact
from cxr.models.factory import create_model
from cxr.models.spec import ArchitectureSpec, ModelSpec, TrainingData, without_path

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "artifacts"
LEGACY_LABELS = ("Cardiomegaly", "Effusion", "Pleural_Thickening")
LEGACY_THRESHOLDS = {"Cardiomegaly": 0.31, "Effusion": 0.5, "Pleural_Thickening": 0.07}


# --- files written before the description was typed (schema 1) ------------------------------------------------------


@pytest.mark.parametrize("name", ["legacy.ckpt", "legacy.onnx"])
def test_old_artifacts_predict_the_probabilities_they_were_written_with(name):
    """tests/fixtures/artifacts/make_fixtures.py wrote these with cxr at 5ef3c69, and the probabilities beside them."""
    predictor = load_predictor(LEGACY / name)
    expected = np.load(LEGACY / "legacy_probabilities.npy")
    np.testing.assert_allclose(predictor.probabilities(parity_inputs(64)), expected, rtol=0, atol=1e-6)
    assert predictor.spec.schema_version == 1 and predictor.labels == list(LEGACY_LABELS)
    assert predictor.thresholds == LEGACY_THRESHOLDS
    assert predictor.architecture.name == "test_resnet" and predictor.architecture.source == "timm"
    # Its card gave the training store's absolute path; only the last component is shown now.
    assert predictor.card.trained_on == "store-64" and predictor.card.experiment == "legacy-fixture"


def test_the_old_onnx_file_carries_paths_that_the_server_does_not_show():
    assert b"StMungos-cohort" in (LEGACY / "legacy.onnx").read_bytes()  # the leak this schema fixes
    from cxr.inference.serve import create_app

    client = TestClient(create_app(LEGACY / "legacy.onnx"))
    described = client.get("/api/model").text
    assert "StMungos" not in described and "store-64" in described


# --- one validation, on write and on read ---------------------------------------------------------------------------


def _spec(**changes) -> ModelSpec:
    fields = {
        "labels": ("Effusion", "Mass"),
        "thresholds": {"Effusion": 0.2, "Mass": 0.6},
        "architecture": ArchitectureSpec("resnet18", 2, mean=(0.5,) * 3, std=(0.25,) * 3, cam_layer="layer4"),
        "preprocessing": Preprocessing(64, 1.0, 64),
        "training_data": (TrainingData("chexpert", 1200, "ab" * 32),),
    }
    return ModelSpec(**(fields | changes))


def test_a_spec_survives_its_round_trip_through_plain_types():
    spec = _spec(config={"experiment": "x", "optim": {"lr": 1e-3}})
    block = json.loads(json.dumps(spec.to_dict()))  # JSON: what the ONNX metadata holds
    assert ModelSpec.from_dict(block, "test") == spec
    assert spec.card().trained_on == "chexpert (1,200 images, store abababababab)"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"thresholds": {"Effusion": 0.2, "Mass": 1.5}}, r"probabilities in \[0, 1\]: Mass"),
        ({"thresholds": {"Effusion": 0.2, "Mass": float("nan")}}, r"probabilities in \[0, 1\]: Mass"),
        ({"thresholds": {"Effusion": 0.2}}, r"missing \['Mass'\]"),
        ({"labels": ("Effusion", "Effusion")}, "Effusion"),
        (
            {"preprocessing": Preprocessing(64, 1.0, 96), "architecture": ArchitectureSpec("vit", 2, img_size=64)},
            "built for 64 px",
        ),
        ({"architecture": ArchitectureSpec("resnet18", 3)}, "2 labels for a model with 3 outputs"),
    ],
)
def test_an_invalid_description_is_refused(changes, message):
    with pytest.raises(CxrError, match=message):
        _spec(**changes)


@pytest.mark.parametrize("field", ["labels", "thresholds", "architecture", "preprocessing", "package_version"])
def test_reading_names_the_missing_field(field):
    block = _spec().to_dict()
    del block[field]
    with pytest.raises(CxrError, match=f"model.onnx: missing field '{field}'"):
        ModelSpec.from_dict(block, "model.onnx")


def test_checkpoint_and_onnx_readers_share_the_validation(tmp_path):
    """The ONNX reader once skipped the thresholds and the checkpoint reader the required fields: both go through
    ModelSpec.from_dict now."""
    import onnx

    from cxr.inference.onnx import METADATA_KEY

    checkpoint = torch.load(LEGACY / "legacy.ckpt", weights_only=True)
    checkpoint["cxr"]["thresholds"]["Effusion"] = 7.0
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(CxrError, match=r"bad.ckpt.*\[0, 1\]: Effusion"):
        read_checkpoint(tmp_path / "bad.ckpt")
    del checkpoint["cxr"]["labels"]
    torch.save(checkpoint, tmp_path / "nolabels.ckpt")
    with pytest.raises(CxrError, match="nolabels.ckpt: missing field 'labels'"):
        load_artifact(tmp_path / "nolabels.ckpt")

    model = onnx.load(str(LEGACY / "legacy.onnx"))
    metadata = json.loads(model.metadata_props[0].value)
    metadata["thresholds"]["Effusion"] = -1
    model.metadata_props[0].key, model.metadata_props[0].value = METADATA_KEY, json.dumps(metadata)
    onnx.save(model, str(tmp_path / "bad.onnx"))
    with pytest.raises(CxrError, match=r"bad.onnx: cxr metadata.*\[0, 1\]: Effusion"):
        OnnxPredictor(tmp_path / "bad.onnx")


def test_writing_validates_before_anything_is_written(tmp_path):
    model = create_model("test_resnet", 2, input_size=32)
    with pytest.raises(CxrError, match=r"\[0, 1\]"):
        write_artifact(tmp_path / "m.ckpt", model, ["Effusion", "Mass"], make_preprocessing(model, 32, 1.0),
                       thresholds={"Effusion": 0.5, "Mass": 2.0})  # fmt: skip
    with pytest.raises(CxrError, match="2 outputs"):
        write_artifact(tmp_path / "m.ckpt", model, ["Effusion"], make_preprocessing(model, 32, 1.0))
    assert not list(tmp_path.iterdir())


def test_the_recorded_training_stores_one_several_or_none():
    """What ``cxr evaluate RUN --store`` compares a store with: ``data.stores`` of a multi-store run, else ``store``."""
    assert _spec(config={"store": "/runs/nih-store", "data": {"stores": []}}).stores == ["/runs/nih-store"]
    several = {"store": "", "data": {"stores": ["/s/nih", "/s/chexpert"]}}
    assert _spec(config=several).stores == ["/s/nih", "/s/chexpert"]
    assert _spec(config={"experiment": "keras original 300Crop169Adam.hdf5"}).stores == []  # an imported model


def test_without_path_keeps_the_last_component_only():
    assert without_path("/home/alice/NIH cohort/store (2,400 images)") == "store (2,400 images)"
    assert without_path("C:\\Users\\bob\\cxr\\store-300") == "store-300"
    assert without_path("nih (112,120 images)") == "nih (112,120 images)"


# --- issue 26: nothing that leaves the run names the machine's folders -------------------------------------------


@pytest.mark.slow
def test_exports_and_server_answers_carry_no_paths(trained_run, synth_store, tmp_path):
    """A run trained from a store (the session's synthetic one): its ONNX export's bytes and GET /api/model for both
    backends name neither the store's folders nor cxr's own source files (the exporter's stack traces)."""
    import cxr
    from cxr.inference.export import export_onnx
    from cxr.inference.serve import create_app

    run = Path(shutil.copytree(trained_run, tmp_path / "run"))
    onnx_path = export_onnx(run / "checkpoints" / "best.ckpt", tmp_path / "model.onnx")["path"]
    data = Path(onnx_path).read_bytes()
    store = Path(synth_store).resolve()
    forbidden = [str(store), str(store.parent), str(Path(cxr.__file__).resolve().parent), "/tmp/", "site-packages"]
    assert [text for text in forbidden if text.encode() in data] == []
    card = OnnxPredictor(onnx_path).card
    assert card.trained_on.startswith("nih (") and "images, store " in card.trained_on
    for model in (run, onnx_path):
        described = TestClient(create_app(model)).get("/api/model").text
        assert [text for text in forbidden if text in described] == [], model
        assert json.loads(described)["card"]["trained_on"] == card.trained_on
