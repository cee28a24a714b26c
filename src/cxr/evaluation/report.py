"""Evaluation reports: the per-label tables, calibration, plots and provenance as ``report.md`` + ``report.html``.

The report is built once as a list of blocks (headings, paragraphs, tables, images, preformatted text) and
rendered twice, so the Markdown and the HTML always say the same thing. The HTML is self-contained: plots are
embedded as base64 PNGs (the same PNGs also sit next to it, and the Markdown links them). Plots use matplotlib's
``Figure`` directly (Agg canvas, no pyplot state), so reports can be written from any thread or server.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from cxr.evaluation.metrics import pr_curve, roc_curve
from cxr.evaluation.predictions import ScoredSet
from cxr.evaluation.references import Reference
from cxr.evaluation.results import EvaluationResult
from cxr.evaluation.subgroup_report import subgroup_blocks, subgroup_plots
from cxr.evaluation.tables import figure_grid as _figure
from cxr.evaluation.tables import fmt, fmt_ci
from cxr.evaluation.thresholds import RULES
from cxr.labels import FINDINGS

RULE_TITLES = {
    "youden": "Youden's J (max sensitivity + specificity - 1)",
    "f1_max": "F1-max",
    "sensitivity_90": "Sensitivity >= 0.90 (highest such threshold)",
}


def _curve_grid(data: ScoredSet, metrics: EvaluationResult, path: Path, kind: str) -> Path:
    figure, axes = _figure(len(data.labels))
    for k, (label, ax) in enumerate(zip(data.labels, axes, strict=False)):
        entry = metrics.findings[label]
        if kind == "roc":
            x, y = roc_curve(data.targets[:, k], data.probabilities[:, k])
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
            ax.set_title(f"{label}\nAUROC {fmt(entry.auroc)}", fontsize=8)
        else:
            x, y = pr_curve(data.targets[:, k], data.probabilities[:, k])
            x, y = np.r_[0.0, x], np.r_[y[:1], y]  # precision P_k holds over (R_{k-1}, R_k], as AP sums it
            ax.axhline(entry.prevalence, color="0.7", lw=0.8, ls="--")  # a random classifier's precision
            ax.set_title(f"{label}\nAUPRC {fmt(entry.auprc)}", fontsize=8)
        if len(x) > 2000:  # tens of thousands of steps draw the same picture as 2,000
            keep = np.unique(np.linspace(0, len(x) - 1, 2000).astype(int))
            x, y = x[keep], y[keep]
        ax.plot(x, y, lw=1.2, drawstyle="steps-pre" if kind == "pr" else "default")
        ax.set(xlim=(0, 1), ylim=(0, 1.01))
        ax.tick_params(labelsize=7)
    figure.supxlabel("false positive rate (1 - specificity)" if kind == "roc" else "recall (sensitivity)")
    figure.supylabel("sensitivity" if kind == "roc" else "precision (PPV)")
    figure.savefig(path, dpi=90)
    return path


def plot_roc_grid(data: ScoredSet, metrics: EvaluationResult, path: str | Path) -> Path:
    """One ROC panel per label (false positive rate vs sensitivity), AUROC in the title."""
    return _curve_grid(data, metrics, Path(path), "roc")


def plot_pr_grid(data: ScoredSet, metrics: EvaluationResult, path: str | Path) -> Path:
    """One precision-recall panel per label; the dashed line is the prevalence (a random classifier)."""
    return _curve_grid(data, metrics, Path(path), "pr")


def plot_reliability(metrics: EvaluationResult, path: str | Path) -> Path:
    """Reliability diagram: observed frequency vs mean predicted probability per bin, pooled and per label."""
    figure, (ax, hist) = _figure(2, panel=4.0)
    ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    for entry in metrics.findings.values():
        ax.plot(entry.reliability.mean_predicted, entry.reliability.observed, lw=0.7, alpha=0.35)
    pooled = metrics.calibration.reliability
    ax.plot(pooled.mean_predicted, pooled.observed, "o-", color="black", lw=1.6, label="pooled")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="observed frequency")
    ax.set_title(f"ECE {fmt(metrics.calibration.ece, 4)}, Brier {fmt(metrics.calibration.brier, 4)}")
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(pooled.bin_lower, pooled.count, width=1 / len(pooled.count), align="edge", color="0.5")
    hist.set(yscale="log", xlabel="predicted probability", ylabel="(image, label) pairs", xlim=(0, 1))
    figure.savefig(path, dpi=90)
    return Path(path)


def plot_training_curves(metrics_csv: str | Path, path: str | Path) -> Path | None:
    """Losses and validation macro AUROC per epoch from ``RUN/metrics.csv``; None when it has none of them."""
    import pandas as pd

    log = pd.read_csv(metrics_csv)
    losses = [c for c in ("train_loss", "val_loss") if c in log]
    if "epoch" not in log or not (losses or "val_macro_auroc" in log):
        return None
    figure, (loss_ax, auroc_ax) = _figure(2, panel=4.0)
    for column in losses:
        loss_ax.plot(log["epoch"], log[column], "o-", label=column)
    loss_ax.set(xlabel="epoch", ylabel="binary cross-entropy")
    loss_ax.legend(fontsize=8)
    if "val_macro_auroc" in log:
        auroc_ax.plot(log["epoch"], log["val_macro_auroc"], "o-", color="C2")
    auroc_ax.set(xlabel="epoch", ylabel="validation macro AUROC")
    figure.savefig(path, dpi=90)
    return Path(path)


def label_table(metrics: EvaluationResult, references: list[Reference]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-label AUROC table, with one column per reference."""
    header = ["Finding", "AUROC [95% CI]", "AUPRC", "Prevalence", "n_pos", "n", *[r.name for r in references]]
    rows = []
    for label, entry in metrics.findings.items():
        row = [label, fmt_ci(entry.auroc, entry.auroc_ci), fmt(entry.auprc), fmt(entry.prevalence, 4)]
        row += [str(entry.n_pos), str(entry.n), *[fmt(r.auroc.get(label), 2) for r in references]]
        rows.append(row)
    # A published macro/micro is over the 14 findings: beside ours only when ours averages the same labels.
    same_labels = set(metrics.macro_labels) == set(FINDINGS)
    summaries = (("macro", "macro_auroc", metrics.macro_auroc, metrics.macro_auroc_ci),
                 ("micro", "micro_auroc", metrics.micro_auroc, metrics.micro_auroc_ci))  # fmt: skip
    for name, key, value, interval in summaries:
        row = [f"**{name}**", fmt_ci(value, interval), "", "", "", str(metrics.n_images)]
        rows.append(row + [fmt(getattr(r, key) if same_labels else None, 2) for r in references])
    return header, rows


