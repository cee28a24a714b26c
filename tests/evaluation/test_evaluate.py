"""``cxr evaluate``: predictions-mode column matching and errors, scoring vs scikit-learn on the real NIH sample,
and run mode end to end on a tiny hand-made store with a random-init model artifact."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxr.cli import app
from cxr.errors import CxrError, InputFormatError
from cxr.evaluation.predictions import read_predictions
from cxr.evaluation.thresholds import choose_threshold
from cxr.labels import CHEXNET_ORDER, FINDINGS, LABELS

runner = CliRunner()


def nih_targets(metadata_csv: Path) -> pd.DataFrame:
    """Targets parsed here, independently of cxr.data.datasets.nih: one 0/1 column per finding, indexed by image."""
    table = pd.read_csv(metadata_csv, usecols=["Image Index", "Finding Labels", "Patient ID"])
    cells = table["Finding Labels"].str.split("|")
    targets = pd.DataFrame({f: cells.map(lambda names, f=f: int(f in names)) for f in FINDINGS})
    targets["Patient ID"] = table["Patient ID"]
    return targets.set_index(table["Image Index"])


def write_predictions(path: Path, images, probabilities: dict[str, np.ndarray], style: str = "prob_", id_at: int = 0):
    """A predictions CSV with columns ``<style><Finding>`` in the dict's order; the id column at ``id_at``."""
    table = pd.DataFrame({f"{style}{name}": values for name, values in probabilities.items()})
    table.insert(id_at, "Image Index", list(images))
    table.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def sample_scores(sample_dir):
    """Informative random probabilities for every image of the real sample's 2,000-row metadata."""
    targets = nih_targets(sample_dir / "Data_Entry_2017.csv")
    rng = np.random.default_rng(0)
    probabilities = {f: np.round(np.clip(0.3 * targets[f] + rng.random(len(targets)) * 0.7, 0, 1), 3) for f in FINDINGS}
    return targets, probabilities


# -------------------------------------------------------------------------------------------- column matching


def test_columns_matched_by_name_in_both_styles_and_any_order(tmp_path, sample_scores):
    targets, probabilities = sample_scores
    images = targets.index
    chexnet = write_predictions(tmp_path / "a.csv", images, {f: probabilities[f] for f in CHEXNET_ORDER})
    shuffled = list(np.random.default_rng(1).permutation(FINDINGS))
    bare = write_predictions(tmp_path / "b.csv", images, {f: probabilities[f] for f in shuffled}, style="", id_at=5)
    first = pd.DataFrame({"image_name": images, **{f: probabilities[f] for f in reversed(FINDINGS)}})
    first.to_csv(tmp_path / "c.csv", index=False)  # no "Image Index": the first column is the id
    results = [read_predictions(path) for path in (chexnet, bare, tmp_path / "c.csv")]
    for ids, labels, values in results:
        assert labels == list(FINDINGS)  # canonical order whatever the file's order
        assert list(ids) == list(images)
        np.testing.assert_array_equal(values, np.stack([probabilities[f] for f in FINDINGS], axis=1))


def test_aliases_and_a_subset_of_findings(tmp_path, sample_scores):
    targets, probabilities = sample_scores
    path = write_predictions(tmp_path / "p.csv", targets.index, {"Infiltrate": probabilities["Infiltration"]}, "")
    _, labels, _ = read_predictions(path)
    assert labels == ["Infiltration"]


@pytest.mark.parametrize(
    ("columns", "bad_column", "message"),
    [
        (["prob_Atelectasis", "prob_Nodules"], "prob_Nodules", "unknown finding"),
        (["Mass", "prob_Mass"], "prob_Mass", "second column"),
        (["prob_Mass", "Patient ID"], "Patient ID", "not an image id or a probability column"),
        (["Unnamed: 0", "prob_Mass"], "Unnamed: 0", "index saved by pandas"),
    ],
)
def test_a_column_naming_no_known_finding_is_a_clear_error(tmp_path, columns, bad_column, message):
    table = pd.DataFrame({"Image Index": ["00000001_000.png"], **{c: [0.5] for c in columns}})
    table.to_csv(tmp_path / "p.csv", index=False)
    with pytest.raises(InputFormatError, match=message) as error:
        read_predictions(tmp_path / "p.csv")
    assert (error.value.line, error.value.column, error.value.path) == (1, bad_column, str(tmp_path / "p.csv"))


