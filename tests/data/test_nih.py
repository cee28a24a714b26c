"""Reading NIH files: every file of the real sample, both metadata releases, gzip, every validation error, the reader's
summary, and the complete v2020 table (from the torchxrayvision wheel, when downloaded). Line numbers in errors are the
file's 1-based lines (header = line 1), the convention of every reader (``datasets.base.read_csv``)."""

from __future__ import annotations

import gzip
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data.datasets import inspect_folder, read_dataset
from cxr.data.datasets.nih import (
    find_images,
    find_metadata,
    read_blacklist,
    read_boxes,
    read_image_list,
    read_metadata,
)
from cxr.data.splits import PatientOverlapError
from cxr.errors import CxrError, InputFormatError
from cxr.labels import FINDINGS, LABELS, NO_FINDING

REPO = Path(__file__).resolve().parents[2]
COLUMNS = ["image", "patient_id", "follow_up", "age", "age_outlier", "sex", "view", "width", "height", "spacing_x",
           "spacing_y", *LABELS]  # fmt: skip


def sample_lines(sample_dir: Path) -> list[str]:
    return (sample_dir / "Data_Entry_2017.csv").read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> Path:
    text = "\n".join(lines) + "\n"
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return path


def test_sample_metadata(sample_dir):
    table = read_metadata(sample_dir / "Data_Entry_2017.csv")
    raw = pd.read_csv(sample_dir / "Data_Entry_2017.csv")
    assert list(table.columns) == COLUMNS
    assert len(table) == len(raw) == 2000
    assert table["image"].tolist() == raw["Image Index"].tolist()
    assert table["patient_id"].tolist() == raw["Patient ID"].tolist()
    assert table["age"].tolist() == raw["Patient Age"].astype(float).tolist()
    assert not table["age_outlier"].any()
    assert table[list(LABELS)].dtypes.eq(np.uint8).all()
    # Labels by name: every row's findings are exactly the names in its cell; No Finding iff no finding.
    cells = raw["Finding Labels"].str.split("|").map(set)
    for name in LABELS:
        assert (table[name] == 1).tolist() == [name in cell for cell in cells], name
    assert (table[NO_FINDING] == (table[list(FINDINGS)].sum(axis=1) == 0)).all()
    first = table.iloc[1]
    assert (first["image"], first["width"], first["height"], first["spacing_x"]) == ("00000001_001.png", 2894, 2729,
                                                                                      0.143)  # fmt: skip


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_2017_release_variant(sample_dir, tmp_path, suffix):
    """The original 2017 file: trailing comma on every line (header too), impossible ages; gzipped or not."""
    lines = sample_lines(sample_dir)
    old = [lines[0] + ","]
    impossible = {5: "148", 17: "414", 300: "-1"}
    for number, line in enumerate(lines[1:], start=1):
        cells = line.split(",")
        cells[4] = impossible.get(number, cells[4])
        old.append(",".join(cells) + ",")
    path = write_lines(tmp_path / f"Data_Entry_2017.csv{suffix}", old)
    table = read_metadata(path)
    reference = read_metadata(sample_dir / "Data_Entry_2017.csv")
    assert table["age_outlier"].sum() == 3
    assert table.index[table["age_outlier"]].tolist() == [n - 1 for n in impossible]
    assert table.loc[table["age_outlier"], "age"].isna().all()
    keep = ~table["age_outlier"]
    pd.testing.assert_frame_equal(table[keep], reference[keep])
    assert read_metadata(path, age_max=500)["age_outlier"].sum() == 1  # only the negative age


