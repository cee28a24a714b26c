"""`cxr train` end to end on a synthetic store (64 px, CPU): learning, run directory, resume after kill -9, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from conftest import TRAIN_EPOCHS, TRAIN_RECIPE
from cxr.cli import app
from cxr.config import load_config
from cxr.data.loaders import EpochSampler, StoreImages
from cxr.data.store import Store
from cxr.data.transforms import TrainView
from cxr.errors import CxrError
from cxr.labels import FINDINGS
from cxr.models.artifact import load_artifact

CXR = str(Path(sys.executable).with_name("cxr"))
TINY = ["--model", "resnet18", "--no-progress", "model.pretrained=none", "data.num_workers=0"]
# tests/conftest.py's TRAIN_RECIPE without its size and epochs (the tests below set those).
RECIPE = [*TINY, "model.head=gap", "optim.lr=3e-4", "data.rotation=0", "data.shift=0", "task.val_fraction=0.2"]


@pytest.fixture(scope="module")
def store(synth_store) -> Path:
    """The session's synthetic store: 600 NIH-format phantoms, 64 px, flat prevalence (tests/conftest.py)."""
    return synth_store


def _train(*args: str) -> None:
    result = CliRunner().invoke(app, ["train", *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; keeps timings stable
    yield
    torch.set_num_threads(threads)


def _train_run(store: Path, out: Path, *extra: str) -> None:
    _train("--experiment", "multilabel-adam", "--store", str(store), "--out", str(out), "--image-size", "64", *extra)


@pytest.fixture(scope="module")
def learned_run(trained_run) -> Path:
    """The session's trained run (tests/conftest.py: TRAIN_RECIPE on the synthetic store); read-only here."""
    return trained_run


def test_synthetic_training_learns_and_writes_the_run_dir(learned_run, store):
    run = learned_run
    for name in ("config.yaml", "split.parquet", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "metrics.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics.columns[:4]) == ["epoch", "train_loss", "val_loss", "val_macro_auroc"]
    assert list(metrics.columns[4:]) == [f"val_auroc_{f}" for f in FINDINGS]
    assert metrics["epoch"].tolist() == [0, 1, 2, 3]
    assert metrics["train_loss"].iloc[-1] < metrics["train_loss"].iloc[0]

    predictions = pd.read_parquet(run / "val_predictions.parquet")
    split = pd.read_parquet(run / "split.parquet")
    assert set(predictions["Image Index"]) == set(split.loc[split["part"] == "val", "image"])
    assert list(predictions.columns[:2]) == ["Image Index", "Patient ID"]
    aurocs = [
        roc_auc_score(predictions[f], predictions[f"prob_{f}"]) for f in FINDINGS if predictions[f].nunique() == 2
    ]
    assert np.mean(aurocs) >= 0.78, aurocs  # chance is 0.5; tests/conftest.py gives the values measured
    best = metrics.loc[metrics["val_loss"].idxmin(), "val_macro_auroc"]
    assert np.mean(aurocs) == pytest.approx(best, abs=1e-3)  # the parquet is the best checkpoint's, as logged

    artifact = load_artifact(run / "checkpoints" / "best.ckpt")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert artifact.config == config and artifact.labels == list(FINDINGS)
    assert artifact.preprocessing.store_size == 64 and artifact.preprocessing.input_size == 64
    assert artifact.thresholds == dict.fromkeys(FINDINGS, 0.5)


def test_epoch_sampler_orders_by_seed_and_epoch_alone_and_shards_ranks():
    def keys(epoch: int, **kwargs) -> list[tuple[int, int]]:
        sampler = EpochSampler(10, shuffle=True, seed=3, **kwargs)
        sampler.set_epoch(epoch)
        return list(sampler)

    first, second = keys(0), keys(1)
    assert keys(1) == second and first != second  # a resumed run sees the uninterrupted run's order
    assert {e for e, _ in second} == {1} and sorted(i for _, i in second) == list(range(10))
    shards = [keys(1, rank=rank, world=3) for rank in range(3)]
    assert [len(shard) for shard in shards] == [4, 4, 4]  # ranks step equally often: two images padded
    interleaved = [key for step in zip(*shards, strict=True) for key in step]
    assert interleaved == second + second[:2]
    assert list(EpochSampler(5, shuffle=False)) == [(0, i) for i in range(5)]


def test_augmentation_depends_on_seed_epoch_and_image_not_on_loader_workers(store):
    dataset = StoreImages(Store(store), np.arange(24), None, TrainView(64, rotation=15, shift=0.1, hflip=True), seed=5)
    assert torch.equal(dataset[(1, 3)][0], dataset[(1, 3)][0]) and not torch.equal(
        dataset[(1, 3)][0], dataset[(2, 3)][0]
    )

    def batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(len(dataset), shuffle=True, seed=5)
        sampler.set_epoch(2)
        return [x for x, _ in DataLoader(dataset, batch_size=8, sampler=sampler, num_workers=workers)]

    assert all(torch.equal(a, b) for a, b in zip(batches(0), batches(2), strict=True))


def test_runs_and_checkpoints_record_versions_and_machine(learned_run):
    (start,) = json.loads((learned_run / "environment.json").read_text())
    for package in ("cxr", "torch", "lightning", "numpy", "onnxruntime"):
        assert start["versions"][package] == metadata.version(package), package
    assert start["time"] and start["cpu"] and start["gpus"] == []
    written = torch.load(learned_run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["cxr"]
    assert written["environment"]["versions"] == start["versions"]


def test_predict_store_orders_by_name_and_averages_the_mirror(learned_run, store):
    from cxr.data.loaders import predict_store

    artifact = load_artifact(learned_run / "checkpoints" / "best.ckpt")
    names = pd.read_parquet(learned_run / "val_predictions.parquet")["Image Index"].tolist()[:5]
    plain = predict_store(artifact, store, names, batch_size=2)
    reversed_order = predict_store(artifact, store, names[::-1], batch_size=3)
    assert plain.shape == (5, 14) and np.allclose(plain, reversed_order[::-1], atol=1e-6)
    from cxr.data.store import Store

    pixels = torch.tensor(np.stack([Store(store).image(r) for r in _rows(store, names)]))[:, None].float() / 255
    with torch.no_grad():
        mirror = torch.sigmoid(artifact.model(pixels.flip(-1))).numpy()
    assert np.allclose(predict_store(artifact, store, names, tta=True), (plain + mirror) / 2, atol=1e-5)
    with pytest.raises(CxrError, match="not in store"):
        predict_store(artifact, store, ["99999999_000.png"])


def _rows(store: Path, names: list[str]) -> list[int]:
    index = pd.read_parquet(store / "index.parquet").set_index("image")
    return index.loc[names, "row"].tolist()


PRESET_ARGS = {
    "multilabel-adam": [],
    "multilabel-sgd": [],
    "multilabel-balanced": [],
    "disease-only": [],
    "binary-fibrosis": ["--image-size", "56"],  # center crop 56 of the 64 px store, as 224 of 300
    "binary-finding": [],
    "chexnet": ["--image-size", "56"],  # random 56 crop of 64, as 224 of 256
}


@pytest.mark.parametrize("preset", list(PRESET_ARGS))
def test_every_preset_trains_from_the_cli(preset, store, tmp_path):
    size = PRESET_ARGS[preset] or ["--image-size", "64"]
    out = tmp_path / "run"
    _train("--experiment", preset, "--store", str(store), "--out", str(out), "--epochs", "1", *size, *TINY)
    predictions = pd.read_parquet(out / "val_predictions.parquet")
    outputs = load_artifact(out / "checkpoints" / "best.ckpt").labels
    assert outputs == {"binary-fibrosis": ["Fibrosis"], "binary-finding": ["Any Finding"]}.get(preset, list(FINDINGS))
    assert [f"prob_{o}" in predictions for o in outputs] == [True] * len(outputs)


def test_a_store_of_another_size_needs_image_size(store, tmp_path):
    with pytest.raises(CxrError, match="prepared at 64 px.*--image-size"):
        _train("--experiment", "chexnet", "--store", str(store), "--out", str(tmp_path / "run"), *TINY)
    assert not (tmp_path / "run").exists()


def test_keras_decay_and_plateau_schedules(store):
    from cxr.training.module import CxrModule

    config = load_config("multilabel-sgd", ["model.name=resnet18", "model.pretrained=none", "data.input_size=32"])
    module = CxrModule(config, ["Fibrosis"], {})
    [optimizer], [decay] = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["nesterov"]
    for _ in range(1000):
        optimizer.step()
        decay["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 / (1 + 1e-6 * 1000), rel=1e-9)
    chexnet = load_config("chexnet", ["model.pretrained=none", "data.input_size=32"])
    [adam], [plateau] = CxrModule(chexnet, list(FINDINGS), {}).configure_optimizers()
    assert plateau["monitor"] == "val_loss" and plateau["scheduler"].factor == 0.1 and adam.defaults["lr"] == 1e-3


def test_run_dir_is_not_overwritten_and_resume_checks_the_config(learned_run, store):
    with pytest.raises(CxrError, match="already holds a run"):
        _train_run(store, learned_run, "--epochs", "4", *RECIPE)
    with pytest.raises(CxrError, match=r"another config.*train\.epochs"):
        _train_run(store, learned_run, "--epochs", "5", "--resume", *RECIPE)


def test_resume_takes_a_moved_store_and_other_workers_but_not_another_split(trained_run_copy, store, tmp_path):
    moved = Path(shutil.copytree(store, tmp_path / "moved"))
    resume = ["--experiment", "multilabel-adam", "--store", str(moved), "--out", str(trained_run_copy), "--resume"]
    _train(*resume, *TRAIN_RECIPE, "data.num_workers=1")  # run settings: a finished run has nothing left to do
    assert yaml.safe_load((trained_run_copy / "config.yaml").read_text())["store"] == str(moved.resolve())
    index = pd.read_parquet(moved / "index.parquet")
    index.loc[index["split"] == "test", "split"] = "train_val"  # the same images, another official split
    index.to_parquet(moved / "index.parquet", index=False)
    with pytest.raises(CxrError, match="gives another split"):
        _train(*resume, *TRAIN_RECIPE)


@pytest.mark.parametrize("delay", [0.0, 1.5])
def test_kill_minus_9_then_resume_ends_as_the_uninterrupted_run(store, trained_run, tmp_path, delay):
    """Killed somewhere in the second epoch or later (the exact point depends on the machine's speed), resumed: the
    run trains exactly the steps left, numbers its epochs as the uninterrupted run and ends with its very weights.

    The reference is the session's run (tests/conftest.py), trained in-process with the same recipe and one thread.
    """
    out = tmp_path / "run"
    command = [CXR, "train", "--experiment", "multilabel-adam", "--store", str(store), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"  # a file, not a pipe: nobody drains a pipe while we wait
    process = subprocess.Popen([*command, *TRAIN_RECIPE], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 600
    while not (out / "metrics.csv").exists():  # written when the first epoch ends
        assert process.poll() is None, "training ended early: " + log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the first epoch did not end"
        time.sleep(0.05)
    time.sleep(delay)
    assert process.poll() is None, "finished before it could be killed: " + log.read_text()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "val_predictions.parquet").exists()

    resumed = subprocess.run([*command, *TRAIN_RECIPE, "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    pd.testing.assert_frame_equal(pd.read_csv(out / "metrics.csv"), pd.read_csv(trained_run / "metrics.csv"))
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    reference = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == reference["global_step"] > 0
    assert last["epoch"] == reference["epoch"] == TRAIN_EPOCHS
    for name, tensor in reference["state_dict"].items():
        assert torch.equal(last["state_dict"][name], tensor), name
    assert (out / "val_predictions.parquet").is_file()
    assert len(json.loads((out / "environment.json").read_text())) == 2  # the start and the resume


def test_sigterm_stops_training_with_an_error_that_says_how_to_resume(store, tmp_path):
    """Lightning turns SIGTERM into a SystemExit without a code (exit status 0); cxr train must not report success."""
    out = tmp_path / "run"
    command = [CXR, "train", "--experiment", "multilabel-adam", "--store", str(store), "--out", str(out), *TRAIN_RECIPE]
    log = tmp_path / "terminated.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 600
    while not (out / "checkpoints" / "last.ckpt").exists():  # written when the first epoch starts
        assert process.poll() is None, "training ended early: " + log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the first epoch did not start"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=600) == 2, log.read_text()[-2000:]
    assert "training stopped by SIGTERM" in log.read_text() and "--resume" in log.read_text()
    assert not (out / "val_predictions.parquet").exists()


DDP_SCRIPT = """
import sys, torch
from cxr.config import load_config
from cxr.data.loaders import EpochSampler, StoreImages
from cxr.training.fit import fit
torch.set_num_threads(1)
store, out = sys.argv[1], sys.argv[2]
config = load_config("multilabel-adam", {overrides!r})
result = fit(config, store, out, image_size=64, accelerator="cpu", devices=2, strategy="ddp", progress=False)
rank = result.trainer.global_rank
torch.save({{k: v for k, v in result.module.model.named_parameters()}}, f"{{out}}/rank{{rank}}.pt")
"""


def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(store, tmp_path):
    overrides = ["model.name=resnet18", "model.pretrained=none", "model.head=gap", "data.num_workers=0"]
    overrides += ["train.epochs=1", "train.batch_size=8", "optim.lr=1e-3"]
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(overrides=overrides)))
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), str(store), str(out)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    initial = _initial_parameters(overrides)
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 0
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key
    assert any(not torch.equal(ranks[0][k], initial[k]) for k in ranks[0])  # they trained, not just started equal
    assert pd.read_csv(out / "metrics.csv")["epoch"].tolist() == [0]
    assert (out / "val_predictions.parquet").is_file()


def _initial_parameters(overrides: list[str]) -> dict:
    """Parameters at initialisation, seeded as fit() seeds them (train.seed), for the "it trained" check."""
    import lightning as L

    from cxr.models.factory import create_model

    config = load_config("multilabel-adam", overrides)
    L.seed_everything(config.train.seed, verbose=False)
    return dict(
        create_model("resnet18", 14, head="gap", dropout=config.model.dropout, input_size=64).named_parameters()
    )


def test_a_model_that_cannot_be_built_leaves_no_run_behind(store, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(CxrError, match="not found"):
        _train_run(store, out, "--epochs", "1", *RECIPE, "model.init_from=/nonexistent/best.ckpt")
    assert not (out / "config.yaml").exists()


def test_keras_decay_and_plateau_cannot_be_combined(store, tmp_path):
    with pytest.raises(CxrError, match="cannot be combined"):
        _train_run(store, tmp_path / "run", "--epochs", "1", *RECIPE, "optim.decay=1e-6", "optim.scheduler=plateau")


def test_the_model_artifact_carries_no_optimizer_state(learned_run):
    best = torch.load(learned_run / "checkpoints" / "best.ckpt", weights_only=True)
    last = torch.load(learned_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "cxr" in best and best["state_dict"]
    assert "optimizer_states" in last  # what --resume needs


def test_the_model_artifact_is_readable_by_others(learned_run):
    mode = (learned_run / "checkpoints" / "best.ckpt").stat().st_mode & 0o777
    assert mode == 0o666 & ~_umask(), oct(mode)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_resume_needs_neither_imagenet_nor_the_init_from_file(store, trained_run, tmp_path):
    init = tmp_path / "init.ckpt"
    init.write_bytes((trained_run / "checkpoints" / "best.ckpt").read_bytes())
    out = tmp_path / "run"
    _train_run(store, out, "--epochs", "1", *RECIPE, f"model.init_from={init}")
    init.unlink()  # the earlier run moved away: every weight of a resume comes from last.ckpt anyway
    _train_run(store, out, "--epochs", "1", "--resume", *RECIPE, f"model.init_from={init}")
    assert (out / "val_predictions.parquet").is_file()
