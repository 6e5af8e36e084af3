"""The report's figures, one per model and setting: top-1 against measured img/s beside top-1 against
GFLOPs, one line per method (matplotlib's object API, no pyplot)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import List, Optional

import pandas as pd

from tomecis.names import METHOD_NAMES

from . import paper
from .tables import amount_text, baseline_of, reduced_points

METHOD_MARKERS = ("o", "s", "^", "D", "v", "P")  # methods take these in the order of their table
BASELINE_MARKER = "*"  # the unreduced point: one black star, where every method's line starts
AXES = (("infer_samples_per_sec", "img/s (model alone)"), ("gflops", "GFLOPs per image"))

PLOT_SIZE_INCHES = (14.0, 6.0)
PLOT_DPI = 100  # the PNG is PLOT_SIZE_INCHES * PLOT_DPI pixels: 1400 x 600


def plot_model(model_rows: pd.DataFrame, path: str, title: str, published: bool = False) -> Optional[str]:
    """Write a PNG (PLOT_SIZE_INCHES at PLOT_DPI) for one model in one setting: top-1 against img/s
    (left) and against GFLOPs (right), one line per method from the baseline (a black star shared by
    every line) through its points, each labelled with its amount (``r13``, ``keep0.7``).

    ``published``: the paper's ToMeCIS curve and its comparison points (hollow, dashed grey; another
    machine) on the img/s axes. Returns None, writing nothing, when no row has img/s or GFLOPs."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no backend switch

    if model_rows[[column for column, _ in AXES]].isna().all().all():
        return None
    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, (column, label) in zip(axes, AXES):
        _draw_methods(ax, model_rows, column)
        if published and column == "infer_samples_per_sec":
            _draw_published(ax, model_rows["model"].iloc[0])
        _label(ax, label)
    note = (
        "\nhollow dashed grey: published figures from another machine (RTX 3090, batch 128)"
        if published
        else ""
    )
    fig.suptitle(title + note, fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _draw_methods(ax, model_rows: pd.DataFrame, column: str) -> None:
    """The baseline star and one line per method on ``column`` (rows without it left out)."""
    import matplotlib

    colours = itertools.cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    markers = dict(zip(METHOD_NAMES[1:], itertools.cycle(METHOD_MARKERS)))
    base = baseline_of(model_rows).row
    start = [] if base is None or pd.isna(base[column]) else [(float(base[column]), float(base["top1"]), "")]
    reduced = reduced_points(model_rows)
    for method, rows in reduced.groupby("method", sort=False):
        timed = rows[rows[column].notna()]
        if timed.empty:
            continue
        points = sorted(
            (float(row[column]), float(row["top1"]), amount_text(row)) for _, row in timed.iterrows()
        )
        _draw_line(ax, sorted(start + points), method, next(colours), markers.get(method, "x"))
    if start:
        x, y, _ = start[0]
        ax.plot(
            [x], [y], BASELINE_MARKER, color="black", markersize=14, label="unreduced (baseline)", zorder=5
        )


def _draw_line(
    ax, points: List[tuple], label: str, colour, marker: str, style: str = "-", hollow: bool = False
) -> None:
    """``points``: (x, top-1, amount label) in drawing order; an empty label (the baseline) gets no marker text."""
    xs, ys, labels = zip(*points)
    ax.plot(
        xs,
        ys,
        style,
        marker=marker,
        color=colour,
        markerfacecolor="none" if hollow else colour,
        label=label,
        linewidth=1.2,
        markersize=5,
    )
    for x, y, text in points:
        if text:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)


def _draw_published(ax, model: str) -> None:
    """The paper's ToMeCIS curve for ``model`` and, for DeiT-S, its comparison points: hollow, grey, dashed."""
    if model in paper.PUBLISHED:
        name, by_r = paper.PUBLISHED[model]
        points = [(speed, top1, "") for _, (top1, speed) in sorted(by_r.items())]
        _draw_line(ax, points, f"{name} ToMeCIS, published", "0.5", "D", "--", hollow=True)
    if model == paper.COMPARISON_MODEL:
        for i, (_, label, top1, speed) in enumerate(paper.PUBLISHED_COMPARISON_DEIT_S):
            ax.plot([speed], [top1], "o", color="0.3", markerfacecolor="none", markersize=8)
            ax.annotate(
                f"{label} (published)",
                (speed, top1),
                textcoords="offset points",
                xytext=(-60, -12 - 8 * i),  # staggered: the published points lie close together
                fontsize=7,
                color="0.3",
            )


def _label(ax, xlabel: str) -> None:
    """Log x axis when the values span more than 8x; labels, grid, legend; a note on an empty axis."""
    xs = [x for line in ax.lines for x in line.get_xdata()]
    if not xs:
        ax.text(0.5, 0.5, f"no {xlabel.split()[0]} measured", transform=ax.transAxes, ha="center")
    elif min(xs) > 0 and max(xs) / min(xs) > 8:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        xlabel += " (log scale)"
    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"top-1 against {xlabel.split()[0]}")
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