def test_gzipped_v2020_and_find_metadata(sample_dir, tmp_path):
    lines = sample_lines(sample_dir)
    gz = write_lines(tmp_path / "Data_Entry_2017_v2020.csv.gz", lines)
    pd.testing.assert_frame_equal(read_metadata(gz), read_metadata(sample_dir / "Data_Entry_2017.csv"))
    assert find_metadata(tmp_path) == gz
    write_lines(tmp_path / "Data_Entry_2017.csv", lines)
    assert find_metadata(tmp_path) == gz  # v2020 preferred
    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(lines[0] + "\n")
    assert find_metadata(tmp_path).name == "Data_Entry_2017_v2020.csv"
    with pytest.raises(CxrError, match=r"Data_Entry_2017_v2020.csv\[.gz\]"):
        find_metadata(tmp_path / "nowhere")


def corrupt(lines: list[str], line: int, column: int, value: str) -> list[str]:
    lines = list(lines)
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    return lines


@pytest.mark.parametrize(
    ("edit", "line", "column", "message"),
    [
        (lambda ls: [ls[0].replace("Patient Age,", "")] + ls[1:], 1, "Patient Age", "missing column"),
        (lambda ls: corrupt(ls, 7, 1, "Cardiomegaly|Pneumonitis"), 7, "Finding Labels", "unknown finding"),
        (lambda ls: corrupt(ls, 9, 1, ""), 9, "Finding Labels", "empty"),
        (lambda ls: corrupt(ls, 10, 1, "No Finding|Mass"), 10, "Finding Labels", "combined"),
        (lambda ls: ls[:12] + [ls[3]] + ls[12:], 13, "Image Index", "'00000001_002.png' (first on line 4)"),
        (lambda ls: corrupt(ls, 21, 4, "58Y?"), 21, "Patient Age", "'58Y?' is not a number"),
        (lambda ls: corrupt(ls, 22, 3, "x1"), 22, "Patient ID", "'x1' is not an integer"),
        (lambda ls: corrupt(ls, 23, 2, "1.5"), 23, "Follow-up #", "'1.5' is not an integer"),
        (lambda ls: ls[:30] + [ls[30] + ",junk"] + ls[31:], 31, "#12", "unexpected extra cell 'junk'"),
    ],
)  # fmt: skip
def test_metadata_errors_name_file_line_column(sample_dir, tmp_path, edit, line, column, message):
    path = write_lines(tmp_path / "Data_Entry_2017.csv", edit(sample_lines(sample_dir)))
    with pytest.raises(InputFormatError) as caught:
        read_metadata(path)
    error = caught.value
    assert (error.path, error.line, error.column) == (str(path), line, column)
    assert str(error).startswith(f"{path}, line {line}, column {column!r}: ")
    assert message in str(error)


def test_malformed_row_names_its_line(sample_dir, tmp_path):
    lines = sample_lines(sample_dir)
    lines[40] += ",,"  # 13 cells
    path = write_lines(tmp_path / "Data_Entry_2017.csv", lines)
    with pytest.raises(InputFormatError, match=r"Data_Entry_2017.csv: malformed CSV .*line 41"):
        read_metadata(path)


def test_blank_lines_keep_line_numbers(sample_dir, tmp_path):
    lines = sample_lines(sample_dir)[:20]
    lines = lines[:5] + [""] + corrupt(lines, 10, 4, "old")[5:]
    path = write_lines(tmp_path / "Data_Entry_2017.csv", lines)
    with pytest.raises(InputFormatError) as caught:
        read_metadata(path)
    assert caught.value.line == 11  # line 10 of the original, pushed down by the blank line


def test_sample_lists_and_blacklist(sample_dir):
    train_val = read_image_list(sample_dir / "train_val_list.txt")
    test = read_image_list(sample_dir / "test_list.txt")
    assert (len(train_val), len(test)) == (86_524, 25_596)
    assert not set(train_val) & set(test)
    # The files end without a newline: the last name must still be read whole.
    last = (sample_dir / "test_list.txt").read_text().rstrip().rsplit("\n", 1)[-1]
    assert test[-1] == last and last.endswith(".png")
    raw = (sample_dir / "blacklist.csv").read_bytes()
    assert b"\n" not in raw and b"\r" in raw  # the quirk is real
    blacklist = read_blacklist(sample_dir / "blacklist.csv")
    assert len(blacklist) == 1_168 == raw.count(b"\r") + (not raw.endswith(b"\r")) - 1
    assert "black" not in blacklist and all(name.endswith(".png") and "\r" not in name for name in blacklist)
    listed = set(train_val) | set(test)
    assert blacklist <= listed
    assert len(blacklist & set(train_val)) == 834 and len(blacklist & set(test)) == 334


