"""The report on hand-made results: cells, partial grids, one baseline per model, settings kept apart,
empty directories, paired statistics, the plots, --paper, the CLI."""

from __future__ import annotations

import datetime as dt
import math
import struct
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import pytest
from conftest import REPO
from report_testing import FINGERPRINT, N_CLASSES, SMALL, TINY, Frames, correctness, section, table_rows

from orchestrator import paper, report
from orchestrator.grid import GridPoint
from orchestrator.plot import PLOT_DPI, PLOT_SIZE_INCHES
from orchestrator.results import ResultsDir, predictions_table
from orchestrator.stats import bootstrap_delta_ci, mcnemar_exact, paired_stats
from orchestrator.tables import sweep_tables


def run_frames(frames: Frames, out: Optional[Path] = None, **kwargs) -> report.Report:
    """The report of ``frames`` (in memory, as ``ResultsDir`` would hand them over)."""
    cfg = report.ReportConfig(
        results="results", out=str(out) if out else None, bootstrap_samples=2000, **kwargs
    )
    return report.report_from_frames(frames.points, frames.predictions, cfg)


def grid_frames() -> Frames:
    """deit_small: the baseline (right on 0..79), tomecis r8 and r16, tome r8, evit keep0.7;
    deit_tiny: the baseline and tomecis r16 (r8 missing). 100 images each."""
    f = Frames()
    f.add(SMALL, "none", correctness(100, range(80)), speed=100.0)
    f.add(SMALL, "tomecis", correctness(100, list(range(3, 75)) + [95, 96, 97]), r=8, speed=150.0)
    f.add(SMALL, "tomecis", correctness(100, range(60)), r=16, speed=200.0)
    f.add(SMALL, "tome", correctness(100, range(70)), r=8, speed=160.0)
    f.add(SMALL, "evit", correctness(100, range(72)), keep=0.7, speed=170.0, gflops=3.2)
    f.add(TINY, "none", correctness(100, range(90)), speed=40.0)
    f.add(TINY, "tomecis", correctness(100, range(85)), r=16, speed=70.0)
    return f


def model_rows(markdown: str, heading: str):
    """The rows of the model table under ``heading``, keyed ``method r keep``."""
    text = section(markdown, heading)
    return table_rows(text.split("####")[0], key_cells=3)


# --------------------------------------------------------------------------- tables


def test_values_land_in_the_right_cells():
    md = run_frames(grid_frames()).markdown
    small = model_rows(md, "deit_small (deit_small_patch16_224)")
    assert small["none 0 —"][3:8] == ["80.00", "100.00", "100.0", "1.00x", "+0.00"]
    assert small["tomecis 8 —"][3:8] == ["75.00", "100.00", "150.0", "1.50x", "-5.00"]
    assert small["tomecis 16 —"][3:8] == ["60.00", "100.00", "200.0", "2.00x", "-20.00"]
    assert small["tome 8 —"][3:8] == ["70.00", "100.00", "160.0", "1.60x", "-10.00"]
    assert small["evit — 0.7"][3:10] == ["72.00", "100.00", "170.0", "1.70x", "-8.00", "3.20", "102"]
    assert small["tomecis 8 —"][8:] == ["3.45", "118"]  # GFLOPs, tokens left
    tiny = model_rows(md, "deit_tiny (deit_tiny_patch16_224)")
    assert tiny["tomecis 16 —"][3:8] == ["85.00", "100.00", "70.0", "1.75x", "-5.00"]


def test_the_baseline_row_is_shown_once_per_model():
    md = run_frames(grid_frames()).markdown
    table = section(md, "deit_small (deit_small_patch16_224)").split("####")[0]
    assert sum(line.startswith("| none |") for line in table.splitlines()) == 1
    lines = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[1].strip() for line in lines][0] == "none"  # the baseline first


