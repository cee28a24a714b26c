"""Numbers as report cells and the figure grid every report plot starts from (shared by the evaluation report, the
subgroup section and ``cxr compare``)."""

from __future__ import annotations

import math


def figure_grid(n_panels: int, columns: int = 5, panel: float = 2.6):
    """A constrained-layout figure of ``n_panels`` axes in rows of ``columns`` (unused axes hidden)."""
    from matplotlib.figure import Figure  # the Agg canvas, without pyplot's global state

    columns = min(columns, n_panels)
    rows = math.ceil(n_panels / columns)
    figure = Figure(figsize=(panel * columns, panel * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for extra in axes[n_panels:]:
        extra.set_visible(False)
    return figure, axes


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table; NaN/None as an en dash."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}"


def fmt_ci(value: float | None, interval: list | None) -> str:
    """``0.812 [0.790, 0.833]``."""
    if not interval or interval[0] is None or not math.isfinite(interval[0]):
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"
