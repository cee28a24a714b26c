"""``cxr predict`` at dataset scale: the decoding pool, input order, streamed outputs and ``--resume``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import tiny_checkpoint
from cxr.errors import CxrError, InputFormatError
from cxr.inference import pipeline
from cxr.inference.predict import iter_predictions, load_predictor
from cxr.labels import FINDINGS


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    return load_predictor(checkpoint)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, sample_dir) -> Path:
    """The 11 real NIH PNGs, a truncated PNG among them (sorted third), and a JPEG."""
    out = tmp_path_factory.mktemp("images")
    images = sorted((sample_dir / "images").glob("*.png"))
    for path in images:
        shutil.copy(path, out / path.name)
    (out / "00000001_001_broken.png").write_bytes(images[1].read_bytes()[:3000])
    return out


def probabilities_of(records) -> np.ndarray:
    return np.array([[record["probabilities"][f] for f in FINDINGS] for record in records])


def test_the_pool_gives_the_same_records_in_the_same_order(predictor, folder):
    """Two decoding processes, chunks of 4, batches of 3: the same records, in input order, as decoding here."""
    images = sorted(folder.glob("*.png"))
    here_errors, pool_errors = [], []
    here = [
        p.to_dict()
        for p in iter_predictions(predictor, images, batch_size=3, workers=1, on_error=lambda *e: here_errors.append(e))
    ]
    pooled = [
        p.to_dict()
        for p in iter_predictions(predictor, images, batch_size=3, workers=2, on_error=lambda *e: pool_errors.append(e))
    ]
    assert (
        [r["image"] for r in pooled] == [r["image"] for r in here] == [str(p) for p in images if "broken" not in p.name]
    )
    np.testing.assert_allclose(probabilities_of(pooled), probabilities_of(here), atol=1e-6)
    assert [Path(image).name for image, _ in pool_errors] == ["00000001_001_broken.png"] and pool_errors == here_errors
    assert len({tuple(np.round(row, 6)) for row in probabilities_of(pooled)}) == len(pooled)  # the images differ


def test_records_stream_with_a_bounded_lookahead(predictor, folder, monkeypatch):
    """The first batch is answered after its own files are decoded (plus the look-ahead), not after all of them."""
    decoded = []
    original = pipeline.decode_for_model

    def counting(path, preprocessing, keep_source=False):
        decoded.append(path)
        return original(path, preprocessing, keep_source)

    monkeypatch.setattr(pipeline, "decode_for_model", counting)
    images = sorted(folder.glob("0000001*.png"))[:2] * 10  # the same files again and again: a long input
    stream = iter_predictions(predictor, images, batch_size=2, workers=1)
    first = next(stream)
    assert first.image == str(images[0]) and len(decoded) == 2
    stream.close()
    assert len(decoded) == 2


def test_workers_must_be_positive_and_default_to_no_pool_for_few_files():
    with pytest.raises(CxrError, match="--workers"):
        pipeline.resolve_workers(0, 100)
    assert pipeline.resolve_workers(None, 3) == 1
    assert pipeline.resolve_workers(3, 1) == 3


def invoke(*args):
    from cxr.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "240"})


def test_csv_and_jsonl_resume_after_a_killed_run(checkpoint, folder, tmp_path):
    """A run cut short (3 rows written, the 4th half-written) goes on with --resume and ends with the same files as
    a run that was never interrupted; only the missing images are predicted again."""
    full_csv, full_jsonl = tmp_path / "full.csv", tmp_path / "full.jsonl"
    result = invoke("predict", checkpoint, folder, "--csv", full_csv, "--jsonl", full_jsonl, "--workers", "2")
    assert result.exit_code == 1 and "00000001_001_broken.png" in result.stderr  # one file skipped
    lines = full_csv.read_text().splitlines(keepends=True)
    records = [json.loads(line) for line in full_jsonl.read_text().splitlines()]
    assert len(lines) == 1 + 11 and len(records) == 11
    assert [line.split(",")[0] for line in lines[1:]] == [Path(r["image"]).name for r in records]

    cut_csv, cut_jsonl = tmp_path / "cut.csv", tmp_path / "cut.jsonl"
    cut_csv.write_text("".join(lines[:4]) + lines[4][:25])
    jsonl_lines = full_jsonl.read_text().splitlines(keepends=True)
    cut_jsonl.write_text("".join(jsonl_lines[:3]) + jsonl_lines[3][:40])
    resumed = invoke("predict", checkpoint, folder, "--csv", cut_csv, "--jsonl", cut_jsonl, "--resume")
    assert "resuming: 3 of 12 images already in the output" in resumed.stderr
    assert cut_csv.read_text() == full_csv.read_text()
    again = [json.loads(line) for line in cut_jsonl.read_text().splitlines()]
    assert [r["image"] for r in again] == [r["image"] for r in records]
    np.testing.assert_allclose(probabilities_of(again), probabilities_of(records), atol=1e-6)
    table = pd.read_csv(cut_csv)
    assert list(table.columns) == ["Image Index", *(f"prob_{f}" for f in FINDINGS)]

    done = invoke("predict", checkpoint, folder, "--csv", cut_csv, "--resume")
    assert "0 images predicted (11 already there)" in done.stdout and cut_csv.read_text() == full_csv.read_text()


def test_resume_refuses_another_models_csv_and_needs_an_output(checkpoint, folder, tmp_path):
    other = tmp_path / "other.csv"
    other.write_text("Image Index,prob_Mass\nx.png,0.5\n")
    result = invoke("predict", checkpoint, folder, "--csv", other, "--resume")
    assert isinstance(result.exception, InputFormatError) and f"{other}, line 1" in str(result.exception)
    result = invoke("predict", checkpoint, folder, "--resume")
    assert isinstance(result.exception, CxrError) and "--csv" in str(result.exception)
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"image": "a.png"}\nnot json\n')
    result = invoke("predict", checkpoint, folder, "--jsonl", junk, "--resume")
    assert isinstance(result.exception, InputFormatError) and f"{junk}, line 2" in str(result.exception)


def test_streamed_json_list_is_the_json_of_the_records(checkpoint, predictor, folder):
    images = [path for path in sorted(folder.glob("*.png")) if "broken" not in path.name][:3]
    result = invoke("predict", checkpoint, *images, "--json")
    assert result.exit_code == 0, result.output
    expected = [prediction.to_dict() for prediction in iter_predictions(predictor, images, workers=1)]
    assert result.stdout == json.dumps(expected, indent=2) + "\n"


def test_a_torch_model_leaves_the_decoding_processes_their_cores_and_gets_its_threads_back():
    import os

    import torch

    from cxr.inference.pipeline import model_threads

    class OnCpu:
        backend, device = "torch", torch.device("cpu")

    before = torch.get_num_threads()
    with model_threads(OnCpu(), workers=2):
        assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) - 2)
    assert torch.get_num_threads() == before
    with model_threads(OnCpu(), workers=1):  # no pool: the model keeps every thread
        assert torch.get_num_threads() == before


def test_the_model_gets_its_threads_back_once_the_pool_has_decoded_everything(predictor, folder):
    """``on_drained`` is called once, after the last file is decoded and before it is handed over; then the model's
    threads come back (the last batches run on every core)."""
    import torch

    from cxr.inference.pipeline import decoded_images, model_threads

    images = sorted(folder.glob("0000*.png"))[:6]
    calls, seen_when_drained = [], []
    order = []
    for item in decoded_images(images, predictor.preprocessing, workers=2, ahead=8, on_drained=lambda: calls.append(1)):
        if calls and not seen_when_drained:
            seen_when_drained.append(len(order))
        order.append(item.path)
    assert order == images and calls == [1] and seen_when_drained[0] < len(images)

    class OnCpu:
        backend, device = "torch", torch.device("cpu")

    before = torch.get_num_threads()
    with model_threads(OnCpu(), workers=2) as drained:
        drained()
        assert torch.get_num_threads() == before
    assert torch.get_num_threads() == before
