"""``cxr compare``: runs side by side, with paired patient-level bootstrap differences and p-values.

The original project reported Adam .70, SGD .74 and balanced .77 macro AUROC on one test set without any uncertainty, so
whether the optimizers really differ was never answered. Runs scored on the *same* images are compared pairwise:
every bootstrap resample draws one set of patients and evaluates all runs on it, so the variation shared by the
runs (which patients are in the sample) cancels in the difference — a paired bootstrap, the resampling analogue of
DeLong et al. (1988)'s test for correlated ROC curves. Differences are ``run - reference`` (the first run).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

import numpy as np

from cxr.errors import CxrError, InputFormatError
from cxr.evaluation.bootstrap import (
    bootstrap_auroc,
    paired_p_value,
    patient_codes,
    percentile_interval,
    resample_counts,
)
from cxr.evaluation.comparison import (
    MACRO,
    AurocWithCi,
    PairedBootstrap,
    PairedComparison,
    PairedDifference,
    SideBySide,
    SubgroupGaps,
)
from cxr.evaluation.metrics import macro_average
from cxr.evaluation.predictions import ScoredSet, load_predictions, read_scored_set, summary_labels
from cxr.evaluation.report import fmt, fmt_ci, render_html, render_markdown
from cxr.evaluation.results import EvaluationResult
from cxr.evaluation.subgroup_report import gaps_side_by_side
from cxr.files import write_json

Compared = TypeVar("Compared", PairedComparison, SideBySide)


def load_compared(item: str | Path, split: str = "test", labels_csv: str | Path | None = None,
                  images_list: str | Path | None = None) -> ScoredSet:  # fmt: skip
    """A run folder's ``eval/<split>`` predictions and targets, or a predictions CSV scored against ``labels_csv``."""
    item = Path(item)
    if item.is_dir():
        return read_scored_set(item / "eval" / split)
    if not item.is_file():
        raise CxrError(f"{item}: neither a run folder nor a predictions CSV")
    if labels_csv is None:
        raise CxrError(f"{item} is a predictions CSV: pass --labels DATA_ENTRY_CSV to score it")
    return load_predictions(item, labels_csv, images_list)


def align(named: dict[str, ScoredSet]) -> tuple[list[str], dict[str, ScoredSet]]:
    """Restrict every set to the labels all share and to the first set's image order.

    Raises :class:`CxrError` when the runs were scored on different images, or share no label.
    """
    names = list(named)
    first = named[names[0]]
    labels = [label for label in first.labels if all(label in s.labels for s in named.values())]
    if not labels:
        raise CxrError(f"the runs share no output label ({', '.join(f'{n}: {named[n].labels}' for n in names)})")
    reference = set(first.images.tolist())
    position = {image: i for i, image in enumerate(first.images)}
    aligned = {}
    for name, data in named.items():
        images = set(data.images.tolist())
        if images != reference:
            only_here, only_first = sorted(images - reference), sorted(reference - images)
            raise CxrError(
                f"{name} and {names[0]} were evaluated on different images ({len(only_here)} only in {name}, "
                f"e.g. {only_here[:3]}; {len(only_first)} only in {names[0]}, e.g. {only_first[:3]})"
            )
        order = np.argsort([position[image] for image in data.images])
        columns = [data.labels.index(label) for label in labels]
        targets = data.targets[order][:, columns]
        if name != names[0] and not np.array_equal(data.patient_ids[order], aligned[names[0]].patient_ids):
            raise CxrError(f"{name} and {names[0]} assign different patients to the same images: cannot pair them")
        if name != names[0] and not np.array_equal(targets, aligned[names[0]].targets):
            raise CxrError(f"{name} and {names[0]} disagree on the labels of the same images (different metadata?)")
        aligned[name] = ScoredSet(
            labels, first.images, data.patient_ids[order], targets, data.probabilities[order][:, columns]
        )
    return labels, aligned


