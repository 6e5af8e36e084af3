"""The report's figure, one per model and setting: top-1 against the speed-up over the model's baseline
(left, with the speed-ups' 95% intervals as error bars) beside top-1 against GFLOPs (right, fewer to the
right, so that on both panels the cheaper points lie to the right). Matplotlib's object API, no pyplot.

What it takes care of, so that the picture reads at a glance:

- each method's curve runs from the baseline through its points in order along the panel's x axis
  (``method_curves``), whatever order the grid listed them in;
- measured and published figures share the speed-up axis (the published ones as speed-up over the
  paper's own baseline), so another machine's img/s never squeezes ours into a corner;
- the y axis keeps the useful range: points more than ``COLLAPSE_SPAN`` top-1 points below the best are
  drawn on a grey strip at the bottom edge, with their value (``y_range``);
- every point is labelled with its amount, each label placed where it overlaps no other label and no
  marker (``place_labels``); the reference point and the matched points (``matched_to``) are ringed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from tomecis.names import METHOD_NAMES

from . import paper
from .matched import Reference
from .tables import amount_text, baseline_of, method_order, ok, reduced_points, speedup_of

METHOD_MARKERS = ("o", "s", "^", "D", "v", "P")  # methods take these in the order of their table
BASELINE_MARKER = "*"  # the unreduced point: one black star, where every method's line starts
SPEEDUP, FLOPS = "speedup", "gflops"  # the two panels' x
AXIS_LABELS = {
    SPEEDUP: "speed-up over the unreduced model (model alone; bars: 95% interval)",
    FLOPS: "GFLOPs per image (fewer to the right)",
}
PUBLISHED_COMPARISON = "methods at a similar throughput, published"  # points, not a curve
COLLAPSE_SPAN = 15.0  # top-1 points below the best beyond which a point goes to the bottom strip

PLOT_SIZE_INCHES = (14.0, 6.0)
PLOT_DPI = 100  # the PNG is PLOT_SIZE_INCHES * PLOT_DPI pixels: 1400 x 600


@dataclass(frozen=True)
class PlotPoint:
    """One marker: ``x`` on the panel's axis, ``top1``, its label (empty: the baseline) and, on the
    speed-up panel, its 95% interval (``low``/``high``, None where there is none)."""

    x: float
    top1: float
    label: str
    low: Optional[float] = None
    high: Optional[float] = None
    matched: bool = False
    reference: bool = False


# --------------------------------------------------------------------------- what to draw (pure)


def x_of(row: pd.Series, panel: str, base_speed: Optional[float]) -> Tuple[Optional[float], ...]:
    """``(x, low, high)`` of a points row on ``panel``: its speed-up and interval (``tables.speedup_of``),
    or its GFLOPs (no interval); ``(None, None, None)`` where the row has no such number."""
    if panel == SPEEDUP:
        return speedup_of(row, base_speed)
    return (float(row[FLOPS]) if ok(row.get(FLOPS)) else None), None, None


def method_curves(
    model_rows: pd.DataFrame, panel: str, reference: Optional[Reference] = None
) -> Dict[str, List[PlotPoint]]:
    """Per reduced method (in table order), its points on ``panel`` sorted along x, the baseline's among
    them (at speed-up 1, or its GFLOPs); rows without a value on that axis are left out."""
    base = baseline_of(model_rows)
    base_speed = base.value("infer_samples_per_sec")
    start: List[PlotPoint] = []
    if base.row is not None and ok(base.row["top1"]):
        if panel == SPEEDUP:
            x = 1.0 if base_speed or ok(base.row.get(SPEEDUP)) else None
        else:
            x = base.value(FLOPS)
        start = [] if x is None else [PlotPoint(x, float(base.row["top1"]), "")]
    ref_row = reference.find(model_rows) if reference is not None else None
    curves: Dict[str, List[PlotPoint]] = {}
    reduced = reduced_points(model_rows)
    for method in sorted(dict.fromkeys(reduced["method"]), key=method_order):
        points = []
        for index, row in reduced[reduced["method"] == method].iterrows():
            x, low, high = x_of(row, panel, base_speed)
            if x is None or not ok(row["top1"]):
                continue
            matched = ok(row.get("matched_to")) and bool(row.get("matched_to"))
            is_ref = ref_row is not None and index == ref_row.name
            points.append(PlotPoint(x, float(row["top1"]), amount_text(row), low, high, matched, is_ref))
        if points:
            curves[method] = sorted(start + points, key=lambda p: p.x)
    return curves


def y_range(top1: Sequence[float], span: float = COLLAPSE_SPAN) -> Tuple[float, float, float]:
    """``(bottom, floor, top)`` of the top-1 axis: the points within ``span`` of the best lie between
    ``floor`` and ``top`` (with a margin); those further below are drawn on the strip between ``bottom``
    and ``floor``, at the edge, with their value."""
    best = max(top1)
    kept = [t for t in top1 if t >= best - span]
    low = min(kept)
    pad = max(0.5, 0.06 * (best - low))
    floor = low - pad
    collapsed = len(kept) < len(top1)
    return (floor - 2.5 * pad if collapsed else floor), floor, best + pad


@dataclass(frozen=True)
class Scale:
    """Where a panel draws: top-1 from ``bottom`` to ``top``, the points below ``floor`` on the strip
    under it (at its middle), and x from ``left`` to ``right``, set by the points above the floor (a
    collapsed point beyond them is drawn at the x edge, its label giving its x)."""

    bottom: float
    floor: float
    top: float
    left: float
    right: float

    @property
    def edge(self) -> float:
        return (self.bottom + self.floor) / 2

    def collapsed(self, p: PlotPoint) -> bool:
        return p.top1 < self.floor

    def place(self, p: PlotPoint) -> Tuple[float, float]:
        """The drawn ``(x, y)`` of ``p``: as it is, or on the strip with x held inside the panel."""
        if not self.collapsed(p):
            return p.x, p.top1
        inset = 0.02 * (self.right - self.left)
        return min(max(p.x, self.left + inset), self.right - inset), self.edge


def panel_scale(points: Sequence[PlotPoint], bottom: float, floor: float, top: float) -> Scale:
    """A panel's ``Scale``: x spans the points above ``floor`` (their intervals too) with a 6% margin;
    all points where fewer than two distinct x lie above it."""
    kept = [p for p in points if p.top1 >= floor]
    if len({p.x for p in kept}) < 2:
        kept = list(points)
    xs = [v for p in kept for v in (p.x, p.low, p.high) if v is not None]
    low, high = (min(xs), max(xs)) if xs else (0.0, 1.0)
    margin = 0.06 * (high - low) or 0.05 * abs(high) or 0.05
    return Scale(bottom, floor, top, low - margin, high + margin)


def published_curves(model: str) -> Dict[str, List[PlotPoint]]:
    """The paper's figures for ``model`` as speed-ups over the paper's own baseline (another machine): its
    ToMeCIS curve, and for DeiT-S each method of the comparison at a similar throughput."""
    curves: Dict[str, List[PlotPoint]] = {}
    if model in paper.PUBLISHED:
        name, by_r = paper.PUBLISHED[model]
        base_speed = by_r[0][1]
        curves[f"{name} ToMeCIS, published"] = [
            PlotPoint(speed / base_speed, top1, f"r{r}" if r in (8, 13, 16) else "")
            for r, (top1, speed) in sorted(by_r.items())
        ]
    if model == paper.COMPARISON_MODEL:
        _, _, _, base_speed = paper.PUBLISHED_COMPARISON_DEIT_S[0]
        comparison = [
            PlotPoint(speed / base_speed, top1, f"{label} (pub.)")
            for _, label, top1, speed in paper.PUBLISHED_COMPARISON_DEIT_S[1:]
        ]
        curves[PUBLISHED_COMPARISON] = sorted(comparison, key=lambda p: p.x)
    return curves


# --------------------------------------------------------------------------- the figure


def plot_model(
    model_rows: pd.DataFrame,
    path: str,
    title: str,
    published: bool = False,
    reference: Optional[Reference] = None,
) -> Optional[str]:
    """Write ``model_figure`` as a PNG (PLOT_SIZE_INCHES at PLOT_DPI); returns None, writing nothing,
    when no row has img/s or GFLOPs."""
    fig = model_figure(model_rows, title, published, reference)
    if fig is None:
        return None
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def model_figure(
    model_rows: pd.DataFrame, title: str, published: bool = False, reference: Optional[Reference] = None
):
    """The figure of one model in one setting (a matplotlib ``Figure``; None when no row has img/s or
    GFLOPs): top-1 against speed-up (left) and against GFLOPs (right), one curve per method from the
    baseline's black star, amounts labelled, the reference and matched points ringed. ``published``: the
    paper's figures on the speed-up panel (hollow, grey, dashed: another machine)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no backend switch

    if model_rows[["infer_samples_per_sec", FLOPS]].isna().all().all():
        return None
    fig = Figure(figsize=PLOT_SIZE_INCHES, dpi=PLOT_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    panels = {panel: method_curves(model_rows, panel, reference) for panel in (SPEEDUP, FLOPS)}
    extra = published_curves(model_rows["model"].iloc[0]) if published else {}
    everything = [p.top1 for curves in [*panels.values(), extra] for c in curves.values() for p in c]
    bottom, floor, top = y_range(everything) if everything else (0.0, 0.0, 100.0)
    labels: List[list] = []
    for ax, panel in zip(axes, (SPEEDUP, FLOPS)):
        shown = {**panels[panel], **(extra if panel == SPEEDUP else {})}
        scale = panel_scale([p for c in shown.values() for p in c], bottom, floor, top)
        labels.append(_draw_panel(ax, panel, panels[panel], extra if panel == SPEEDUP else {}, scale))
        ax.set_ylim(bottom, top)
        ax.set_xlim(*((scale.right, scale.left) if panel == FLOPS else (scale.left, scale.right)))
        if bottom < floor:
            ax.axhspan(bottom, floor, color="0.93", zorder=0)
            ax.text(
                0.005,
                scale.edge,
                " far below: value shown",
                transform=ax.get_yaxis_transform(),
                fontsize=7,
                color="0.4",
                va="center",
            )
    _finish(fig, axes, title, published)
    fig.canvas.draw()  # the layout is fixed here; labels are then placed on the final axes
    fig.set_layout_engine("none")
    for ax, items in zip(axes, labels):
        place_labels(ax, items)
    return fig


def _draw_panel(ax, panel: str, curves, published: Dict[str, List[PlotPoint]], scale: Scale) -> list:
    """The curves of one panel, drawn on ``scale``; returns the labels to place: (x, y, text, colour)."""
    colours = dict(zip(METHOD_NAMES, itertools.cycle(_colour_cycle())))
    markers = dict(zip(METHOD_NAMES[1:], itertools.cycle(METHOD_MARKERS)))
    unit = "x" if panel == SPEEDUP else " GFLOPs"
    labels: list = []
    for method, points in curves.items():
        colour = colours.get(method, "black")
        labels += _draw_curve(ax, points, method, colour, markers.get(method, "x"), scale, unit)
    for name, points in published.items():
        marker, style = ("o", "none") if name == PUBLISHED_COMPARISON else ("D", "--")
        labels += _draw_curve(ax, points, name, "0.5", marker, scale, unit, style, hollow=True)
    starts = [p for points in curves.values() for p in points if not p.label]
    if starts:
        ax.plot(
            [starts[0].x],
            [starts[0].top1],
            BASELINE_MARKER,
            color="black",
            markersize=14,
            label="unreduced (baseline)",
            zorder=5,
        )
    for kind, chosen in (("reference", lambda p: p.reference), ("matched", lambda p: p.matched)):
        ringed = [scale.place(p) for points in curves.values() for p in points if chosen(p)]
        if ringed:
            ax.plot(
                [x for x, _ in ringed],
                [y for _, y in ringed],
                "o",
                markersize=16 if kind == "reference" else 12,
                markerfacecolor="none",
                markeredgecolor="black",
                markeredgewidth=2.0 if kind == "reference" else 1.0,
                linestyle="none",
                label="the reference" if kind == "reference" else "matched to the reference",
                zorder=6,
            )
    return labels


def _draw_curve(
    ax,
    points: List[PlotPoint],
    name: str,
    colour,
    marker: str,
    scale: Scale,
    unit: str,
    style: str = "-",  # a matplotlib linestyle: "-", "--", "none" (points only)
    hollow: bool = False,
) -> list:
    """One method's line along x, its markers, its intervals as horizontal bars; a collapsed point (below
    the scale's floor) is drawn on the bottom strip as a downward triangle, its label giving its top-1
    and, where it lies beyond the panel, its x. Returns its labels to place."""
    drawn = [scale.place(p) for p in points]
    kept = [xy for p, xy in zip(points, drawn) if not scale.collapsed(p)]
    if len(kept) < len(drawn):  # the way down to the strip: dotted, under the curve (not its true slope)
        ax.plot(
            [x for x, _ in drawn],
            [y for _, y in drawn],
            ":",
            color=colour,
            linewidth=1.0,
            alpha=0.7,
            label="_nolegend_",
        )
    ax.plot(
        [x for x, _ in kept],
        [y for _, y in kept],
        linestyle=style,
        marker=marker,
        color=colour,
        markerfacecolor="none" if hollow else colour,
        label=name,
        linewidth=1.2,
        markersize=6,
    )
    bars = [p for p in points if p.low is not None and p.high is not None and not scale.collapsed(p)]
    if bars:
        ax.errorbar(
            [p.x for p in bars],
            [p.top1 for p in bars],
            xerr=[[p.x - p.low for p in bars], [p.high - p.x for p in bars]],
            fmt="none",
            ecolor=colour,
            elinewidth=1.0,
            capsize=3,
            alpha=0.8,
        )
    labels = []
    for p, (x, y) in zip(points, drawn):
        if scale.collapsed(p):
            ax.plot([x], [y], "v", color=colour, markersize=9, zorder=4)
            where = "" if x == p.x else f" at {p.x:.2f}{unit}"
            labels.append((x, y, f"{p.label} {p.top1:.1f}%{where}", colour))
        elif p.label:
            labels.append((x, y, p.label, colour))
    return labels


def _colour_cycle() -> list:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def _finish(fig, axes, title: str, published: bool) -> None:
    """Axis labels, grids, a reference line at speed-up 1, one legend for both panels, the title."""
    for ax, panel in zip(axes, (SPEEDUP, FLOPS)):
        if not ax.lines:
            ax.text(
                0.5,
                0.5,
                f"no {'speed-up' if panel == SPEEDUP else 'GFLOPs'} measured",
                transform=ax.transAxes,
                ha="center",
            )
        ax.set_xlabel(AXIS_LABELS[panel])
        ax.set_title(f"top-1 against {'speed-up' if panel == SPEEDUP else 'GFLOPs'}")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("top-1 (%)")
    if axes[0].lines:
        axes[0].axvline(1.0, color="0.6", linewidth=0.8, zorder=0)
    handles, names = axes[0].get_legend_handles_labels()
    more = [(h, n) for h, n in zip(*axes[1].get_legend_handles_labels()) if n not in names]
    handles, names = handles + [h for h, _ in more], names + [n for _, n in more]
    if handles:
        fig.legend(handles, names, loc="outside right upper", fontsize=8)
    note = (
        "\nhollow dashed grey: published figures (RTX 3090, batch 128), as speed-up over the paper's own baseline"
        if published
        else ""
    )
    fig.suptitle(title + note, fontsize=10)


# --------------------------------------------------------------------------- labels that do not collide

OFFSETS = [  # (dx, dy) in points from the marker, tried in this order, nearer rings first
    (dx * r, dy * r)
    for r in (7, 15, 26, 40)
    for dx, dy in ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1.2), (0, -1.4))
]


