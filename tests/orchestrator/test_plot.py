"""orchestrator.plot, read back from matplotlib: each method's curve runs along its x axis from the
baseline, the x axis is the speed-up over the baseline (published figures on it too) with the intervals as
error bars, the y axis keeps the useful range with collapsed points on the bottom strip, labels do not
collide, and the reference and matched points are ringed (``matched_to`` optional)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from matplotlib.text import Text
from report_testing import REALISTIC_TINY, SMALL, Frames, correctness, realistic_tiny_frames

from orchestrator import plot
from orchestrator.matched import parse_reference

REFERENCE = parse_reference("tomecis:r13")
METHODS = ["tomecis", "tome", "pitome", "tofu", "evit"]


def figure(frames: Frames, **kwargs):
    return plot.model_figure(frames.points, "deit_tiny", reference=REFERENCE, **kwargs)


def lines_by_label(ax) -> dict:
    return {line.get_label(): line for line in ax.lines}


def test_curves_run_along_x_from_the_baseline_on_a_speedup_axis():
    speed_ax, flops_ax = figure(realistic_tiny_frames()).axes
    lines = lines_by_label(speed_ax)
    for method in METHODS:
        xs = list(lines[method].get_xdata())
        assert xs == sorted(xs) and xs[0] == 1.0, (method, xs)  # the baseline's speed-up, then along x
        assert list(lines[method].get_ydata())[0] == 74.0
    # the method's solid curve holds its points above the strip: tomecis at r8, keep0.9, r13, r16
    assert list(lines["tomecis"].get_xdata()) == [1.0, 1.27, 1.45, 1.56, 1.78]
    flops = lines_by_label(flops_ax)["tome"]
    gflops = list(flops.get_xdata())
    assert gflops == sorted(gflops) and flops_ax.get_xlim()[0] > flops_ax.get_xlim()[1]  # fewer to the right


def test_the_y_axis_keeps_the_useful_range_and_marks_collapsed_points_at_the_edge():
    speed_ax, _ = figure(realistic_tiny_frames()).axes
    bottom, top = speed_ax.get_ylim()
    assert 60.0 < bottom < 66.8 and 74.0 < top < 75.0  # keep0.7 at ~25% does not stretch the axis
    low, high = speed_ax.get_xlim()
    assert 0.9 < low < 1.0 and 1.95 < high < 2.2  # nor its speed-up of 4.5x the x axis
    texts = [t.get_text() for t in speed_ax.texts]
    for method in ["tomecis", "tome", "pitome", "tofu"]:
        top1, speedup = REALISTIC_TINY[(method, None, 0.7)]
        assert f"keep0.7 {top1:.1f}% at {speedup:.2f}x" in texts
    strip = [line for line in speed_ax.lines if line.get_marker() == "v" and line.get_label().startswith("_")]
    assert len(strip) == 4 and all(bottom < line.get_ydata()[0] < 66.8 for line in strip)


def test_speedup_intervals_are_error_bars_and_rows_without_them_have_none():
    speed_ax, _ = figure(realistic_tiny_frames()).axes
    bars = [c for c in speed_ax.collections if len(c.get_segments())]
    spans = sorted(round(float(np.ptp([p[0] for p in seg])), 4) for c in bars for seg in c.get_segments())
    assert round(2 * 0.03 * 1.56, 4) in spans  # tomecis r13: 1.56x ± 3%
    old = Frames()  # results from before the columns: speed-ups from img/s, no bars
    old.add(SMALL, "none", correctness(10, range(8)), speed=100.0)
    old.add(SMALL, "tomecis", correctness(10, range(7)), r=8, speed=150.0)
    old_ax, _ = plot.model_figure(old.points, "t").axes
    assert list(lines_by_label(old_ax)["tomecis"].get_xdata()) == [1.0, 1.5]
    assert not any(len(c.get_segments()) for c in old_ax.collections if hasattr(c, "get_segments"))


def test_labels_do_not_collide():
    fig = figure(realistic_tiny_frames(), published=True)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        texts = [t for t in ax.texts if "far below" not in t.get_text()]
        for t in texts:
            t.update_positions(renderer)  # where the annotation puts its words
        boxes = [Text.get_window_extent(t, renderer) for t in texts]  # the words, not a leader line
        assert len(boxes) >= 20
        for a, b in itertools.combinations(boxes, 2):
            assert not a.overlaps(b), (a, b)


def test_the_reference_and_matched_points_are_ringed_and_matched_to_may_be_absent():
    speed_ax, _ = figure(realistic_tiny_frames()).axes
    lines = lines_by_label(speed_ax)
    ring = lines["the reference"]
    assert (list(ring.get_xdata()), list(ring.get_ydata())) == ([1.56], [72.6])
    matched = lines["matched to the reference"]
    assert sorted(zip(matched.get_xdata(), matched.get_ydata())) == [(1.62, 72.2), (1.95, 66.8)]
    without, _ = figure(realistic_tiny_frames(matched=False)).axes
    assert "matched to the reference" not in lines_by_label(without) and "the reference" in lines_by_label(
        without
    )


def test_published_figures_share_the_speedup_axis():
    speed_ax, _ = figure(realistic_tiny_frames(), published=True).axes
    published = lines_by_label(speed_ax)["DeiT-Ti ToMeCIS, published"]
    xs = list(published.get_xdata())
    assert xs[0] == 1.0 and xs == sorted(xs) and xs[-1] == pytest.approx(5367.96 / 3342.88)


def test_the_png_is_written(tmp_path):
    path = plot.plot_model(realistic_tiny_frames().points, str(tmp_path / "p.png"), "t", True, REFERENCE)
    assert path == str(tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size > 20_000
