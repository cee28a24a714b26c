"""The stages chained on one real trained run: train → evaluate (store found from the run) → compare."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml

from conftest import cli
from cxr.labels import FINDINGS
from cxr.models.artifact import load_artifact

pytestmark = pytest.mark.slow  # whole pipelines: every test here trains or runs one


def test_the_run_records_its_store(trained_run, synth_store):
    config = yaml.safe_load((trained_run / "config.yaml").read_text())
    assert config["store"] == str(synth_store.resolve())


def test_evaluate_a_trained_run_on_its_test_split(trained_run_copy):
    run = trained_run_copy
    cli("evaluate", str(run), "--split", "test")
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    split = pd.read_parquet(run / "split.parquet")
    test_images = set(split.loc[split["part"] == "test", "image"])
    predictions = pd.read_csv(run / "eval" / "test" / "predictions.csv")
    assert set(predictions["Image Index"]) == test_images
    assert metrics["n_images"] == len(test_images)
    assert set(metrics["findings"]) == set(FINDINGS)
    # Held-out synthetic test patients: the tiny 64 px model must be far above chance, and CIs must bracket it.
    assert metrics["macro_auroc"] >= 0.75
    for finding, values in metrics["findings"].items():
        low, high = values["auroc_ci"]
        assert low <= values["auroc"] <= high, finding
    # Thresholds were chosen on validation and now travel inside the model artifact.
    thresholds = json.loads((run / "thresholds.json").read_text())
    artifact = load_artifact(run / "checkpoints" / "best.ckpt")
    assert artifact.thresholds != {label: 0.5 for label in artifact.labels}
    assert thresholds["chosen_on"] == "validation"
    assert artifact.thresholds == pytest.approx(thresholds["operating"])
    assert (run / "eval" / "test" / "report.html").stat().st_size > 10_000


def test_compare_a_run_with_itself_finds_no_difference(trained_run_copy, tmp_path):
    run = trained_run_copy
    cli("evaluate", str(run), "--split", "test")
    twin = shutil.copytree(run, tmp_path / "twin")  # a second run with the very same predictions
    out = tmp_path / "comparison"
    cli("compare", str(run), str(twin), "--out", str(out))
    comparison = json.loads((out / "comparison.json").read_text())
    assert comparison["bootstrap"]["unit"] == "patient" and comparison["bootstrap"]["paired"]
    (other,) = comparison["differences"].values()
    for key, difference in other.items():  # paired on the same resampled patients: exactly no difference
        assert difference["difference"] == 0.0, key
        assert difference["ci"] == [0.0, 0.0], key
    assert (out / "comparison.md").is_file() and (out / "forest.png").is_file()