def test_no_probability_column_and_bad_values(tmp_path):
    pd.DataFrame({"Image Index": ["a.png"]}).to_csv(tmp_path / "ids.csv", index=False)
    with pytest.raises(InputFormatError, match="no probability column"):
        read_predictions(tmp_path / "ids.csv")
    (tmp_path / "header.csv").write_text("Image Index,prob_Mass\n")
    with pytest.raises(InputFormatError, match="no predictions below the header"):
        read_predictions(tmp_path / "header.csv")
    table = pd.DataFrame({"Image Index": ["a.png", "b.png", "c.png"], "prob_Mass": ["0.1", "0.2", "1.5"]})
    table.to_csv(tmp_path / "range.csv", index=False)
    with pytest.raises(InputFormatError, match="'1.5' is not a probability") as error:
        read_predictions(tmp_path / "range.csv")
    assert (error.value.line, error.value.column) == (4, "prob_Mass")
    table.loc[2, "prob_Mass"], table.loc[1, "Image Index"] = "0.3", "a.png"
    table.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(InputFormatError, match="duplicate image id") as error:
        read_predictions(tmp_path / "dup.csv")
    assert error.value.line == 3


# ------------------------------------------------------------------------------------------ predictions mode


def strict_json(path: Path) -> dict:
    """Parse JSON refusing NaN/Infinity (other tools read metrics.json with strict parsers)."""

    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def test_scoring_a_predictions_csv_reproduces_sklearn(tmp_path, sample_dir, sample_scores):
    targets, probabilities = sample_scores
    subset = ["Pneumothorax", "Hernia", "Effusion", "Atelectasis", "Pleural_Thickening"]  # some, shuffled
    path = write_predictions(tmp_path / "p.csv", targets.index, {f: probabilities[f] for f in subset}, "")
    labels_csv = sample_dir / "Data_Entry_2017.csv"
    args = ["--resamples", "200", "--json", str(tmp_path / "copy.json"), "--out", str(tmp_path / "out")]
    result = runner.invoke(app, ["evaluate", "--predictions", str(path), "--labels", str(labels_csv), *args])
    assert result.exit_code == 0, result.output
    metrics = strict_json(tmp_path / "out" / "metrics.json")
    assert metrics == strict_json(tmp_path / "copy.json")
    assert list(metrics["findings"]) == [f for f in FINDINGS if f in subset]
    for finding in subset:
        expected = roc_auc_score(targets[finding], probabilities[finding])
        entry = metrics["findings"][finding]
        assert abs(entry["auroc"] - expected) < 1e-9
        assert entry["auroc_ci"][0] < entry["auroc"] < entry["auroc_ci"][1]
        assert entry["n_pos"] == targets[finding].sum() and entry["n"] == len(targets)
        assert entry["prevalence"] == pytest.approx(targets[finding].mean())
        assert set(entry["thresholds"]) == {"youden", "f1_max", "sensitivity_90"}
    assert metrics["n_images"] == len(targets) and metrics["n_patients"] == targets["Patient ID"].nunique()
    stacked = np.stack([probabilities[f] for f in subset], axis=1)
    micro = roc_auc_score(targets[subset].to_numpy(), stacked, average="micro")
    assert abs(metrics["micro_auroc"] - micro) < 1e-9
    assert metrics["macro_auroc"] == pytest.approx(np.mean([metrics["findings"][f]["auroc"] for f in subset]))
    assert "optimistic" in metrics["thresholds_chosen_on"]  # no validation predictions were given
    for name in ("report.md", "report.html", "roc.png", "pr.png", "reliability.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "Pneumothorax" in result.output and "CheXNet" in result.output  # the rich table


def test_images_list_restricts_and_gaps_are_listed(tmp_path, sample_dir, sample_scores):
    targets, probabilities = sample_scores
    labels_csv = sample_dir / "Data_Entry_2017.csv"
    listed = [name for name in (sample_dir / "test_list.txt").read_text().split() if name in targets.index]
    predictions = write_predictions(tmp_path / "p.csv", targets.index, {"Mass": probabilities["Mass"]})
    (tmp_path / "list.txt").write_text("\n".join(listed))
    args = ["evaluate", "--predictions", str(predictions), "--labels", str(labels_csv), "--resamples", "50"]
    result = runner.invoke(app, [*args, "--images", str(tmp_path / "list.txt"), "--json", "-"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)  # --json -: JSON alone on stdout
    assert metrics["n_images"] == len(listed) > 0
    expected = roc_auc_score(targets.loc[listed, "Mass"], pd.Series(probabilities["Mass"], targets.index)[listed])
    assert abs(metrics["findings"]["Mass"]["auroc"] - expected) < 1e-9

    (tmp_path / "more.txt").write_text("\n".join([*listed, "99999999_000.png"]))
    result = runner.invoke(app, [*args, "--images", str(tmp_path / "more.txt")])
    assert isinstance(result.exception, CxrError) and "99999999_000.png" in str(result.exception)
    assert "no prediction" in str(result.exception)
    extra = write_predictions(tmp_path / "x.csv", [*targets.index[:5], "77777777_000.png"], {"Mass": np.full(6, 0.5)})
    with pytest.raises(CxrError, match="no labels.*77777777_000.png"):
        runner.invoke(
            app, ["evaluate", "--predictions", str(extra), "--labels", str(labels_csv)], catch_exceptions=False
        )


def test_gzip_inputs_and_validation_thresholds(tmp_path, sample_dir, sample_scores):
    from cxr.evaluation.evaluate import evaluate_predictions

    targets, probabilities = sample_scores
    labels_gz = tmp_path / "Data_Entry_2017.csv.gz"
    with open(sample_dir / "Data_Entry_2017.csv", "rb") as source, gzip.open(labels_gz, "wb") as target:
        shutil.copyfileobj(source, target)
    half = len(targets) // 2  # first half (by patient order) validation, second half test
    val = write_predictions(tmp_path / "val.csv", targets.index[:half], {f: probabilities[f][:half] for f in FINDINGS})
    test = write_predictions(
        tmp_path / "test.csv", targets.index[half:], {f: probabilities[f][half:] for f in FINDINGS}
    )
    with open(test, "rb") as source, gzip.open(tmp_path / "test.csv.gz", "wb") as target:
        shutil.copyfileobj(source, target)
    metrics, out = evaluate_predictions(tmp_path / "test.csv.gz", labels_gz, val_predictions=val, n_resamples=20)
    assert out == tmp_path / "test-eval" and metrics.thresholds_chosen_on == "validation"
    chosen = choose_threshold(targets["Edema"][:half].to_numpy(), probabilities["Edema"][:half], "youden")
    assert metrics.findings["Edema"].thresholds["youden"].threshold == chosen
    assert metrics.n_images == len(targets) - half


def test_cli_refuses_ambiguous_modes(tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path), "--predictions", "p.csv", "--labels", "l.csv"])
    assert isinstance(result.exception, CxrError) and "either a RUN" in str(result.exception)
    result = runner.invoke(app, ["evaluate", "--predictions", "p.csv"])
    assert isinstance(result.exception, CxrError) and "--labels" in str(result.exception)