def compare_sets(
    named: dict[str, ScoredSet], n_resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> PairedComparison:
    """Per-label and macro AUROC with CIs for every run, and paired differences against the first run
    (:class:`~cxr.evaluation.comparison.PairedComparison`; its ``to_dict`` is ``comparison.json``)."""
    labels, aligned = align(named)
    names = list(aligned)
    first = aligned[names[0]]
    codes, n_patients = patient_codes(first.patient_ids)
    counts = resample_counts(n_patients, n_resamples, seed)  # one draw of patients, shared by every run
    mask = np.isin(labels, summary_labels(labels))
    boots = {
        name: bootstrap_auroc(
            data.targets, data.probabilities, data.patient_ids, summary=mask, micro=False, counts=counts
        )
        for name, data in aligned.items()
    }
    auroc = {}
    for name, boot in boots.items():
        per_label = dict(zip(labels, np.c_[boot.point, boot.interval(level)].tolist(), strict=True))
        entry = {label: AurocWithCi(row[0], row[1:]) for label, row in per_label.items()}
        macro = macro_average(boot.point[mask])
        entry[MACRO] = AurocWithCi(macro, percentile_interval(boot.macro_samples, level).tolist())
        auroc[name] = entry
    base = boots[names[0]]
    differences = {}
    for name in names[1:]:
        boot = boots[name]
        samples = np.c_[boot.samples - base.samples, boot.macro_samples - base.macro_samples]
        point = np.r_[boot.point - base.point, macro_average(boot.point[mask]) - macro_average(base.point[mask])]
        intervals, p_values = percentile_interval(samples, level), paired_p_value(samples)
        differences[name] = {
            key: PairedDifference(float(point[i]), intervals[i].tolist(), float(p_values[i]))
            for i, key in enumerate([*labels, MACRO])
        }
    bootstrap = PairedBootstrap(resamples=n_resamples, seed=seed, level=level)
    return PairedComparison(names, labels, len(first.images), n_patients, bootstrap, auroc, differences)


def comparison_tables(result: PairedComparison) -> list[tuple]:
    """Report blocks: AUROC side by side, then differences vs the first run with p-values."""
    names = result.runs
    side = [[key, *[fmt_ci(result.auroc[n][key].auroc, result.auroc[n][key].auroc_ci) for n in names]]
            for key in result.keys]  # fmt: skip
    blocks: list[tuple] = [("h2", "AUROC [95% CI]"), ("table", ["Finding", *names], side)]
    for name in names[1:]:
        diffs = result.differences[name]
        rows = [[key, fmt_ci(d.difference, d.ci), fmt(d.p_value, 4)] for key, d in diffs.items()]
        header = ["Finding", f"{name} - {names[0]} [95% CI]", "p (two-sided)"]
        blocks += [("h2", f"{name} vs {names[0]} (paired)"), ("table", header, rows)]
    return blocks


def plot_forest(result: PairedComparison, path: str | Path) -> Path:
    """Forest plot: per label and macro, each run's AUROC difference from the first run with its 95% CI."""
    from matplotlib.figure import Figure

    names, keys = result.runs, result.keys
    others = names[1:]
    figure = Figure(figsize=(4.2 * max(1, len(others)), 0.32 * len(keys) + 1.2), layout="constrained")
    axes = figure.subplots(1, max(1, len(others)), squeeze=False, sharey=True).ravel()
    positions = np.arange(len(keys))[::-1]
    for ax, name in zip(axes, others, strict=False):
        diffs = [result.differences[name][key] for key in keys]
        centre = np.array([np.nan if d.difference is None else d.difference for d in diffs], dtype=float)
        bounds = np.array([[np.nan, np.nan] if d.ci[0] is None else d.ci for d in diffs], dtype=float)
        ax.errorbar(centre, positions, xerr=np.abs(bounds.T - centre), fmt="o", color="C0", ms=4, capsize=2)
        ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
        ax.set(title=f"{name} - {names[0]}", xlabel="AUROC difference")
    axes[0].set_yticks(positions, keys, fontsize=8)
    figure.savefig(path, dpi=90)
    return Path(path)


def write_comparison(result: PairedComparison, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.json``, ``forest.png``, ``comparison.md`` and ``comparison.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out_dir / "comparison.json", result.to_dict())}
    boot = result.bootstrap
    intro = (f"{len(result.runs)} runs on the same {result.n_images} images of {result.n_patients} patients. "
             f"Paired {boot.unit}-level bootstrap ({boot.resamples} resamples, seed {boot.seed}): every "
             "resample draws one set of patients for all runs; p-values are two-sided, and the smallest one "
             f"{boot.resamples} resamples can give is {2 / (boot.resamples + 1):.4f}.")  # fmt: skip
    blocks = [("h1", "Comparison of runs"), ("p", intro), *comparison_tables(result), *gap_blocks(result)]
    if len(result.runs) > 1:
        paths["forest"] = plot_forest(result, out_dir / "forest.png")
        blocks += [("h2", "Differences"), ("img", paths["forest"], "AUROC differences vs the first run")]
    paths["markdown"] = out_dir / "comparison.md"
    paths["markdown"].write_text(render_markdown(blocks))
    paths["html"] = out_dir / "comparison.html"
    paths["html"].write_text(render_html(blocks))
    return paths


def scored_folders(run: str | Path, split: str = "test") -> dict[str, Path]:
    """A run's evaluations of ``split``: ``RUN/eval/<split>`` (its own test part) and every ``<split>-<name>``
    (another store, one of its stores, expert labels), by folder name, those with a ``metrics.json``."""
    root = Path(run) / "eval"
    folders = [root / split, *sorted(root.glob(f"{split}-*"))]
    found = {folder.name: folder for folder in folders if (folder / "metrics.json").is_file()}
    if not found:
        raise CxrError(f"{root} holds no evaluation of {split!r}: run `cxr evaluate {run}` (and --store OTHER) first")
    return found


def _kind(metrics: EvaluationResult) -> str:
    if metrics.label_set:
        return f"expert labels ({metrics.label_set})"
    scored = metrics.store_scored
    if scored is None:
        return "internal"
    return f"external ({scored.dataset})" if scored.external else f"internal ({scored.dataset})"


