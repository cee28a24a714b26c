"""``cxr prepare`` and the store: contents per the contract, rejects, parallel = serial, resume after a kill with
identical bytes, rerun is a no-op, the ``Store`` reader and its errors, the CLI."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from cxr.cli import app
from cxr.data import prepare as prepare_module
from cxr.data.prepare import JOURNAL, prepare_store
from cxr.data.store import IN_PROGRESS, INDEX_COLUMNS, Store
from cxr.errors import CxrError
from cxr.imaging.decode import load, preprocess
from cxr.imaging.geometry import box_to_store
from cxr.labels import LABELS

HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]")  # fmt: skip
STORE_FILES = ("images.npy", "index.parquet", "rejects.csv", "boxes.parquet", "manifest.json")


def noise(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    return np.clip(80 + xx + yy // 2 + rng.integers(0, 40, (height, width)), 0, 255).astype(np.uint8)


def write_nih(root: Path, images: dict[str, object], labels: dict[str, str], train_val: set[int]) -> Path:
    """An NIH-format folder: v2020 CSV, lists by patient, a CR-only blacklist; ``images`` maps a name to an
    ``Image``, raw ``bytes``, or None (listed but missing). Images go into ``images_00k/images/``."""
    lines = [HEADER]
    lists = {"train_val": [], "test": []}
    for number, name in enumerate(images):
        patient, follow_up = int(name[:8]), int(name[9:12])
        lines.append(f"{name},{labels.get(name, 'No Finding')},{follow_up},{patient},{30 + number},"
                     f"{'MF'[number % 2]},{'PA' if number % 3 else 'AP'},2500,2048,0.143,0.143")  # fmt: skip
        lists["train_val" if patient in train_val else "test"].append(name)
        content = images[name]
        if content is None:
            continue
        folder = root / f"images_{1 + number % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Image.Image):
            content.save(folder / name)
        else:
            (folder / name).write_bytes(content)
    (root / "Data_Entry_2017_v2020.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(lists["train_val"]))
    (root / "test_list.txt").write_text("\n".join(lists["test"]))
    return root


@pytest.fixture
def tiny_nih(tmp_path) -> Path:
    """Every kind of image a prepare run meets, plus boxes, a blacklist and the official lists."""
    base = noise(72, 96, 0)
    sixteen = Image.fromarray(noise(64, 64, 1).astype(np.uint16) * 180 + 500)
    rgb = Image.fromarray(np.stack([noise(80, 80, 2), noise(80, 80, 3), noise(80, 80, 4)], axis=-1))
    whole = (tmp_path / "whole.png").open("wb")
    Image.fromarray(noise(90, 90, 5)).save(whole, format="PNG")
    whole.close()
    truncated = (tmp_path / "whole.png").read_bytes()[:300]
    images = {
        "00000001_000.png": Image.fromarray(base),
        "00000002_000.png": sixteen,
        "00000003_000.png": rgb,
        "00000003_001.png": rgb.convert("RGBA"),
        "00000004_000.png": Image.fromarray(noise(70, 50, 6)).convert("P"),
        "00000005_000.png": truncated,
        "00000006_000.png": b"",
        "00000007_000.png": None,
        **{f"{p:08d}_000.png": Image.fromarray(noise(64, 80, p)) for p in range(8, 14)},
    }
    labels = {"00000001_000.png": "Mass|Effusion", "00000003_001.png": "Infiltration", "00000009_000.png": "Hernia"}
    root = write_nih(tmp_path / "nih", images, labels, train_val={1, 2, 3, 5, 7, 8, 9, 10})
    (root / "blacklist.csv").write_bytes(b"black\r00000002_000.png\r00000011_000.png\r")
    (root / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Mass,30,20,24,16\n"
        "00000003_001.png,Infiltrate,0,0,80,80\n"
        "00000005_000.png,Mass,1,1,5,5\n"  # truncated image: its box is dropped
        "00000007_000.png,Nodule,1,1,5,5\n"  # missing image: its box is dropped
    )
    return root


def store_bytes(store: Path) -> dict[str, bytes]:
    return {name: (store / name).read_bytes() for name in STORE_FILES if (store / name).exists()}


def test_store_contents_follow_the_contract(tiny_nih, tmp_path):
    out = tmp_path / "store"
    manifest = prepare_store(tiny_nih, out, size=32, crop=0.75, workers=1, progress=False, chunk_size=3)
    store = Store(out)
    assert manifest == store.manifest and manifest.complete and (store.size, store.crop) == (32, 0.75)
    assert sorted(p.name for p in out.iterdir()) == sorted(STORE_FILES)  # no journal, state or lock left
    index = store.index
    assert list(index.columns) == list(INDEX_COLUMNS)
    metadata = pd.read_csv(tiny_nih / "Data_Entry_2017_v2020.csv")
    bad = {"00000005_000.png", "00000006_000.png", "00000007_000.png"}
    assert index["image"].tolist() == [n for n in metadata["Image Index"] if n not in bad]
    paths = {p.name: p for p in tiny_nih.rglob("*.png")}
    for row in index.itertuples(index=False):
        np.testing.assert_array_equal(store.image(row.row), load(paths[row.image], 32, 0.75))
        with Image.open(paths[row.image]) as source:
            assert (row.source_width, row.source_height) == source.size
    assert index["row"].tolist() == [0, 1, 2, 3, 4, *range(7, 13)]  # the missing image has no row
    assert not store.images[5:7].any() and store.images.shape == (13, 32, 32)  # undecodable rows stay zero
    assert index.set_index("image").loc["00000001_000.png", ["Mass", "Effusion", "No Finding"]].tolist() == [1, 1, 0]
    assert index[list(LABELS)].dtypes.eq(np.uint8).all() and index["patient_id"].dtype == np.int64
    assert index.set_index("image")["blacklisted"].loc[["00000002_000.png", "00000011_000.png"]].all()
    assert index["blacklisted"].sum() == 2 and set(index["split"]) == {"train_val", "test"}

    rejects = store.rejects()
    assert rejects["image"].tolist() == sorted(bad)
    reasons = dict(zip(rejects["image"], rejects["reason"], strict=True))
    assert "truncated" in reasons["00000005_000.png"] and reasons["00000006_000.png"] == "empty file"
    assert reasons["00000007_000.png"].startswith("missing")
    counts = manifest.counts
    assert (counts.listed, counts.rows, counts.images, counts.rejected) == (14, 13, 11, 3)
    assert (counts.missing, counts.undecodable) == (1, 2)

    boxes = store.boxes()
    assert list(boxes.columns) == ["image", "row", "finding", "x", "y", "w", "h"]
    assert boxes["image"].tolist() == ["00000001_000.png", "00000003_001.png"]
    assert boxes["finding"].tolist() == ["Mass", "Infiltration"] and boxes["row"].tolist() == [0, 3]
    assert tuple(boxes.iloc[0][["x", "y", "w", "h"]]) == pytest.approx(box_to_store(30, 20, 24, 16, 96, 72, 0.75, 32))
    assert tuple(boxes.iloc[1][["x", "y", "w", "h"]]) == (0, 0, 32, 32)


def test_parallel_run_is_byte_identical_to_serial(tiny_nih, tmp_path):
    serial = prepare_store(tiny_nih, tmp_path / "serial", size=24, crop=1.0, workers=1, progress=False)
    parallel = prepare_store(tiny_nih, tmp_path / "parallel", size=24, crop=1.0, workers=2, progress=False,
                             chunk_size=2)  # fmt: skip
    assert serial == parallel
    assert store_bytes(tmp_path / "serial") == store_bytes(tmp_path / "parallel")


def test_real_sample_images(sample_dir, tmp_path):
    manifest = prepare_store(sample_dir, tmp_path / "store", size=64, crop=0.75, workers=1, progress=False)
    store = Store(tmp_path / "store")
    assert manifest.counts.images == 11 == len(store)
    assert manifest.counts.missing == 2000 - 11 and manifest.counts.undecodable == 0
    assert manifest.environment["versions"]["numpy"] == np.__version__ and manifest.environment["cpu"]
    assert (store.index["source_width"] == 1024).all()
    row = int(store.index.set_index("image").loc["00000100_000.png", "row"])
    grey = np.asarray(Image.open(sample_dir / "images" / "00000100_000.png"))[..., 0]  # the RGBA one: R = G = B
    np.testing.assert_array_equal(store.image(row), preprocess(grey, 64, 0.75))


def test_rerun_is_a_no_op_and_other_arguments_are_refused(tiny_nih, tmp_path, capsys):
    out = tmp_path / "store"
    first = prepare_store(tiny_nih, out, size=16, crop=1.0, workers=1, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert prepare_store(tiny_nih, out, size=16, crop=1.0, workers=2, progress=True) == first
    assert "already a complete store" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    with pytest.raises(CxrError, match=r"other arguments \(size 16, not 20\).*--force"):
        prepare_store(tiny_nih, out, size=20, crop=1.0, workers=1, progress=False)
    forced = prepare_store(tiny_nih, out, size=20, crop=1.0, workers=1, progress=False, force=True)
    assert forced.size == 20 and Store(out).images.shape[1:] == (20, 20)


def test_refuses_a_folder_that_is_not_a_store(tiny_nih, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"x")
    for force in (False, True):
        with pytest.raises(CxrError, match="not empty and not a cxr store"):
            prepare_store(tiny_nih, out, size=16, workers=1, progress=False, force=force)
    assert (out / "holiday.jpg").exists()


def test_interrupted_run_resumes_to_identical_bytes(tiny_nih, tmp_path, monkeypatch):
    """Deterministic interruption: stop after 2 chunks, scribble over every row not journaled and tear the
    journal's last line, as a kill mid-write would; the rerun must repair all of it."""
    reference = tmp_path / "reference"
    prepare_store(tiny_nih, reference, size=16, crop=0.75, workers=1, progress=False, chunk_size=3)
    out = tmp_path / "store"
    real, calls = prepare_module._write_chunk, []

    def failing(*task):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(task)
        return real(*task)

    monkeypatch.setattr(prepare_module, "_write_chunk", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(tiny_nih, out, size=16, crop=0.75, workers=1, progress=False, chunk_size=3)
    monkeypatch.setattr(prepare_module, "_write_chunk", real)
    assert (out / IN_PROGRESS).exists() and not (out / "manifest.json").exists()
    with pytest.raises(CxrError, match="incomplete store"):
        Store(out)
    rows = np.load(out / "images.npy", mmap_mode="r+")
    rows[6:] = 0xAB
    rows.flush()
    del rows
    with open(out / JOURNAL, "ab") as journal:
        journal.write(b'{"chunk": 2, "sizes": [[1, ')
    prepare_store(tiny_nih, out, size=16, crop=0.75, workers=1, progress=False, chunk_size=3)
    assert store_bytes(out) == store_bytes(reference)


def test_resume_refuses_a_changed_source_and_restarts_from_bare_leftovers(tiny_nih, tmp_path, monkeypatch):
    out = tmp_path / "store"

    def interrupt(*task):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "_write_chunk", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare_store(tiny_nih, out, size=16, workers=1, progress=False)
    monkeypatch.undo()
    next(tiny_nih.rglob("00000012_000.png")).unlink()  # one image fewer on disk than when the run started
    with pytest.raises(CxrError, match="changed since .* was started: use --force"):
        prepare_store(tiny_nih, out, size=16, workers=1, progress=False)
    (out / IN_PROGRESS).unlink()  # as if killed before the state was written: only our own files remain
    manifest = prepare_store(tiny_nih, out, size=16, workers=1, progress=False)
    assert manifest.counts.missing == 2


def test_force_starts_over_when_the_source_changed_under_an_interrupted_run(tiny_nih, tmp_path, monkeypatch):
    out = tmp_path / "store"
    monkeypatch.setattr(prepare_module, "_write_chunk", lambda *task: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        prepare_store(tiny_nih, out, size=16, workers=1, progress=False)
    monkeypatch.undo()
    next(tiny_nih.rglob("00000012_000.png")).unlink()
    with pytest.raises(CxrError, match="use --force"):
        prepare_store(tiny_nih, out, size=16, workers=1, progress=False)
    manifest = prepare_store(tiny_nih, out, size=16, workers=1, progress=False, force=True)
    assert manifest.complete and manifest.counts.missing == 2
    assert not (out / IN_PROGRESS).exists()


def test_full_disk_is_a_clear_error(tiny_nih, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(CxrError, match=r"cannot reserve .* GB .*No space left on device"):
        prepare_store(tiny_nih, tmp_path / "store", size=16, workers=1, progress=False)
    assert not (tmp_path / "store" / "images.npy").exists()


def _prepare_command(data: Path, out: Path) -> list[str]:
    arguments = f"{str(data)!r}, {str(out)!r}, size=64, crop=0.75, workers=2, progress=False, chunk_size=2"
    # Commit after every chunk, so that kills land between commits as well as inside chunks.
    code = f"import cxr.data.prepare as p; p.COMMIT_SECONDS = 0; p.prepare_store({arguments})"
    return [sys.executable, "-c", code]


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_kill_9_and_resume_is_byte_identical(sample_dir, tmp_path):
    """A real SIGKILL of a running prepare (parent, forkserver and workers), three times at different points;
    the resumed store equals an uninterrupted one byte for byte."""
    sources = sorted((sample_dir / "images").glob("*.png"))
    images = {f"{p:08d}_000.png": sources[p % len(sources)].read_bytes() for p in range(1, 81)}
    data = write_nih(tmp_path / "nih", images, {}, train_val=set(range(1, 60)))
    reference = tmp_path / "reference"
    prepare_store(data, reference, size=64, crop=0.75, workers=1, progress=False, chunk_size=2)

    out = tmp_path / "store"
    journal, kills = out / JOURNAL, 0
    for target in (1, 10, 25):
        process = subprocess.Popen(_prepare_command(data, out), start_new_session=True, stderr=subprocess.PIPE)
        while process.poll() is None:
            if journal.exists() and journal.read_bytes().count(b"\n") >= target:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        process.wait()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            assert not (out / "manifest.json").exists()
    assert kills >= 1, "prepare finished before it could be killed: the test proved nothing"
    finish = subprocess.run(_prepare_command(data, out), capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr
    assert store_bytes(out) == store_bytes(reference)


def test_store_errors(tmp_path):
    with pytest.raises(CxrError, match="no such store folder"):
        Store(tmp_path / "nowhere")
    with pytest.raises(CxrError, match="not a cxr store: it has no manifest.json"):
        Store(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "something-else"}')
    with pytest.raises(CxrError, match="format 'something-else'"):
        Store(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(CxrError, match="manifest.json: not valid JSON"):
        Store(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "cxr-store", "format_version": 1, "complete": false}')
    with pytest.raises(CxrError, match="incomplete store"):
        Store(tmp_path)


def test_store_pickles_without_pixels_and_reports_no_boxes(sample_dir, tiny_nih, tmp_path):
    (tiny_nih / "BBox_List_2017.csv").unlink()
    prepare_store(tiny_nih, tmp_path / "store", size=16, workers=1, progress=False)
    store = Store(tmp_path / "store")
    store.images  # noqa: B018  map the pixels, then make sure pickling does not copy them
    clone = pickle.loads(pickle.dumps(store))
    assert len(pickle.dumps(store)) < store.images.nbytes and np.array_equal(clone.images, store.images)
    assert not store.has_boxes and store.manifest.boxes is None
    with pytest.raises(CxrError, match="no boxes"):
        store.boxes()


def test_prepare_cli(tiny_nih, tmp_path):
    runner = CliRunner()
    out = tmp_path / "store"
    args = ["prepare", str(tiny_nih), "--out", str(out), "--size", "16", "--crop", "0.9", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "11 images" in result.stdout and "3 rejected" in result.stdout
    assert json.loads((out / "manifest.json").read_text())["crop"] == 0.9
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "nothing to do" in again.output
    refused = runner.invoke(app, [*args[:5], "32"])
    assert isinstance(refused.exception, CxrError) and "--force" in str(refused.exception)
    forced = runner.invoke(app, [*args[:5], "32", "--force"])
    assert forced.exit_code == 0 and Store(out).size == 32
    shutil.rmtree(out)
