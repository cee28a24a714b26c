"""The subgroup section of an evaluation report, and subgroup gaps side by side for ``cxr compare``.

Per attribute a forest plot (AUROC with its 95% CI per group, one row per finding and the macro mean), one heatmap
of TPR gaps (rows: attribute and group; columns: findings, then underdiagnosis; ``*`` where the gap's CI excludes
0), and tables of the groups and of the gaps flagged. See :mod:`cxr.evaluation.subgroups` for the definitions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr.evaluation.results import EvaluationResult, GroupResult
from cxr.evaluation.tables import fmt, fmt_ci

UNDERDIAGNOSIS = "underdiagnosis"


def _file_name(attribute: str) -> str:
    return "subgroups-" + "".join(c if c.isalnum() else "_" for c in attribute) + ".png"


def plot_subgroup_forest(attribute: str, groups: dict[str, GroupResult], path: str | Path) -> Path:
    """AUROC [95% CI] of every group, per finding and macro: one row per finding, one colour per group."""
    from matplotlib.figure import Figure

    names = list(groups)
    keys = [*next(iter(groups.values())).findings, "macro"]
    figure = Figure(figsize=(6.5, 0.42 * len(keys) + 1.4), layout="constrained")
    ax = figure.subplots()
    offsets = np.linspace(-0.3, 0.3, len(names)) if len(names) > 1 else np.zeros(1)
    for g, name in enumerate(names):
        group = groups[name]
        entries = [(f.auroc, f.auroc_ci) for f in group.findings.values()] + [(group.macro_auroc, group.macro_auroc_ci)]
        centre = np.array([np.nan if v is None else v for v, _ in entries], dtype=float)
        bounds = np.array([[np.nan, np.nan] if ci[0] is None else ci for _, ci in entries], dtype=float)
        error = np.abs(np.nan_to_num(bounds.T - centre))
        rows = np.arange(len(keys)) + offsets[g]
        ax.errorbar(centre, rows, xerr=error, fmt="o", ms=3.5, capsize=2, lw=1, label=f"{name} ({group.n_images})")
    ax.axvline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_yticks(np.arange(len(keys)), keys, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="AUROC [95% CI, patient bootstrap]", title=f"{attribute}: AUROC by group", xlim=(0, 1.02))
    ax.legend(fontsize=7, loc="lower left", title="group (images)", title_fontsize=7)
    figure.savefig(path, dpi=90)
    return Path(path)


def gap_matrix(subgroups: dict[str, dict[str, GroupResult]]) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """Rows ``attribute: group``, columns findings + underdiagnosis; the gaps and whether each CI excludes 0."""
    rows, values, flags = [], [], []
    columns: list[str] = []
    for attribute, groups in subgroups.items():
        for name, group in groups.items():
            columns = columns or [*group.findings, UNDERDIAGNOSIS]
            rows.append(f"{attribute}: {name}")
            values.append([*(f.tpr_gap for f in group.findings.values()), group.underdiagnosis.gap])
            flags.append([*(f.gap_excludes_0 for f in group.findings.values()), group.underdiagnosis.gap_excludes_0])
    return rows, columns, np.array(values, dtype=float), np.array(flags, dtype=bool)


def plot_gap_heatmap(subgroups: dict[str, dict[str, GroupResult]], path: str | Path) -> Path:
    """TPR gap per group and finding (and the underdiagnosis gap), diverging around 0; ``*``: CI excludes 0."""
    from matplotlib.figure import Figure

    rows, columns, values, flags = gap_matrix(subgroups)
    figure = Figure(figsize=(0.62 * len(columns) + 3.2, 0.36 * len(rows) + 2.2), layout="constrained")
    ax = figure.subplots()
    limit = max(0.05, float(np.nanmax(np.abs(values)))) if np.isfinite(values).any() else 1.0
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(j, i, f"{value:+.2f}" + ("*" if flags[i, j] else ""), ha="center", va="center", fontsize=6)
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_title("TPR gap (group - median of groups; sex: F - M); * = 95% CI excludes 0", fontsize=8)
    figure.colorbar(image, ax=ax, shrink=0.8, label="gap")
    figure.savefig(path, dpi=90)
    return Path(path)


def subgroup_plots(metrics: EvaluationResult, out_dir: Path) -> dict[str, Path]:
    """A forest plot per attribute and the gap heatmap, written next to the report; none without subgroups."""
    if not metrics.subgroups:
        return {}
    plots = {f"subgroups:{attribute}": plot_subgroup_forest(attribute, groups, out_dir / _file_name(attribute))
             for attribute, groups in metrics.subgroups.items() if groups}  # fmt: skip
    plots["subgroups:gaps"] = plot_gap_heatmap(metrics.subgroups, out_dir / "subgroups-tpr-gap.png")
    return plots


def group_table(groups: dict[str, GroupResult]) -> tuple[list[str], list[list[str]]]:
    """One row per group: size, macro AUROC [CI] (findings averaged), underdiagnosis [CI] and its gap [CI]."""
    header = ["Group", "images", "patients", "macro AUROC [95% CI]", "findings in macro", "underdiagnosis [95% CI]",
              "gap [95% CI]"]  # fmt: skip
    rows = []
    for name, group in groups.items():
        under = group.underdiagnosis
        gap = fmt_ci(under.gap, under.gap_ci) + (" **(CI excludes 0)**" if under.gap_excludes_0 else "")
        rows.append([name, str(group.n_images), str(group.n_patients), fmt_ci(group.macro_auroc, group.macro_auroc_ci),
                     str(group.macro_n_findings), fmt_ci(under.rate, under.ci), gap])  # fmt: skip
    return header, rows


def flagged_rows(subgroups: dict[str, dict[str, GroupResult]]) -> list[list[str]]:
    """Every TPR gap whose CI excludes 0: attribute, group, finding, TPR, gap [CI]."""
    return [[attribute, name, label, fmt(f.tpr), fmt_ci(f.tpr_gap, f.tpr_gap_ci)]
            for attribute, groups in subgroups.items() for name, group in groups.items()
            for label, f in group.findings.items() if f.gap_excludes_0]  # fmt: skip


def subgroup_blocks(metrics: EvaluationResult, plots: dict[str, Path]) -> list[tuple]:
    """The report's "Subgroups" section (nothing when the evaluation had none)."""
    if not metrics.subgroups or metrics.subgroup_settings is None:
        return []
    settings = metrics.subgroup_settings
    definition = next((g.underdiagnosis.definition for groups in metrics.subgroups.values() for g in groups.values()),
                      "")  # fmt: skip
    missing = ", ".join(f"{attribute} {n}" for attribute, n in settings.missing.items())
    blocks: list[tuple] = [("h2", "Subgroups"), ("p", (
        f"TPR and FPR at the **{settings.rule}** thresholds chosen on **{settings.thresholds_chosen_on}**. "
        f"{settings.gap}. Underdiagnosis: {definition}. Intervals: the same patient-level bootstrap replicates for "
        f"every group. Images in no group (attribute unknown): {missing}."))]  # fmt: skip
    for attribute, groups in metrics.subgroups.items():
        blocks += [("h2", f"Subgroups by {attribute}"), ("table", *group_table(groups))]
        if f"subgroups:{attribute}" in plots:
            blocks.append(("img", plots[f"subgroups:{attribute}"], f"AUROC by {attribute}"))
    flagged = flagged_rows(metrics.subgroups)
    blocks.append(("h2", "TPR gaps whose 95% CI excludes 0"))
    if flagged:
        blocks.append(("table", ["Attribute", "Group", "Finding", "TPR", "gap [95% CI]"], flagged))
    else:
        blocks.append(("p", "None."))
    if "subgroups:gaps" in plots:
        blocks.append(("img", plots["subgroups:gaps"], "TPR gaps by group and finding"))
    return blocks


def gaps_side_by_side(named: dict[str, EvaluationResult]) -> tuple[list[str], list[list[str]]]:
    """TPR (and underdiagnosis) gaps [95% CI] of several evaluations in columns, one row per attribute, group and
    finding any of them scored; ``-`` where one did not. ``*`` marks a gap whose CI excludes 0."""
    keys: list[tuple[str, str, str]] = []
    cells: dict[str, dict[tuple[str, str, str], str]] = {name: {} for name in named}
    for name, metrics in named.items():
        for attribute, groups in (metrics.subgroups or {}).items():
            for group_name, group in groups.items():
                under = group.underdiagnosis
                entries = {label: (f.tpr_gap, f.tpr_gap_ci, f.gap_excludes_0) for label, f in group.findings.items()}
                entries[UNDERDIAGNOSIS] = (under.gap, under.gap_ci, under.gap_excludes_0)
                for label, (gap, interval, flagged) in entries.items():
                    key = (attribute, group_name, label)
                    keys += [key] if key not in keys else []
                    cells[name][key] = fmt_ci(gap, interval) + ("*" if flagged else "")
    rows = [[*key, *(cells[name].get(key, "-") for name in named)] for key in keys]
    return ["Attribute", "Group", "Finding", *named], rows
