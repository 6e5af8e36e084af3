"""Tables, paired statistics and plots from a results directory. Knows nothing of Ray or models.

    python -m orchestrator.report results/ [--out report/] [--paper] [--dataset FP] [--amp none] [--batch-size 128]

For each *setting* (dataset fingerprint, amp, benchmark batch size, device: rows from different
settings are never compared with one another) the report has:

- per model and mode, a table in the paper's format (r, top-1, top-5, img/s, speed-up over r = 0,
  Δ top-1, GFLOPs, tokens left), with the r values other lines of the setting have but this one
  lacks shown as missing;
- paired statistics from the per-image predictions: each r against r = 0 of the same model and
  mode, and ``tomecis`` against ``tome`` at the same r: images fixed / broken, Δ top-1 with a 95%
  paired-bootstrap confidence interval, the exact McNemar p-value and the classes that lose most;
- a PNG: top-1 against img/s (one line per model and mode, points labelled with r) beside
  Δ top-1 against speed-up over r = 0.

``--paper`` adds the published ToMeCIS numbers (``orchestrator.paper``) as a reference series,
marked as figures from another machine. The Markdown is printed and written to ``OUT/report.md``.
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from . import paper
from .results import POINTS_DIR, PREDICTIONS_DIR, ResultsDir

SETTING_COLUMNS = ("dataset", "amp", "infer_batch_size", "device", "weights")
PREDICTION_COLUMNS = ["key", "label", "pred", "correct"]
PLOT_SIZE_INCHES = (14.0, 6.0)
PLOT_DPI = 100  # the PNG is PLOT_SIZE_INCHES * PLOT_DPI pixels: 1400 x 600
MISSING = "missing"


class NoResultsError(ValueError):
    """The results directory (after filtering) holds no finished grid point."""


# --------------------------------------------------------------------------- configuration


@dataclass
class ReportConfig:
    """Everything a report needs, parsed once from the command line."""

    results: str
    out: Optional[str] = "report"
    paper: bool = False
    dataset: Optional[str] = None  # fingerprint or a prefix of it
    amp: Optional[str] = None
    batch_size: Optional[int] = None
    models: Optional[List[str]] = None  # short or timm names
    mode: Optional[str] = None
    bootstrap_samples: int = 10_000
    seed: int = 0
    level: float = 0.95
    top_classes: int = 3


@dataclass(frozen=True)
class Setting:
    """What makes rows comparable: same images, same autocast, same benchmark batch, same device, same weights."""

    dataset: str
    amp: str
    batch_size: int
    device: str
    weights: str = "unknown weights"

    def label(self) -> str:
        return f"dataset {self.dataset}, amp {self.amp}, batch {self.batch_size}, {self.device}, weights {self.weights}"


@dataclass
class Report:
    markdown: str
    files: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def load_points(results: ResultsDir) -> pd.DataFrame:
    """Every points row, plus ``point_file``: the file stem its predictions file shares.

    Returns an empty frame when the directory holds no ``points/*.parquet``."""
    frames = []
    for path in _parquet_files(results, POINTS_DIR):
        frame = pq.read_table(path, filesystem=results.fs).to_pandas()
        frame["point_file"] = _stem(path)
        frames.append(frame)
    if not frames:
        return pd.DataFrame()
    return pd.concat(frames, ignore_index=True)


def load_predictions(results: ResultsDir, point_files: Iterable[str]) -> pd.DataFrame:
    """key, label, pred, correct and ``point_file`` of every named point that has predictions.

    They are tied to their points row through the shared file name (which is the whole key),
    never through (model, mode, r) alone."""
    wanted = set(point_files)
    frames = []
    for path in _parquet_files(results, PREDICTIONS_DIR):
        if _stem(path) not in wanted:
            continue
        frame = pq.read_table(path, columns=PREDICTION_COLUMNS, filesystem=results.fs).to_pandas()
        frame["point_file"] = _stem(path)
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=PREDICTION_COLUMNS + ["point_file"])
    return pd.concat(frames, ignore_index=True)


def _parquet_files(results: ResultsDir, name: str) -> List[str]:
    selector = pafs.FileSelector(results.path(name), allow_not_found=True)
    infos = results.fs.get_file_info(selector)
    return sorted(
        i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
    )


def _stem(path: str) -> str:
    return path.rsplit("/", 1)[-1][: -len(".parquet")]


def explain_empty(results: ResultsDir) -> str:
    """Why a results directory has nothing to report, and what to do next."""
    info = results.fs.get_file_info(results.root)
    sweep = f"python -m orchestrator.sweep --models deit_tiny --r 0,8-16 --data SHARDS --out {results.uri}"
    if info.type == pafs.FileType.NotFound:
        return f"no results: {results.uri} does not exist; run a sweep into it first ({sweep})"
    if info.type != pafs.FileType.Directory:
        return f"no results: {results.uri} is not a directory; pass the --out directory of a sweep"
    if _parquet_files(results, PREDICTIONS_DIR):
        return (
            f"no results in {results.uri}: predictions/ has files but points/ has none, so no grid point finished "
            f"(a sweep writes a point's row last); rerun the sweep ({sweep}) to finish them"
        )
    return f"no results in {results.uri}: it has no points/*.parquet; run a sweep into it first ({sweep})"


# --------------------------------------------------------------------------- filtering and grouping


def filter_points(points: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
    """The rows matching ``--dataset`` (prefix), ``--amp``, ``--batch-size``, ``--models``, ``--mode``.

    Raises ``NoResultsError`` naming the filter and the values present when nothing matches."""
    wanted = set(cfg.models or ())
    checks = [
        ("--dataset", cfg.dataset, "dataset", lambda p: p["dataset"].astype(str).str.startswith(cfg.dataset)),
        ("--amp", cfg.amp, "amp", lambda p: p["amp"] == cfg.amp),
        ("--batch-size", cfg.batch_size, "infer_batch_size", lambda p: p["infer_batch_size"] == cfg.batch_size),
        ("--models", cfg.models, "short_name", lambda p: p["model"].isin(wanted) | p["short_name"].isin(wanted)),
        ("--mode", cfg.mode, "mode", lambda p: p["mode"] == cfg.mode),
    ]
    for flag, value, column, select in checks:
        if value is None or value == "" or value == []:
            continue
        mask = select(points)
        if not mask.any():
            present = ", ".join(sorted(str(v) for v in points[column].dropna().unique()))
            shown = ",".join(value) if isinstance(value, list) else value
            raise NoResultsError(f"no points match {flag} {shown} in {cfg.results} (after the filters before it); present: {present}")
        points = points[mask]
    return points


def drop_superseded(points: pd.DataFrame) -> Tuple[pd.DataFrame, int]:
    """Keep the latest row per (setting, model, mode, r); returns the rows and how many were dropped."""
    key = list(SETTING_COLUMNS) + ["model", "mode", "r"]
    ordered = _with_setting_defaults(points).sort_values("finished", kind="stable")
    kept = ordered.drop_duplicates(subset=key, keep="last")
    return kept.sort_index(), len(points) - len(kept)


def split_settings(points: pd.DataFrame) -> List[Tuple[Setting, pd.DataFrame]]:
    """Rows grouped by setting (dataset, amp, batch size, device, weights), largest group first."""
    groups = []
    filled = _with_setting_defaults(points)
    for values, rows in filled.groupby(list(SETTING_COLUMNS), sort=True, dropna=False):
        dataset, amp, batch, device, weights = values
        groups.append((Setting(str(dataset), str(amp), int(batch), str(device), str(weights)), rows))
    groups.sort(key=lambda g: -len(g[1]))
    return groups


def _with_setting_defaults(points: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a setting column existed get a placeholder rather than being dropped."""
    weights = points["weights"] if "weights" in points else pd.Series(None, index=points.index, dtype=object)
    return points.assign(
        device=points["device"].fillna("unknown device"), amp=points["amp"].fillna("none"), weights=weights.fillna("unknown weights")
    )


def lines_of(rows: pd.DataFrame) -> List[Tuple[str, str, pd.DataFrame]]:
    """(model, mode, rows sorted by r) per line of one setting, in the order models first appear."""
    lines = []
    for model in dict.fromkeys(rows["model"]):
        for mode in sorted(rows.loc[rows["model"] == model, "mode"].unique(), key=_mode_order):
            lines.append((model, mode, rows[(rows["model"] == model) & (rows["mode"] == mode)].sort_values("r")))
    return lines


def _mode_order(mode: str) -> Tuple[int, str]:
    return (0 if mode == "tomecis" else 1, mode)


# --------------------------------------------------------------------------- tables


def model_table(points: pd.DataFrame, expected_r: Optional[Iterable[int]] = None) -> str:
    """One model's points in the paper's format: r | top-1 | top-5 | img/s | speed-up | Δ top-1 | GFLOPs | tokens.

    ``img/s`` is ``infer_samples_per_sec`` (the model alone); speed-up and Δ top-1 are
    against the r = 0 row when present. r values in ``expected_r`` without a row are
    listed as missing."""
    points = points.sort_values("r")
    base = points[points["r"] == 0]
    base_top1 = base["top1"].iloc[0] if len(base) else None
    base_speed = base["infer_samples_per_sec"].iloc[0] if len(base) else None
    header = "| r | top-1 | top-5 | img/s | speed-up | Δ top-1 | eval img/s | GFLOPs | tokens |"
    lines = [header, "|" + "--:|" * 9]
    present = {int(r) for r in points["r"]}
    missing = sorted(set(int(r) for r in (expected_r or ())) - present)
    rows = [(int(row.r), row) for row in points.itertuples()] + [(r, None) for r in missing]
    for r, row in sorted(rows, key=lambda item: item[0]):
        if row is None:
            lines.append(f"| {r} | {MISSING} |" + " — |" * 7)
            continue
        speed = row.infer_samples_per_sec
        cells = [
            str(row.r),
            _num(row.top1, "{:.2f}"),
            _num(row.top5, "{:.2f}"),
            _num(speed, "{:.1f}"),
            _num(speed / base_speed if _ok(speed) and _ok(base_speed) else None, "{:.2f}x"),
            _num(row.top1 - base_top1 if base_top1 is not None else None, "{:+.2f}"),
            _num(row.eval_samples_per_sec, "{:.1f}"),
            _num(row.gflops, "{:.2f}"),
            _num(row.tokens_out, "{:.0f}"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def sweep_tables(
    points: pd.DataFrame, models: Iterable[str], dataset: str, modes: Sequence[str], amp: str, batch_size: int
) -> str:
    """A table per model and mode for the points of one sweep's settings (all rows, this run's and earlier ones)."""
    if points.empty:
        return "(no results)"
    chosen = points[(points["dataset"] == dataset) & (points["amp"] == amp) & (points["infer_batch_size"] == batch_size)]
    blocks: List[str] = []
    for model in dict.fromkeys(models):
        for mode in [modes] if isinstance(modes, str) else modes:
            rows = chosen[(chosen["model"] == model) & (chosen["mode"] == mode)]
            if rows.empty:
                continue
            first = rows.iloc[0]
            head = f"{first['short_name']} ({model}), {mode}, amp {amp}, batch {batch_size}, {first['device']}, {int(first['n_images'])} images"
            blocks.append(head + "\n" + model_table(rows))
    return "\n\n".join(blocks) if blocks else "(no results for these settings)"


def line_heading(rows: pd.DataFrame, mode: str) -> str:
    """``deit_tiny (deit_tiny_patch16_224), tomecis: 500 images`` (+ decode failures when any)."""
    first = rows.iloc[0]
    counts = sorted({int(n) for n in rows["n_images"]})
    images = "/".join(str(n) for n in counts)
    failed = int(rows["n_failed"].fillna(0).max())
    extra = f", up to {failed} undecodable images left out" if failed else ""
    return f"{first['short_name']} ({first['model']}), {mode}: {images} images{extra}"


def table_notes(rows: pd.DataFrame, expected_r: Sequence[int]) -> List[str]:
    """Plain-language notes under a model table: missing points, missing baseline, missing throughput."""
    notes = []
    missing = sorted(set(expected_r) - {int(r) for r in rows["r"]})
    if missing:
        notes.append(f"missing: r = {', '.join(map(str, missing))} (not in the results; rerun the sweep with these r to fill them)")
    if not (rows["r"] == 0).any():
        notes.append("no r = 0 point: speed-up and Δ top-1 need it (add 0 to the sweep's --r)")
    if rows["infer_samples_per_sec"].isna().all():
        notes.append("no img/s: the sweep ran with --no-bench")
    slower = slower_than_unmerged(rows)
    if slower:
        notes.append(
            f"img/s below 0.9x the r = 0 figure at r = {', '.join(map(str, slower))}: merging removes work, so this is "
            "most likely timing noise (a busy machine); rerun with --force and more --bench-runs on an idle one"
        )
    return notes


def slower_than_unmerged(rows: pd.DataFrame, tolerance: float = 0.9) -> List[int]:
    """The r > 0 of one line whose img/s is below ``tolerance`` x its r = 0 img/s."""
    base = rows.loc[rows["r"] == 0, "infer_samples_per_sec"]
    if base.empty or not _ok(base.iloc[0]):
        return []
    timed = rows[(rows["r"] > 0) & rows["infer_samples_per_sec"].notna()]
    return sorted(int(r) for r in timed.loc[timed["infer_samples_per_sec"] < tolerance * base.iloc[0], "r"])


def unmerged_spread(rows: pd.DataFrame, tolerance: float = 1.2) -> List[str]:
    """Notes for models whose r = 0 img/s differs between modes by more than ``tolerance`` x
    (at r = 0 the modes run the same network, so the gap is the timing's own noise)."""
    notes = []
    unmerged = rows[(rows["r"] == 0) & rows["infer_samples_per_sec"].notna()]
    for model, group in unmerged.groupby("model", sort=False):
        group = group.sort_values("mode", key=lambda modes: modes.map(_mode_order))
        speeds = group["infer_samples_per_sec"]
        if len(group) > 1 and speeds.max() > tolerance * speeds.min():
            per_mode = ", ".join(f"{m} {v:.1f}" for m, v in zip(group["mode"], speeds))
            notes.append(
                f"{group['short_name'].iloc[0]} at r = 0 is the same network in every mode, yet its img/s differ "
                f"{speeds.max() / speeds.min():.1f}x ({per_mode}): treat img/s of this setting as noisy"
            )
    return notes


def published_table(model: str) -> str:
    """The paper's numbers for one model: r | top-1 | img/s | speed-up | Δ top-1."""
    _, by_r = paper.PUBLISHED[model]
    base_top1, base_speed = by_r[0]
    lines = ["| r | top-1 | img/s | speed-up | Δ top-1 |", "|--:|--:|--:|--:|--:|"]
    for r, (top1, speed) in sorted(by_r.items()):
        lines.append(f"| {r} | {top1:.3f} | {speed:.1f} | {speed / base_speed:.2f}x | {top1 - base_top1:+.2f} |")
    return "\n".join(lines)


def versus_published_table(rows: pd.DataFrame, model: str) -> Optional[str]:
    """Our Δ top-1 and speed-up beside the paper's, at the r values both have (None without r = 0)."""
    base = rows[rows["r"] == 0]
    if base.empty:
        return None
    _, by_r = paper.PUBLISHED[model]
    top0, speed0 = base["top1"].iloc[0], base["infer_samples_per_sec"].iloc[0]
    lines = ["| r | Δ top-1 here | Δ top-1 published | speed-up here | speed-up published |", "|--:|--:|--:|--:|--:|"]
    for row in rows.sort_values("r").itertuples():
        if int(row.r) not in by_r:
            continue
        ptop, pspeed = by_r[int(row.r)]
        ours_speed = row.infer_samples_per_sec / speed0 if _ok(row.infer_samples_per_sec) and _ok(speed0) else None
        lines.append(
            f"| {row.r} | {row.top1 - top0:+.2f} | {ptop - by_r[0][0]:+.2f} | {_num(ours_speed, '{:.2f}x')} | {pspeed / by_r[0][1]:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- paired statistics


@dataclass(frozen=True)
class ClassLoss:
    label: int
    net: int  # candidate correct − baseline correct, among this class's images (< 0: lost)
    n_images: int


@dataclass(frozen=True)
class PairedStats:
    """Candidate against baseline on the images both scored (Δ in top-1 percentage points)."""

    n: int
    fixed: int  # wrong in the baseline, right in the candidate
    broken: int  # right in the baseline, wrong in the candidate
    delta: float
    ci_low: float
    ci_high: float
    p_value: float  # exact McNemar (two-sided binomial test on the discordant pairs)
    losing_classes: Tuple[ClassLoss, ...] = ()


def paired_stats(
    baseline: pd.DataFrame,
    candidate: pd.DataFrame,
    samples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
    top_classes: int = 3,
) -> PairedStats:
    """Compare two settings image by image.

    Args:
        baseline, candidate: predictions with ``key``, ``label``, ``correct`` (one row per image).
        samples: bootstrap resamples; seed: their random seed; level: the interval's coverage.
        top_classes: how many of the classes that lose most to list.
    """
    joined = baseline[["key", "label", "correct"]].merge(candidate[["key", "correct"]], on="key", suffixes=("_a", "_b"))
    a = joined["correct_a"].to_numpy(bool)
    b = joined["correct_b"].to_numpy(bool)
    n, fixed, broken = len(joined), int((~a & b).sum()), int((a & ~b).sum())
    delta = 100.0 * (fixed - broken) / n if n else float("nan")
    low, high = bootstrap_delta_ci(fixed, broken, n, samples, seed, level)
    return PairedStats(n, fixed, broken, delta, low, high, mcnemar_exact(fixed, broken), losing_classes(joined, top_classes))


def bootstrap_delta_ci(fixed: int, broken: int, n: int, samples: int = 10_000, seed: int = 0, level: float = 0.95) -> Tuple[float, float]:
    """Percentile paired-bootstrap interval of Δ top-1 (percentage points).

    Per image the paired difference is +1 (fixed), −1 (broken) or 0, so resampling n images with
    replacement is exactly a multinomial draw of those three counts: ``samples`` draws cost
    nothing whatever n is. Returns (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [fixed / n, broken / n, (n - fixed - broken) / n], size=samples)  # [samples, 3]
    deltas = 100.0 * (counts[:, 0] - counts[:, 1]) / n
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(deltas, [tail, 1.0 - tail])
    return float(low), float(high)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value: P(a Binomial(fixed + broken, 1/2) is at least as lopsided).

    Summed in log space (``math.lgamma``), so it stays exact to float precision for any count."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0) for i in range(k + 1)]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def losing_classes(joined: pd.DataFrame, top: int) -> Tuple[ClassLoss, ...]:
    """The ``top`` classes whose correct count falls most (ties: fewer images first, then label)."""
    if joined.empty or top <= 0:
        return ()
    per_class = pd.DataFrame(
        {"label": joined["label"], "net": joined["correct_b"].astype(int) - joined["correct_a"].astype(int)}
    ).groupby("label")["net"].agg(["sum", "size"])
    lost = per_class[per_class["sum"] < 0].reset_index().sort_values(["sum", "size", "label"]).head(top)
    return tuple(ClassLoss(int(row.label), int(row.sum), int(row.size)) for row in lost.itertuples(index=False))


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: what is compared (for the table) and its statistics (None: no predictions)."""

    model: str
    what: str
    stats: Optional[PairedStats]
    note: str = ""


def setting_comparisons(rows: pd.DataFrame, predictions: pd.DataFrame, cfg: ReportConfig) -> List[Comparison]:
    """Each r against r = 0 of its line, then tomecis against tome at every r both have (r > 0)."""
    by_file = {name: frame for name, frame in predictions.groupby("point_file")} if len(predictions) else {}
    comparisons = []

    def compare(model: str, what: str, base_row: pd.Series, cand_row: pd.Series) -> None:
        base, cand = by_file.get(base_row["point_file"]), by_file.get(cand_row["point_file"])
        if base is None or cand is None:
            comparisons.append(Comparison(model, what, None, "no predictions file for one of the two points"))
            return
        stats = paired_stats(base, cand, cfg.bootstrap_samples, cfg.seed, cfg.level, cfg.top_classes)
        note = "" if stats.n == len(base) == len(cand) else f"only the {stats.n} images both scored"
        comparisons.append(Comparison(model, what, stats, note))

    for model, mode, line in lines_of(rows):
        base = line[line["r"] == 0]
        for _, row in line[line["r"] != 0].iterrows():
            if base.empty:
                comparisons.append(Comparison(model, f"{mode} r={row['r']} vs r=0", None, "no r = 0 point"))
            else:
                compare(model, f"{mode} r={row['r']} vs r=0", base.iloc[0], row)
    for model in dict.fromkeys(rows["model"]):
        tome = rows[(rows["model"] == model) & (rows["mode"] == "tome")].set_index("r")
        tomecis = rows[(rows["model"] == model) & (rows["mode"] == "tomecis")].set_index("r")
        for r in sorted(set(tome.index) & set(tomecis.index)):
            if r != 0:
                compare(model, f"r={r} tomecis vs tome", tome.loc[r], tomecis.loc[r])
    return comparisons


def paired_table(comparisons: Sequence[Comparison], short_names: Dict[str, str], level: float = 0.95) -> str:
    """Markdown: model | comparison | images | fixed | broken | Δ top-1 | CI | McNemar p | classes losing most."""
    pct = f"{100 * level:g}% CI"
    lines = [f"| model | comparison | images | fixed | broken | Δ top-1 | {pct} | McNemar p | classes losing most |", "|---|---|--:|--:|--:|--:|--:|--:|---|"]
    for c in comparisons:
        name = short_names.get(c.model, c.model)
        if c.stats is None:
            lines.append(f"| {name} | {c.what} | — | — | — | — | — | — | {c.note} |")
            continue
        s = c.stats
        classes = _losing_classes_text(s.losing_classes)
        if c.note:
            classes += f" ({c.note})"
        lines.append(
            f"| {name} | {c.what} | {s.n} | {s.fixed} | {s.broken} | {s.delta:+.2f} | "
            f"[{s.ci_low:+.2f}, {s.ci_high:+.2f}] | {_p(s.p_value)} | {classes} |"
        )
    return "\n".join(lines)


def _losing_classes_text(losses: Sequence[ClassLoss]) -> str:
    """``n01440764 (#0) -3/50, ...``; a list of one-image losses says nothing, so it is summarised."""
    if not losses:
        return "none"
    if all(k.net == -1 for k in losses):
        return "none loses more than 1 image"
    return ", ".join(f"{_class_name(k.label)} {k.net:+d}/{k.n_images}" for k in losses)


def _class_name(label: int) -> str:
    """``n01440764 (#0)`` for an ImageNet-1k class index, else ``#label``."""
    from shards.synsets import imagenet_synsets  # the label space only (no torch)

    synsets = imagenet_synsets()
    return f"{synsets[label]} (#{label})" if 0 <= label < len(synsets) else f"#{label}"


def _p(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


# --------------------------------------------------------------------------- plot


def plot_accuracy_throughput(rows: pd.DataFrame, path: str, title: str, published: bool = False) -> Optional[str]:
    """Write a PNG (PLOT_SIZE_INCHES at PLOT_DPI): top-1 against img/s (left) and Δ top-1 against
    speed-up over r = 0 (right), one line per model and mode, each point labelled with its r.

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
    ax_abs, ax_rel = fig.subplots(1, 2)
    colours = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    speeds = []
    for model, mode, line in lines_of(timed):
        colour = next(colours)
        label = f"{line['short_name'].iloc[0]} {mode}"
        marker = "o" if mode == "tomecis" else "s"
        _draw_line(ax_abs, line["infer_samples_per_sec"], line["top1"], line["r"], label, colour, marker, "-")
        speeds.extend(line["infer_samples_per_sec"])
        base = line[line["r"] == 0]
        if not base.empty:
            b = base.iloc[0]
            _draw_line(ax_rel, line["infer_samples_per_sec"] / b["infer_samples_per_sec"], line["top1"] - b["top1"], line["r"], label, colour, marker, "-")
    if published:
        for model, (name, by_r) in paper.PUBLISHED.items():
            rs = sorted(by_r)
            top1 = pd.Series([by_r[r][0] for r in rs])
            speed = pd.Series([by_r[r][1] for r in rs])
            label = f"{name} published (RTX 3090, batch 128, 50k images)"
            colour = "0.35" if "tiny" in model else "0.6"
            _draw_line(ax_abs, speed, top1, pd.Series(rs), label, colour, "D", "--", hollow=True)
            _draw_line(ax_rel, speed / by_r[0][1], top1 - by_r[0][0], pd.Series(rs), label, colour, "D", "--", hollow=True)
            speeds.extend(speed)
    if speeds and max(speeds) / max(min(speeds), 1e-9) > 8:
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

        ax_abs.set_xscale("log")
        ax_abs.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax_abs.xaxis.set_major_formatter(ScalarFormatter())
        ax_abs.xaxis.set_minor_formatter(NullFormatter())
    ax_abs.set_xlabel("img/s (model alone; log scale)" if ax_abs.get_xscale() == "log" else "img/s (model alone)")
    ax_abs.set_ylabel("top-1 (%)")
    ax_abs.set_title("top-1 against throughput")
    ax_rel.set_xlabel("speed-up over r = 0")
    ax_rel.set_ylabel("Δ top-1 against r = 0 (points)")
    ax_rel.set_title("relative to each line's r = 0")
    for ax in (ax_abs, ax_rel):
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title + ("\ndashed grey: published figures from another machine (paper), for reference" if published else ""), fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _draw_line(ax, x: pd.Series, y: pd.Series, r: pd.Series, label: str, colour, marker: str, style: str, hollow: bool = False) -> None:
    face = "none" if hollow else colour
    ax.plot(list(x), list(y), style, marker=marker, color=colour, markerfacecolor=face, label=label, linewidth=1.2, markersize=5)
    for xi, yi, ri in zip(x, y, r):
        ax.annotate(str(int(ri)), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)


# --------------------------------------------------------------------------- the report


def build_report(cfg: ReportConfig) -> Report:
    """Read ``cfg.results``, write the PNGs under ``cfg.out`` (when set) and return the Markdown.

    Raises ``NoResultsError`` when there is nothing to report."""
    results = ResultsDir(cfg.results)
    points = load_points(results)
    if points.empty:
        raise NoResultsError(explain_empty(results))
    points = filter_points(points, cfg)
    points, superseded = drop_superseded(points)
    settings = split_settings(points)
    predictions = load_predictions(results, points["point_file"])
    short_names = dict(zip(points["model"], points["short_name"]))
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)

    report = Report("")
    parts = [f"# Results in {cfg.results}", _summary_line(points, settings, superseded)]
    for index, (setting, rows) in enumerate(settings, start=1):
        parts.append(_setting_section(index, len(settings), setting, rows, predictions, short_names, cfg, report))
    if cfg.paper:
        parts.append(_paper_section())
    report.markdown = "\n\n".join(parts) + "\n"
    if cfg.out:
        path = Path(cfg.out) / "report.md"
        path.write_text(report.markdown)
        report.files.insert(0, str(path))
    return report


def _summary_line(points: pd.DataFrame, settings: list, superseded: int) -> str:
    text = (
        f"{len(points)} grid point(s), {points['model'].nunique()} model(s), {len(settings)} setting(s). "
        "Rows of different settings (dataset, amp, batch, device, weights) are never compared."
    )
    if len(settings) > 1:
        text += " Pick one with --dataset / --amp / --batch-size."
    if superseded:
        text += f" {superseded} older row(s) of the same point ignored (latest kept)."
    return text


def _setting_section(index, total, setting, rows, predictions, short_names, cfg, report) -> str:
    parts = [f"## Setting {index} of {total}: {setting.label()}"]
    parts.extend(f"**Warning:** {note}" for note in unmerged_spread(rows))
    expected_r = sorted({int(r) for r in rows["r"]})
    for model, mode, line in lines_of(rows):
        block = f"### {line_heading(line, mode)}\n\n{model_table(line, expected_r)}"
        notes = table_notes(line, expected_r)
        if notes:
            block += "\n\n" + "\n".join(f"- {n}" for n in notes)
        if cfg.paper and mode == "tomecis" and model in paper.PUBLISHED:
            versus = versus_published_table(line, model)
            if versus:
                block += f"\n\nAgainst the published {paper.PUBLISHED[model][0]} figures (another machine, 50,000 images):\n\n{versus}"
        parts.append(block)

    comparisons = setting_comparisons(rows, predictions, cfg)
    if comparisons:
        parts.append(
            "### Paired statistics (per-image predictions)\n\n"
            f"fixed: wrong before, right after; broken: the reverse. Δ top-1 in points; {100 * cfg.level:g}% CI: paired bootstrap "
            f"({cfg.bootstrap_samples} resamples, seed {cfg.seed}); p: exact McNemar test on the fixed/broken pairs. "
            "A CI spanning 0 (large p) means these images cannot tell the two apart. With few changed images "
            "(under ~25 fixed + broken) the bootstrap CI is too narrow: trust the exact p there. "
            "Classes: the largest net losses, as change / images of the class.\n\n" + paired_table(comparisons, short_names, cfg.level)
        )
    if cfg.out:
        name = "accuracy_throughput.png" if total == 1 else f"accuracy_throughput-{index}.png"
        written = plot_accuracy_throughput(rows, str(Path(cfg.out) / name), f"Setting {index}: {setting.label()}", cfg.paper)
        if written:
            report.files.append(written)
            parts.append(f"![top-1 against img/s]({name})")
        else:
            parts.append("(no plot: no point of this setting has img/s; the sweep ran with --no-bench)")
    return "\n\n".join(parts)


def _paper_section() -> str:
    parts = [
        "## Published reference (not measured here)",
        f"{paper.CITATION}. {paper.SETTING}. These figures come from another machine and the full validation set: "
        "compare Δ top-1 and speed-up, not absolute img/s.",
    ]
    for model, (name, _) in paper.PUBLISHED.items():
        parts.append(f"### {name} ({model}), published\n\n{published_table(model)}")
    rows = "\n".join(f"| {m} | {t:.2f} | {s:.1f} |" for m, t, s in paper.PUBLISHED_COMPARISON_DEIT_S)
    parts.append("### DeiT-S at similar throughput, published\n\n| method | top-1 | img/s |\n|---|--:|--:|\n" + rows)
    return "\n\n".join(parts)


def _ok(value: Optional[float]) -> bool:
    return value is not None and not pd.isna(value)


def _num(value: Optional[float], fmt: str) -> str:
    return fmt.format(value) if _ok(value) else "—"


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a sweep's --out directory or URI (s3://...)")
    p.add_argument("--out", default="report", help="folder for report.md and the PNGs (default %(default)s)")
    p.add_argument("--paper", action="store_true", help="add the published ToMeCIS numbers as a reference series")
    p.add_argument("--dataset", help="only this dataset fingerprint (a prefix is enough)")
    p.add_argument("--amp", choices=["none", "fp16", "bf16"], help="only this autocast setting")
    p.add_argument("--batch-size", type=int, help="only this benchmark batch size")
    p.add_argument("--models", help="only these models, comma-separated short or timm names")
    p.add_argument("--mode", choices=["tomecis", "tome"], help="only this merge mode")
    p.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap resamples for the CI (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--classes", type=int, default=3, help="classes that lose most, per comparison (default %(default)s)")
    return p


def config_from_args(argv: Optional[Sequence[str]] = None) -> ReportConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap < 100:
        parser.error(f"--bootstrap must be >= 100 for a usable interval, got {args.bootstrap}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.classes < 0:
        parser.error(f"--classes must be >= 0, got {args.classes}")
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    return ReportConfig(
        results=args.results,
        out=args.out,
        paper=args.paper,
        dataset=args.dataset,
        amp=args.amp,
        batch_size=args.batch_size,
        models=models,
        mode=args.mode,
        bootstrap_samples=args.bootstrap,
        seed=args.seed,
        top_classes=args.classes,
    )


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    try:
        report = build_report(cfg)
    except NoResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report.markdown)
    if report.files:
        print("wrote " + ", ".join(report.files), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
