"""``cxr embed`` and ``cxr probe``: a frozen trained CNN + a fitted linear head matches the CNN's own head, the probe
artifact is an ordinary model (evaluate, predict, export), a fraction sweep gives a table with CIs, and embedding
resumes after a kill -9 to identical bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import cli
from cxr.data.loaders import predict_store
from cxr.errors import CxrError
from cxr.evaluation.metrics import auroc
from cxr.models.artifact import load_artifact
from cxr.probe.embed import JOURNAL, MANIFEST, Embeddings, embed_store
from cxr.probe.run import probe_run

# The trained run's task (multilabel-adam with the fixture's 20% validation carve-out), so both see the same images.
SAME_TASK = ["task.target=findings", "task.val_fraction=0.2"]


@pytest.fixture(scope="module")
def embedded(trained_run, synth_store, tmp_path_factory) -> Path:
    """The trained CNN of ``trained_run`` as a frozen encoder, embedded in fp32 (exact comparisons below)."""
    out = tmp_path_factory.mktemp("probe") / "emb"
    output = cli("embed", str(trained_run), str(synth_store), "--out", str(out), "--precision", "32", "--workers",
                 "0", "--no-progress")  # fmt: skip
    assert "600 images x 512 dims (fp32)" in output
    return out


def _test_macro_auroc(run: Path, model: Path, store: Path) -> float:
    """Macro AUROC of ``model`` on the test part of ``run`` (no bootstrap: the CNN's reference point)."""
    parts = pd.read_parquet(run / "split.parquet")
    images = parts.loc[parts["part"] == "test", "image"].tolist()
    artifact = load_artifact(model)
    index = pd.read_parquet(store / "index.parquet").set_index("image").loc[images]
    return float(np.nanmean(auroc(index[artifact.labels].to_numpy(), predict_store(artifact, store, images))))


@pytest.mark.slow
def test_probe_on_the_frozen_cnn_matches_its_own_head(embedded, trained_run, synth_store, tmp_path, sample_dir):
    emb = Embeddings(embedded)
    assert emb.manifest.model["kind"] == "artifact" and emb.manifest.model["file"] == "best.ckpt"
    assert "AdaptiveAvgPool2d" in emb.manifest.pooling
    assert str(embedded.parent) not in (embedded / MANIFEST).read_text()  # no machine path leaves EMB

    run = tmp_path / "probe-run"
    cli("probe", str(embedded), *SAME_TASK, "--store", str(synth_store), "--out", str(run), "--c-grid", "0.01,0.1,1")
    assert yaml.safe_load((run / "config.yaml").read_text())["probe"]["c_grid"] == [0.01, 0.1, 1.0]  # --c-grid used
    cli("evaluate", str(run), "--resamples", "100")
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    probe_auroc, (low, high) = metrics["macro_auroc"], metrics["macro_auroc_ci"]
    cnn_auroc = _test_macro_auroc(trained_run, trained_run / "checkpoints" / "best.ckpt", synth_store)
    assert low < probe_auroc < high and metrics["bootstrap"]["unit"] == "patient"
    assert probe_auroc > 0.75, probe_auroc  # well above chance on held-out synthetic findings
    assert abs(probe_auroc - cnn_auroc) <= 0.05, (probe_auroc, cnn_auroc)
    assert pd.read_parquet(run / "split.parquet").equals(pd.read_parquet(trained_run / "split.parquet"))

    # The artifact is the frozen backbone + the fitted head: its forward gives the probe's validation predictions.
    artifact = load_artifact(run / "checkpoints" / "best.ckpt")
    val = pd.read_parquet(run / "val_predictions.parquet")
    forward = predict_store(artifact, synth_store, val["Image Index"].tolist())
    expected = val[[f"prob_{label}" for label in artifact.labels]].to_numpy()
    np.testing.assert_allclose(forward, expected, atol=1e-4)
    cnn = load_artifact(trained_run / "checkpoints" / "best.ckpt")
    probe_state, cnn_state = artifact.model.backbone.state_dict(), cnn.model.backbone.state_dict()
    assert all(torch.equal(probe_state[k], cnn_state[k]) for k in cnn_state)  # frozen: the backbone unchanged

    image = sorted((sample_dir / "images").glob("*.png"))[0]
    predicted = json.loads(cli("predict", str(run), str(image), "--json"))
    assert set(predicted["probabilities"]) == set(artifact.labels)
    cli("export", str(run / "checkpoints" / "best.ckpt"), "--out", str(tmp_path / "probe.onnx"))
    assert (tmp_path / "probe.onnx").stat().st_size > 1_000_000


@pytest.mark.slow
def test_fraction_sweep_gives_a_label_efficiency_table_with_cis(embedded, synth_store, tmp_path):
    run = tmp_path / "sweep"
    result = probe_run(embedded, synth_store, run, "0.1,0.3,1", seed=3, overrides=SAME_TASK, grid=[0.1])
    assert len(result.results) == 3
    table = pd.read_csv(run / "efficiency.csv")
    assert table["fraction"].tolist() == [0.1, 0.3, 1.0]
    assert (table["ci_low"] <= table["macro_auroc"]).all() and (table["macro_auroc"] <= table["ci_high"]).all()
    assert (table["ci_high"] > table["ci_low"]).all()
    assert table["train_patients"].is_monotonic_increasing and table["train_images"].is_monotonic_increasing
    assert table["macro_auroc"].iloc[-1] > 0.75
    assert (run / "efficiency.png").stat().st_size > 5000 and "| 0.3 |" in (run / "efficiency.md").read_text()
    config = json.loads((run / "probe.json").read_text())
    assert [row["fraction"] for row in config["fractions"]] == [0.1, 0.3, 1.0]


def test_probe_refuses_another_store_and_non_task_overrides(embedded, synth_data, synth_store, tmp_path):
    from cxr.data.prepare import prepare_store

    other = tmp_path / "other"
    prepare_store(synth_data, other, size=64, crop=0.9, workers=1, progress=False)
    with pytest.raises(CxrError, match="is not the store"):
        probe_run(embedded, other, tmp_path / "run")
    with pytest.raises(CxrError, match=r"task\.\* overrides only"):
        probe_run(embedded, synth_store, tmp_path / "run2", overrides=["optim.lr=1"])


def _embed_command(store: Path, out: Path) -> list[str]:
    arguments = f"'resnet18', {str(store)!r}, {str(out)!r}, pretrained='none', batch_size=16, precision='32', "
    arguments += "device='cpu', progress=False"
    # Commit after every chunk, so that kills land between commits as well as inside chunks.
    code = f"import torch, cxr.probe.embed as e; torch.manual_seed(0); e.COMMIT_SECONDS = 0; e.embed_store({arguments})"
    return [sys.executable, "-c", code]


def test_kill_9_and_resume_is_byte_identical(synth_store, tmp_path):
    """A real SIGKILL of a running embed, twice at different points; the resumed array equals an uninterrupted one."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    subprocess.run(_embed_command(synth_store, reference), check=True, env=env)
    out, kills = tmp_path / "emb", 0
    for target in (3, 15):
        process = subprocess.Popen(_embed_command(synth_store, out), start_new_session=True, env=env)
        while process.poll() is None:
            if (out / JOURNAL).exists() and (out / JOURNAL).read_bytes().count(b"\n") >= target:
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        process.wait()
        if process.returncode == -signal.SIGKILL:
            kills += 1
            assert not (out / MANIFEST).exists()
            with pytest.raises(CxrError, match="interrupted"):
                Embeddings(out)
    assert kills >= 1, "embed finished before it could be killed: the test proved nothing"
    subprocess.run(_embed_command(synth_store, out), check=True, env=env)
    assert (out / "embeddings.npy").read_bytes() == (reference / "embeddings.npy").read_bytes()
    assert (
        json.loads((out / MANIFEST).read_text())["params"] == json.loads((reference / MANIFEST).read_text())["params"]
    )


def test_embed_refuses_foreign_folders_onnx_files_and_unknown_names(synth_store, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CxrError, match="not an embeddings folder"):
        embed_store("resnet18", synth_store, foreign, pretrained="none", progress=False)
    with pytest.raises(CxrError, match="ONNX graph cannot be embedded"):
        embed_store(tmp_path / "model.onnx", synth_store, tmp_path / "emb", progress=False)
    with pytest.raises(CxrError, match="closest|unknown|not a"):
        embed_store("no_such_backbone_xyz", synth_store, tmp_path / "emb", progress=False)
