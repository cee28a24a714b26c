"""``cxr synth``: NIH's exact layout and formats, determinism, boxes over the drawn signs, learnable findings."""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.errors import CxrError
from cxr.labels import FINDINGS, NO_FINDING, parse_finding_labels
from cxr.synth import generate, plan_cohort, render, sample_patient, sample_pose
from cxr.synth.cohort import NIH_COUNTS, NIH_IMAGES
from cxr.synth.dataset import render_record

NAME = re.compile(r"^(\d{8})_(\d{3})\.png$")


def _first_line(path: Path) -> bytes:
    return path.read_bytes().split(b"\n")[0]


def _entries(data: Path) -> pd.DataFrame:
    return pd.read_csv(data / "Data_Entry_2017_v2020.csv")


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def test_files_and_headers_are_nih_s(synth_data: Path, sample_dir: Path) -> None:
    assert sorted(p.name for p in synth_data.iterdir()) == [
        "BBox_List_2017.csv", "Data_Entry_2017_v2020.csv", "blacklist.csv", "images_001", "test_list.txt",
        "train_val_list.txt",
    ]  # fmt: skip
    entry = (synth_data / "Data_Entry_2017_v2020.csv").read_bytes()
    assert _first_line(synth_data / "Data_Entry_2017_v2020.csv") == _first_line(sample_dir / "Data_Entry_2017.csv")
    assert entry.count(b"\r\n") == entry.count(b"\n") and entry.endswith(b"\r\n")  # CRLF, as the sample
    assert _first_line(synth_data / "BBox_List_2017.csv") == _first_line(sample_dir / "BBox_List_2017.csv")
    black = (synth_data / "blacklist.csv").read_bytes()
    sample_black = (sample_dir / "blacklist.csv").read_bytes()
    assert black.startswith(b"black\r") and b"\n" not in black and not black.endswith(b"\r")
    assert sample_black.startswith(b"black\r") and b"\n" not in sample_black and not sample_black.endswith(b"\r")
    for name in ("train_val_list.txt", "test_list.txt"):
        text = (synth_data / name).read_bytes()
        assert b"\r" not in text and not text.endswith(b"\n") and (sample_dir / name).read_bytes()[-1:] != b"\n"
    ours, theirs = _entries(synth_data), pd.read_csv(sample_dir / "Data_Entry_2017.csv")
    assert list(ours.columns) == list(theirs.columns)
    assert list(pd.read_csv(synth_data / "BBox_List_2017.csv").columns) == list(
        pd.read_csv(sample_dir / "BBox_List_2017.csv").columns
    )


def test_metadata_rows_look_like_nih(synth_data: Path) -> None:
    table = _entries(synth_data)
    assert len(table) == 600
    for row in table.itertuples(index=False):
        name, labels, follow_up, patient_id = row[0], row[1], row[2], row[3]
        assert NAME.match(name) and name == f"{patient_id:08d}_{follow_up:03d}.png"
        names = parse_finding_labels(labels)
        assert names == [NO_FINDING] or names == sorted(names)
        assert labels == "|".join(names)
    assert set(table["Patient Gender"]) == {"M", "F"} and set(table["View Position"]) == {"PA", "AP"}
    assert table["Patient Age"].between(1, 100).all() and table["Patient Age"].dtype.kind == "i"
    assert (table.iloc[:, 7] == 64).all() and (table.iloc[:, 8] == 64).all()  # OriginalImage = the PNG's size
    assert (table.iloc[:, 9] == table.iloc[:, 10]).all() and (table.iloc[:, 9] > 0).all()
    # Follow-ups are numbered 0, 1, ... per patient, and most patients have several.
    for _, rows in table.groupby("Patient ID"):
        assert sorted(rows["Follow-up #"]) == list(range(len(rows)))
    assert table.groupby("Patient ID").size().mean() > 2


def test_images_are_8_bit_pngs_with_a_few_rgba(synth_data: Path) -> None:
    table = _entries(synth_data)
    files = sorted((synth_data / "images_001" / "images").iterdir())
    assert [f.name for f in files] == sorted(table["Image Index"])
    modes = {}
    for path in files:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            modes[path.name] = image.mode
            if image.mode == "RGBA":
                pixels = np.asarray(image)
                assert (pixels[..., 0] == pixels[..., 2]).all() and (pixels[..., 3] == 255).all()
    assert set(modes.values()) == {"L", "RGBA"} and 1 <= list(modes.values()).count("RGBA") <= 6


