"""``cxr evaluate``: metrics with patient-level CIs, thresholds from validation, calibration, plots and reports.

Two modes share one scorer (:func:`score`, the metrics JSON of ``docs/architecture.md``): a run
(:func:`evaluate_run`: predict a split with the best checkpoint) and anyone's predictions CSV
(:func:`evaluate_predictions`). JSON keys are NIH's finding names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.evaluation.bootstrap import bootstrap_auroc, percentile_interval
from cxr.evaluation.expert import LABEL_SET, is_expert_file, load_expert_predictions
from cxr.evaluation.expert import RULES as EXPERT_RULES
from cxr.evaluation.metrics import (
    auprc,
    brier_score,
    expected_calibration_error,
    macro_average,
    micro_auroc,
    prevalence,
    reliability,
)
from cxr.evaluation.predictions import (
    ScoredSet,
    join_labels,
    load_predictions,
    match_columns,
    read_val_predictions,
    write_scored_set,
)
from cxr.evaluation.references import references_for
from cxr.evaluation.report import write_report
from cxr.evaluation.thresholds import RULES, apply_thresholds, choose_thresholds
from cxr.files import write_json
from cxr.labels import NO_FINDING


def summary_labels(labels: list[str]) -> list[str]:
    """Labels averaged into macro/micro AUROC: every output but "No Finding" (unless it is the only one)."""
    findings = [label for label in labels if label != NO_FINDING]
    return findings or list(labels)


def score(
    data: ScoredSet,
    thresholds: dict[str, dict[str, float]] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    bins: int = 10,
    level: float = 0.95,
) -> dict:
    """The metrics JSON of ``docs/architecture.md`` for one scored set.

    ``thresholds`` (``{label: {rule: value}}``) must come from validation; without them they are chosen on
    ``data`` itself and the JSON says so (``thresholds_chosen_on``), since such operating points are optimistic.
    """
    y, p = data.targets, data.probabilities
    summary = summary_labels(data.labels)
    mask = np.isin(data.labels, summary)
    boot = bootstrap_auroc(y, p, data.patient_ids, n_resamples, seed, summary=mask)
    chosen_on = "validation" if thresholds is not None else "evaluated set (optimistic: no validation predictions)"
    if thresholds is None:
        thresholds = choose_thresholds(y, p, data.labels)
    operating = apply_thresholds(y, p, data.labels, thresholds)
    values = {"auroc": boot.point, "auprc": auprc(y, p), "prevalence": prevalence(y)}
    values |= {"brier": brier_score(y, p), "ece": expected_calibration_error(y, p, bins)}
    intervals = boot.interval(level)
    findings = {}
    for k, label in enumerate(data.labels):
        entry = {name: float(v[k]) for name, v in values.items()}
        entry |= {"auroc_ci": intervals[k].tolist(), "n_pos": int(y[:, k].sum()), "n": int(y.shape[0])}
        entry |= {"thresholds": operating[label], "reliability": reliability(y[:, k], p[:, k], bins)}
        findings[label] = entry
    pooled_y, pooled_p = y[:, mask].reshape(-1), p[:, mask].reshape(-1)
    return {
        "findings": findings,
        "macro_auroc": macro_average(boot.point[mask]),
        "macro_auroc_ci": percentile_interval(boot.macro_samples, level).tolist(),
        "micro_auroc": micro_auroc(y[:, mask], p[:, mask]),
        "micro_auroc_ci": percentile_interval(boot.micro_samples, level).tolist(),
        "n_images": int(y.shape[0]),
        "n_patients": int(len(np.unique(data.patient_ids))),
        "labels": list(data.labels),
        "macro_labels": summary,
        "thresholds_chosen_on": chosen_on,
        "bootstrap": {
            "unit": "patient",
            "resamples": n_resamples,
            "seed": seed,
            "level": level,
            "method": "percentile",
        },
        "calibration": {
            "bins": bins,
            "ece": float(expected_calibration_error(pooled_y, pooled_p, bins)[0]),
            "brier": float(brier_score(pooled_y, pooled_p)[0]),
            "reliability": reliability(pooled_y, pooled_p, bins),
        },
    }


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


def operating_thresholds(thresholds: dict[str, dict[str, float]], rule: str) -> tuple[dict[str, float], list[str]]:
    """One threshold per label for the model artifact; 0.5 (listed) where validation could not choose one."""
    chosen = {label: rules[rule] for label, rules in thresholds.items()}
    fallback = [label for label, value in chosen.items() if not math.isfinite(value)]
    return {label: 0.5 if label in fallback else value for label, value in chosen.items()}, fallback


def validation_thresholds(val: ScoredSet) -> dict[str, dict[str, float]]:
    """Thresholds per label chosen on the validation rows that give the label (NaN targets: a store that does not
    provide it, in a run trained on several stores)."""
    y = np.asarray(val.targets, dtype=np.float64)
    chosen = {}
    for k, label in enumerate(val.labels):
        provided = ~np.isnan(y[:, k])
        target = y[provided, k].astype(np.uint8)[:, None]
        chosen |= choose_thresholds(target, val.probabilities[provided, k][:, None], [label])
    return chosen


def run_stores(config: dict) -> list[Path]:
    """The stores a run was trained on, as recorded: ``data.stores`` (several) or ``store``."""
    stores = (config.get("data") or {}).get("stores") or ([config["store"]] if config.get("store") else [])
    return [Path(path) for path in stores]


def is_external(config: dict, store: str | Path, split_images: list[str]) -> bool:
    """Whether ``store`` is another dataset than the run's: not one of its recorded stores where those still exist;
    where they are gone (moved), whether the store lacks the run's images."""
    recorded = run_stores(config)
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
    seed: int, rows: pd.DataFrame | None = None,
) -> tuple[dict, Path]:  # fmt: skip
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
    else:
        metrics = score_per_label(data, thresholds, n_resamples, seed)
    dataset = str(store.manifest.get("dataset", "nih"))
    preset = artifact.config.get("experiment")
    metrics["source"] = {"run": str(run), "split": split, "tta": tta, "store": str(store.path), "preset": preset}
    trained_on = [str(path) for path in run_stores(artifact.config)]
    metrics["store_scored"] = {"dataset": dataset, "store": str(store.path), "external": external,
                               "trained_on": trained_on, "unlabelled": int((~some).sum())}  # fmt: skip
    metrics["not_available"] = not_available
    out = run / "eval" / f"{split}-{dataset}"
    write_scored_set(data, out)
    write_json(out / "metrics.json", metrics)
    kind = "External validation" if external else "One of the run's stores"
    source = (f"{kind}: run `{run}` (best checkpoint) on the {split} part of `{store.path}` "
              f"({dataset}), thresholds from the run's validation predictions. Not available: "
              + (", ".join(not_available) or "none") + ".")  # fmt: skip
    title = f"{preset or run.name}: {'external ' if external else ''}{split} on {dataset}"
    if complete:  # the plots need every label of every image
        write_report(out, metrics, data, title, [], artifact.config, None, run / "metrics.csv", source)
    else:
        write_json(out / "metrics.json", metrics | {"report": "not written: labels scored on different images"})
    return metrics, out


