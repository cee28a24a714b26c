"""Scoring NIH predictions against Google's expert labels: the combination rules, the images both files cover,
"not available" for Fracture, sklearn agreement on the real file (from the torchxrayvision wheel), chance level for
random predictions, and the CLI on the excerpt in tests/fixtures."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxr.cli import app
from cxr.errors import CxrError
from cxr.evaluation.evaluate import evaluate_predictions
from cxr.evaluation.expert import RULES, expert_probabilities
from cxr.labels import FINDINGS

REPO = Path(__file__).resolve().parents[2]
EXCERPT = REPO / "tests" / "fixtures" / "google2019" / "google2019_nih-chest-xray-labels.csv"
SCORED = ("Pneumothorax", "Nodule or mass", "Airspace opacity")


def _wheel() -> Path | None:
    wheels = sorted((REPO / ".venv" / "wheels").glob("torchxrayvision-*.whl"))
    return wheels[-1] if wheels else None


def expert_file(tmp_path: Path) -> Path:
    path = tmp_path / "google2019_nih-chest-xray-labels.csv.gz"
    with zipfile.ZipFile(_wheel()) as wheel:
        path.write_bytes(wheel.read("torchxrayvision/data/google2019_nih-chest-xray-labels.csv.gz"))
    return path


def predictions_from(expert: pd.DataFrame, rng: np.random.Generator, signal: float) -> pd.DataFrame:
    """NIH-style predictions: each expert label's signal put in ONE of the outputs its rule combines (the others
    low noise), so a wrong rule (e.g. the mean, or a different output) loses the signal."""
    n = len(expert)
    table = pd.DataFrame({name: rng.uniform(0.0, 0.3, n) for name in FINDINGS})
    for label, output in (("Pneumothorax", "Pneumothorax"), ("Nodule or mass", "Mass"),
                          ("Airspace opacity", "Infiltration")):  # fmt: skip
        truth = (expert[label] == "YES").to_numpy(float)
        table[output] = 1 / (1 + np.exp(-(signal * (2 * truth - 1) + rng.normal(0, 1.5, n))))
    table.insert(0, "Image Index", expert["Image Index"].to_numpy())
    return table


def test_rules_take_the_maximum_and_need_every_output():
    labels = ["Consolidation", "Infiltration", "Mass", "Nodule", "Pneumonia", "Pneumothorax"]
    p = np.array([[0.1, 0.7, 0.2, 0.4, 0.3, 0.9], [0.6, 0.1, 0.8, 0.05, 0.2, 0.0]])
    scored, derived, missing = expert_probabilities(labels, p)
    assert scored == ["Pneumothorax", "Nodule or mass", "Airspace opacity"]
    np.testing.assert_array_equal(derived, [[0.9, 0.4, 0.7], [0.0, 0.8, 0.6]])
    assert set(missing) == {"Fracture"} and "Fracture" in missing["Fracture"]
    _, _, missing = expert_probabilities(["Pneumothorax", "Nodule"], p[:, :2])
    assert "Mass" in missing["Nodule or mass"] and "Pneumonia" in missing["Airspace opacity"]
    with pytest.raises(CxrError, match="none of the outputs"):
        expert_probabilities(["Cardiomegaly"], p[:, :1])
    assert RULES["Airspace opacity"] == ("Consolidation", "Pneumonia", "Infiltration")


@pytest.mark.skipif(_wheel() is None, reason="torchxrayvision wheel not downloaded (make venv puts it in .venv/wheels)")
def test_real_expert_labels_noisy_and_random_predictions(tmp_path):
    labels_path = expert_file(tmp_path)
    expert = pd.read_csv(labels_path)
    rng = np.random.default_rng(0)
    table = predictions_from(expert, rng, signal=2.5)
    extra = table.iloc[:40].copy()
    extra["Image Index"] = [f"9999{k:04d}_000.png" for k in range(40)]  # NIH images the experts did not read
    covered = table.iloc[100:]  # and 100 expert images without a prediction
    pd.concat([covered, extra]).to_csv(tmp_path / "noisy.csv", index=False)
    metrics, folder = evaluate_predictions(tmp_path / "noisy.csv", labels_path, n_resamples=200)
    kept = expert.iloc[100:]
    assert metrics.n_images == len(kept) == len(expert) - 100
    assert metrics.n_patients == kept["Patient ID"].nunique()
    assert metrics.labels == list(SCORED) and metrics.label_set == "google2019"
    assert list(metrics.not_available) == ["Fracture"]
    for label in SCORED:
        outputs = list(RULES[label])
        expected = roc_auc_score(kept[label] == "YES", covered[outputs].max(axis=1))
        entry = metrics.findings[label]
        assert entry.auroc == pytest.approx(expected, abs=1e-12)
        assert entry.auroc > 0.85
        assert entry.auroc_ci[0] < entry.auroc < entry.auroc_ci[1]
        assert entry.n_pos == int((kept[label] == "YES").sum())
    assert json.loads((folder / "metrics.json").read_text())["n_images"] == len(kept)
    assert "not available" in (folder / "report.md").read_text()

    random = predictions_from(expert, rng, signal=0.0)
    random.to_csv(tmp_path / "random.csv", index=False)
    chance, _ = evaluate_predictions(tmp_path / "random.csv", labels_path, n_resamples=200)
    assert chance.n_images == len(expert) == 4_376
    for label in SCORED:
        assert abs(chance.findings[label].auroc - 0.5) < 0.1, label


def test_cli_on_the_excerpt(tmp_path):
    expert = pd.read_csv(EXCERPT)
    predictions_from(expert, np.random.default_rng(1), signal=3.0).to_csv(tmp_path / "p.csv", index=False)
    images = tmp_path / "list.txt"
    images.write_text("\n".join(expert["Image Index"].iloc[:20]) + "\n")
    result = CliRunner().invoke(app, ["evaluate", "--predictions", str(tmp_path / "p.csv"), "--labels", str(EXCERPT),
                                      "--images", str(images), "--json", "-", "--resamples", "50"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Fracture: not available" in result.output
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    assert metrics["n_images"] == 20 and "Fracture" not in metrics["findings"]
    elsewhere = pd.DataFrame({"Image Index": ["00099999_000.png"], "Pneumothorax": [0.5]})
    elsewhere.to_csv(tmp_path / "elsewhere.csv", index=False)
    with pytest.raises(CxrError, match="share no image"):
        evaluate_predictions(tmp_path / "elsewhere.csv", EXCERPT, n_resamples=10)


def test_a_run_scored_against_expert_labels(trained_run_copy, tmp_path):
    """``cxr evaluate RUN --labels google…csv``: the run's test predictions scored on an expert file written for its
    test images from the store's labels, so each expert label's AUROC is known from the same arrays."""
    import yaml

    run = trained_run_copy
    parts = pd.read_parquet(run / "split.parquet")
    store = yaml.safe_load((run / "config.yaml").read_text())["store"]
    index = pd.read_parquet(Path(store) / "index.parquet").set_index("image")
    test = index.loc[parts.loc[parts["part"] == "test", "image"]]
    yes = lambda *names: np.where(test[list(names)].max(axis=1) == 1, "YES", "NO")  # noqa: E731
    expert = pd.DataFrame({
        "Image Index": test.index, "Patient ID": test["patient_id"], "View Position": test["view"],
        "Fracture": "NO", "Pneumothorax": yes("Pneumothorax"), "Nodule or mass": yes("Nodule", "Mass"),
        "Airspace opacity": yes("Consolidation", "Pneumonia", "Infiltration"), "Set Id": "test",
    })  # fmt: skip
    labels_path = tmp_path / "google2019_nih-chest-xray-labels.csv"
    expert.to_csv(labels_path, index=False)
    result = CliRunner().invoke(app, ["evaluate", str(run), "--labels", str(labels_path), "--resamples", "50",
                                      "--json", str(tmp_path / "expert.json")])  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "expert.json").read_text())
    assert metrics["label_set"] == "google2019" and metrics["n_images"] == len(test)
    assert (run / "eval" / "test-google2019" / "report.md").is_file()
    predictions = pd.read_csv(run / "eval" / "test" / "predictions.csv").set_index("Image Index").loc[test.index]
    for label, outputs in RULES.items():
        if label == "Fracture":
            assert label in metrics["not_available"]
            continue
        expected = roc_auc_score(expert[label] == "YES", predictions[[f"prob_{o}" for o in outputs]].max(axis=1))
        assert metrics["findings"][label]["auroc"] == pytest.approx(expected, abs=1e-12)
    own = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["findings"]["Pneumothorax"]["auroc"] == own["findings"]["Pneumothorax"]["auroc"]
    refused = CliRunner().invoke(app, ["evaluate", str(run), "--labels", str(store)])
    assert isinstance(refused.exception, CxrError) and "expert labels file" in str(refused.exception)
