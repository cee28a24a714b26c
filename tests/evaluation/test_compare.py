"""``cxr compare``: paired patient-level bootstrap differences, alignment by image and label, outputs and CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr.cli import app
from cxr.errors import CxrError
from cxr.evaluation.bootstrap import bootstrap_auroc, percentile_interval
from cxr.evaluation.compare import align, compare_sets, write_comparison
from cxr.evaluation.comparison import PairedDifference
from cxr.evaluation.predictions import ScoredSet, write_scored_set
from cxr.files import to_json

runner = CliRunner()


def two_runs(seed: int = 0, patients: int = 150, labels: tuple[str, ...] = ("Mass", "Nodule", "Effusion")):
    """Run ``b`` = run ``a`` plus a stronger signal on Mass only; identical on the other labels."""
    rng = np.random.default_rng(seed)
    patient_ids = np.repeat(np.arange(patients) + 1000, rng.integers(1, 6, patients))
    n = patient_ids.size
    targets = (rng.random((n, len(labels))) < 0.3).astype(np.uint8)
    shared = rng.normal(size=(n, len(labels)))
    a = 1 / (1 + np.exp(-(shared + 0.6 * targets)))
    b = a.copy()
    b[:, 0] = 1 / (1 + np.exp(-(shared[:, 0] + 1.6 * targets[:, 0])))
    images = np.array([f"{i:08d}_000.png" for i in range(n)])
    make = lambda p: ScoredSet(list(labels), images, patient_ids, targets, p)  # noqa: E731
    return make(a), make(b)


def test_paired_differences_and_p_values():
    a, b = two_runs()
    result = compare_sets({"adam": a, "sgd": b}, n_resamples=400, seed=0)
    diffs = result.differences["sgd"]
    assert diffs["Mass"].difference > 0.05 and diffs["Mass"].ci[0] > 0 and diffs["Mass"].p_value < 0.01
    assert diffs["Nodule"] == PairedDifference(0.0, [0.0, 0.0], 1.0)  # the same scores
    assert diffs["macro"].difference == pytest.approx(diffs["Mass"].difference / 3)
    boot = bootstrap_auroc(a.targets, a.probabilities, a.patient_ids, 400, seed=0, micro=False)
    assert result.auroc["adam"]["Mass"].auroc_ci == pytest.approx(boot.interval()[0].tolist())
    assert result.n_patients == 150 and result.runs == ["adam", "sgd"]


def test_pairing_narrows_the_interval_of_a_difference():
    """Same resampled patients for both runs: the shared variation cancels. Independent resamples keep it."""
    a, b = two_runs(seed=1)
    paired = compare_sets({"a": a, "b": b}, n_resamples=400, seed=0).differences["b"]["Mass"].ci
    boot_a = bootstrap_auroc(a.targets, a.probabilities, a.patient_ids, 400, seed=1, micro=False)
    boot_b = bootstrap_auroc(b.targets, b.probabilities, b.patient_ids, 400, seed=2, micro=False)
    unpaired = percentile_interval(boot_b.samples[:, 0] - boot_a.samples[:, 0])
    assert paired[1] - paired[0] < 0.6 * (unpaired[1] - unpaired[0])


def test_align_orders_by_image_and_keeps_shared_labels():
    a, b = two_runs(seed=2)
    order = np.random.default_rng(0).permutation(len(b.images))
    shuffled = ScoredSet(["Effusion", "Mass"], b.images[order], b.patient_ids[order], b.targets[order][:, [2, 0]],
                         b.probabilities[order][:, [2, 0]])  # fmt: skip
    labels, aligned = align({"a": a, "b": shuffled})
    assert labels == ["Mass", "Effusion"]
    np.testing.assert_array_equal(aligned["b"].probabilities, b.probabilities[:, [0, 2]])
    np.testing.assert_array_equal(aligned["b"].images, a.images)

    fewer = ScoredSet(a.labels, a.images[1:], a.patient_ids[1:], a.targets[1:], a.probabilities[1:])
    with pytest.raises(CxrError, match="different images.*00000000_000.png"):
        align({"a": a, "b": fewer})
    other = ScoredSet(["Hernia"], a.images, a.patient_ids, a.targets[:, :1], a.probabilities[:, :1])
    with pytest.raises(CxrError, match="share no output label"):
        align({"a": a, "b": other})
    relabelled = ScoredSet(a.labels, a.images, a.patient_ids, 1 - a.targets, a.probabilities)
    with pytest.raises(CxrError, match="disagree on the labels"):
        align({"a": a, "b": relabelled})


def test_write_comparison_outputs(tmp_path):
    a, b = two_runs(seed=3)
    result = compare_sets({"adam": a, "sgd": b, "balanced": a}, n_resamples=100)
    paths = write_comparison(result, tmp_path)
    assert set(paths) == {"json", "forest", "markdown", "html"}
    saved = json.loads(paths["json"].read_text())
    assert set(saved["differences"]) == {"sgd", "balanced"}
    # comparison.json's layout, key for key and in order, as it was before the result was typed
    assert list(saved) == ["runs", "labels", "n_images", "n_patients", "bootstrap", "auroc", "differences"]
    assert saved["bootstrap"] == {"unit": "patient", "resamples": 100, "seed": 0, "level": 0.95, "paired": True}
    assert list(saved["auroc"]["adam"]) == [*a.labels, "macro"]
    assert list(saved["auroc"]["adam"]["macro"]) == ["auroc", "auroc_ci"]
    assert list(saved["differences"]["sgd"]["Mass"]) == ["difference", "ci", "p_value"]
    assert saved == json.loads(to_json(result.to_dict()))
    markdown = paths["markdown"].read_text()
    assert "## sgd vs adam (paired)" in markdown and "p (two-sided)" in markdown and "forest.png" in markdown
    assert "data:image/png;base64," in paths["html"].read_text()


def test_cli_compares_run_folders_and_predictions_csvs(tmp_path, sample_dir):
    a, b = two_runs(seed=4)
    for name, data in (("adam", a), ("sgd", b)):
        write_scored_set(data, tmp_path / name / "eval" / "test")
    out = tmp_path / "cmp"
    result = runner.invoke(app, ["compare", str(tmp_path / "adam"), str(tmp_path / "sgd"), "--out", str(out),
                                 "--resamples", "100", "--json", "-"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["differences"]["sgd"]["Mass"]["difference"] > 0
    assert (out / "comparison.html").is_file() and (out / "forest.png").is_file()
    with pytest.raises(CxrError, match="cxr evaluate"):
        runner.invoke(app, ["compare", str(tmp_path / "adam"), str(tmp_path)], catch_exceptions=False)

    labels_csv = sample_dir / "Data_Entry_2017.csv"
    images = pd.read_csv(labels_csv)["Image Index"]
    rng = np.random.default_rng(5)
    for name in ("x", "y"):
        pd.DataFrame({"Image Index": images, "prob_Effusion": rng.random(len(images))}).to_csv(
            tmp_path / f"{name}.csv", index=False
        )
    args = ["compare", str(tmp_path / "x.csv"), str(tmp_path / "y.csv"), "--out", str(out), "--resamples", "50"]
    with pytest.raises(CxrError, match="--labels"):
        runner.invoke(app, args, catch_exceptions=False)
    result = runner.invoke(app, [*args, "--labels", str(labels_csv)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "comparison.json").read_text())["n_images"] == len(images)