# ---------------------------------------------------------------------------------------------------- run mode


def write_metadata(path: Path, patients: int, seed: int) -> Path:
    """An NIH-format (v2020) metadata CSV: 1-4 images per patient, random findings."""
    rng = np.random.default_rng(seed)
    header = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    lines = [header + "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"]
    for patient in range(1, patients + 1):
        for follow_up in range(rng.integers(1, 5)):
            found = [f for f in FINDINGS if rng.random() < 0.2] or ["No Finding"]
            lines.append(f"{patient:08d}_{follow_up:03d}.png,{'|'.join(found)},{follow_up},{patient},50,M,PA,"
                         "1024,1024,0.143,0.143")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def make_store(path: Path, metadata: pd.DataFrame, size: int = 32) -> Path:
    """A store written straight to the contract of docs/architecture.md (random pixels; no decoding)."""
    path.mkdir(parents=True)
    n = len(metadata)
    np.save(path / "images.npy", np.random.default_rng(0).integers(0, 256, (n, size, size), dtype=np.uint8))
    index = metadata[["image", "patient_id", "follow_up"]].copy()
    index.insert(1, "row", np.arange(n, dtype=np.int64))
    index["split"] = np.where(metadata["patient_id"] % 3 == 0, "test", "train_val")
    index["blacklisted"], index["view"], index["age"], index["sex"] = False, "PA", 50.0, "M"
    index["source_width"], index["source_height"] = 1024, 1024
    index[list(LABELS)] = metadata[list(LABELS)]
    index.to_parquet(path / "index.parquet", index=False)
    (path / "rejects.csv").write_text("image,reason\n")
    manifest = {"format": "cxr-store", "format_version": 1, "size": size, "crop": 1.0, "source": "test",
                "counts": {"images": n}, "complete": True}  # fmt: skip
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run dir as `cxr train` leaves it (docs/architecture.md), with a random-init model instead of training."""
    from cxr.data.datasets.nih import read_metadata
    from cxr.data.loaders import predict_store
    from cxr.data.store import Store
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    root = tmp_path_factory.mktemp("fake-run")
    metadata_csv = write_metadata(root / "Data_Entry_2017_v2020.csv", patients=60, seed=3)
    store = Store(make_store(root / "store", read_metadata(metadata_csv)))
    run = root / "run"
    model = create_model("resnet18", len(FINDINGS), head="gap", input_size=32, labels=FINDINGS)
    preprocessing = make_preprocessing(model, store.size, store.crop)
    config = {"experiment": "multilabel-sgd", "model": {"name": "resnet18"}}
    checkpoint = write_artifact(run / "checkpoints" / "best.ckpt", model, list(FINDINGS), preprocessing, None, config)
    index = store.index
    part = np.where(index["split"] == "test", "test", np.where(index["patient_id"] % 3 == 1, "val", "train"))
    split = pd.DataFrame({"image": index["image"], "patient_id": index["patient_id"], "part": part})
    split.to_parquet(run / "split.parquet", index=False)
    val = split[split["part"] == "val"]
    from cxr.models.artifact import load_artifact

    probabilities = predict_store(load_artifact(checkpoint), store, val["image"].tolist())
    table = pd.DataFrame({"Image Index": val["image"].to_numpy(), "Patient ID": val["patient_id"].to_numpy()})
    for k, label in enumerate(FINDINGS):
        table[label] = index.set_index("image").loc[val["image"], label].to_numpy()
        table[f"prob_{label}"] = probabilities[:, k]
    table.to_parquet(run / "val_predictions.parquet", index=False)
    pd.DataFrame({"epoch": [0, 1], "train_loss": [0.7, 0.6], "val_loss": [0.72, 0.65], "val_macro_auroc": [0.5, 0.55]}
                 ).to_csv(run / "metrics.csv", index=False)  # fmt: skip
    return run, store.path, metadata_csv


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_run_mode_writes_predictions_metrics_thresholds_and_report(fake_run):
    from cxr.models.artifact import load_artifact

    run, store, metadata_csv = fake_run
    with pytest.raises(CxrError, match="--store"):
        runner.invoke(app, ["evaluate", str(run)], catch_exceptions=False)
    result = runner.invoke(app, ["evaluate", str(run), "--store", str(store), "--resamples", "50", "--tta"])
    assert result.exit_code == 0, result.output
    out = run / "eval" / "test"
    predictions = pd.read_csv(out / "predictions.csv")
    assert list(predictions.columns) == ["Image Index", *(f"prob_{f}" for f in FINDINGS)]
    split = pd.read_parquet(run / "split.parquet")
    assert sorted(predictions["Image Index"]) == sorted(split.loc[split["part"] == "test", "image"])
    metrics = strict_json(out / "metrics.json")
    assert metrics["source"]["tta"] is True and metrics["thresholds_chosen_on"] == "validation"
    assert metrics["n_images"] == len(predictions)

    thresholds = strict_json(run / "thresholds.json")
    assert load_artifact(run / "checkpoints" / "best.ckpt").thresholds == pytest.approx(thresholds["operating"])
    val = pd.read_parquet(run / "val_predictions.parquet")
    for finding in ("Mass", "Effusion"):
        rule = thresholds["thresholds"][finding]["youden"]
        assert rule == choose_threshold(val[finding].to_numpy(), val[f"prob_{finding}"].to_numpy(), "youden")
        assert metrics["findings"][finding]["thresholds"]["youden"]["threshold"] == rule

    html, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert html.count("data:image/png;base64,") == 4  # ROC, PR, reliability, training curves, embedded
    for text in ("original multilabel-sgd", "CheXNet", "arXiv:1711.05225", "Experiment config", "Youden"):
        assert text in markdown and text in html
    assert "![Training](training.png)" in markdown and (out / "training.png").is_file()

    # The written predictions.csv is itself a valid input of predictions mode, and scores the same.
    rescored = runner.invoke(app, ["evaluate", "--predictions", str(out / "predictions.csv"), "--labels",
                                   str(metadata_csv), "--resamples", "50", "--json", "-"])  # fmt: skip
    assert rescored.exit_code == 0, rescored.output
    again = json.loads(rescored.stdout)
    for finding in FINDINGS:
        assert again["findings"][finding]["auroc"] == pytest.approx(metrics["findings"][finding]["auroc"], abs=1e-9)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_run_mode_subgroups_come_from_the_store_index_and_a_subgroup_file(fake_run, tmp_path):
    run, store, _ = fake_run
    images = pd.read_parquet(Path(store) / "index.parquet")["image"]
    sites = pd.DataFrame({"Image Index": images, "site": np.where(np.arange(len(images)) % 2, "north", "south")})
    sites.to_csv(tmp_path / "sites.csv", index=False)
    args = ["evaluate", str(run), "--store", str(store), "--resamples", "30", "--subgroups", "sex,age,view,site",
            "--subgroup-file", str(tmp_path / "sites.csv")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    metrics = strict_json(run / "eval" / "test" / "metrics.json")
    groups = {attribute: list(found) for attribute, found in metrics["subgroups"].items()}
    assert groups == {
        "sex": ["M"],
        "age": ["40-60"],
        "view": ["PA"],
        "site": ["north", "south"],
    }  # the store: M, 50, PA
    assert metrics["subgroups"]["sex"]["M"]["n_images"] == metrics["n_images"]
    assert metrics["subgroup_settings"]["thresholds_chosen_on"] == "validation"
    operating = strict_json(run / "thresholds.json")["operating"]
    assert metrics["subgroup_settings"]["thresholds"] == pytest.approx(operating)  # the run's validation thresholds
