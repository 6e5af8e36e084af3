"""The report's figure: top-1 against img/s beside Δ top-1 against speed-up over r = 0 (matplotlib, no pyplot)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import List, Optional, Tuple

import pandas as pd

from tomecis.names import MODES

from . import paper
from .tables import lines_of

MODE_MARKERS = ("o", "s", "^", "D", "v", "P")  # merge modes take these in the order of their table

PLOT_SIZE_INCHES = (14.0, 6.0)
PLOT_DPI = 100  # the PNG is PLOT_SIZE_INCHES * PLOT_DPI pixels: 1400 x 600


def plot_accuracy_throughput(
    rows: pd.DataFrame, path: str, title: str, published: bool = False
) -> Optional[str]:
    """Write a PNG (PLOT_SIZE_INCHES at PLOT_DPI): top-1 against img/s (left) and Δ top-1 against
    speed-up over r = 0 (right), one line per model and mode, each point labelled with its r.

    ``rows``: points rows of one setting (model, short_name, mode, r, top1, infer_samples_per_sec).
    Rows without img/s are left out; returns None (writing nothing) when no row has img/s and no
    published series is asked for."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no backend switch

    timed = rows[rows["infer_samples_per_sec"].notna()]
    if timed.empty and not published:
        return None
    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colours = itertools.cycle(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
    markers = {mode: m for mode, m in zip(MODES, itertools.cycle(MODE_MARKERS))}  # one marker per merge mode
    speeds: List[float] = []
    for model, mode, line in lines_of(timed):
        base = line[line["r"] == 0]
        reference = (base.iloc[0]["infer_samples_per_sec"], base.iloc[0]["top1"]) if not base.empty else None
        label = f"{line['short_name'].iloc[0]} {mode}"
        marker = markers.get(mode, "x")
        _draw_pair(
            axes,
            line["infer_samples_per_sec"],
            line["top1"],
            line["r"],
            reference,
            label,
            next(colours),
            marker,
        )
        speeds.extend(line["infer_samples_per_sec"])
    if published:
        speeds.extend(_draw_published(axes))
    _label_axes(axes, speeds)
    fig.suptitle(
        title
        + (
            "\ndashed grey: published figures from another machine (paper), for reference"
            if published
            else ""
        ),
        fontsize=10,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _draw_published(axes) -> List[float]:
    """The paper's lines, dashed grey with hollow diamonds; returns their img/s."""
    speeds: List[float] = []
    for model, (name, by_r) in paper.PUBLISHED.items():
        rs = sorted(by_r)
        top1 = pd.Series([by_r[r][0] for r in rs])
        speed = pd.Series([by_r[r][1] for r in rs])
        label = f"{name} published (RTX 3090, batch 128, 50k images)"
        colour = "0.35" if "tiny" in model else "0.6"
        _draw_pair(
            axes, speed, top1, pd.Series(rs), (by_r[0][1], by_r[0][0]), label, colour, "D", "--", hollow=True
        )
        speeds.extend(speed)
    return speeds


def _label_axes(axes, speeds: List[float]) -> None:
    """Log img/s axis when the speeds span more than 8x; titles, labels, grids and legends."""
    ax_abs, ax_rel = axes
    if speeds and max(speeds) / max(min(speeds), 1e-9) > 8:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax_abs.set_xscale("log")
        ax_abs.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_abs.xaxis.set_major_formatter(ScalarFormatter())
        ax_abs.xaxis.set_minor_formatter(NullFormatter())
    ax_abs.set_xlabel(
        "img/s (model alone; log scale)" if ax_abs.get_xscale() == "log" else "img/s (model alone)"
    )
    ax_abs.set_ylabel("top-1 (%)")
    ax_abs.set_title("top-1 against throughput")
    ax_rel.set_xlabel("speed-up over r = 0")
    ax_rel.set_ylabel("Δ top-1 against r = 0 (points)")
    ax_rel.set_title("relative to each line's r = 0")
    for ax in (ax_abs, ax_rel):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)


def _draw_pair(
    axes,
    speed: pd.Series,
    top1: pd.Series,
    r: pd.Series,
    reference: Optional[Tuple[float, float]],
    label: str,
    colour,
    marker: str,
    style: str = "-",
    hollow: bool = False,
) -> None:
    """One line on the left axes (top-1 against img/s) and, when its r = 0 (img/s, top-1) ``reference``
    is known, on the right (Δ top-1 against speed-up)."""
    ax_abs, ax_rel = axes
    _draw_line(ax_abs, speed, top1, r, label, colour, marker, style, hollow)
    if reference is not None:
        base_speed, base_top1 = reference
        _draw_line(ax_rel, speed / base_speed, top1 - base_top1, r, label, colour, marker, style, hollow)


def _draw_line(
    ax,
    x: pd.Series,
    y: pd.Series,
    r: pd.Series,
    label: str,
    colour,
    marker: str,
    style: str,
    hollow: bool = False,
) -> None:
    face = "none" if hollow else colour
    ax.plot(
        list(x),
        list(y),
        style,
        marker=marker,
        color=colour,
        markerfacecolor=face,
        label=label,
        linewidth=1.2,
        markersize=5,
    )
    for xi, yi, ri in zip(x, y, r):
        ax.annotate(
            str(int(ri)), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour
        )
