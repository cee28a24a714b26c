"""``cxr evaluate RUN --store STORE``: a run scored on another store (external validation) or on one of the stores
it was trained on, for the labels both the model and the store have.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.evaluation.predictions import ScoredSet, write_scored_set
from cxr.evaluation.report import write_report
from cxr.evaluation.results import EvaluationResult, StoreScored
from cxr.evaluation.scoring import operating_thresholds, score, score_per_label, validation_thresholds
from cxr.evaluation.subgroups import SubgroupRequest, add_subgroups
from cxr.files import write_json

if TYPE_CHECKING:  # the spec's module imports no torch, but cxr.models' siblings do: evaluation loads them lazily
    from cxr.models.spec import ModelSpec


def predict_split(artifact, store: Path, images: list[str], batch_size: int, tta: bool) -> np.ndarray:
    """Probabilities ``(n, K)`` of the artifact on store images (horizontal-flip TTA optional), via
    ``cxr.data.loaders``."""
    # Local: torch and Lightning stay off `cxr evaluate --predictions` and `cxr compare` (CSVs, no model).
    from cxr.data.loaders import predict_store

    probabilities = np.asarray(predict_store(artifact, store, images, batch_size=batch_size, tta=tta), np.float64)
    if probabilities.shape != (len(images), len(artifact.labels)):
        raise RuntimeError(
            f"predict_store returned {probabilities.shape}, expected {(len(images), len(artifact.labels))}"
        )
    return probabilities


def run_stores(spec: ModelSpec) -> list[Path]:
    """The stores a run was trained on, as its artifact records them (:attr:`ModelSpec.stores`)."""
    return [Path(path) for path in spec.stores]


def is_external(spec: ModelSpec, store: str | Path, split_images: list[str]) -> bool:
    """Whether ``store`` is another dataset than the run's: not one of its recorded stores where those still exist;
    where they are gone (moved), whether the store lacks the run's images."""
    recorded = run_stores(spec)
    if any(path.exists() for path in recorded):
        return Path(store).resolve() not in {path.resolve() for path in recorded}
    return not pd.Index(split_images).isin(Store(store).index["image"]).all()


def shared_labels(labels: list[str], table: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The model outputs a store's rows give (some known value), and ``{output: reason}`` for the others."""
    from cxr.data.tasks import targets  # numpy/pandas only; kept local as the one data.tasks use here

    y = targets(table, labels)
    shared = [label for k, label in enumerate(labels) if (~np.isnan(y[:, k])).any()]
    return shared, {label: "not available: the store does not provide this label" for label in labels
                    if label not in shared}  # fmt: skip


def evaluate_on_store(
    run: Path, artifact, val: ScoredSet, store: Store, split: str, tta: bool, batch_size: int, n_resamples: int,
    seed: int, rows: pd.DataFrame | None = None, subgroups: SubgroupRequest | None = None, rule: str = "youden",
) -> tuple[EvaluationResult, Path]:  # fmt: skip
    """``cxr evaluate RUN --store STORE`` for one store's images, for the labels both the model and it have.

    External validation (``rows`` None: ``STORE`` is not the run's): the store's test part. One of the stores of a
    run trained on several: its ``rows`` of the run's split. Outputs the store cannot give are listed in
    ``not_available`` (never scored as negatives). Where some images leave a shared label unknown (a CheXpert blank),
    each label is scored on the images that give it (:func:`score_per_label`; no report plots then). Thresholds
    come from the run's own validation predictions. Writes ``RUN/eval/<split>-<dataset>/``.
    """
    from cxr.data.tasks import targets

    external = rows is None
    if external:
        if split != "test":
            raise CxrError("an external store is scored on its test part: use --split test")
        rows = store.index[store.index["split"] == "test"]
        if rows.empty:
            raise CxrError(f"{store.path} has no test images (its index has no split == 'test' rows)")
    labels = list(artifact.labels)
    shared, not_available = shared_labels(labels, rows)
    if not shared:
        raise CxrError(f"{store.path} provides none of the run's outputs ({', '.join(labels)})")
    y = targets(rows, shared)
    some = ~np.isnan(y).all(axis=1)
    rows, y = rows[some], y[some]
    images = rows["image"].astype(str).tolist()
    probabilities = predict_split(artifact, store.path, images, batch_size, tta)[:, [labels.index(x) for x in shared]]
    data = ScoredSet(shared, np.asarray(images), rows["patient_id"].to_numpy(), y, probabilities)
    columns = [val.labels.index(label) for label in shared]
    thresholds = validation_thresholds(ScoredSet(shared, val.images, val.patient_ids, val.targets[:, columns],
                                                 val.probabilities[:, columns]))  # fmt: skip
    complete = not np.isnan(y).any()
    if complete:
        data.targets = y.astype(np.uint8)
        metrics = score(data, thresholds, n_resamples, seed)
        if subgroups is not None:
            add_subgroups(metrics, data, rows, subgroups, operating_thresholds(thresholds, rule)[0], rule)
    else:
        if subgroups is not None:
            raise CxrError(
                f"{store.path} leaves some of the run's labels unknown on some images: subgroups need "
                "every label of every image (score the run's own store, or one that gives them all)"
            )
        metrics = score_per_label(data, thresholds, n_resamples, seed)
    dataset = store.manifest.dataset
    preset = artifact.config.get("experiment")
    metrics.source = {"run": str(run), "split": split, "tta": tta, "store": str(store.path), "preset": preset}
    trained_on = [str(path) for path in run_stores(artifact.spec)]
    metrics.store_scored = StoreScored(dataset=dataset, store=str(store.path), external=external,
                                       trained_on=trained_on, unlabelled=int((~some).sum()))  # fmt: skip
    metrics.not_available = not_available
    out = run / "eval" / f"{split}-{dataset}"
    write_scored_set(data, out)
    write_json(out / "metrics.json", metrics.to_dict())
    kind = "External validation" if external else "One of the run's stores"
    source = (f"{kind}: run `{run}` (best checkpoint) on the {split} part of `{store.path}` "
              f"({dataset}), thresholds from the run's validation predictions. Not available: "
              + (", ".join(not_available) or "none") + ".")  # fmt: skip
    title = f"{preset or run.name}: {'external ' if external else ''}{split} on {dataset}"
    if complete:  # the plots need every label of every image
        write_report(out, metrics, data, title, [], artifact.config, None, run / "metrics.csv", source)
    else:
        metrics.report = "not written: labels scored on different images"
        write_json(out / "metrics.json", metrics.to_dict())
    return metrics, out