def score_per_label(data: ScoredSet, thresholds: dict, n_resamples: int, seed: int) -> dict:
    """:func:`score` for a set whose targets are unknown (NaN) on some rows: each label scored on the images that
    give it (its own ``n`` and patient-level CI). The macro AUROC is the mean of the labels' points; its CI and the
    micro AUROC would need one image set and are NaN (``per_label`` says so)."""
    findings, first = {}, None
    for k, label in enumerate(data.labels):
        known = ~np.isnan(data.targets[:, k])
        y, p = data.targets[known, k : k + 1].astype(np.uint8), data.probabilities[known, k : k + 1]
        part = ScoredSet([label], data.images[known], data.patient_ids[known], y, p)
        metrics = score(part, {label: thresholds[label]}, n_resamples, seed)
        findings[label], first = metrics["findings"][label], first or metrics
    summary = summary_labels(data.labels)
    known = ~np.isnan(data.targets)
    pooled_y, pooled_p = data.targets[known].astype(np.uint8), data.probabilities[known]
    return first | {
        "findings": findings,
        "macro_auroc": macro_average(np.array([findings[label]["auroc"] for label in summary])),
        "macro_auroc_ci": [math.nan, math.nan],
        "micro_auroc": math.nan,
        "micro_auroc_ci": [math.nan, math.nan],
        "n_images": len(data.images),
        "n_patients": int(len(np.unique(data.patient_ids))),
        "labels": list(data.labels),
        "macro_labels": summary,
        "per_label": "labels scored on the images that give them (a blank or uncertain label is unknown, not negative)",
        "calibration": first["calibration"]
        | {
            "ece": float(expected_calibration_error(pooled_y, pooled_p)[0]),
            "brier": float(brier_score(pooled_y, pooled_p)[0]),
            "reliability": reliability(pooled_y, pooled_p, first["calibration"]["bins"]),
        },
    }


