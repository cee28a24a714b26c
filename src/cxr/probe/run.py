"""``cxr probe EMB --store STORE --out RUN``: linear heads on frozen embeddings, written as an ordinary run.

The run folder has what ``cxr evaluate RUN`` reads (``docs/architecture.md``, "The run directory"): ``config.yaml``
(and the same dict in the artifact: the store, the task, the probe's settings and choices), ``split.parquet`` (the
task's patient-wise split of the store, :func:`cxr.data.tasks.build_split`), ``val_predictions.parquet`` and
``checkpoints/best.ckpt``: the encoder of EMB with the fitted head as its final Linear, written with
:func:`cxr.models.artifact.write_artifact`, so ``predict``, ``export`` and ``serve`` use it as any other model. With
several fractions it adds ``efficiency.{csv,json,md,png}`` (:mod:`cxr.probe.efficiency`); the artifact holds the head
of the largest fraction. ``probe.json`` records, per label, the strength chosen and the validation AUROC of each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from cxr.config import Config, TaskConfig, load_config, to_dict
from cxr.data.store import Store
from cxr.data.tasks import TaskSplit, build_split, targets
from cxr.errors import CxrError
from cxr.files import write_bytes, write_json
from cxr.models.artifact import load_artifact, write_artifact
from cxr.models.factory import CxrNet, rebuild_model
from cxr.models.spec import TrainingData
from cxr.probe.efficiency import FractionResult, auroc_with_ci, fraction_rows, parse_fractions, write_efficiency
from cxr.probe.embed import Embeddings
from cxr.probe.encoder import final_linear
from cxr.probe.linear import C_GRID, LinearHead, fit_linear_head

DEFAULT_TASK = ("task.target=common",)
"""Every finding the store gives (NIH: its 14), official split with the patient-wise validation carve-out."""


@dataclass(frozen=True)
class ProbeRun:
    """What :func:`probe_run` wrote: the run's config (``config.yaml``, the same tree in the artifact) and one result
    per fraction of the training patients."""

    config: dict[str, object]  # the YAML tree of config.yaml: store, task, model (the frozen encoder), probe
    results: list[FractionResult]

    def to_dict(self) -> dict[str, object]:
        return self.config | {"results": [result.to_dict() for result in self.results]}


def probe_config(overrides: Sequence[str]) -> TaskConfig:
    """The task section (defaults ← :data:`DEFAULT_TASK` ← ``task.*`` overrides); other sections are refused."""
    other = [o for o in overrides if not o.strip().startswith("task.")]
    if other:
        raise CxrError(f"cxr probe takes task.* overrides only (the model is frozen): {', '.join(other)}")
    return load_config(None, [*DEFAULT_TASK, *overrides]).task


def parse_grid(grid: str | Sequence[float]) -> list[float]:
    """``--c-grid``: positive inverse strengths, ``"0.01,0.1,1"`` or a list."""
    try:
        values = sorted({float(v) for v in (grid.split(",") if isinstance(grid, str) else grid) if str(v).strip()})
    except ValueError:
        raise CxrError(f"--c-grid must be numbers separated by commas, e.g. 0.01,0.1,1; got {grid!r}") from None
    if not values or values[0] <= 0:
        raise CxrError(f"--c-grid must hold positive numbers; got {grid!r}")
    return values


def task_split(store: Store, task: TaskConfig) -> TaskSplit:
    split = build_split(store.index, task)
    for part in ("train", "val", "test"):
        if not len(split.rows(part)):
            raise CxrError(f"the {part} part of {store.path} is empty for this task: a probe needs all three")
    return split


def probe_model(encoder_file: Path, labels: list[str], head: LinearHead) -> tuple[CxrNet, object]:
    """The encoder rebuilt for ``labels`` outputs, its weights but the final Linear's loaded, that Linear set to
    ``head``; and the encoder's preprocessing."""
    encoder = load_artifact(encoder_file)
    model = rebuild_model(encoder.spec.architecture, labels, encoder.preprocessing.input_size)
    linear = final_linear(model)
    name = next(n for n, m in model.named_modules() if m is linear)
    state = {k: v for k, v in encoder.model.state_dict().items() if not k.startswith(name + ".")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or sorted(missing) != sorted(f"{name}.{p}" for p, _ in linear.named_parameters()):
        raise CxrError(f"{encoder_file}: the encoder's weights do not fit its rebuilt architecture "
                       f"(missing {missing[:3]}, unexpected {unexpected[:3]})")  # fmt: skip
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(head.weight))
        linear.bias.copy_(torch.from_numpy(head.bias))
    return model.eval(), encoder.preprocessing