def test_partial_grid_shows_missing_points():
    md = run_frames(grid_frames()).markdown
    small = section(md, "deit_small (deit_small_patch16_224)")
    rows = model_rows(md, "deit_small (deit_small_patch16_224)")
    assert rows["tome 16 —"][3] == "missing"  # tomecis has r16, tome lacks it
    assert rows["tomecis — 0.7"][3] == "missing"  # evit has keep0.7, tomecis takes keep too
    assert not any(
        key.startswith("evit 8") or key.startswith("evit 16") for key in rows
    )  # evit takes keep only
    assert "missing: tome at r16, keep0.7" in small
    tiny = section(md, "deit_tiny (deit_tiny_patch16_224)")
    assert model_rows(md, "deit_tiny (deit_tiny_patch16_224)")["tomecis 8 —"][3] == "missing"
    assert "missing: tomecis at r8" in tiny


def test_a_model_without_baseline_says_so():
    f = Frames().add(TINY, "tome", correctness(20, range(10)), r=8)
    md = run_frames(f).markdown
    assert model_rows(md, "deit_tiny")["tome 8 —"][6:8] == ["—", "—"]
    assert "no unreduced point (none, r = 0)" in md
    assert "| deit_tiny | tome r8 vs baseline | — |" in md and "no baseline point" in md


def test_no_throughput_is_said_not_invented(tmp_path):
    f = Frames()
    f.add(TINY, "none", correctness(20, range(10)), speed=None, gflops=float("nan"))
    f.add(TINY, "tomecis", correctness(20, range(9)), r=8, speed=None, gflops=float("nan"))
    rep = run_frames(f, tmp_path / "rep")
    rows = model_rows(rep.markdown, "deit_tiny")
    assert rows["tomecis 8 —"][5:8] == ["—", "—", "-5.00"]
    assert "--no-bench" in rep.markdown
    assert not any(name.endswith(".png") for name in rep.files)


def test_settings_are_never_mixed():
    f = Frames()
    f.add(TINY, "none", correctness(10, range(8)), amp="none")
    f.add(TINY, "none", correctness(10, range(5)), amp="fp16")
    f.add(TINY, "tome", correctness(10, range(4)), r=8, amp="fp16", fingerprint="fedcba9876543210")
    md = run_frames(f).markdown
    assert md.count("## Setting") == 3
    fp16 = section(md, f"dataset {FINGERPRINT}, amp fp16")
    assert "50.00" in fp16 and "80.00" not in fp16
    only = run_frames(f, amp="fp16", dataset="0123").markdown
    assert only.count("## Setting") == 1 and "50.00" in only


def test_random_and_real_weights_are_different_settings():
    f = Frames()
    f.add(TINY, "none", correctness(10, range(1)), weights="random")
    f.add(TINY, "none", correctness(10, range(8)), weights="ckpt_0123456789ab")
    md = run_frames(f).markdown
    assert md.count("## Setting") == 2
    assert "10.00" in section(md, "weights random") and "80.00" not in section(md, "weights random")
    assert "80.00" in section(md, "weights ckpt_0123456789ab")


def test_rows_from_before_a_setting_column_existed_are_read_not_dropped():
    f = Frames()
    f.add(TINY, "none", correctness(10, range(8)))
    f.add(TINY, "none", correctness(10, range(6)), device=None)
    points = f.points
    points.loc[1, "weights"] = None
    md = report.report_from_frames(points, f.predictions, report.ReportConfig(results="r", out=None)).markdown
    assert md.count("## Setting") == 2
    assert "60.00" in section(md, "unknown device, weights unknown weights")


def test_the_latest_row_of_a_point_wins():
    f = Frames()
    f.add(TINY, "none", correctness(10, range(8)), minute=0)
    f.add(TINY, "tome", correctness(10, range(3)), r=8, minute=1)
    f.add(TINY, "tome", correctness(10, range(7)), r=8, minute=2)  # rerun with --force
    md = run_frames(f).markdown
    assert model_rows(md, "deit_tiny")["tome 8 —"][3] == "70.00"
    assert "1 older row(s) of the same point ignored" in md


def test_filter_that_matches_nothing_names_what_is_there():
    with pytest.raises(report.NoResultsError, match="--amp.*present: none"):
        run_frames(grid_frames(), amp="bf16")
    with pytest.raises(report.NoResultsError, match="--method pitome.*present: evit, none, tome, tomecis"):
        run_frames(grid_frames(), methods=["pitome"])


