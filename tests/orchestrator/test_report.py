"""The report on generated results: cells, partial grids, empty directories, paired statistics, the plot."""

from __future__ import annotations

import datetime as dt
import math
import struct
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from orchestrator import paper, report
from orchestrator.grid import GridPoint
from orchestrator.plot import PLOT_DPI, PLOT_SIZE_INCHES
from orchestrator.results import ResultsDir, predictions_table
from orchestrator.stats import bootstrap_delta_ci, mcnemar_exact, paired_stats
from orchestrator.tables import sweep_tables

TINY, SMALL = "deit_tiny_patch16_224", "deit_small_patch16_224"
FINGERPRINT = "0123456789abcdef"
N_CLASSES = 10


def write_point(
    out: Path,
    model: str,
    r: int,
    correct: Sequence[bool],
    speed: Optional[float] = 100.0,
    mode: str = "tomecis",
    amp: str = "none",
    batch_size: int = 128,
    fingerprint: str = FINGERPRINT,
    device: str = "cpu (2 threads)",
    weights: str = "pretrained",
    graphs: Optional[bool] = False,
) -> None:
    """One grid point whose image i (key ``img{i:05d}``, class i % 10) is right exactly when correct[i]."""
    point = GridPoint(model, r, mode, amp, batch_size, weights, dataset=fingerprint)
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
        mode=mode,
        r=r,
        schedule=[r] * 12,
        top1=100.0 * sum(correct) / n,
        top5=100.0,
        n_images=n,
        n_failed=0,
        infer_samples_per_sec=speed,
        infer_batch_size=batch_size,
        eval_samples_per_sec=50.0,
        gflops=2.5 - 0.05 * r,
        tokens_out=197 - 12 * r,
        param_count=5.7,
        img_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        amp=amp,
        weights=weights,
        device=device,
        dataset=fingerprint,
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


def correctness(n: int, right: Sequence[int]) -> List[bool]:
    wanted = set(right)
    return [i in wanted for i in range(n)]


