"""``cxr predict --devices``: one process per device, records merged in input order; tested with CPU "devices"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_checkpoint
from cxr.errors import CxrError
from cxr.inference import devices as multi
from cxr.inference.predict import iter_predictions, load_predictor
from cxr.labels import FINDINGS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sample_dir) -> Path:
    """The 11 real NIH PNGs, each twice under another name (22 files), and an unreadable one sorted among them."""
    out = tmp_path_factory.mktemp("images")
    images = sorted((sample_dir / "images").glob("*.png"))
    for path in images:
        shutil.copy(path, out / path.name)
        shutil.copy(path, out / f"copy_{path.name}")
    (out / "00000001_001_broken.png").write_bytes(images[1].read_bytes()[:3000])
    return out


def invoke(*args):
    from cxr.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})


def probabilities_of(records) -> np.ndarray:
    return np.array([[record["probabilities"][f] for f in FINDINGS] for record in records])


def test_devices_parse_counts_and_lists_and_refuse_what_is_absent():
    two_gpus = lambda: 2  # noqa: E731
    assert multi.parse_devices("2", two_gpus) == ["cuda:0", "cuda:1"]
    assert multi.parse_devices("cuda:1, cuda", two_gpus) == ["cuda:1", "cuda:0"]
    assert multi.parse_devices("cpu,cpu", lambda: 0) == ["cpu", "cpu"]
    with pytest.raises(
        CxrError, match=r"--devices 3 asks for cuda:2; this machine has 2 CUDA device\(s\) \(cuda:0, cuda:1\)"
    ):
        multi.parse_devices("3", two_gpus)
    with pytest.raises(CxrError, match=r"asks for cuda:4; this machine has 0 CUDA device\(s\) \(none\)"):
        multi.parse_devices("cpu,cuda:4", lambda: 0)
    with pytest.raises(CxrError, match="'tpu' is not a device"):
        multi.parse_devices("cpu,tpu", two_gpus)
    with pytest.raises(CxrError, match="at least one"):
        multi.parse_devices("0", two_gpus)


def test_chunks_cover_the_input_once_in_order():
    chunks = multi.deal_chunks(23, 5)
    assert chunks == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert multi.deal_chunks(0, 5) == []


def test_two_cpu_devices_give_the_single_process_records_row_for_row(checkpoint, folder, monkeypatch):
    """Chunks of 2 batches of 3 dealt to 2 processes (and a third device left without work): the same records in
    the same order, probabilities within 1e-6, and the unreadable file reported once, in its place."""
    monkeypatch.setattr(multi, "CHUNK_BATCHES", 2)
    predictor = load_predictor(checkpoint)
    images = sorted(folder.glob("*.png"))[:17]
    alone, shared = [], []
    one = [p.to_dict() for p in iter_predictions(predictor, images, batch_size=3, on_error=lambda *e: alone.append(e))]
    many = [
        p.to_dict()
        for p in iter_predictions(
            predictor, images, batch_size=3, workers=2, devices=["cpu", "cpu"], on_error=lambda *e: shared.append(e)
        )
    ]
    assert [r["image"] for r in many] == [r["image"] for r in one] and len(one) == 16
    np.testing.assert_allclose(probabilities_of(many), probabilities_of(one), atol=1e-6)
    assert [r["positive"] for r in many] == [r["positive"] for r in one]
    assert shared == alone and [Path(image).name for image, _ in shared] == ["00000001_001_broken.png"]
    few = list(iter_predictions(predictor, images[:4], batch_size=3, workers=1, devices=["cpu"] * 3))
    assert [r.image for r in few] == [str(p) for p in images[:4] if "broken" not in p.name]


def test_cli_devices_resume_across_shards(checkpoint, folder, tmp_path):
    """A run cut short after 7 rows goes on with --devices cpu,cpu --resume; the CSV and JSON lines end as a
    one-process run wrote them."""
    full_csv, full_jsonl = tmp_path / "full.csv", tmp_path / "full.jsonl"
    result = invoke("predict", checkpoint, folder, "--csv", full_csv, "--jsonl", full_jsonl, "--batch-size", "4")
    assert result.exit_code == 1 and "00000001_001_broken.png" in result.stderr
    lines = full_csv.read_text().splitlines(keepends=True)
    assert len(lines) == 1 + 22

    cut_csv, cut_jsonl = tmp_path / "cut.csv", tmp_path / "cut.jsonl"
    cut_csv.write_text("".join(lines[:8]) + lines[8][:30])
    cut_jsonl.write_text("".join(full_jsonl.read_text().splitlines(keepends=True)[:7]))
    resumed = invoke(
        "predict", checkpoint, folder, "--csv", cut_csv, "--jsonl", cut_jsonl, "--resume", "--devices", "cpu,cpu",
        "--batch-size", "4", "--workers", "2",
    )  # fmt: skip
    assert resumed.exit_code == 1, resumed.output
    assert "resuming: 7 of 23 images already in the output" in resumed.stderr
    resumed_table, full_table = pd.read_csv(cut_csv), pd.read_csv(full_csv)
    assert list(resumed_table["Image Index"]) == list(full_table["Image Index"])
    np.testing.assert_allclose(resumed_table.iloc[:, 1:].to_numpy(), full_table.iloc[:, 1:].to_numpy(), atol=1e-6)
    again = [json.loads(line) for line in cut_jsonl.read_text().splitlines()]
    records = [json.loads(line) for line in full_jsonl.read_text().splitlines()]
    assert [r["image"] for r in again] == [r["image"] for r in records]
    np.testing.assert_allclose(probabilities_of(again), probabilities_of(records), atol=1e-6)


def test_cli_devices_refuses_cam_and_device_together(checkpoint, folder, tmp_path):
    result = invoke("predict", checkpoint, folder, "--devices", "cpu,cpu", "--cam", tmp_path / "cam")
    assert isinstance(result.exception, CxrError) and "--cam" in str(result.exception)
    result = invoke("predict", checkpoint, folder, "--devices", "cpu,cpu", "--device", "cuda")
    assert isinstance(result.exception, CxrError) and "give one of them" in str(result.exception)


def test_a_device_that_fails_is_reported_by_name(tmp_path, folder):
    """A device process whose model cannot be loaded sends its error; the merge raises it naming the device."""
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint")
    images = sorted(folder.glob("*.png"))[:2]
    stream = multi.predicted_on_devices(
        broken, ["cpu", "cpu"], images, batch_size=1, workers=1, tta=False, on_error=lambda *e: None
    )
    with pytest.raises(CxrError, match=r"^on cpu: .*broken\.ckpt"):
        list(stream)
