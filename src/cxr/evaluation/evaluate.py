"""``cxr evaluate``: metrics with patient-level CIs, thresholds from validation, calibration, plots and reports.

Two modes share one scorer (:func:`cxr.evaluation.scoring.score`, the ``metrics.json`` of
``docs/architecture.md``): a run (:func:`evaluate_run`: predict a split with the best checkpoint; another store:
:mod:`cxr.evaluation.stores`) and anyone's predictions CSV (:func:`evaluate_predictions`). JSON keys are NIH's
finding names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.datasets.nih import read_metadata
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.evaluation.expert import LABEL_SET, is_expert_file, load_expert_predictions
from cxr.evaluation.expert import RULES as EXPERT_RULES
from cxr.evaluation.predictions import (
    join_labels,
    load_predictions,
    match_columns,
    read_val_predictions,
    summary_labels,
    write_scored_set,
)
from cxr.evaluation.references import references_for
from cxr.evaluation.report import write_report
from cxr.evaluation.results import EvaluationResult
from cxr.evaluation.scoring import (
    chosen_thresholds,
    operating_thresholds,
    score,
    validation_thresholds,
)
from cxr.evaluation.stores import evaluate_on_store, is_external, predict_split, run_stores
from cxr.evaluation.subgroups import SubgroupRequest, add_subgroups
from cxr.evaluation.thresholds import RULES, choose_thresholds
from cxr.files import write_json

__all__ = ["evaluate_predictions", "evaluate_run", "evaluate_run_expert", "score", "summary_labels"]


def evaluate_run(
    run: str | Path,
    split: str = "test",
    tta: bool = False,
    store: str | Path | None = None,
    batch_size: int = 64,
    n_resamples: int = 1000,
    seed: int = 0,
    rule: str = "youden",
    subgroups: SubgroupRequest | None = None,
) -> tuple[EvaluationResult, Path]:
    """``cxr evaluate RUN``: predict the split with the best checkpoint, choose thresholds on validation, score.

    Writes ``RUN/thresholds.json``, the chosen ``rule``'s thresholds into ``RUN/checkpoints/best.ckpt``, and
    ``RUN/eval/<split>/`` (predictions.csv, targets.csv, metrics.json, plots, report.md/html). Returns the
    result and that folder. ``subgroups`` adds per-group metrics at the ``rule``'s validation thresholds, the
    attributes read from the store's index (and ``subgroups.subgroup_file``).
    """
    # Local: torch and Lightning stay off `cxr evaluate --predictions` and `cxr compare` (CSVs, no model).
    from cxr.models.artifact import load_artifact, set_thresholds

    if rule not in RULES:
        raise CxrError(f"unknown threshold rule {rule!r} (known: {', '.join(RULES)})")
    run = Path(run)
    checkpoint = run / "checkpoints" / "best.ckpt"
    if not checkpoint.is_file():
        raise CxrError(f"{run} is not a finished run: {checkpoint} is missing (train it with `cxr train --out {run}`)")
    artifact = load_artifact(checkpoint)
    labels, config = list(artifact.labels), artifact.config
    val = read_val_predictions(run / "val_predictions.parquet", labels)
    if not (run / "split.parquet").is_file():
        raise CxrError(f"{run / 'split.parquet'} is missing: which images form the {split} split is recorded there")
    parts = pd.read_parquet(run / "split.parquet")
    images = parts.loc[parts["part"] == split, "image"].astype(str).tolist()
    if not images:
        raise CxrError(f"{run / 'split.parquet'} has no {split!r} images (parts: {sorted(parts['part'].unique())})")
    if store is not None and is_external(artifact.spec, store, images):
        return evaluate_on_store(run, artifact, val, Store(store), split, tta, batch_size, n_resamples, seed,
                                 subgroups=subgroups, rule=rule)  # fmt: skip
    if "store" in parts:
        if store is None:
            raise CxrError(f"{run} was trained on several stores: score one with `cxr evaluate {run} --store STORE` "
                           "(another store than the run's is an external validation)")  # fmt: skip
        k = [path.resolve() for path in run_stores(artifact.spec)].index(Path(store).resolve())
        mine = set(parts.loc[(parts["part"] == split) & (parts["store"] == k), "image"].astype(str))
        store = Store(store)
        rows = store.index[store.index["image"].isin(mine)]
        return evaluate_on_store(run, artifact, val, store, split, tta, batch_size, n_resamples, seed, rows,
                                 subgroups, rule)  # fmt: skip
    store = store or config.get("store")
    if not store:
        raise CxrError(f"{run} does not record its store: pass --store STORE")
    store = Store(store)

    thresholds = validation_thresholds(val)
    operating, fallback = operating_thresholds(thresholds, rule)
    record = {"chosen_on": "validation", "rule": rule, "operating": operating, "fallback_0.5": fallback}
    write_json(run / "thresholds.json", record | {"thresholds": thresholds, "n_images": len(val.images)})
    set_thresholds(checkpoint, operating)

    probabilities = predict_split(artifact, store.path, images, batch_size, tta)
    data = join_labels(np.asarray(images), labels, probabilities, store.index, source=f"the {split} split of {run}")
    metrics = score(data, thresholds, n_resamples, seed)
    if split == "val":
        metrics.thresholds_chosen_on = "validation (the evaluated images themselves: optimistic)"
    if subgroups is not None:
        add_subgroups(metrics, data, store.index, subgroups, operating, rule)
    preset = config.get("experiment")
    metrics.source = {"run": str(run), "split": split, "tta": tta, "store": str(store.path), "preset": preset}
    out = run / "eval" / split
    write_scored_set(data, out)
    write_json(out / "metrics.json", metrics.to_dict())
    counts = {str(part): int(n) for part, n in parts["part"].value_counts().items()}
    title = f"{preset or run.name}: {split} split"
    source = f"Run `{run}`, best checkpoint, {split} split"
    source += " with horizontal-flip TTA (thresholds from validation predictions without TTA)." if tta else "."
    write_report(out, metrics, data, title, references_for(preset), config, counts, run / "metrics.csv", source)
    return metrics, out


def evaluate_predictions(
    predictions: str | Path,
    labels_csv: str | Path,
    images_list: str | Path | None = None,
    out: str | Path | None = None,
    val_predictions: str | Path | None = None,
    preset: str | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    subgroups: SubgroupRequest | None = None,
    rule: str = "youden",
) -> tuple[EvaluationResult, Path]:
    """``cxr evaluate --predictions``: score a predictions CSV, write metrics.json, plots and reports to ``out``.

    ``val_predictions`` (same format, labels from the same metadata) is where thresholds are chosen; without it
    they are chosen on the scored images and flagged optimistic. ``preset`` picks the original's reference column.
    ``subgroups`` adds per-group metrics (attributes from the NIH metadata and ``subgroups.subgroup_file``) at the
    ``rule``'s thresholds.
    """
    expert = Path(labels_csv).is_file() and is_expert_file(Path(labels_csv))
    not_available: dict[str, str] = {}
    if expert:
        data, not_available = load_expert_predictions(predictions, labels_csv, images_list)
    else:
        data = load_predictions(predictions, labels_csv, images_list)
        header = [str(column).strip() for column in pd.read_csv(predictions, nrows=0).columns]
        predicted = match_columns(header, predictions)[1]
        not_available = {label: "not available: the labels file does not provide this label" for label in predicted
                         if label not in data.labels}  # fmt: skip
    thresholds = None
    if val_predictions is not None:
        val = (
            load_expert_predictions(val_predictions, labels_csv)[0]
            if expert
            else load_predictions(val_predictions, labels_csv)
        )
        missing = [label for label in data.labels if label not in val.labels]
        if missing:
            raise CxrError(f"{val_predictions} lacks probabilities for {missing}, needed to choose their thresholds")
        columns = [val.labels.index(label) for label in data.labels]
        thresholds = choose_thresholds(val.targets[:, columns], val.probabilities[:, columns], data.labels)
    metrics = score(data, thresholds, n_resamples, seed)
    if subgroups is not None:
        table = read_metadata(labels_csv) if not expert else None
        chosen = {label: rules[rule] for label, rules in (thresholds or chosen_thresholds(metrics)).items()}
        add_subgroups(metrics, data, table, subgroups, operating_thresholds({k: {rule: v} for k, v in chosen.items()},
                                                                             rule)[0], rule)  # fmt: skip
    metrics.source = {
        "predictions": str(predictions),
        "labels": str(labels_csv),
        "images": images_list and str(images_list),
        "preset": preset,
    }
    if expert:
        metrics.label_set = LABEL_SET
        metrics.expert_rules = {label: list(outputs) for label, outputs in EXPERT_RULES.items()}
    if expert or not_available:
        metrics.not_available = not_available
    predictions = Path(predictions)
    out = (
        Path(out) if out else predictions.parent / (predictions.name.removesuffix(".gz").removesuffix(".csv") + "-eval")
    )
    write_json(out / "metrics.json", metrics.to_dict())
    source = f"Predictions `{predictions}` scored against `{labels_csv}`" + (
        f", images of `{images_list}`." if images_list else "."
    )
    if expert:
        source += (
            " Expert labels (Majkowska et al., Radiology 2020): "
            + "; ".join(f"{label} = max({', '.join(outputs)})" for label, outputs in EXPERT_RULES.items())
            + "; not available: "
            + (", ".join(f"{k} ({v})" for k, v in not_available.items()) or "none")
            + "."
        )
    elif not_available:
        source += f" Predicted but not scored (the labels file lacks them): {', '.join(not_available)}."
    references = [] if expert else references_for(preset)
    write_report(out, metrics, data, f"Evaluation of {predictions.name}", references, source=source)
    return metrics, out


def evaluate_run_expert(
    run: str | Path, split: str, labels_csv: str | Path, n_resamples: int = 1000, seed: int = 0
) -> tuple[EvaluationResult, Path]:
    """``cxr evaluate RUN --labels google2019_…csv``: the run's ``RUN/eval/<split>/predictions.csv`` (written by
    :func:`evaluate_run`) scored against the expert labels into ``RUN/eval/<split>-google2019/``."""
    predictions = Path(run) / "eval" / split / "predictions.csv"
    if not predictions.is_file():
        raise CxrError(f"{predictions} is missing: `cxr evaluate {run}` writes it")
    if not (Path(labels_csv).is_file() and is_expert_file(Path(labels_csv))):
        raise CxrError(f"{labels_csv} is not Google's expert labels file (a RUN is scored on its store's labels)")
    out = Path(run) / "eval" / f"{split}-{LABEL_SET}"
    metrics, folder = evaluate_predictions(predictions, labels_csv, out=out, n_resamples=n_resamples, seed=seed)
    metrics.source = (metrics.source or {}) | {"run": str(run), "split": split}
    write_json(folder / "metrics.json", metrics.to_dict())
    return metrics, folder