def test_sample_boxes(sample_dir):
    boxes = read_boxes(sample_dir / "BBox_List_2017.csv")
    raw = pd.read_csv(sample_dir / "BBox_List_2017.csv", header=None, skiprows=1, usecols=range(6))
    assert list(boxes.columns) == ["image", "finding", "x", "y", "w", "h"]
    assert len(boxes) == len(raw) == 984
    assert set(boxes["finding"]) <= set(FINDINGS)
    assert (boxes["finding"] == "Infiltration").sum() == (raw[1] == "Infiltrate").sum() > 0
    np.testing.assert_allclose(boxes[["x", "y", "w", "h"]].to_numpy(), raw[[2, 3, 4, 5]].to_numpy())


@pytest.mark.parametrize(
    ("line_text", "column", "message"),
    [("00000001_000.png,Pneumonitis,1,2,3,4", "Finding Label", "unknown finding"),
     ("00000001_000.png,No Finding,1,2,3,4", "Finding Label", "is not a finding"),
     ("00000001_000.png,Mass,1,2,three,4", "Bbox [x,y,w,h] (w)", "'three' is not a number")],
)  # fmt: skip
def test_box_errors(sample_dir, tmp_path, line_text, column, message):
    lines = (sample_dir / "BBox_List_2017.csv").read_text().splitlines()[:10]
    path = write_lines(tmp_path / "BBox_List_2017.csv", lines[:4] + [line_text] + lines[4:])
    with pytest.raises(InputFormatError) as caught:
        read_boxes(path)
    assert (caught.value.line, caught.value.column) == (5, column) and message in str(caught.value)
    write_lines(path, ["Image,Label,x,y,w,h", *lines[1:]])
    with pytest.raises(InputFormatError, match="expected the header"):
        read_boxes(path)


def test_find_images_anywhere_below(tmp_path):
    for relative in ("images_001/images/a.png", "images_002/images/b.PNG", "c.jpg", "deep/x/y/d.dcm",
                     ".cache/e.png", "notes.txt", "images_001/images/f.png.part"):  # fmt: skip
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    (tmp_path / "z_dup").mkdir()
    (tmp_path / "z_dup" / "a.png").write_bytes(b"x")
    found = find_images(tmp_path)
    assert set(found) == {"a.png", "b.PNG", "c.jpg", "d.dcm"}
    assert found["a.png"] == tmp_path / "images_001/images/a.png"  # first in sorted order wins


def summarize(folder: Path) -> dict:
    return inspect_folder(folder, "nih").to_dict()


def test_load_dataset_and_summarize_sample(sample_dir):
    dataset = read_dataset(sample_dir, "nih")
    table = pd.concat([dataset.images, dataset.labels], axis=1)
    train_val = set(read_image_list(sample_dir / "train_val_list.txt"))
    test = set(read_image_list(sample_dir / "test_list.txt"))
    blacklist = read_blacklist(sample_dir / "blacklist.csv")
    on_disk = {p.name for p in (sample_dir / "images").glob("*.png")}
    summary = summarize(sample_dir)
    json.dumps(summary)  # plain JSON types only
    names = table["image"]
    assert summary["images"] == 2000 and summary["patients"] == table["patient_id"].nunique()
    assert summary["split"] == {"train_val": int(names.isin(train_val).sum()), "test": int(names.isin(test).sum())}
    assert summary["unlisted"] == 0
    assert summary["blacklisted"]["train_val"] == len(set(names) & blacklist & train_val)
    assert summary["blacklisted"]["test"] == len(set(names) & blacklist & test)
    assert summary["findings"] == {name: int(table[name].sum()) for name in LABELS}
    assert summary["usable"] == 2000 and summary["rejects"] == {"count": 0, "examples": []}
    assert summary["missing_images"]["count"] == 2000 - len(on_disk)
    assert set(summary["missing_images"]["examples"]) <= set(names) - on_disk
    assert summary["images_on_disk"] == len(on_disk) == 11
    assert summary["boxes"] == 984 and summary["age_outliers"] == 0