def evaluate_run(
    run: str | Path,
    split: str = "test",
    tta: bool = False,
    store: str | Path | None = None,
    batch_size: int = 64,
    n_resamples: int = 1000,
    seed: int = 0,
    rule: str = "youden",
) -> tuple[dict, Path]:
    """``cxr evaluate RUN``: predict the split with the best checkpoint, choose thresholds on validation, score.

    Writes ``RUN/thresholds.json``, the chosen ``rule``'s thresholds into ``RUN/checkpoints/best.ckpt``, and
    ``RUN/eval/<split>/`` (predictions.csv, targets.csv, metrics.json, plots, report.md/html). Returns the
    metrics and that folder.
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
    if store is not None and is_external(config, store, images):
        return evaluate_on_store(run, artifact, val, Store(store), split, tta, batch_size, n_resamples, seed)
    if "store" in parts:
        if store is None:
            raise CxrError(f"{run} was trained on several stores: score one with `cxr evaluate {run} --store STORE` "
                           "(another store than the run's is an external validation)")  # fmt: skip
        k = [path.resolve() for path in run_stores(config)].index(Path(store).resolve())
        mine = set(parts.loc[(parts["part"] == split) & (parts["store"] == k), "image"].astype(str))
        store = Store(store)
        rows = store.index[store.index["image"].isin(mine)]
        return evaluate_on_store(run, artifact, val, store, split, tta, batch_size, n_resamples, seed, rows)
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
        metrics["thresholds_chosen_on"] = "validation (the evaluated images themselves: optimistic)"
    preset = config.get("experiment")
    metrics["source"] = {"run": str(run), "split": split, "tta": tta, "store": str(store.path), "preset": preset}
    out = run / "eval" / split
    write_scored_set(data, out)
    write_json(out / "metrics.json", metrics)
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
) -> tuple[dict, Path]:
    """``cxr evaluate --predictions``: score a predictions CSV, write metrics.json, plots and reports to ``out``.

    ``val_predictions`` (same format, labels from the same metadata) is where thresholds are chosen; without it
    they are chosen on the scored images and flagged optimistic. ``preset`` picks the seed's reference column.
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
    metrics["source"] = {
        "predictions": str(predictions),
        "labels": str(labels_csv),
        "images": images_list and str(images_list),
        "preset": preset,
    }
    if expert:
        metrics["label_set"] = LABEL_SET
        metrics["expert_rules"] = {label: list(outputs) for label, outputs in EXPERT_RULES.items()}
    if expert or not_available:
        metrics["not_available"] = not_available
    predictions = Path(predictions)
    out = (
        Path(out) if out else predictions.parent / (predictions.name.removesuffix(".gz").removesuffix(".csv") + "-eval")
    )
    write_json(out / "metrics.json", metrics)
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
) -> tuple[dict, Path]:
    """``cxr evaluate RUN --labels google2019_…csv``: the run's ``RUN/eval/<split>/predictions.csv`` (written by
    :func:`evaluate_run`) scored against the expert labels into ``RUN/eval/<split>-google2019/``."""
    predictions = Path(run) / "eval" / split / "predictions.csv"
    if not predictions.is_file():
        raise CxrError(f"{predictions} is missing: `cxr evaluate {run}` writes it")
    if not (Path(labels_csv).is_file() and is_expert_file(Path(labels_csv))):
        raise CxrError(f"{labels_csv} is not Google's expert labels file (a RUN is scored on its store's labels)")
    out = Path(run) / "eval" / f"{split}-{LABEL_SET}"
    metrics, folder = evaluate_predictions(predictions, labels_csv, out=out, n_resamples=n_resamples, seed=seed)
    metrics["source"] |= {"run": str(run), "split": split}
    write_json(folder / "metrics.json", metrics)
    return metrics, folder