def read_result(folder: str | Path) -> EvaluationResult:
    """The typed result of ``folder/metrics.json`` (written by ``cxr evaluate``)."""
    path = Path(folder) / "metrics.json"
    try:
        return EvaluationResult.from_dict(json.loads(path.read_text()))
    except ValueError as error:  # json.JSONDecodeError is one too
        raise InputFormatError(path, str(error)) from None


def side_by_side(runs: list[str | Path], split: str = "test") -> SideBySide:
    """Internal and external results of runs side by side, from their ``metrics.json`` files (``cxr compare
    --external``). The sets hold different images, so nothing is paired: each AUROC keeps its own patient-level CI,
    and a label a set did not score is ``None`` with the reason where its metrics give one
    (:class:`~cxr.evaluation.comparison.SideBySide`; its ``to_dict`` is ``comparison.json``)."""
    result = SideBySide(split)
    scored: dict[str, EvaluationResult] = {}
    for run in runs:
        for folder_name, folder in scored_folders(run, split).items():
            metrics = read_result(folder)
            name = f"{Path(run).name}:{folder_name}"
            result.sets.append(name)
            result.kind[name], result.n_images[name] = _kind(metrics), metrics.n_images
            entry = {label: AurocWithCi(v.auroc, v.auroc_ci) for label, v in metrics.findings.items()}
            entry[MACRO] = AurocWithCi(metrics.macro_auroc, metrics.macro_auroc_ci)
            result.auroc[name] = entry
            result.not_available[name] = metrics.not_available or {}
            result.labels.extend(label for label in metrics.findings if label not in result.labels)
            scored[name] = metrics
    for name in result.sets:
        result.auroc[name] = {key: result.auroc[name].get(key) for key in result.keys}
    return add_subgroup_gaps(result, scored)


def add_subgroup_gaps(result: Compared, named: dict[str, EvaluationResult]) -> Compared:
    """``result`` with its ``subgroup_gaps`` (the table of :func:`gaps_side_by_side`) where any set has subgroups."""
    if not any(metrics.subgroups for metrics in named.values()):
        return result
    header, rows = gaps_side_by_side(named)
    return dataclasses.replace(result, subgroup_gaps=SubgroupGaps(header, rows))


def run_results(items: dict[str, str | Path], split: str) -> dict[str, EvaluationResult]:
    """The ``eval/<split>/metrics.json`` results of the items that are run folders and have one."""
    folders = {name: Path(item) / "eval" / split for name, item in items.items()}
    return {name: read_result(folder) for name, folder in folders.items() if (folder / "metrics.json").is_file()}


def gap_blocks(result: PairedComparison | SideBySide) -> list[tuple]:
    """Report blocks of the subgroup gaps side by side (none when no set has subgroups)."""
    gaps = result.subgroup_gaps
    if not gaps:
        return []
    note = (
        "TPR gap = group TPR - median over the attribute's groups (sex: F - M); underdiagnosis gap the same on "
        "the share of sick images called normal; [95% CI] from each set's own patient bootstrap; "
        "* = CI excludes 0."
    )
    return [("h2", "Subgroup gaps"), ("p", note), ("table", gaps.header, gaps.rows)]


def side_by_side_rows(result: SideBySide) -> list[list[str]]:
    """Rows ``[label, "AUROC [CI]" per set]`` of :func:`side_by_side`; "not available" where the set's store lacks
    the label, "-" where the set did not score it for another reason."""

    def cell(name: str, key: str) -> str:
        value = result.auroc[name][key]
        if value is None:
            return "not available" if key in result.not_available[name] else "-"
        return fmt_ci(value.auroc, value.auroc_ci)

    return [[key, *(cell(name, key) for name in result.sets)] for key in result.keys]


def write_side_by_side(result: SideBySide, out_dir: str | Path) -> dict[str, Path]:
    """``comparison.json``, ``.md`` and ``.html`` of :func:`side_by_side`: AUROC [95% CI] per set, "not available"
    where a set's store could not give the label."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": write_json(out_dir / "comparison.json", result.to_dict())}
    names = result.sets
    rows = side_by_side_rows(result)
    sets = "; ".join(f"{name}: {result.kind[name]}, {result.n_images[name]} images" for name in names)
    intro = (f"Sets: {sets}. Different images: each AUROC has its own patient-level bootstrap CI and no difference "
             "is tested. Macro means are over each set's own labels.")  # fmt: skip
    blocks = [("h1", "Internal and external results"), ("p", intro), ("h2", "AUROC [95% CI]"),
              ("table", ["Finding", *names], rows), *gap_blocks(result)]  # fmt: skip
    paths["markdown"] = out_dir / "comparison.md"
    paths["markdown"].write_text(render_markdown(blocks))
    paths["html"] = out_dir / "comparison.html"
    paths["html"].write_text(render_html(blocks))
    return paths