def test_method_filter_keeps_the_baseline():
    md = run_frames(grid_frames(), methods=["evit"]).markdown
    rows = model_rows(md, "deit_small (deit_small_patch16_224)")
    assert sorted(rows) == ["evit — 0.7", "none 0 —"]
    assert "evit keep0.7 vs none" in md and "tomecis r8" not in md


def test_sweep_tables_keeps_its_signature():
    f = grid_frames()
    text = sweep_tables(f.points, [SMALL, TINY], FINGERPRINT, ["tomecis", "evit"], "none", 128)
    assert "deit_small" in text and "deit_tiny" in text and "| method | r | keep | top-1 |" in text
    rows = table_rows(text.split("deit_tiny")[0], key_cells=3)
    assert rows["tomecis 8 —"][3] == "75.00" and rows["evit — 0.7"][3] == "72.00"
    assert "tome 8 —" not in rows and rows["none 0 —"][3] == "80.00"
    assert "(no results for these settings)" == sweep_tables(
        f.points, [SMALL], FINGERPRINT, "tomecis", "fp16", 128
    )


def test_sweep_tables_reads_points_from_before_methods():
    """The sweep's frames before ``results`` names the column ``method``: ``mode``, no ``keep``."""
    f = Frames()
    f.add(TINY, "tomecis", correctness(10, range(8)), r=0)
    f.add(TINY, "tomecis", correctness(10, range(6)), r=8)
    old = f.points.drop(columns="keep").rename(columns={"method": "mode"})
    text = sweep_tables(old, [TINY], FINGERPRINT, "tomecis", "none", 128)
    rows = table_rows(text, key_cells=3)
    assert rows["tomecis (unreduced) 0 —"][3] == "80.00" and rows["tomecis 8 —"][7] == "-20.00"


# --------------------------------------------------------------------------- empty / missing


def test_empty_directory_says_so(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "rep")]) == 1
    err = capsys.readouterr().err
    assert "no results" in err and "points/*.parquet" in err and "orchestrator.sweep" in err
    assert not (tmp_path / "rep").exists()


def test_missing_directory_says_so(tmp_path, capsys):
    assert report.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "rep")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_predictions_without_points_are_not_results(tmp_path, capsys):
    out = Frames().add(TINY, "none", correctness(10, range(5))).write(tmp_path / "results")
    for f in (out / "points").iterdir():
        f.unlink()
    assert report.main([str(out), "--out", str(tmp_path / "rep")]) == 1
    assert "no grid point finished" in capsys.readouterr().err


# --------------------------------------------------------------------------- one baseline per model


def comparison_cells(markdown: str, what: str):
    line = next(line for line in markdown.splitlines() if f"| {what} |" in line)
    return [c.strip() for c in line.strip("|").split("|")]


def test_every_method_is_compared_with_the_one_baseline():
    md = run_frames(grid_frames()).markdown
    paired = section(md, "Paired statistics against the baseline")
    # baseline right on 0..79; tomecis r8 right on 3..74 and 95..97: broken 0,1,2 and 75..79 (8), fixed 3
    assert comparison_cells(paired, "tomecis r8 vs none")[2:6] == ["100", "3", "8", "-5.00"]
    assert comparison_cells(paired, "tomecis r16 vs none")[2:6] == ["100", "0", "20", "-20.00"]
    assert comparison_cells(paired, "tome r8 vs none")[2:6] == ["100", "0", "10", "-10.00"]
    assert comparison_cells(paired, "evit keep0.7 vs none")[2:6] == ["100", "0", "8", "-8.00"]
    whats = [c.split("|")[2].strip() for c in paired.splitlines() if c.startswith("| deit_small")]
    assert len(whats) == 4 and all(w.endswith(" vs none") for w in whats)


def old_style_frames(order: Sequence[int] = (0, 1, 2, 3)) -> Frames:
    """Results from before the one unreduced point: each method has its own r = 0 row (the same network,
    here with different predictions so that the choice shows), rows in ``order``."""
    points = [
        ("tome", 0, range(70), 90.0),
        ("tomecis", 0, range(80), 100.0),
        ("tome", 8, range(65), 150.0),
        ("tomecis", 8, range(78), 150.0),
    ]
    f = Frames()
    for i in order:
        method, r, right, speed = points[i]
        f.add(SMALL, method, correctness(100, right), r=r, speed=speed)
    return f


