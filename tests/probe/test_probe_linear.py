"""The pieces of a linear probe without a model: the per-label logistic heads, patient-wise fractions, presets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from cxr.errors import CxrError
from cxr.evaluation.metrics import auroc
from cxr.probe.efficiency import FractionResult, auroc_with_ci, fraction_rows, parse_fractions, write_efficiency
from cxr.probe.linear import C_GRID, fit_linear_head
from cxr.probe.presets import (
    EmbedSettings,
    ProbeSettings,
    available_presets,
    embed_settings,
    load_preset,
    probe_settings,
)


def _data(n: int, d: int = 16, labels: int = 2, seed: int = 0):
    """Gaussian features with a different (fixed) mean and scale per feature; label k depends on features 2k, 2k+1."""
    layout, rng = np.random.default_rng(100), np.random.default_rng(seed)
    scale, shift = layout.uniform(0.1, 10, d), layout.uniform(-50, 50, d)
    z = rng.normal(size=(n, d))
    y = np.stack([(z[:, 2 * k] - z[:, 2 * k + 1] + rng.normal(scale=0.7, size=n) > 0) for k in range(labels)], 1)
    return z * scale + shift, y.astype(np.float64)


def test_head_on_raw_features_equals_sklearn_on_standardised_ones():
    x, y = _data(400)
    xv, yv = _data(200, seed=1)
    head = fit_linear_head(x, y, xv, yv, ["Mass", "Nodule"], grid=[0.5])
    z = (x - x.mean(0)) / x.std(0)
    for k in range(2):
        reference = LogisticRegression(C=0.5, max_iter=1000).fit(z, y[:, k])
        expected = reference.predict_proba((xv - x.mean(0)) / x.std(0))[:, 1]
        np.testing.assert_allclose(head.probabilities(xv)[:, k], expected, atol=1e-5)
    assert head.chosen_c == [0.5, 0.5]


def test_heads_learn_and_c_is_the_best_on_validation():
    x, y = _data(500)
    xv, yv = _data(300, seed=1)
    xt, yt = _data(300, seed=2)
    head = fit_linear_head(x, y, xv, yv, ["Mass", "Nodule"])
    assert (auroc(yt, head.probabilities(xt)) > 0.9).all()
    for k, c in enumerate(head.chosen_c):
        scores = head.val_auroc[k]
        assert len(scores) == 7 and scores[f"{c:g}"] == max(scores.values())


def test_unknown_targets_are_masked_not_negative():
    x, y = _data(400)
    xv, yv = _data(200, seed=1)
    masked = y.copy()
    masked[:150, 0] = np.nan
    head = fit_linear_head(x, masked, xv, yv, ["Mass", "Nodule"], grid=[1.0])
    known = fit_linear_head(x[150:], y[150:], xv, yv, ["Mass", "Nodule"], grid=[1.0])
    # Standardisation uses all training rows in the first, only the known ones in the second: compare ranking power.
    assert (
        abs(auroc(yv[:, :1], head.probabilities(xv)[:, :1])[0] - auroc(yv[:, :1], known.probabilities(xv)[:, :1])[0])
        < 0.02
    )
    as_negative = fit_linear_head(x, np.nan_to_num(masked), xv, yv, ["Mass", "Nodule"], grid=[1.0])
    assert not np.allclose(as_negative.weight[0], head.weight[0])


def test_a_label_with_one_class_gets_its_prior_and_a_note():
    x, y = _data(200)
    y[:, 1] = 0.0
    y[:3, 1] = np.nan
    head = fit_linear_head(x, y, *_data(100, seed=1), ["Mass", "Nodule"])
    assert head.chosen_c[1] is None and not head.weight[1].any()
    assert head.bias[1] == pytest.approx(np.log(1e-3 / (1 - 1e-3)), rel=1e-5)
    assert "not fitted" in head.notes["Nodule"]


def test_fractions_take_whole_patients_nested_and_seeded():
    train = pd.DataFrame({"patient_id": np.repeat(np.arange(50), 3)}, index=np.arange(1000, 1150))
    small, large = fraction_rows(train, 0.1, seed=4), fraction_rows(train, 0.5, seed=4)
    assert train.loc[small, "patient_id"].nunique() == 5 and len(small) == 15
    assert set(small) <= set(large) and train.loc[large, "patient_id"].nunique() == 25
    assert set(fraction_rows(train, 0.1, seed=4)) == set(small) != set(fraction_rows(train, 0.1, seed=5))
    assert len(fraction_rows(train, 0.001, seed=0)) == 3  # never empty: at least one patient
    assert parse_fractions("1,0.01, 0.1") == [0.01, 0.1, 1.0]
    for bad in ("0", "1.5", "a", ""):
        with pytest.raises(CxrError, match="--fractions"):
            parse_fractions(bad)


def test_presets_name_their_model_and_published_figures(tmp_path):
    assert {"probe-rad-dino", "probe-biomedclip"} <= set(available_presets())
    rad_dino = load_preset("probe-rad-dino")
    assert rad_dino.embed.model == "rad-dino" and rad_dino.published
    assert all("published" in entry["note"] for entry in rad_dino.published)
    settings = embed_settings("probe-rad-dino", batch_size=8)
    assert settings.model == "rad-dino" and settings.batch_size == 8 and settings.image_size == 518
    assert embed_settings("resnet18") == EmbedSettings(model="resnet18")
    assert probe_settings("probe-rad-dino") == ProbeSettings([0.01, 0.1, 1.0], list(C_GRID), "probe-rad-dino")
    assert probe_settings("probe-rad-dino", fractions="0.5").fractions == "0.5"  # the command line wins
    assert probe_settings(None) == ProbeSettings()
    bad = tmp_path / "bad.yaml"
    bad.write_text("embed: {model: x, epochs: 3}\n")
    with pytest.raises(CxrError, match=r"unknown keys \['embed.epochs'\]"):
        load_preset(str(bad))


def test_efficiency_files_keep_their_layout(tmp_path):
    """``efficiency.json``'s rows (also ``probe.json``'s ``fractions``) are FractionResult.to_dict: the keys pinned."""
    rng = np.random.default_rng(0)
    labels, patients = ["Mass", "Nodule"], np.repeat(np.arange(60), 2)
    targets = (rng.random((120, 2)) < 0.4).astype(float)
    probabilities = np.clip(0.5 * targets + 0.5 * rng.random((120, 2)), 0, 1)
    scores = auroc_with_ci(labels, targets, probabilities, patients, seed=0, resamples=50)
    assert scores.findings["Mass"].auroc > 0.7 and scores.macro_auroc == np.mean(
        [f.auroc for f in scores.findings.values()]
    )
    targets[:10, 1] = np.nan  # a label unknown on some rows: scored where known, no macro CI
    partial = auroc_with_ci(labels, targets, probabilities, patients, seed=0, resamples=50)
    assert np.isnan(partial.macro_auroc_ci).all() and partial.findings["Mass"] == scores.findings["Mass"]
    rows = [FractionResult(0.5, 30, 60, partial, [1.0, None], {"Nodule": "one class"}),
            FractionResult(1.0, 60, 120, scores, [1.0, 0.1], {})]  # fmt: skip
    table = write_efficiency(tmp_path, rows, labels, "probe")
    document = json.loads((tmp_path / "efficiency.json").read_text())
    assert list(document) == ["title", "split", "bootstrap", "rows"]
    keys = [
        "fraction",
        "train_patients",
        "train_images",
        "macro_auroc",
        "macro_auroc_ci",
        "findings",
        "chosen_c",
        "notes",
    ]
    assert [list(row) for row in document["rows"]] == [keys, keys]
    assert document["rows"][0]["macro_auroc_ci"] == [None, None] and document["rows"][0]["chosen_c"] == [1.0, None]
    assert document["rows"][1]["findings"]["Mass"] == {"auroc": scores.findings["Mass"].auroc,
                                                       "auroc_ci": scores.findings["Mass"].auroc_ci}  # fmt: skip
    assert list(table.columns) == ["fraction", "train_patients", "train_images", "macro_auroc", "ci_low", "ci_high",
                                   "auroc_Mass", "auroc_Nodule"]  # fmt: skip
    assert "| 1 | 60 | 120 |" in (tmp_path / "efficiency.md").read_text()