def place_labels(ax, items: Sequence[tuple]) -> None:
    """Annotate each ``(x, y, text, colour)`` at the first offset (``OFFSETS``) where its box overlaps no
    label placed before, no marker of the axes and stays inside the axes; where none is free, the
    offset overlapping least. Labels further than the first ring get a thin leader line."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    taken = _marker_boxes(ax)
    for x, y, text, colour in sorted(items, key=lambda item: (item[0], item[1])):
        best = None
        for dx, dy in OFFSETS:
            label = _annotate(ax, text, x, y, dx, dy, colour)
            box = label.get_window_extent(renderer)
            overlap = sum(_overlap(box, other) for other in taken) + _outside(box, frame)
            if best is None or overlap < best[0]:
                if best is not None:
                    best[1].remove()
                best = (overlap, label, box, (dx, dy))
            else:
                label.remove()
            if overlap == 0:
                break
        _, label, box, (dx, dy) = best
        if (dx, dy) != OFFSETS[0] and max(abs(dx), abs(dy)) > OFFSETS[0][0]:  # moved away: a leader line
            label.remove()
            _annotate(ax, text, x, y, dx, dy, colour, leader=True)
        taken.append(box)


def _annotate(ax, text: str, x: float, y: float, dx: float, dy: float, colour, leader: bool = False):
    """``text`` at ``(dx, dy)`` points from the data point ``(x, y)``, anchored by its corner (or side)
    nearest the point; ``leader``: a thin line from that corner to the point."""
    ha = "left" if dx > 0 else "right" if dx < 0 else "center"
    va = "bottom" if dy > 0 else "top" if dy < 0 else "center"
    arrow = None
    if leader:
        corner = (
            {"left": 0.0, "right": 1.0, "center": 0.5}[ha],
            {"bottom": 0.0, "top": 1.0, "center": 0.5}[va],
        )
        arrow = dict(
            arrowstyle="-", color=colour, linewidth=0.6, alpha=0.8, shrinkA=1, shrinkB=4, relpos=corner
        )
    return ax.annotate(
        text,
        (x, y),
        textcoords="offset points",
        xytext=(dx, dy),
        ha=ha,
        va=va,
        fontsize=7,
        color=colour,
        annotation_clip=False,
        arrowprops=arrow,
    )


def _marker_boxes(ax) -> list:
    """Display-space boxes of every marker of the axes' lines (a square of the marker's size)."""
    from matplotlib.transforms import Bbox

    boxes = []
    for line in ax.lines:
        if line.get_marker() in (None, "None", "none", ""):
            continue
        half = line.get_markersize() * ax.figure.dpi / 72.0 / 2
        for px, py in ax.transData.transform(list(zip(line.get_xdata(), line.get_ydata()))):
            boxes.append(Bbox([[px - half, py - half], [px + half, py + half]]))
    return boxes


def _overlap(a, b) -> float:
    """The area two display boxes share (0 when apart)."""
    w = min(a.x1, b.x1) - max(a.x0, b.x0)
    h = min(a.y1, b.y1) - max(a.y0, b.y0)
    return w * h if w > 0 and h > 0 else 0.0


def _outside(box, frame) -> float:
    """How much of ``box`` lies outside the axes ``frame`` (an area; 0 when inside), weighed heavily."""
    return 10.0 * (box.width * box.height - _overlap(box, frame))