def test_old_results_use_one_deterministic_baseline():
    """Without a ``none`` row the baseline is the first method's r = 0 (tomecis before tome in
    METHOD_NAMES), whatever order the rows come in, and every method is compared with it."""
    for order in [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)]:
        md = run_frames(old_style_frames(order)).markdown
        rows = model_rows(md, "deit_small (deit_small_patch16_224)")
        assert sorted(rows) == ["tome 8 —", "tomecis (unreduced) 0 —", "tomecis 8 —"]
        assert rows["tomecis (unreduced) 0 —"][3] == "80.00"
        assert rows["tome 8 —"][6:8] == ["1.50x", "-15.00"]  # against tomecis r0, not tome r0 (-5.00)
        assert "baseline: tomecis r0 (results from before the one unreduced point" in md
        paired = section(md, "Paired statistics against the baseline")
        assert comparison_cells(paired, "tome r8 vs tomecis r0")[2:6] == ["100", "0", "15", "-15.00"]
        assert comparison_cells(paired, "tomecis r8 vs tomecis r0")[2:6] == ["100", "0", "2", "-2.00"]


def test_noisy_timing_is_flagged():
    f = Frames()
    f.add(TINY, "tomecis", correctness(20, range(10)), r=0, speed=100.0)
    f.add(TINY, "tomecis", correctness(20, range(10)), r=8, speed=80.0)  # reducing, yet slower
    f.add(TINY, "tomecis", correctness(20, range(10)), r=12, speed=130.0)
    f.add(TINY, "tome", correctness(20, range(10)), r=0, speed=30.0)  # the same network as tomecis r0
    md = run_frames(f).markdown
    assert "below 0.9x the baseline's at tomecis r8:" in section(md, "deit_tiny (deit_tiny_patch16_224)")
    assert "img/s differ 3.3x (tomecis r0 100.0, tome r0 30.0)" in md


def test_steady_timing_is_not_flagged():
    md = run_frames(grid_frames()).markdown
    assert "noisy" not in md and "Warning" not in md


def test_report_says_which_points_were_cuda_graph_replays():
    """On a GPU the heading says whether img/s came from CUDA-graph replays; a point that ran eagerly
    (its capture failed) is named, never folded into a 'graphed' line."""
    gpu = "NVIDIA H200"
    f = Frames()
    f.add(TINY, "none", correctness(20, range(15)), device=gpu, graphs=True)
    f.add(TINY, "tomecis", correctness(20, range(14)), r=8, device=gpu, graphs=False)
    f.add(TINY, "evit", correctness(20, range(12)), keep=0.7, device=gpu, graphs=True)
    assert "CUDA graphs except tomecis r8 (eager; see graph_error)" in run_frames(f).markdown
    f.add(TINY, "tomecis", correctness(20, range(14)), r=8, device=gpu, graphs=True, minute=5)
    md = run_frames(f).markdown
    assert ", CUDA graphs" in md and "except" not in md


def test_sweep_table_names_a_keep_point_that_ran_eagerly(tmp_path):
    """The sweep's final table on its own files (read back through ``ResultsDir``, r null in the keep
    row, cuda_graphs false with a graph_error there): the heading names the eager keep point, the keep
    row sits in its own cells, and the report says the same."""
    gpu, out = "NVIDIA H100 80GB HBM3", tmp_path / "results"
    write_point(out, SMALL, 0, correctness(100, range(80)), speed=100.0, device=gpu, graphs=True)
    write_point(out, SMALL, 8, correctness(100, range(78)), speed=150.0, device=gpu, graphs=True)
    write_point(out, SMALL, None, correctness(100, range(72)), 170.0, "evit", 0.7, device=gpu, graphs=False)
    points = ResultsDir(str(out)).read_point_rows()
    eager = points[points["method"] == "evit"].iloc[0]
    assert pd.isna(eager["r"]) and eager["graph_error"] == "eager by choice"
    text = sweep_tables(points, [SMALL], FINGERPRINT, ["tomecis", "evit"], "none", 128)
    assert "CUDA graphs except evit keep0.7 (eager; see graph_error)" in text.splitlines()[0]
    rows = table_rows(text, key_cells=3)
    assert sorted(rows) == ["evit — 0.7", "none 0 —", "tomecis 8 —", "tomecis — 0.7"]
    assert rows["tomecis — 0.7"][3] == "missing"  # tomecis takes --keep too
    assert rows["evit — 0.7"][3:8] == ["72.00", "100.00", "170.0", "1.70x", "-8.00"]
    cfg = report.ReportConfig(results=str(out), out=None, bootstrap_samples=200)
    assert "CUDA graphs except evit keep0.7 (eager; see graph_error)" in report.build_report(cfg).markdown