def test_split_is_patient_wise_and_blacklist_is_a_few_names(synth_data: Path) -> None:
    table = _entries(synth_data)
    train_val = (synth_data / "train_val_list.txt").read_text().split("\n")
    test = (synth_data / "test_list.txt").read_text().split("\n")
    assert sorted(train_val + test) == sorted(table["Image Index"]) and train_val == sorted(train_val)
    patients = table.set_index("Image Index")["Patient ID"]
    assert not set(patients[train_val]) & set(patients[test])
    assert 0.17 < len(test) / len(table) < 0.3  # NIH: 22.8%
    black = (synth_data / "blacklist.csv").read_bytes().decode().split("\r")[1:]
    assert 1 <= len(black) <= 0.02 * len(table) and set(black) <= set(table["Image Index"])


def test_every_drawn_finding_has_one_box_inside_the_image(synth_data: Path) -> None:
    table, boxes = _entries(synth_data), pd.read_csv(synth_data / "BBox_List_2017.csv")
    boxes = boxes.iloc[:, :6].set_axis(["image", "finding", "x", "y", "w", "h"], axis=1)
    assert "Infiltrate" in set(boxes["finding"]) and "Infiltration" not in set(boxes["finding"])
    labelled = {(row[0], f) for row in table.itertuples(index=False) for f in parse_finding_labels(row[1])}
    labelled = {(image, f) for image, f in labelled if f != NO_FINDING}
    spelled = boxes["finding"].replace({"Infiltrate": "Infiltration"})
    boxed = list(zip(boxes["image"], spelled, strict=True))
    assert len(boxed) == len(set(boxed)) and set(boxed) == labelled
    assert (boxes[["x", "y"]] >= 0).all().all() and (boxes[["w", "h"]] > 0).all().all()
    assert (boxes["x"] + boxes["w"] <= 64).all() and (boxes["y"] + boxes["h"] <= 64).all()


def test_nih_reader_reads_the_output(synth_data: Path) -> None:
    from cxr.data.datasets import inspect_folder

    summary = inspect_folder(synth_data, "nih").to_dict()
    table = _entries(synth_data)
    assert summary["images"] == summary["images_on_disk"] == 600 and summary["missing_images"]["count"] == 0
    assert summary["split"]["train_val"] + summary["split"]["test"] == 600 and summary["unlisted"] == 0
    counts = table["Finding Labels"].str.split("|").explode().value_counts()
    assert all(summary["findings"][finding] == counts.get(finding, 0) for finding in FINDINGS)
    assert summary["boxes"] == len(pd.read_csv(synth_data / "BBox_List_2017.csv"))


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    one = _digest(generate(tmp_path / "one", images=40, size=48, seed=5, prevalence="flat", workers=1))
    two = _digest(generate(tmp_path / "two", images=40, size=48, seed=5, prevalence="flat", workers=2))
    other = _digest(generate(tmp_path / "other", images=40, size=48, seed=6, prevalence="flat", workers=1))
    assert one == two and len(one) == 45
    assert sum(one[name] != other.get(name) for name in one) > 30


def test_prevalence_schemes() -> None:
    nih = np.array([[f in r.findings for f in FINDINGS] for r in plan_cohort(30000, 1, "nih")])
    assert 0.5 < (~nih.any(axis=1)).mean() < 0.58  # NIH: No Finding 53.8%
    expected = np.array([NIH_COUNTS[f] / NIH_IMAGES for f in FINDINGS])
    assert np.all(np.abs(nih.mean(axis=0) - expected) < 0.2 * expected + 0.003)
    effusion, atelectasis = nih[:, FINDINGS.index("Effusion")], nih[:, FINDINGS.index("Atelectasis")]
    assert (effusion & atelectasis).mean() > 1.5 * effusion.mean() * atelectasis.mean()  # they co-occur
    flat = np.array([[f in r.findings for f in FINDINGS] for r in plan_cohort(10000, 1, "flat")])
    assert np.all((flat.mean(axis=0) > 0.17) & (flat.mean(axis=0) < 0.25))
    assert 0.15 < (~flat.any(axis=1)).mean() < 0.25


def test_a_patient_keeps_their_anatomy_across_follow_ups() -> None:
    records = plan_cohort(300, 7, "flat")
    images = {r.index: render_record(r, 48, 7)[0].astype(np.float32) for r in records}

    def similarity(a: int, b: int) -> float:
        x, y = images[a] - images[a].mean(), images[b] - images[b].mean()
        return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))

    follow_ups = zip(records, records[1:], strict=False)
    same = [similarity(a.index, b.index) for a, b in follow_ups if a.patient_id == b.patient_id]
    rng = np.random.default_rng(0)
    pairs = rng.choice(len(records), size=(400, 2))
    other = [similarity(a, b) for a, b in pairs if records[a].patient_id != records[b].patient_id]
    assert len(same) > 100 and np.mean(same) > np.mean(other) + 0.02


