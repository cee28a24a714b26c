"""Label efficiency: test AUROC of probes fitted on growing, patient-wise fractions of the training labels.

The usual comparison of pretrained encoders (1 %, 10 %, 100 % of the labels; e.g. Pérez-García et al., "RAD-DINO",
arXiv:2401.10815, and Xiao et al., "Delving into Masked Autoencoders for Multi-Label Thorax Disease
Classification", WACV 2023). A fraction keeps whole patients: the training part's patients are shuffled once with
the seed and the first ``ceil(f x P)`` taken, so the subsets are nested (1 % within 10 % within 100 %) and a
fraction's result differs from the next by the labels added, not by a new draw. Validation (where C is chosen) stays
whole, as in those protocols. Every row carries the patient-level bootstrap CI of the test AUROC
(:func:`cxr.evaluation.bootstrap.bootstrap_auroc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxr.errors import CxrError
from cxr.evaluation.bootstrap import bootstrap_auroc, percentile_interval
from cxr.evaluation.comparison import AurocWithCi
from cxr.evaluation.metrics import macro_average
from cxr.evaluation.results import Interval
from cxr.files import write_bytes, write_json


@dataclass(frozen=True)
class TestAuroc:
    """Per-label and macro test AUROC of a probe, each with its patient-level 95% CI."""

    macro_auroc: float
    macro_auroc_ci: Interval
    findings: dict[str, AurocWithCi]


@dataclass(frozen=True)
class FractionResult:
    """One probe fitted on a fraction of the training patients: its data, test AUROC and chosen strengths."""

    fraction: float
    train_patients: int
    train_images: int
    scores: TestAuroc
    chosen_c: list[float | None]  # per label; None: not fitted (one class in training)
    notes: dict[str, str]  # label → why it was not fitted / how C was chosen

    def to_dict(self) -> dict[str, object]:
        """A row of ``efficiency.json`` and of ``probe.json``'s ``fractions``."""
        findings = {label: value.to_dict() for label, value in self.scores.findings.items()}
        return {"fraction": self.fraction, "train_patients": self.train_patients, "train_images": self.train_images,
                "macro_auroc": self.scores.macro_auroc, "macro_auroc_ci": self.scores.macro_auroc_ci,
                "findings": findings, "chosen_c": self.chosen_c, "notes": self.notes}  # fmt: skip


def parse_fractions(text: str | list[float]) -> list[float]:
    """``"0.01,0.1,1"`` → sorted unique fractions in ``(0, 1]``."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise CxrError(f"--fractions must be numbers separated by commas, e.g. 0.01,0.1,1; got {text!r}") from None
    bad = [v for v in values if not 0 < v <= 1]
    if not values or bad:
        raise CxrError(f"--fractions must lie in (0, 1]; got {text!r}")
    return sorted(set(values))


def fraction_rows(train: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Index labels of ``train`` (rows with ``patient_id``) belonging to the first ``ceil(f x P)`` of its patients
    in a seeded shuffle: nested in ``fraction``, whole patients only."""
    patients = np.unique(train["patient_id"].to_numpy())
    order = np.random.default_rng(seed).permutation(patients)
    keep = order[: max(1, math.ceil(fraction * len(patients) - 1e-9))]
    return train.index[train["patient_id"].isin(keep)].to_numpy()


def auroc_with_ci(
    labels: list[str], targets: np.ndarray, probabilities: np.ndarray, patient_ids: np.ndarray, seed: int,
    resamples: int = 1000,
) -> TestAuroc:  # fmt: skip
    """Per-label and macro test AUROC with patient-level 95% CIs. Labels with unknown (NaN) targets on some rows are
    scored on the rows that give them, and the macro CI then needs one image set: NaN."""
    known = ~np.isnan(targets)
    if known.all():
        boot = bootstrap_auroc(targets.astype(np.uint8), probabilities, patient_ids, resamples, seed, micro=False)
        per_label = {label: (float(boot.point[k]), boot.interval()[k].tolist()) for k, label in enumerate(labels)}
        macro_ci = percentile_interval(boot.macro_samples).tolist()
    else:
        per_label = {}
        for k, label in enumerate(labels):
            rows = known[:, k]
            boot = bootstrap_auroc(targets[rows, k : k + 1].astype(np.uint8), probabilities[rows, k : k + 1],
                                   patient_ids[rows], resamples, seed, micro=False)  # fmt: skip
            per_label[label] = (float(boot.point[0]), boot.interval()[0].tolist())
        macro_ci = [math.nan, math.nan]
    macro = macro_average(np.array([value for value, _ in per_label.values()]))
    return TestAuroc(macro, macro_ci, {label: AurocWithCi(v, ci) for label, (v, ci) in per_label.items()})


def write_efficiency(out: Path, rows: list[FractionResult], labels: list[str], title: str) -> pd.DataFrame:
    """``efficiency.csv`` / ``.json`` / ``.md`` / ``.png`` in ``out``: one row per fraction."""
    table = pd.DataFrame(
        [{"fraction": r.fraction, "train_patients": r.train_patients, "train_images": r.train_images,
          "macro_auroc": r.scores.macro_auroc, "ci_low": r.scores.macro_auroc_ci[0],
          "ci_high": r.scores.macro_auroc_ci[1],
          **{f"auroc_{label}": r.scores.findings[label].auroc for label in labels}} for r in rows]
    )  # fmt: skip
    table.to_csv(out / "efficiency.csv", index=False, float_format="%.6g")
    document = {"title": title, "split": "test", "bootstrap": "patient", "rows": [row.to_dict() for row in rows]}
    write_json(out / "efficiency.json", document)
    lines = [f"# {title}", "", "Test macro AUROC with patient-level bootstrap 95% CIs, per fraction of the training "
             "patients (nested, seeded); C chosen on the whole validation part.", "",
             "| fraction | patients | images | macro AUROC | 95% CI |", "|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        low, high = r.scores.macro_auroc_ci
        lines.append(f"| {r.fraction:g} | {r.train_patients} | {r.train_images} | {r.scores.macro_auroc:.3f} | "
                     f"{low:.3f}–{high:.3f} |")  # fmt: skip
    write_bytes(out / "efficiency.md", ("\n".join(lines) + "\n").encode())
    _plot(out / "efficiency.png", table, title)
    return table


def _plot(path: Path, table: pd.DataFrame, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5), dpi=120)
    centre = table["macro_auroc"].to_numpy()
    low, high = table["ci_low"].to_numpy(), table["ci_high"].to_numpy()
    error = np.vstack([centre - low, high - centre])
    axes.errorbar(table["fraction"] * 100, centre, yerr=np.nan_to_num(error), marker="o", capsize=4)
    axes.set_xscale("log")
    axes.set_xlabel("training labels used (% of patients)")
    axes.set_ylabel("test macro AUROC (95% CI)")
    axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