# --------------------------------------------------------------------------- plots, --paper, the CLI


def png_size(path: str):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_plot_per_model_is_written(tmp_path):
    rep = run_frames(grid_frames(), tmp_path / "rep")
    pngs = [name for name in rep.files if name.endswith(".png")]
    assert pngs == [str(tmp_path / "rep" / "deit_small.png"), str(tmp_path / "rep" / "deit_tiny.png")]
    for name in pngs:
        assert Path(name).stat().st_size > 10_000
        assert png_size(name) == (PLOT_SIZE_INCHES[0] * PLOT_DPI, PLOT_SIZE_INCHES[1] * PLOT_DPI)
    assert (tmp_path / "rep" / "report.md").read_text() == rep.markdown
    assert "![deit_small: top-1 against speed-up and GFLOPs](deit_small.png)" in rep.markdown


def test_settings_get_their_own_plots(tmp_path):
    f = Frames()
    f.add(TINY, "none", correctness(10, range(8)), amp="none")
    f.add(TINY, "none", correctness(10, range(5)), amp="fp16")
    rep = run_frames(f, tmp_path / "rep")
    assert sorted(Path(p).name for p in rep.files if p.endswith(".png")) == [
        "deit_tiny-setting1.png",
        "deit_tiny-setting2.png",
    ]


def test_paper_puts_the_published_comparison_beside_ours(tmp_path):
    f = grid_frames()
    f.add(SMALL, "tomecis", correctness(100, range(76)), r=13, speed=180.0)
    rep = run_frames(f, tmp_path / "rep", paper=True)
    published = section(rep.markdown, "Published reference")
    assert "another machine" in published and "RTX 3090" in published
    comparison = table_rows(section(rep.markdown, "DeiT-S at a similar throughput"))
    assert comparison["DeiT-S"][:5] == ["DeiT-S", "79.82", "1282.5", "1.00x", "+0.00"]
    assert comparison["DeiT-S"][5:] == ["baseline (none)", "80.00", "100.0", "1.00x", "+0.00"]
    assert comparison["EViT"][1:3] == ["78.52", "1872.3"] and comparison["EViT"][5:7] == [
        "evit keep0.7",
        "72.00",
    ]
    assert comparison["ToMe"][1:3] == ["78.79", "1956.1"]
    assert comparison["ToMe"][5:] == ["tome r8", "70.00", "160.0", "1.60x", "-10.00"]  # nearest 180 img/s
    assert comparison["ToMeCIS (r = 13)"][1:5] == ["78.90", "1949.6", "1.52x", "-0.92"]
    assert comparison["ToMeCIS (r = 13)"][5:7] == ["tomecis r13", "76.00"]
    assert table_rows(section(rep.markdown, "DeiT-Ti (deit_tiny_patch16_224), published"))["13"] == [
        "13",
        "70.594",
        "4672.4",
        "1.40x",
        "-1.54",
    ]
    versus = table_rows(
        section(rep.markdown, "deit_small (deit_small_patch16_224)").split("published DeiT-S")[1]
    )
    assert versus["8"] == ["8", "-5.00", "-0.39", "1.50x", "1.21x"]
    assert all(png_size(name) == (1400, 600) for name in rep.files[1:])


