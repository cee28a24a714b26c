"""``cxr export --quantize int8 --calibrate STORE``: a trained model keeps its AUROC in int8, the metadata says so,
and a quantization that costs AUROC is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import cli
from cxr.errors import CxrError


@pytest.mark.slow
def test_int8_export_of_a_trained_model_keeps_its_auroc_and_records_it(trained_run, synth_store, tmp_path):
    from cxr.data.store import Store
    from cxr.evaluation.metrics import auroc, macro_average
    from cxr.inference.onnx import OnnxPredictor, read_metadata
    from cxr.inference.quantize import model_inputs, quantize_checked

    fp32_path, int8_path = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    cli("export", str(trained_run), "--out", str(fp32_path))
    output = cli("export", str(trained_run), "--out", str(int8_path), "--quantize", "int8", "--calibrate",
                 str(synth_store))  # fmt: skip
    assert "int8: macro AUROC" in output
    record = read_metadata(int8_path)[0]["quantization"]
    scores = record["macro_auroc"]
    assert scores["fp32"] > 0.7  # the model learned the synthetic findings: its AUROC means something
    assert record["auroc_drop"] == pytest.approx(scores["fp32"] - scores["int8"]) and record["auroc_drop"] <= 0.005
    assert record["calibration"]["images"] > 0 and record["validation"]["images"] > 0 and not record["forced"]
    assert "QDQ" in record["scheme"] and record["calibration"]["store"] == synth_store.name

    fp32, int8 = OnnxPredictor(fp32_path), OnnxPredictor(int8_path)
    assert int8.labels == fp32.labels and int8.thresholds == fp32.thresholds
    store = Store(synth_store)
    inputs = model_inputs(store, store.index["row"].to_numpy()[:16], fp32.preprocessing.view)  # radiographs
    difference = np.abs(int8.probabilities(inputs) - fp32.probabilities(inputs))
    assert 0 < difference.max() < 0.1  # really quantized, and still the same model on the images it is made for
    assert int8_path.stat().st_size < fp32_path.stat().st_size / 2  # int8 weights

    refused = tmp_path / "refused.onnx"
    score = lambda targets, probs: macro_average(auroc(targets, probs))  # noqa: E731
    with pytest.raises(CxrError, match="more than -1"):
        quantize_checked(fp32_path, refused, synth_store, score, max_drop=-1.0)  # any result is "too much" here
    assert not refused.exists()
    forced = quantize_checked(fp32_path, refused, synth_store, score, max_drop=-1.0, force=True)
    assert forced.forced and read_metadata(refused)[0]["quantization"] == json.loads(json.dumps(forced.to_dict()))


def test_quantize_flags_go_together(tmp_path):
    with pytest.raises(CxrError, match="go together"):
        cli("export", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "x.onnx"), "--quantize", "int8")
    with pytest.raises(CxrError, match="only int8"):
        cli("export", str(tmp_path / "x.ckpt"), "--out", str(tmp_path / "x.onnx"), "--quantize", "int4")


def test_calibration_and_validation_patients_differ(synth_store):
    from cxr.data.store import Store
    from cxr.inference.quantize import store_parts
    from cxr.labels import FINDINGS

    store = Store(synth_store)
    parts = store_parts(store, list(FINDINGS), calibration=10_000, validation=10_000)
    patients = store.index.set_index("row")["patient_id"]
    assert set(patients[parts.calibration]).isdisjoint(patients[parts.validation])
    assert len(parts.validation) == len(parts.targets) and parts.labels == list(FINDINGS)
    assert set(store.index["split"][store.index["row"].isin(parts.validation)]) == {"train_val"}
