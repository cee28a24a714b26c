"""CLI commands: ``cxr evaluate`` (a run, or anyone's predictions CSV) and ``cxr compare``.

The work is in :mod:`cxr.evaluation`; its modules are imported inside the commands, so ``cxr --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from cxr.cli._app import app
from cxr.errors import CxrError
from cxr.evaluation.results import EvaluationResult
from cxr.evaluation.thresholds import ThresholdRule
from cxr.files import to_json, write_json


def _print_table(title: str, header: list[str], rows: list[list[str]], to_stderr: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=to_stderr)
    if not console.is_terminal:
        console = Console(stderr=to_stderr, width=200)  # a log or pipe: do not wrap the table at 80 columns
    keep = [i for i, name in enumerate(header) if name != "n"]  # every row has the same n: the title says it
    table = Table(title=title, title_justify="left")
    for i in keep:
        table.add_column(header[i], justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(row[i].replace("**", "") for i in keep))
    console.print(table)


def _emit_json(document: dict, target: str | None) -> None:
    """``--json FILE`` writes the JSON there too; ``--json -`` prints it on stdout (tables go to stderr)."""
    if target == "-":
        sys.stdout.write(to_json(document))
    elif target:
        write_json(target, document)


@app.command()
def evaluate(
    run: Path | None = typer.Argument(None, help="Run folder (from `cxr train`); omit with --predictions."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Score this predictions CSV instead."),
    labels: Path | None = typer.Option(
        None,
        "--labels",
        help="NIH Data_Entry_2017[_v2020].csv[.gz], or google2019_nih-chest-xray-labels.csv[.gz] (also with a RUN).",
    ),
    images: Path | None = typer.Option(None, "--images", help="Restrict to a list, e.g. test_list.txt."),
    val_predictions: Path | None = typer.Option(
        None, "--val-predictions", help="Validation predictions CSV to choose thresholds on (predictions mode)."
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="Preset of the original project whose reported AUROCs to show."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (predictions mode; default CSV-eval/)."),
    split: str = typer.Option("test", "--split", help="Split of a run to evaluate: test or val."),
    tta: bool = typer.Option(False, "--tta", help="Average with horizontally flipped images."),
    store: Path | None = typer.Option(None, "--store", help="The run's store, if it does not record one."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    rule: ThresholdRule = typer.Option(
        ThresholdRule.YOUDEN, "--rule", help="Threshold rule stored in the model (and for --subgroups TPR/FPR)."
    ),
    resamples: int = typer.Option(1000, "--resamples", min=1, help="Patient-level bootstrap resamples."),
    seed: int = typer.Option(0, "--seed"),
    json_out: str | None = typer.Option(None, "--json", help="Also write the metrics JSON to FILE ('-': stdout)."),
    subgroups: str | None = typer.Option(
        None, "--subgroups", help="Per-group metrics and gaps, e.g. sex,age,view,sex*age (or a --subgroup-file column)."
    ),
    age_bins: str | None = typer.Option(
        None, "--age-bins", help="Lower edges of the age groups (default 0,20,40,60,80)."
    ),
    subgroup_file: Path | None = typer.Option(
        None, "--subgroup-file", help="CSV of more attributes (race, site, ...) by Image Index or Patient ID."
    ),
) -> None:
    """Per-label AUROC with patient-level 95% CIs, AUPRC, operating points, calibration, plots and a report;
    with --subgroups, the same per patient group with TPR/FPR, gaps and underdiagnosis."""
    if (run is None) == (predictions is None):
        raise CxrError("give either a RUN folder or --predictions CSV --labels DATA_ENTRY_CSV")
    request = None
    if subgroups is not None:
        from cxr.evaluation.groups import SubgroupRequest

        request = SubgroupRequest.parse(subgroups, age_bins, subgroup_file)
    elif age_bins is not None or subgroup_file is not None:
        raise CxrError("--age-bins and --subgroup-file refine --subgroups: name the attributes with --subgroups")
    if predictions is not None:
        from cxr.evaluation.evaluate import evaluate_predictions

        if labels is None:
            raise CxrError("--predictions needs --labels DATA_ENTRY_CSV (NIH metadata, 2017 or v2020, gz or not)")
        for name, given in (("--tta", tta), ("--store", store is not None), ("--split", split != "test")):
            if given:
                raise CxrError(f"{name} applies to a RUN; --predictions scores the given probabilities as they are")
        metrics, folder = evaluate_predictions(
            predictions, labels, images, out, val_predictions, preset, resamples, seed, request, rule.value
        )
    else:
        from cxr.evaluation.evaluate import evaluate_run

        if split not in ("test", "val"):
            raise CxrError(f"--split must be test or val, not {split!r}")
        for name, value in (
            ("--images", images),
            ("--out", out),
            ("--val-predictions", val_predictions),
        ):
            if value is not None:
                raise CxrError(f"{name} applies to --predictions mode; a run is scored into RUN/eval/<split>/")
        if labels is not None:
            from cxr.data.datasets.google import is_expert_file

            if not (labels.is_file() and is_expert_file(labels)):
                raise CxrError(f"--labels with a RUN takes Google's expert labels file; {labels} is not one "
                               "(a run is scored on its store's labels)")  # fmt: skip
        metrics, folder = evaluate_run(run, split, tta, store, batch_size, resamples, seed, rule, request)
        if labels is not None:  # the run's predictions, scored again against the expert labels
            from cxr.evaluation.evaluate import evaluate_run_expert

            _print_run_table(metrics, folder, to_stderr=True)
            metrics, folder = evaluate_run_expert(run, split, labels, resamples, seed)
    _print_run_table(metrics, folder, to_stderr=json_out == "-")
    _emit_json(metrics.to_dict(), json_out)


def _print_run_table(metrics: EvaluationResult, folder: Path, to_stderr: bool) -> None:
    from cxr.evaluation.references import references_for
    from cxr.evaluation.report import label_table
    from cxr.evaluation.subgroup_report import group_table

    references = [] if metrics.label_set else references_for((metrics.source or {}).get("preset"))
    header, rows = label_table(metrics, references)
    title = f"{metrics.n_images} images, {metrics.n_patients} patients; CI: patient bootstrap; report: {folder}"
    _print_table(title, header, rows, to_stderr=to_stderr)
    for attribute, groups in (metrics.subgroups or {}).items():
        _print_table(f"by {attribute}", *group_table(groups), to_stderr=to_stderr)
    for label, reason in (metrics.not_available or {}).items():
        typer.echo(f"{label}: not available ({reason})", err=to_stderr)


@app.command()
def compare(
    items: list[str] = typer.Argument(..., help="Run folders (or predictions CSVs with --labels); first = reference."),
    split: str = typer.Option("test", "--split", help="Which RUN/eval/<split>/ to compare."),
    labels: Path | None = typer.Option(None, "--labels", help="NIH metadata CSV, for predictions CSVs."),
    images: Path | None = typer.Option(None, "--images", help="Restrict predictions CSVs to a list."),
    out: Path = typer.Option(Path("comparison"), "--out", help="Output folder."),
    resamples: int = typer.Option(1000, "--resamples", min=1),
    seed: int = typer.Option(0, "--seed"),
    json_out: str | None = typer.Option(None, "--json", help="Also write the comparison JSON to FILE ('-': stdout)."),
    external: bool = typer.Option(
        False, "--external", help="Each run's internal and external evaluations side by side (not paired)."
    ),
) -> None:
    """Side-by-side AUROC with CIs and paired patient-level bootstrap differences vs the first run.

    With --external: every RUN/eval/<split>[-<dataset>]/ of the runs (own test part, other stores, expert labels)
    side by side, each with its own CI; "not available" where a store lacks the label."""
    from cxr.evaluation.compare import (
        add_subgroup_gaps,
        compare_sets,
        comparison_tables,
        load_compared,
        run_results,
        write_comparison,
    )

    if external:
        from cxr.evaluation.compare import side_by_side, side_by_side_rows, write_side_by_side

        result = side_by_side(items, split)
        paths = write_side_by_side(result, out)
        _print_table("", ["Finding", *result.sets], side_by_side_rows(result), to_stderr=json_out == "-")
        if json_out != "-":
            typer.echo(f"report: {paths['html']}")
        _emit_json(result.to_dict(), json_out)
        return
    if len(items) < 2:
        raise CxrError("compare needs at least two runs (or predictions CSVs)")
    short = [Path(item).name for item in items]
    names = short if len(set(short)) == len(short) else [str(item) for item in items]
    if len(set(names)) != len(names):
        raise CxrError("the same run is given twice")
    named = {name: load_compared(item, split, labels, images) for name, item in zip(names, items, strict=True)}
    result = add_subgroup_gaps(compare_sets(named, resamples, seed), run_results(dict(zip(names, items, strict=True)),
                                                                                 split))  # fmt: skip
    paths = write_comparison(result, out)
    for block in comparison_tables(result):
        if block[0] == "table":
            _print_table("", block[1], block[2], to_stderr=json_out == "-")
    if json_out != "-":
        typer.echo(f"report: {paths['html']}")
    _emit_json(result.to_dict(), json_out)