def test_paper_without_the_reference_says_so():
    md = run_frames(grid_frames(), paper=True).markdown  # no tomecis r13 point
    comparison = table_rows(section(md, "DeiT-S at a similar throughput"))
    assert comparison["EViT"][5:] == ["no tomecis r13 point", "—", "—", "—", "—"]
    assert comparison["DeiT-S"][5] == "baseline (none)"


def test_published_data_is_the_papers_table():
    points = paper.published_points()
    assert len(points) == 20 and set(points["r"]) == {0, *range(8, 17)}
    small13 = points[(points["model"] == SMALL) & (points["r"] == 13)].iloc[0]
    assert (small13["top1"], small13["img_per_sec"]) == (78.902, 1949.6)
    assert [(m, t, s) for m, _, t, s in paper.PUBLISHED_COMPARISON_DEIT_S] == [
        ("none", 79.82, 1282.5),
        ("evit", 78.52, 1872.3),
        ("tome", 78.79, 1956.1),
        ("tomecis", 78.90, 1949.6),
    ]


def test_cli_prints_and_writes(tmp_path, capsys):
    out = grid_frames().write(tmp_path / "results")
    assert report.main([str(out), "--out", str(tmp_path / "rep"), "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out
    assert "| method | r | keep | top-1 |" in printed and "Paired statistics" in printed
    assert "Matched speed: every method against tomecis r13" in printed
    # files from before the speed-up columns: the speed-up is the img/s ratio, without an interval
    rows = [line for line in printed.splitlines() if line.startswith("|")]
    assert "| 150.0 | 1.50x | -" in printed and not any("x [" in line for line in rows)
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == [
        "deit_small.png",
        "deit_tiny.png",
        "report.md",
    ]


def test_cli_method_filter_and_its_mode_alias(tmp_path, capsys):
    out = grid_frames().write(tmp_path / "results")
    for flag in ("--method", "--mode"):
        assert report.main([str(out), "--out", "", flag, "tome,evit", "--bootstrap", "500"]) == 0
        printed = capsys.readouterr().out
        assert "tome r8 vs none" in printed and "evit keep0.7 vs none" in printed
        assert "tomecis r8" not in printed
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(out), "--method", "tome,fast"])
    assert exit_info.value.code == 2 and "--method: unknown method fast" in capsys.readouterr().err


# --------------------------------------------------------------------------- paired statistics


def test_losing_classes_are_the_ones_that_lose_most():
    n = 100
    base = pd.DataFrame({"key": range(n), "label": [i % 10 for i in range(n)], "correct": True})
    cand = base.copy()
    cand.loc[cand["key"].isin([3, 13, 23, 7]), "correct"] = False  # class 3 loses 3, class 7 loses 1
    stats = paired_stats(base, cand, samples=500)
    assert [(c.label, c.net, c.n_images) for c in stats.losing_classes] == [(3, -3, 10), (7, -1, 10)]


def test_identical_predictions_give_a_zero_interval():
    frame = pd.DataFrame({"key": range(50), "label": 0, "correct": [i % 2 == 0 for i in range(50)]})
    stats = paired_stats(frame, frame)
    assert (stats.fixed, stats.broken, stats.delta, stats.ci_low, stats.ci_high, stats.p_value) == (
        0,
        0,
        0.0,
        0.0,
        0.0,
        1.0,
    )


def simulate_pair(n: int, rng: np.random.Generator, p_base=0.7, p_break=0.05, p_fix=0.10):
    """Baseline right w.p. p_base; the candidate breaks a right image w.p. p_break, fixes a wrong one w.p. p_fix.

    True Δ top-1 (points) = 100 (p_fix (1 − p_base) − p_break p_base)."""
    a = rng.random(n) < p_base
    flip = rng.random(n)
    b = np.where(a, flip >= p_break, flip < p_fix)
    keys = np.arange(n)
    labels = keys % 100
    return (
        pd.DataFrame({"key": keys, "label": labels, "correct": a}),
        pd.DataFrame({"key": keys, "label": labels, "correct": b}),
        100.0 * (p_fix * (1 - p_base) - p_break * p_base),
    )


