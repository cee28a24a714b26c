"""Typed evaluation results: ``metrics.json`` keeps the layout the code before the types wrote, and reads back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxr.evaluation.evaluate import evaluate_predictions
from cxr.evaluation.results import EvaluationResult, LabelResult
from cxr.files import plain

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "evaluation"
LEGACY = FIXTURES / "metrics-e96e145.json"
"""Written by ``cxr evaluate --predictions`` at commit e96e145 (nested dicts, before the types) from
``predictions.csv`` against the NIH sample, 40 resamples, seed 3 (tests/fixtures/evaluation/README.md)."""


def key_paths(document, prefix: str = "") -> set[str]:
    """Every key path of a JSON document (``findings.Effusion.thresholds.youden.tp``...)."""
    if isinstance(document, dict):
        return {p for key, value in document.items() for p in {f"{prefix}{key}"} | key_paths(value, f"{prefix}{key}.")}
    return set()


def test_metrics_json_layout_and_values_are_unchanged(tmp_path, sample_dir):
    legacy = json.loads(LEGACY.read_text())
    result, folder = evaluate_predictions(FIXTURES / "predictions.csv", sample_dir / "Data_Entry_2017.csv",
                                          out=tmp_path / "eval", n_resamples=40, seed=3)  # fmt: skip
    written = json.loads((folder / "metrics.json").read_text())
    assert key_paths(written) == key_paths(legacy)
    assert list(written) == list(legacy) and list(written["findings"]["Effusion"]) == list(
        legacy["findings"]["Effusion"]
    )
    source = legacy.pop("source"), written.pop("source")
    assert written == legacy  # the same numbers, to the last digit
    assert source[1]["predictions"] == str(FIXTURES / "predictions.csv")


def test_a_result_reads_back_what_it_wrote():
    legacy = json.loads(LEGACY.read_text())
    result = EvaluationResult.from_dict(legacy)
    assert isinstance(result.findings["Effusion"], LabelResult)
    assert (
        result.findings["Effusion"].thresholds["youden"].tp
        == legacy["findings"]["Effusion"]["thresholds"]["youden"]["tp"]
    )
    assert result.bootstrap.unit == "patient" and result.calibration.bins == legacy["calibration"]["bins"]
    assert plain(result.to_dict()) == legacy
    with pytest.raises(ValueError, match="not a cxr metrics document"):
        EvaluationResult.from_dict(legacy | {"findings": {"Effusion": {"auroc": 0.5}}})