def test_dataset_without_lists_and_with_overlapping_patients(sample_dir, tmp_path):
    lines = sample_lines(sample_dir)[:30]
    write_lines(tmp_path / "Data_Entry_2017_v2020.csv", lines)
    dataset = read_dataset(tmp_path, "nih")
    assert (dataset.images["split"] == "").all() and dataset.boxes is None
    summary = summarize(tmp_path)
    assert summary["files"]["train_val"] is None and summary["split"] == {"train_val": 0, "test": 0}
    assert summary["unlisted"] == 29
    names = [line.split(",")[0] for line in lines[1:]]  # 00000001_000 and _001 share patient 1
    write_lines(tmp_path / "train_val_list.txt", [names[0]])
    write_lines(tmp_path / "test_list.txt", [names[1]])
    with pytest.raises(PatientOverlapError, match="train_val in .*Data_Entry_2017_v2020.csv"):
        read_dataset(tmp_path, "nih")


def test_inspect_cli_json_and_table(sample_dir):
    runner = CliRunner()
    result = runner.invoke(app, ["inspect", str(sample_dir), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["dataset"] == "nih" and summary["harmonised"]["Lung Lesion"] is not None
    assert summary == summarize(sample_dir)
    result = runner.invoke(app, ["inspect", str(sample_dir)])
    assert result.exit_code == 0 and "Pleural_Thickening" in result.stdout and "1,989" in result.stdout


def _wheel() -> Path | None:
    wheels = sorted((REPO / ".venv" / "wheels").glob("torchxrayvision-*.whl"))
    return wheels[-1] if wheels else None


@pytest.mark.skipif(_wheel() is None, reason="torchxrayvision wheel not downloaded (make venv puts it in .venv/wheels)")
def test_complete_v2020_table(sample_dir, tmp_path):
    """The complete NIH table with the sample's official lists and blacklist gives NIH's published counts."""
    with zipfile.ZipFile(_wheel()) as wheel:
        (tmp_path / "Data_Entry_2017_v2020.csv.gz").write_bytes(
            wheel.read("torchxrayvision/data/Data_Entry_2017_v2020.csv.gz")
        )
    for name in ("train_val_list.txt", "test_list.txt", "blacklist.csv"):
        shutil.copy(sample_dir / name, tmp_path / name)
    summary = summarize(tmp_path)
    assert (summary["images"], summary["patients"]) == (112_120, 30_805)
    assert summary["split"] == {"train_val": 86_524, "test": 25_596}
    assert summary["blacklisted"] == {"train_val": 834, "test": 334, "total": 1_168}
    assert summary["unlisted"] == 0 and summary["age_outliers"] == 0
    assert summary["missing_images"]["count"] == 112_120


def test_gzipped_lists_and_blacklist_are_read_like_plain_ones(sample_dir, tmp_path):
    import gzip

    for name in ("test_list.txt", "blacklist.csv"):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress((sample_dir / name).read_bytes()))
    assert read_image_list(tmp_path / "test_list.txt.gz") == read_image_list(sample_dir / "test_list.txt")
    assert read_blacklist(tmp_path / "blacklist.csv.gz") == read_blacklist(sample_dir / "blacklist.csv")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(InputFormatError, match="binary.txt"):
        read_image_list(tmp_path / "binary.txt")