def test_interval_covers_the_true_difference_on_a_constructed_case():
    base, cand, true_delta = simulate_pair(5000, np.random.default_rng(1))
    stats = paired_stats(base, cand)
    assert true_delta == pytest.approx(-0.5)
    assert stats.ci_low <= true_delta <= stats.ci_high
    assert stats.ci_low <= stats.delta <= stats.ci_high


def test_interval_has_its_nominal_coverage():
    rng = np.random.default_rng(2)
    covered = 0
    for _ in range(200):
        base, cand, true_delta = simulate_pair(1000, rng)
        s = paired_stats(base, cand, samples=1000, seed=int(rng.integers(1 << 30)), top_classes=0)
        covered += s.ci_low <= true_delta <= s.ci_high
    assert 0.89 <= covered / 200 <= 0.99  # nominal 0.95


def test_interval_shrinks_with_more_images():
    rng = np.random.default_rng(3)
    widths = []
    for n in (500, 2000, 8000):
        s = paired_stats(*simulate_pair(n, rng)[:2])
        widths.append(s.ci_high - s.ci_low)
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 2.5  # ~ 1 / sqrt(n): a quarter, with sampling noise


def test_interval_is_reproducible_with_its_seed():
    assert bootstrap_delta_ci(30, 50, 1000, seed=7) == bootstrap_delta_ci(30, 50, 1000, seed=7)


def test_mcnemar_exact_matches_the_binomial_by_hand():
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)
    assert mcnemar_exact(1, 9) == pytest.approx(2 * 11 / 1024)
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0
    n, k = 300, 120
    exact = 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    assert mcnemar_exact(k, n - k) == pytest.approx(exact, rel=1e-9)


# --------------------------------------------------------------------------- README's pandas queries
# These run README's queries on results written through ``ResultsDir`` in today's schema: they follow the
# README (and ``write_point`` follows ``GridPoint``) when the points schema changes.


def write_point(
    out: Path,
    model: str,
    r: Optional[int],
    correct: Sequence[bool],
    speed: Optional[float] = 100.0,
    method: Optional[str] = None,
    keep: Optional[float] = None,
    amp: str = "none",
    batch_size: int = 128,
    fingerprint: str = FINGERPRINT,
    device: str = "cpu (2 threads)",
    weights: str = "pretrained",
    graphs: Optional[bool] = False,
    title: Optional[str] = None,
) -> None:
    """One grid point whose image i (key ``img{i:05d}``, class i % 10) is right exactly when correct[i];
    ``title``: the public set it ran on (the ``dataset_title`` column), None for any other data.

    ``method`` defaults to the unreduced baseline (``none``) at r = 0 and to ``tomecis`` otherwise; a
    ``keep`` point has ``r`` None, as the sweep writes it."""
    method = method or ("none" if r == 0 and keep is None else "tomecis")
    point = GridPoint(model, r, method, amp, batch_size, weights, keep=keep, dataset=fingerprint)
    removed = r if r is not None else round(12 * (1 - keep))
    n = len(correct)
    labels = [i % N_CLASSES for i in range(n)]
    top5 = [
        [lab if ok else (lab + 1) % N_CLASSES, lab if not ok else (lab + 2) % N_CLASSES, 7, 8, 9]
        for lab, ok in zip(labels, correct)
    ]
    keys = [f"img{i:05d}" for i in range(n)]
    predictions = predictions_table(point, keys, labels, top5, ["shard-0"] * n, device)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = dict(
        model=model,
        short_name=point.short_name,
        method=method,
        r=r,
        keep=keep,
        schedule=[removed] * 12,
        top1=100.0 * sum(correct) / n,
        top5=100.0,
        n_images=n,
        n_failed=0,
        infer_samples_per_sec=speed,
        speedup=None,  # as a sweep with fewer than 6 --bench-runs leaves them: the report falls back on img/s
        speedup_low=None,
        speedup_high=None,
        bench_seconds=None,
        infer_batch_size=batch_size,
        eval_samples_per_sec=50.0,
        gflops=2.5 - 0.05 * removed,
        tokens_out=197 - 12 * removed,
        matched_to=None,
        matched_reference_value=None,
        matched_value=None,
        planned=None,
        param_count=5.7,
        img_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        amp=amp,
        weights=weights,
        device=device,
        dataset=fingerprint,
        dataset_title=title,
        method_source="builtin",
        n_shards=1,
        retries=0,
        cuda_graphs=graphs,
        graph_error=None if graphs or graphs is None else "eager by choice",
        started=now,
        finished=now,
        nodes=["node"],
        hostnames=["host"],
        torch_version="x",
        timm_version="x",
        ray_version="x",
        tomecis_version="x",
    )
    ResultsDir(str(out)).write_point(point, row, predictions)