@pytest.mark.parametrize("finding", FINDINGS)
def test_box_lies_over_the_drawn_sign(finding: str) -> None:
    """The density a finding changes (finding vs the same image without it) falls inside its recorded box."""
    for case in range(4):
        rng = np.random.default_rng([11, FINDINGS.index(finding), case])
        person = sample_patient(rng, case, "F" if case % 2 else "M")
        pose = sample_pose(rng, "AP" if case == 3 else "PA")
        with_sign = render(person, pose, [finding], 96, np.random.default_rng(0))
        without = render(person, pose, [], 96, np.random.default_rng(0))
        x, y, w, h = (int(v) for v in with_sign.boxes[finding])
        assert x >= 0 and y >= 0 and x + w <= 96 and y + h <= 96 and w > 0 and h > 0
        change = np.abs(with_sign.density - without.density)
        inside = change[y : y + h, x : x + w].sum() / change.sum()
        assert inside > 0.9, f"{finding}: only {inside:.0%} of the change inside the box"
        assert without.boxes == {}


def _features(images: np.ndarray) -> np.ndarray:
    """Position-tolerant features: a coarse thumbnail plus pooled band-pass (difference-of-Gaussians) responses."""
    import cv2

    rows = []
    for image in images.astype(np.float32):
        image = (image - image.mean()) / (image.std() + 1e-6)
        parts = [cv2.resize(image, (8, 8), interpolation=cv2.INTER_AREA).ravel()]
        for sigma in (1.0, 2.0, 4.0):
            band = cv2.GaussianBlur(image, (0, 0), sigma) - cv2.GaussianBlur(image, (0, 0), 2 * sigma)
            cells = band.reshape(4, 16, 4, 16).transpose(0, 2, 1, 3).reshape(16, -1)
            parts += [cells.max(axis=1), cells.min(axis=1), cells.std(axis=1)]
        rows.append(np.concatenate(parts))
    return np.array(rows)


def _cases(finding: str | None, count: int) -> np.ndarray:
    images = []
    for case in range(count):
        rng = np.random.default_rng([21, FINDINGS.index(finding) if finding else 99, case])
        person = sample_patient(rng, case, "M" if rng.random() < 0.55 else "F")
        pose = sample_pose(rng, "PA" if rng.random() < 0.6 else "AP")
        images.append(render(person, pose, [finding] if finding else [], 64, rng).image)
    return np.stack(images)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_each_finding_is_visible_and_image_mean_does_not_give_it_away() -> None:
    """A linear classifier on simple features separates every finding from No Finding on held-out images; the
    image mean alone does not (automatic exposure control makes brightness uninformative)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    normal = _cases(None, 200)
    normal_features = _features(normal)
    for finding in FINDINGS:
        sick = _cases(finding, 80)
        features = np.concatenate([normal_features, _features(sick)])
        target = np.r_[np.zeros(len(normal)), np.ones(len(sick))]
        train = np.r_[np.arange(120), 200 + np.arange(50)]  # held out: 80 normal, 30 with the finding
        held_out = np.setdiff1d(np.arange(len(target)), train)
        model = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=3000))
        model.fit(features[train], target[train])
        auroc = roc_auc_score(target[held_out], model.predict_proba(features[held_out])[:, 1])
        assert auroc >= 0.8, f"{finding}: AUROC {auroc:.2f} from simple features"
        mean_auroc = roc_auc_score(target, np.r_[normal.mean(axis=(1, 2)), sick.mean(axis=(1, 2))])
        assert 0.3 <= mean_auroc <= 0.7, f"{finding}: image mean alone gives AUROC {mean_auroc:.2f}"


def test_cli_writes_a_dataset(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cxr.cli import app

    out = tmp_path / "synthetic"
    result = CliRunner().invoke(app, ["synth", str(out), "--images", "12", "--size", "48", "--seed", "2",
                                      "--prevalence", "flat", "--workers", "1"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert len(_entries(out)) == 12 and len(list((out / "images_001" / "images").glob("*.png"))) == 12
    again = CliRunner().invoke(app, ["synth", str(out), "--images", "12"])
    assert isinstance(again.exception, CxrError) and "not an empty folder" in str(again.exception)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"images": 0}, "--images"),
        ({"size": 16}, "--size"),
        ({"prevalence": "uniform"}, "prevalence"),
        ({"workers": 0}, "--workers"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(CxrError, match=message):
        generate(tmp_path / "out", **({"images": 5, "size": 48, "workers": 1} | arguments))


def test_render_rejects_unknown_findings() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="Pneumonitis"):
        render(sample_patient(rng, 1, "M"), sample_pose(rng, "PA"), ["Pneumonitis"], 48, rng)


def test_images_fill_nih_s_archive_folders() -> None:
    """NIH's images_001 holds 4,999 images and every later folder 10,000; synthetic sets follow suit."""
    record = plan_cohort(1, 0)[0]
    folders = [replace(record, index=index).folder for index in (0, 4998, 4999, 14998, 14999, 112119)]
    assert folders == ["images_001", "images_001", "images_002", "images_002", "images_003", "images_012"]