def threshold_table(metrics: EvaluationResult, rule: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of sensitivity/specificity/PPV/NPV/F1 at one rule's thresholds."""
    header = ["Finding", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"]
    rows = []
    for label, entry in metrics.findings.items():
        at = entry.thresholds[rule]
        rows.append([label, fmt(at.threshold, 4), *[fmt(v) for v in (at.sensitivity, at.specificity, at.ppv,
                                                                      at.npv, at.f1)]])  # fmt: skip
    return header, rows


def calibration_table(metrics: EvaluationResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows of ECE and Brier per label, then pooled."""
    rows = [[label, fmt(e.ece, 4), fmt(e.brier, 4)] for label, e in metrics.findings.items()]
    pooled = metrics.calibration
    rows.append(["**pooled**", fmt(pooled.ece, 4), fmt(pooled.brier, 4)])
    return ["Finding", f"ECE ({pooled.bins} bins)", "Brier"], rows


def build_blocks(
    metrics: EvaluationResult,
    plots: dict[str, Path],
    title: str,
    references: list[Reference],
    config: dict | None = None,
    counts: dict[str, int] | None = None,
    source: str | None = None,
) -> list[tuple]:
    """The report's content as render-neutral blocks: ``("h1"|"h2"|"p"|"pre", text)``, ``("table", header, rows)``,
    ``("img", path, caption)``. ``counts``: images per part of the split. ``config``: the run's config as its artifact
    records it, shown verbatim; a plain tree because it is a trained run's :class:`cxr.config.Config` or the tree a
    probe or an importer records."""
    boot = metrics.bootstrap
    blocks: list[tuple] = [("h1", title)]
    if source:
        blocks.append(("p", source))
    blocks.append(("p", f"{metrics.n_images} images of {metrics.n_patients} patients. "
                        f"95% CIs: {boot.method} bootstrap over {boot.unit}s ({boot.resamples} resamples, "
                        f"seed {boot.seed}): images of one patient are resampled together."))  # fmt: skip
    blocks += [("h2", "AUROC per finding"), ("table", *label_table(metrics, references))]
    blocks.append(("p", f"macro/micro over: {', '.join(metrics.macro_labels)}."))
    blocks += [("p", f"{r.name}: {r.citation}.") for r in references]
    blocks.append(("h2", "Operating points"))
    blocks.append(("p", f"Thresholds chosen on: **{metrics.thresholds_chosen_on}**; applied to the evaluated set."))
    for rule in RULES:
        blocks += [("h2", f"At {RULE_TITLES[rule]}"), ("table", *threshold_table(metrics, rule))]
    blocks += [("h2", "Calibration"), ("table", *calibration_table(metrics))]
    blocks += subgroup_blocks(metrics, plots)
    captions = {
        "roc": "ROC curves",
        "pr": "Precision-recall curves",
        "reliability": "Reliability",
        "training": "Training",
    }
    blocks.append(("h2", "Plots"))
    blocks += [("img", path, captions.get(name, name)) for name, path in plots.items()
               if not name.startswith("subgroups:")]  # fmt: skip
    if counts:
        blocks += [("h2", "Data"), ("table", ["part", "images"], [[str(k), str(v)] for k, v in counts.items()])]
    if config:
        import yaml

        blocks += [("h2", "Experiment config"), ("pre", yaml.safe_dump(config, sort_keys=False))]
    return blocks


def render_markdown(blocks: list[tuple]) -> str:
    """Blocks as GitHub Markdown; images are linked by file name (they sit next to the report)."""
    out = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2"):
            out.append(("# " if kind == "h1" else "## ") + rest[0])
        elif kind == "p":
            out.append(rest[0])
        elif kind == "pre":
            out.append(f"```yaml\n{rest[0].rstrip()}\n```")
        elif kind == "table":
            header, rows = rest
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out.append("\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]))
        elif kind == "img":
            out.append(f"![{rest[1]}]({Path(rest[0]).name})")
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn Markdown ``**bold**`` into ``<b>``."""
    parts = html.escape(text).split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}img{max-width:100%}"
    "pre{background:#f6f6f6;padding:1em;overflow:auto}"
)


def render_html(blocks: list[tuple]) -> str:
    """Blocks as one self-contained HTML page (PNG plots embedded as data URIs)."""
    title = next((rest[0] for kind, *rest in blocks if kind == "h1"), "cxr report")
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{_inline(rest[0])}</{kind}>")
        elif kind == "pre":
            body.append(f"<pre>{html.escape(rest[0])}</pre>")
        elif kind == "table":
            header, rows = rest
            cells = "".join(f"<th>{_inline(h)}</th>" for h in header)
            lines = [f"<tr>{cells}</tr>"] + [
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows
            ]
            body.append("<table>" + "".join(lines) + "</table>")
        elif kind == "img":
            data = base64.b64encode(Path(rest[0]).read_bytes()).decode("ascii")
            alt = html.escape(rest[1])
            body.append(
                f'<figure><img alt="{alt}" src="data:image/png;base64,{data}"><figcaption>{alt}</figcaption></figure>'
            )
    head = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    return f"<!DOCTYPE html>\n<html><head>{head}</head><body>\n" + "\n".join(body) + "\n</body></html>\n"


def write_report(
    out_dir: str | Path,
    metrics: EvaluationResult,
    data: ScoredSet,
    title: str,
    references: list[Reference],
    config: dict | None = None,
    counts: dict[str, int] | None = None,
    training_log: str | Path | None = None,
    source: str | None = None,
) -> dict[str, Path]:
    """Write the plots (PNG), ``report.md`` and ``report.html`` into ``out_dir``; return their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        "roc": plot_roc_grid(data, metrics, out_dir / "roc.png"),
        "pr": plot_pr_grid(data, metrics, out_dir / "pr.png"),
        "reliability": plot_reliability(metrics, out_dir / "reliability.png"),
    }
    plots |= subgroup_plots(metrics, out_dir)
    if training_log is not None and Path(training_log).is_file():
        curve = plot_training_curves(training_log, out_dir / "training.png")
        if curve is not None:
            plots["training"] = curve
    blocks = build_blocks(metrics, plots, title, references, config, counts, source)
    paths = dict(plots)
    paths["markdown"] = out_dir / "report.md"
    paths["markdown"].write_text(render_markdown(blocks))
    paths["html"] = out_dir / "report.html"
    paths["html"].write_text(render_html(blocks))
    return paths