def _parts(split: TaskSplit, vectors: np.ndarray, part: str, rows: np.ndarray | None = None):
    labels = split.rows(part) if rows is None else rows
    table = split.table.loc[labels]
    return table, np.asarray(vectors[labels], np.float64), targets(table, split.outputs).astype(np.float64)


def _val_predictions(table: pd.DataFrame, labels: list[str], y: np.ndarray, p: np.ndarray) -> pd.DataFrame:
    """``val_predictions.parquet`` as ``cxr train`` writes it (:func:`cxr.training.fit.write_val_predictions`)."""
    frame = pd.DataFrame({"Image Index": table["image"].to_numpy(), "Patient ID": table["patient_id"].to_numpy()})
    missing = np.isnan(y).any()
    for k, label in enumerate(labels):
        frame[label] = y[:, k] if missing else y[:, k].astype(np.uint8)
        frame[f"prob_{label}"] = p[:, k].astype(np.float32)
    return frame


def probe_run(
    embeddings: str | Path,
    store_path: str | Path,
    out: str | Path,
    fractions: str | Sequence[float] = (1.0,),
    seed: int = 0,
    overrides: Sequence[str] = (),
    experiment: str | None = None,
    grid: str | Sequence[float] = C_GRID,
) -> ProbeRun:
    """Fit the probes and write the run (see the module doc); returns the config written and the results."""
    emb, store, out = Embeddings(embeddings), Store(store_path), Path(out)
    emb.check_store(store)
    if out.exists() and any(out.iterdir()):
        raise CxrError(f"{out} is not empty: a probe writes a new run folder")
    fractions, task, grid = parse_fractions(fractions), probe_config(overrides), parse_grid(grid)
    split = task_split(store, task)
    labels = list(split.outputs)
    vectors = emb.vectors
    train_all = split.table.loc[np.unique(split.rows("train"))]
    val_table, x_val, y_val = _parts(split, vectors, "val")
    test_table, x_test, y_test = _parts(split, vectors, "test")
    results, head = [], None
    for fraction in fractions:
        keep = set(fraction_rows(train_all, fraction, seed).tolist())
        rows = np.array([r for r in split.rows("train") if r in keep], dtype=np.int64)
        table, x_train, y_train = _parts(split, vectors, "train", rows)
        head = fit_linear_head(x_train, y_train, x_val, y_val, labels, grid, seed)
        scores = auroc_with_ci(labels, y_test, head.probabilities(x_test), test_table["patient_id"].to_numpy(), seed)
        patients = int(table["patient_id"].nunique())
        results.append(FractionResult(fraction, patients, len(table), scores, head.chosen_c, head.notes))
    config = {
        "experiment": experiment or "linear-probe",
        "store": str(store.path.resolve()),  # as `cxr train` records it: `cxr evaluate RUN` reads the store here
        "task": to_dict(Config(task=task))["task"],
        "model": {"name": emb.manifest.model.get("name"), "frozen": True, "encoder": emb.manifest.model},
        "probe": {
            "embeddings": {
                "dims": emb.manifest.dims,
                "pooling": emb.manifest.pooling,
                "precision": emb.manifest.precision,
                "store": emb.manifest.store.to_dict(),
            },
            "fractions": fractions,
            "seed": seed,
            "c_grid": list(grid),
            "artifact_fraction": fractions[-1],
            "chosen_c": dict(zip(labels, head.chosen_c, strict=True)),
        },  # fmt: skip
    }
    model, preprocessing = probe_model(emb.encoder_file, labels, head)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    fitted_on = TrainingData(store.manifest.dataset, results[-1].train_images, store.manifest_sha256)
    write_artifact(out / "checkpoints" / "best.ckpt", model, labels, preprocessing, config=config,
                   training_data=(fitted_on,))  # fmt: skip
    split.split_table().to_parquet(out / "split.parquet", index=False)
    _val_predictions(val_table, labels, y_val, head.probabilities(x_val)).to_parquet(
        out / "val_predictions.parquet", index=False
    )
    write_bytes(out / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())
    write_json(out / "probe.json", {"labels": labels, "fractions": [result.to_dict() for result in results],
                                    "val_auroc_by_c": dict(zip(labels, head.val_auroc, strict=True))})  # fmt: skip
    if len(fractions) > 1:
        write_efficiency(out, results, labels, f"Linear probe on {config['model']['name']}: label efficiency")
    return ProbeRun(config, results)