def section(markdown: str, heading_start: str) -> str:
    """The text from the first heading containing ``heading_start`` to the next heading of its level or above."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#") and heading_start in line)
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("#") and len(lines[i]) - len(lines[i].lstrip("#")) <= level
        ),
        len(lines),
    )
    return "\n".join(lines[start:end])


def table_rows(text: str) -> Dict[str, List[str]]:
    """Markdown table rows of ``text`` keyed by their first cell (header and rule skipped)."""
    rows = {}
    for line in text.splitlines():
        if (
            line.startswith("|")
            and not line.startswith("|--")
            and not line.startswith("| r |")
            and not line.startswith("| model |")
        ):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def run_report(results: Path, out: Optional[Path], **kwargs) -> report.Report:
    cfg = report.ReportConfig(
        results=str(results), out=str(out) if out else None, bootstrap_samples=2000, **kwargs
    )
    return report.build_report(cfg)


@pytest.fixture
def grid_results(tmp_path) -> Path:
    """deit_tiny at r = 0, 8, 16 (tomecis and tome at 8) and deit_small at r = 0, 16 (8 missing); 100 images."""
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(100, range(80)), speed=100.0)
    write_point(
        out, TINY, 8, correctness(100, list(range(3, 75)) + [95, 96, 97]), speed=150.0
    )  # 72 + 3 right
    write_point(out, TINY, 16, correctness(100, range(60)), speed=200.0)
    write_point(out, TINY, 8, correctness(100, range(70)), speed=160.0, mode="tome")
    write_point(out, SMALL, 0, correctness(100, range(90)), speed=40.0)
    write_point(out, SMALL, 16, correctness(100, range(85)), speed=70.0)
    return out


# --------------------------------------------------------------------------- tables


def test_values_land_in_the_right_cells(grid_results, tmp_path):
    md = run_report(grid_results, tmp_path / "rep").markdown
    tiny = table_rows(section(md, "deit_tiny (deit_tiny_patch16_224), tomecis"))
    assert tiny["0"][:7] == ["0", "80.00", "100.00", "100.0", "1.00x", "+0.00", "50.0"]
    assert tiny["8"][:6] == ["8", "75.00", "100.00", "150.0", "1.50x", "-5.00"]
    assert tiny["16"][:6] == ["16", "60.00", "100.00", "200.0", "2.00x", "-20.00"]
    assert tiny["8"][7:] == ["2.10", "101"]  # GFLOPs, tokens left
    small = table_rows(section(md, "deit_small"))
    assert small["16"][:6] == ["16", "85.00", "100.00", "70.0", "1.75x", "-5.00"]


def test_partial_grid_shows_missing_points(grid_results, tmp_path):
    md = run_report(grid_results, tmp_path / "rep").markdown
    small = section(md, "deit_small")
    assert table_rows(small)["8"][:2] == ["8", "missing"]
    assert "missing: r = 8" in small
    tome = section(md, "deit_tiny (deit_tiny_patch16_224), tome:")
    assert table_rows(tome)["0"][:2] == ["0", "missing"]
    assert "no r = 0 point" in tome


def test_no_throughput_is_said_not_invented(tmp_path):
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(20, range(10)), speed=None)
    write_point(out, TINY, 8, correctness(20, range(9)), speed=None)
    rep = run_report(out, tmp_path / "rep")
    rows = table_rows(section(rep.markdown, "deit_tiny"))
    assert rows["8"][3:6] == ["—", "—", "-5.00"]
    assert "--no-bench" in rep.markdown
    assert not any(f.endswith(".png") for f in rep.files)


def test_settings_are_never_mixed(tmp_path):
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(10, range(8)), amp="none")
    write_point(out, TINY, 0, correctness(10, range(5)), amp="fp16")
    write_point(out, TINY, 8, correctness(10, range(4)), amp="fp16", fingerprint="fedcba9876543210")
    md = run_report(out, tmp_path / "rep").markdown
    assert md.count("## Setting") == 3
    fp16 = section(md, f"dataset {FINGERPRINT}, amp fp16")
    assert "50.00" in fp16 and "80.00" not in fp16
    only = run_report(out, None, amp="fp16", dataset="0123").markdown
    assert only.count("## Setting") == 1 and "50.00" in only


def test_random_and_real_weights_are_different_settings(tmp_path):
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(10, range(1)), weights="random")
    write_point(out, TINY, 0, correctness(10, range(8)), weights="ckpt_0123456789ab")
    md = run_report(out, tmp_path / "rep").markdown
    assert md.count("## Setting") == 2
    assert "10.00" in section(md, "weights random") and "80.00" not in section(md, "weights random")
    assert "80.00" in section(md, "weights ckpt_0123456789ab")


def test_rows_from_before_a_setting_column_existed_are_read_not_dropped(tmp_path):
    """The report reads points files as written (not cast to today's schema): an older file without
    ``weights`` and with no device gets placeholders and its own setting."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(10, range(8)))
    new = next((out / "points").glob("*.parquet"))
    old = pq.read_table(new).drop(["weights"])
    old = old.set_column(old.schema.get_field_index("device"), "device", pa.array([None], pa.string()))
    pq.write_table(
        old.set_column(old.schema.get_field_index("r"), "r", pa.array([8], pa.int32())),
        out / "points" / "old.parquet",
    )
    md = run_report(out, None).markdown
    assert md.count("## Setting") == 2
    assert "80.00" in section(md, "unknown device, weights unknown weights")


def test_filter_that_matches_nothing_names_what_is_there(grid_results):
    with pytest.raises(report.NoResultsError, match="--amp.*present: none"):
        run_report(grid_results, None, amp="bf16")


def test_sweep_tables_keeps_its_signature(grid_results):
    points = ResultsDir(str(grid_results)).read_points().to_pandas()
    text = sweep_tables(points, [TINY, SMALL], FINGERPRINT, "tomecis", "none", 128)
    assert "| r | top-1 |" in text and "deit_small" in text
    assert table_rows(text)["8"][1] == "75.00"


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
    write_point(tmp_path / "results", TINY, 0, correctness(10, range(5)))
    for f in (tmp_path / "results" / "points").iterdir():
        f.unlink()
    assert report.main([str(tmp_path / "results"), "--out", str(tmp_path / "rep")]) == 1
    assert "no grid point finished" in capsys.readouterr().err


# --------------------------------------------------------------------------- paired statistics


def test_paired_cells_count_fixed_and_broken_images(grid_results, tmp_path):
    md = run_report(grid_results, tmp_path / "rep").markdown
    paired = section(md, "Paired statistics")
    lines = [line for line in paired.splitlines() if "tomecis r=8 vs r=0" in line]
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    # r=0 right on 0..79; r=8 right on 3..74 and 95..97: broken 0,1,2 and 75..79 (8), fixed 95..97 (3)
    assert cells[2:6] == ["100", "3", "8", "-5.00"]
    assert "r=8 tomecis vs tome" in paired  # both modes at r = 8
    vs_tome = [
        c.strip()
        for c in next(line for line in paired.splitlines() if "tomecis vs tome" in line).strip("|").split("|")
    ]
    assert vs_tome[2:6] == ["100", "8", "3", "+5.00"]  # tome right on 0..69


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


# --------------------------------------------------------------------------- plot and paper


def png_size(path: str):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_of_the_expected_size(grid_results, tmp_path):
    rep = run_report(grid_results, tmp_path / "rep")
    pngs = [f for f in rep.files if f.endswith(".png")]
    assert pngs == [str(tmp_path / "rep" / "accuracy_throughput.png")]
    width, height = png_size(pngs[0])
    assert (width, height) == (PLOT_SIZE_INCHES[0] * PLOT_DPI, PLOT_SIZE_INCHES[1] * PLOT_DPI)
    assert (tmp_path / "rep" / "report.md").read_text() == rep.markdown
    assert "![top-1 against img/s](accuracy_throughput.png)" in rep.markdown


def test_paper_adds_published_figures_clearly_marked(grid_results, tmp_path):
    rep = run_report(grid_results, tmp_path / "rep", paper=True)
    published = section(rep.markdown, "Published reference")
    assert "another machine" in published and "RTX 3090" in published
    assert table_rows(section(rep.markdown, "DeiT-Ti (deit_tiny_patch16_224), published"))["13"] == [
        "13",
        "70.594",
        "4672.4",
        "1.40x",
        "-1.54",
    ]
    versus = table_rows(
        section(rep.markdown, "deit_tiny (deit_tiny_patch16_224), tomecis").split("Against the published")[1]
    )
    assert versus["8"] == ["8", "-5.00", "-0.52", "1.50x", "1.14x"]
    assert png_size(rep.files[-1]) == (1400, 600)


def test_published_data_is_the_papers_table():
    points = paper.published_points()
    assert len(points) == 20 and set(points["r"]) == {0, *range(8, 17)}
    small13 = points[(points["model"] == SMALL) & (points["r"] == 13)].iloc[0]
    assert (small13["top1"], small13["img_per_sec"]) == (78.902, 1949.6)


def test_cli_prints_and_writes(grid_results, tmp_path, capsys):
    assert report.main([str(grid_results), "--out", str(tmp_path / "rep"), "--bootstrap", "500"]) == 0
    printed = capsys.readouterr().out
    assert "| r | top-1 |" in printed and "Paired statistics" in printed
    assert sorted(p.name for p in (tmp_path / "rep").iterdir()) == ["accuracy_throughput.png", "report.md"]


def test_noisy_timing_is_flagged(tmp_path):
    out = tmp_path / "results"
    write_point(out, TINY, 0, correctness(20, range(10)), speed=100.0)
    write_point(out, TINY, 8, correctness(20, range(10)), speed=80.0)  # merging, yet slower
    write_point(out, TINY, 12, correctness(20, range(10)), speed=130.0)
    write_point(
        out, TINY, 0, correctness(20, range(10)), speed=30.0, mode="tome"
    )  # same network as tomecis r=0
    md = run_report(out, None).markdown
    assert "below 0.9x the r = 0 figure at r = 8:" in section(
        md, "deit_tiny (deit_tiny_patch16_224), tomecis"
    )
    assert "img/s differ 3.3x (tomecis 100.0, tome 30.0)" in md


def test_steady_timing_is_not_flagged(grid_results):
    assert "noisy" not in run_report(grid_results, None).markdown
    assert "Warning" not in run_report(grid_results, None).markdown


# --------------------------------------------------------------------------- README's pandas queries


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
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_block("Queries people write"), "README.md", "exec"), scope)
    capsys.readouterr()
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


def test_report_says_which_points_were_cuda_graph_replays(tmp_path):
    """On a GPU the heading says whether img/s came from CUDA-graph replays; a point that ran eagerly
    (its capture failed) is named, never folded into a 'graphed' line."""
    out = tmp_path / "results"
    gpu = "NVIDIA H200"
    write_point(out, TINY, 0, correctness(20, range(15)), device=gpu, graphs=True)
    write_point(out, TINY, 8, correctness(20, range(14)), device=gpu, graphs=False)
    write_point(out, TINY, 16, correctness(20, range(12)), device=gpu, graphs=True)
    md = report.build_report(report.ReportConfig(results=str(out), out=None)).markdown
    assert "CUDA graphs except r = 8 (eager; see graph_error)" in md
    write_point(out, TINY, 8, correctness(20, range(14)), device=gpu, graphs=True)
    md = report.build_report(report.ReportConfig(results=str(out), out=None)).markdown
    assert ", CUDA graphs" in md and "except" not in md