def readme_block(heading: str) -> str:
    """The first ```python block under the README heading containing ``heading``."""
    text = (REPO / "README.md").read_text()
    after = text.split(heading, 1)[1]
    return after.split("```python\n", 1)[1].split("\n```", 1)[0]


def test_readme_queries_answer_on_results(tmp_path, monkeypatch, capsys):
    """The 'Queries people write' block runs on a results directory and gives the right answers."""
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(100, range(80)), speed=100.0)
    write_point(out, TINY, 8, correctness(100, range(79)), speed=150.0)  # -1.0 point: within budget
    write_point(
        out, TINY, 13, correctness(100, list(range(2, 75)) + [90]), speed=200.0
    )  # 2 broken+5, 1 fixed
    write_point(out, SMALL, 0, correctness(100, range(90)), speed=40.0)
    write_point(out, SMALL, 13, correctness(100, range(89)), speed=70.0)
    write_point(out, TINY, None, correctness(100, range(70)), speed=300.0, method="evit", keep=0.7)  # -10
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_block("Queries people write"), "README.md", "exec"), scope)
    capsys.readouterr()
    table = scope["table"]  # every point, r and keep alike, against its model's one baseline
    assert table.loc[("none", "r0"), ("speedup", "deit_tiny")] == pytest.approx(1.0)
    assert table.loc[("tomecis", "r13"), ("speedup", "deit_small")] == pytest.approx(70.0 / 40.0)
    assert table.loc[("evit", "keep0.7"), ("speedup", "deit_tiny")] == pytest.approx(3.0)
    assert table.loc[("evit", "keep0.7"), ("delta_top1", "deit_tiny")] == pytest.approx(-10.0)
    assert len(table) == 4  # none r0, tomecis r8 and r13, evit keep0.7
    best = (
        scope["ok"]
        .loc[scope["ok"].groupby("short_name").infer_samples_per_sec.idxmax()]
        .set_index("short_name")
    )
    assert best.loc["deit_tiny", "r"] == 8 and best.loc["deit_small", "r"] == 13
    assert best.loc["deit_small", "speedup"] == pytest.approx(70.0 / 40.0)
    assert sorted(scope["broken"].key) == ["img00000", "img00001"] + [f"img{i:05d}" for i in range(75, 80)]
    assert list(scope["fixed"].key) == ["img00090"]


def test_readme_layout_query_keeps_runs_apart(tmp_path, monkeypatch, capsys):
    """Two runs in one directory (random-weight smoke test, then real weights, then fp16): the
    'Results layout' block's accuracy from predictions equals the chosen run's top-1, unmixed."""
    out = tmp_path / "results"
    write_point(out, SMALL, 0, correctness(10, range(9)), weights="ckpt_0123456789ab")
    write_point(out, SMALL, 0, correctness(10, range(1)), weights="random")
    write_point(out, SMALL, 0, correctness(10, range(6)), weights="ckpt_0123456789ab", amp="fp16")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_block("### Results layout"), "README.md", "exec"), scope)
    capsys.readouterr()
    chosen = scope["one"]
    assert len(chosen) == 1
    accuracy = scope["preds"].groupby("r")["correct"].mean() * 100
    assert len(scope["preds"]) == 10 and accuracy.loc[0] == pytest.approx(chosen["top1"].iloc[0])
    mixed = pd.read_parquet(out / "predictions").groupby("r")["correct"].mean() * 100
    assert mixed.loc[0] != pytest.approx(chosen["top1"].iloc[0])  # what the old query would have said
