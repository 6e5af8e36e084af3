"""Tables, paired statistics, matched-speed comparisons and plots from a results directory. Knows nothing
of Ray or models.

    python -m orchestrator.report results/ [--out report/] [--paper] [--reference tomecis:r13]
        [--method tomecis,evit] [--models deit_small] [--dataset FP] [--amp none] [--batch-size 128]

For each *setting* (dataset fingerprint, amp, benchmark batch size, device, weights: rows from different
settings are never compared with one another) and each model, the report has:

- a table in the paper's format: the unreduced baseline once, then every method at every amount (r, keep,
  top-1, top-5, img/s, speed-up over the baseline, Δ top-1, GFLOPs, tokens left), with the amounts other
  points of the setting have but a method lacks shown as missing;
- a matched-speed table: for the reference point (``--reference``, default ToMeCIS r = 13), every other
  method's point nearest in img/s and its point nearest in GFLOPs, with top-1, Δ top-1 against the
  reference and the paired 95% CI of that difference on the same images;
- paired statistics of every point against the model's one baseline (``tomecis.names.UNREDUCED``; in
  results from before that point existed, the first method's r = 0 row, named in the notes): images
  fixed / broken, Δ top-1 with a 95% paired-bootstrap CI, the exact McNemar p-value, the classes that
  lose most;
- a PNG: top-1 against the speed-up over the baseline (with its 95% intervals) beside top-1 against
  GFLOPs, one curve per method along x, the reference and matched points ringed.

``--paper`` adds the published ToMeCIS numbers and the published DeiT-S comparison at a similar
throughput (``orchestrator.paper``) beside our matched points, marked as figures from another machine.
The Markdown is printed and written to ``OUT/report.md``.

This module is the CLI and the assembly: the results directory is read by ``orchestrator.results``, the
statistics are ``orchestrator.stats``, the tables ``orchestrator.tables`` and ``orchestrator.matched``,
the figures ``orchestrator.plot``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import pyarrow.fs as pafs

from clipattern import parsed_or_exit, run_or_report
from shards.named import caveat_of
from tomecis.names import AMP_NAMES, METHOD_NAMES, UNREDUCED, method_spec, methods_help

from . import paper
from .matched import DEFAULT_REFERENCE, Match, Reference, matched_points, matched_table, parse_reference
from .plot import plot_model
from .results import PREDICTIONS_DIR, ResultsDir
from .stats import Comparison, PairedStats, paired_stats
from .tables import (
    POINT_COLUMNS,
    SETTING_COLUMNS,
    amount_text,
    baseline_of,
    cell,
    expected_amounts,
    model_heading,
    model_table,
    models_of,
    paired_table,
    planned_of,
    point_label,
    published_table,
    reduced_points,
    speedup_cell,
    table_notes,
    unmerged_spread,
    unreduced_mask,
    versus_published_table,
    with_method_columns,
)


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
    methods: Optional[List[str]] = None  # the baseline is always kept
    reference: str = DEFAULT_REFERENCE  # METHOD:AMOUNT (``matched.parse_reference``)
    bootstrap_samples: int = 10_000
    seed: int = 0
    level: float = 0.95
    top_classes: int = 3


@dataclass(frozen=True, order=True)
class Setting:
    """What makes rows comparable: same images, same autocast, same benchmark batch, same device, same
    weights. One field per setting column (``tables.SETTING_COLUMNS``)."""

    dataset: str
    amp: str
    infer_batch_size: int
    device: str
    weights: str = "unknown weights"

    @classmethod
    def of(cls, values: Dict[str, object]) -> "Setting":
        """The setting of rows whose setting columns hold ``values`` (column -> value)."""
        names = [f.name for f in fields(cls)]
        if sorted(values) != sorted(names):
            raise ValueError(f"a setting has the columns {names}, got {sorted(values)}")
        return cls(**{f.name: (int if f.type == "int" else str)(values[f.name]) for f in fields(cls)})

    def label(self, title: str = "") -> str:
        """The setting in words; ``title`` names the data beside its fingerprint (ImageNetV2 …)."""
        dataset = f"{title} ({self.dataset})" if title else self.dataset
        return f"dataset {dataset}, amp {self.amp}, batch {self.infer_batch_size}, {self.device}, weights {self.weights}"


@dataclass
class Report:
    """The Markdown and the files written (``report.md`` first, then the PNGs)."""

    markdown: str
    files: List[str] = field(default_factory=list)


@dataclass
class _Run:
    """What every section of one report reads: the config, the parsed reference, each point's
    predictions by ``point_file``, and the report being written (its ``files`` grow)."""

    cfg: ReportConfig
    reference: Reference
    predictions: Dict[str, pd.DataFrame]
    report: Report
    n_settings: int = 1


# --------------------------------------------------------------------------- nothing to report


def explain_empty(results: ResultsDir) -> str:
    """Why a results directory has nothing to report, and what to do next."""
    info = results.fs.get_file_info(results.root)
    sweep = f"python -m orchestrator.sweep --models deit_tiny --r 8-16 --data SHARDS --out {results.uri}"
    if info.type == pafs.FileType.NotFound:
        return f"no results: {results.uri} does not exist; run a sweep into it first ({sweep})"
    if info.type != pafs.FileType.Directory:
        return f"no results: {results.uri} is not a directory; pass the --out directory of a sweep"
    if results.parquet_files(PREDICTIONS_DIR):
        return (
            f"no results in {results.uri}: predictions/ has files but points/ has none, so no grid point finished "
            f"(a sweep writes a point's row last); rerun the sweep ({sweep}) to finish them"
        )
    return f"no results in {results.uri}: it has no points/*.parquet; run a sweep into it first ({sweep})"


# --------------------------------------------------------------------------- filtering and grouping


def filter_points(points: pd.DataFrame, cfg: ReportConfig) -> pd.DataFrame:
    """The rows matching ``--dataset`` (prefix), ``--amp``, ``--batch-size``, ``--models``, ``--method``
    (the unreduced baseline always stays).

    Raises ``NoResultsError`` naming the filter and the values present when nothing matches."""
    wanted_models, wanted_methods = set(cfg.models or ()), set(cfg.methods or ())
    checks = [
        ("--dataset", cfg.dataset, "dataset", lambda p: p["dataset"].astype(str).str.startswith(cfg.dataset)),
        ("--amp", cfg.amp, "amp", lambda p: p["amp"] == cfg.amp),
        (
            "--batch-size",
            cfg.batch_size,
            "infer_batch_size",
            lambda p: p["infer_batch_size"] == cfg.batch_size,
        ),
        (
            "--models",
            cfg.models,
            "short_name",
            lambda p: p["model"].isin(wanted_models) | p["short_name"].isin(wanted_models),
        ),
        ("--method", cfg.methods, "method", lambda p: _method_mask(p, wanted_methods)),
    ]
    for flag, value, column, select in checks:
        if value is None or value == "" or value == []:
            continue
        mask = select(points)
        if not mask.any():
            present = ", ".join(sorted(str(v) for v in points[column].dropna().unique()))
            shown = ",".join(value) if isinstance(value, list) else value
            raise NoResultsError(
                f"no points match {flag} {shown} in {cfg.results} (after the filters before it); present: {present}"
            )
        points = points[mask]
    return points


def _method_mask(points: pd.DataFrame, methods: set) -> pd.Series:
    """The rows of ``methods`` and the unreduced rows (each method's baseline); nothing when no row is of
    ``methods`` (the baseline alone is not a match)."""
    chosen = points["method"].isin(methods)
    return (chosen | unreduced_mask(points)) & chosen.any()


def drop_superseded(points: pd.DataFrame) -> Tuple[pd.DataFrame, int]:
    """Keep the latest row (by ``finished``) per (setting, model, method, amount); returns the rows, with
    the setting columns' placeholders filled in, and how many were dropped."""
    key = list(SETTING_COLUMNS) + list(POINT_COLUMNS)
    ordered = _with_setting_defaults(points)
    if "finished" in ordered:
        ordered = ordered.sort_values("finished", kind="stable")
    kept = ordered.drop_duplicates(subset=key, keep="last")
    return kept.sort_index(), len(points) - len(kept)


def split_settings(points: pd.DataFrame) -> List[Tuple[Setting, pd.DataFrame]]:
    """Rows grouped by setting (``SETTING_COLUMNS``), largest group first, then in ``Setting``'s order."""
    groups = []
    filled = _with_setting_defaults(points)
    for values, rows in filled.groupby(list(SETTING_COLUMNS), sort=False, dropna=False):
        groups.append((Setting.of(dict(zip(SETTING_COLUMNS, values))), rows))
    groups.sort(key=lambda g: (-len(g[1]), g[0]))
    return groups


def _with_setting_defaults(points: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a setting column existed get a placeholder rather than being dropped."""
    weights = points["weights"] if "weights" in points else pd.Series(None, index=points.index, dtype=object)
    return points.assign(
        device=points["device"].fillna("unknown device"),
        amp=points["amp"].fillna("none"),
        weights=weights.fillna("unknown weights"),
    )


def prepare_points(points: pd.DataFrame, cfg: ReportConfig) -> Tuple[pd.DataFrame, int]:
    """Points rows with ``method`` and ``keep`` columns, filtered by ``cfg``, the latest row of each point
    kept; returns them and how many older rows were dropped."""
    return drop_superseded(filter_points(with_method_columns(points), cfg))


# --------------------------------------------------------------------------- paired statistics


def _paired(run: _Run, base_row: pd.Series, cand_row: pd.Series) -> Tuple[Optional[PairedStats], str]:
    """``cand_row``'s predictions against ``base_row``'s, image by image; (None, why) when either is missing."""
    base, cand = run.predictions.get(base_row["point_file"]), run.predictions.get(cand_row["point_file"])
    if base is None or cand is None:
        return None, "no predictions file for one of the two points"
    cfg = run.cfg
    stats = paired_stats(base, cand, cfg.bootstrap_samples, cfg.seed, cfg.level, cfg.top_classes)
    note = "" if stats.n == len(base) == len(cand) else f"only the {stats.n} images both scored"
    return stats, note


def baseline_comparisons(model_rows: pd.DataFrame, run: _Run) -> List[Comparison]:
    """Every reduced point of one model against the model's one baseline (``tables.baseline_of``)."""
    base = baseline_of(model_rows).row
    comparisons = []
    for _, row in reduced_points(model_rows).iterrows():
        if base is None:
            comparisons.append(
                Comparison(row["model"], f"{point_label(row)} vs baseline", None, "no baseline point")
            )
            continue
        stats, note = _paired(run, base, row)
        comparisons.append(
            Comparison(row["model"], f"{point_label(row)} vs {_base_label(base)}", stats, note)
        )
    return comparisons


def _base_label(base: pd.Series) -> str:
    """``none``; an older result's baseline as ``tomecis r0``."""
    return UNREDUCED if base["method"] == UNREDUCED else f"{base['method']} {amount_text(base)}"


# --------------------------------------------------------------------------- the report


def build_report(cfg: ReportConfig) -> Report:
    """Read ``cfg.results``, write ``report.md`` and the PNGs under ``cfg.out`` (when set) and return the report.

    Raises ``NoResultsError`` when there is nothing to report, ``ValueError`` for a bad ``cfg.reference``."""
    parse_reference(cfg.reference)
    results = ResultsDir(cfg.results)
    points = results.read_point_rows()
    if points.empty:
        raise NoResultsError(explain_empty(results))
    points, superseded = prepare_points(points, cfg)
    predictions = results.read_predictions(points["point_file"])
    return render_report(points, predictions, cfg, superseded)


def report_from_frames(points: pd.DataFrame, predictions: pd.DataFrame, cfg: ReportConfig) -> Report:
    """The report of points rows and predictions rows already in memory (``point_file`` ties the two), as
    ``build_report`` makes it from a directory."""
    if points.empty:
        raise NoResultsError(f"no results in {cfg.results}: no points rows")
    points, superseded = prepare_points(points, cfg)
    return render_report(points, predictions, cfg, superseded)


def render_report(
    points: pd.DataFrame, predictions: pd.DataFrame, cfg: ReportConfig, superseded: int = 0
) -> Report:
    """The Markdown of prepared points (``prepare_points``) and their predictions; writes the files under ``cfg.out``."""
    by_file = {name: frame for name, frame in predictions.groupby("point_file")} if len(predictions) else {}
    settings = split_settings(points)
    run = _Run(cfg, parse_reference(cfg.reference), by_file, Report(""), len(settings))
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    parts = [_heading(cfg.results, points), _summary_line(points, settings, superseded), _how_to_read(run)]
    parts.extend(
        _setting_section(index, setting, rows, run) for index, (setting, rows) in enumerate(settings, start=1)
    )
    if cfg.paper:
        parts.append(_paper_section(settings, run))
    run.report.markdown = "\n\n".join(parts) + "\n"
    if cfg.out:
        path = Path(cfg.out) / "report.md"
        path.write_text(run.report.markdown)
        run.report.files.insert(0, str(path))
    return run.report


def _heading(results: str, points: pd.DataFrame) -> str:
    """``# Results in DIR``, naming the public sets the rows ran on (``dataset_title``: ImageNetV2 …) and
    what a reader must know about them, so that nobody compares them with ImageNet-val figures."""
    titles = dataset_titles(points)
    if not titles:
        return f"# Results in {results}"
    caveats = " ".join(dict.fromkeys(filter(None, (caveat_of(title) for title in titles))))
    return f"# Results in {results}, on {' and '.join(titles)}" + (f"\n\n**{caveats}.**" if caveats else "")


def dataset_titles(rows: pd.DataFrame) -> List[str]:
    """The distinct public-set titles of the rows, in order (none for rows written before the column existed)."""
    if "dataset_title" not in rows:
        return []
    return list(dict.fromkeys(title for title in rows["dataset_title"] if isinstance(title, str) and title))


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


def _how_to_read(run: _Run) -> str:
    cfg = run.cfg
    return (
        "How to read: img/s is the model alone (random input, no data loading); speed-up and Δ top-1 are "
        "against the model's one unreduced baseline; a speed-up `1.52x [1.49, 1.55]` is the median of the "
        "per-round ratios to the baseline timed beside it, with its 95% order-statistics interval. Paired statistics compare two points on the same images: "
        f"fixed = wrong before, right after; broken = the reverse; Δ top-1 in points; {100 * cfg.level:g}% CI: "
        f"paired bootstrap ({cfg.bootstrap_samples} resamples, seed {cfg.seed}); p: exact McNemar test on the "
        "fixed/broken images. A CI spanning 0 (large p) means these images cannot tell the two apart; with "
        "under ~25 fixed + broken images the bootstrap CI is too narrow: trust the exact p there."
    )


def _setting_section(index: int, setting: Setting, rows: pd.DataFrame, run: _Run) -> str:
    """``## Setting i of n``: noisy-timing warnings, then each model's section."""
    label = setting.label(" and ".join(dataset_titles(rows)))
    parts = [f"## Setting {index} of {run.n_settings}: {label}"]
    parts.extend(f"**Warning:** {note}" for note in unmerged_spread(rows))
    expected = expected_amounts(rows)
    for model in models_of(rows):
        parts.append(_model_section(index, setting, rows[rows["model"] == model], expected, run))
    return "\n\n".join(parts)


def _model_section(index: int, setting: Setting, model_rows: pd.DataFrame, expected, run: _Run) -> str:
    """``### model``: its table and notes, the published figures (``--paper``), the matched-speed table,
    the paired statistics against the baseline and the plot."""
    model = model_rows["model"].iloc[0]
    expected = planned_of(model_rows) or expected  # per method where the sweeps said what they planned
    parts = [f"### {model_heading(model_rows)}", model_table(model_rows, expected)]
    notes = table_notes(model_rows, expected)
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    if run.cfg.paper and model in paper.PUBLISHED:
        versus = versus_published_table(model_rows, model)
        if versus:
            parts.append(
                f"Our ToMeCIS against the published {paper.PUBLISHED[model][0]} figures (another machine):\n\n{versus}"
            )
    parts.append(_matched_block(model_rows, run))
    comparisons = baseline_comparisons(model_rows, run)
    if comparisons:
        short = {model: model_rows["short_name"].iloc[0]}
        parts.append(
            "#### Paired statistics against the baseline\n\n"
            + paired_table(comparisons, short, run.cfg.level)
        )
    parts.append(_plot_block(index, setting, model_rows, run))
    return "\n\n".join(part for part in parts if part)


def _matched_block(model_rows: pd.DataFrame, run: _Run) -> str:
    """``#### Matched speed``: the table, or one line saying why there is none."""
    reference = run.reference
    heading = f"#### Matched speed: every method against {reference.label()}"
    ref_row = reference.find(model_rows)
    if ref_row is None:
        present = ", ".join(point_label(row) for _, row in reduced_points(model_rows).iterrows()) or "none"
        return (
            f"{heading}\n\nno {reference.label()} point for {model_rows['short_name'].iloc[0]} in this setting, so no "
            f"matched-speed table (points present: {present}; choose one with --reference METHOD:AMOUNT)."
        )
    matches = matched_points(model_rows, reference, ref_row)
    stats = [_paired(run, ref_row, m.row)[0] if m.row is not None else None for m in matches]
    text = (
        f"{heading}\n\nEach other method's point nearest the reference in img/s and nearest in GFLOPs (one line "
        "when one point is nearest in both); a point the sweep matched to the reference by construction (--match) "
        "takes the nearest one's place, with its remaining gap to the reference at calibration. Δ top-1 and its CI "
        "are paired against the reference on the same images."
    )
    text += (
        " Speed-ups carry their 95% interval (median of the paired timing rounds); 'speed vs reference' says "
        "whether a point's interval and the reference's are apart."
    )
    base_speed = baseline_of(model_rows).value("infer_samples_per_sec")
    return f"{text}\n\n{matched_table(ref_row, matches, stats, run.cfg.level, base_speed)}"


def _plot_block(index: int, setting: Setting, model_rows: pd.DataFrame, run: _Run) -> str:
    """The model's figure, written under ``cfg.out``, as a Markdown image (or why there is none)."""
    if not run.cfg.out:
        return ""
    short = model_rows["short_name"].iloc[0]
    name = f"{short}.png" if run.n_settings == 1 else f"{short}-setting{index}.png"
    title = f"{short}, setting {index}: {setting.label()}"
    written = plot_model(model_rows, str(Path(run.cfg.out) / name), title, run.cfg.paper, run.reference)
    if not written:
        return "(no plot: no point has img/s or GFLOPs; the sweep ran with --no-bench)"
    run.report.files.append(written)
    return f"![{short}: top-1 against speed-up and GFLOPs]({name})"


# --------------------------------------------------------------------------- --paper


def _paper_section(settings: Sequence[Tuple[Setting, pd.DataFrame]], run: _Run) -> str:
    """The published ToMeCIS figures, and the published DeiT-S comparison beside our matched points."""
    parts = [
        "## Published reference (another machine, not measured here)",
        f"{paper.CITATION}. {paper.SETTING}. These figures come from another machine and the full validation set: "
        "compare Δ top-1 and speed-up, not absolute img/s.",
    ]
    for model, (name, _) in paper.PUBLISHED.items():
        parts.append(f"### {name} ({model}), published\n\n{published_table(model)}")
    parts.append(
        "### DeiT-S at a similar throughput: published (RTX 3090, batch 128, no training) beside ours\n\n"
        f"Ours: the baseline, the reference ({run.reference.label()}) and each other method's point matched to it "
        "in img/s (the one the sweep calibrated with --match, else the nearest), per setting. Published img/s come from another machine: compare speed-ups and Δ top-1."
    )
    ours = [
        (i, s, rows[rows["model"] == paper.COMPARISON_MODEL]) for i, (s, rows) in enumerate(settings, start=1)
    ]
    ours = [(i, s, rows) for i, s, rows in ours if not rows.empty]
    if not ours:
        parts.append(
            f"(no {paper.COMPARISON_MODEL} points here: published figures only)\n\n"
            + comparison_table(None, run.reference)
        )
    for index, setting, rows in ours:
        parts.append(f"Setting {index} ({setting.label()}):\n\n{comparison_table(rows, run.reference)}")
    return "\n\n".join(parts)


def comparison_table(model_rows: Optional[pd.DataFrame], reference: Reference) -> str:
    """The published DeiT-S comparison (``paper.PUBLISHED_COMPARISON_DEIT_S``), each method beside our
    point for it (``_our_point``): top-1, img/s, speed-up and Δ top-1 against each side's own baseline."""
    lines = [
        "| method | published top-1 | published img/s | published speed-up | published Δ top-1 "
        "| our point | our top-1 | our img/s | our speed-up | our Δ top-1 |",
        "|---|--:|--:|--:|--:|---|--:|--:|--:|--:|",
    ]
    _, _, base_top1, base_speed = paper.PUBLISHED_COMPARISON_DEIT_S[0]
    base = baseline_of(model_rows) if model_rows is not None else None
    for method, label, top1, speed in paper.PUBLISHED_COMPARISON_DEIT_S:
        row, why = (
            _our_point(model_rows, method, reference) if model_rows is not None else (None, "no points")
        )
        published = (
            f"| {label} | {top1:.2f} | {speed:.1f} | {speed / base_speed:.2f}x | {top1 - base_top1:+.2f} "
        )
        lines.append(published + _our_cells(row, why, base, method))
    return "\n".join(lines)


def _our_point(
    model_rows: pd.DataFrame, method: str, reference: Reference
) -> Tuple[Optional[pd.Series], str]:
    """Our row for a published method: the baseline for ``none``, the reference for its own method,
    else the method's point nearest the reference in img/s; (None, why) when there is none."""
    if method == UNREDUCED:
        row = baseline_of(model_rows).row
        return row, "no baseline point"
    ref_row = reference.find(model_rows)
    if ref_row is None:
        return None, f"no {reference.label()} point"
    if method == reference.method:
        return ref_row, ""
    by_speed: List[Match] = [
        m for m in matched_points(model_rows, reference, ref_row) if m.method == method and "img/s" in m.by
    ]
    return (by_speed[0].row, "") if by_speed else (None, f"no {method} point with img/s")


def _our_cells(row: Optional[pd.Series], why: str, base, method: str) -> str:
    """Our point's cells of the comparison table (``why`` in place of them when there is none)."""
    if row is None:
        return f"| {why} | — | — | — | — |"
    speed, base_speed, base_top1 = (
        row["infer_samples_per_sec"],
        base.value("infer_samples_per_sec"),
        base.value("top1"),
    )
    speed_up = "1.00x" if method == UNREDUCED else speedup_cell(row, base_speed)
    delta = row["top1"] - base_top1 if base_top1 is not None else None
    label = f"baseline ({_base_label(row)})" if method == UNREDUCED else point_label(row)
    return (
        f"| {label} | {cell(row['top1'], '{:.2f}')} | {cell(speed, '{:.1f}')} | "
        f"{speed_up} | {cell(delta, '{:+.2f}')} |"
    )


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a sweep's --out directory or URI (s3://...)")
    p.add_argument("--out", default="report", help="folder for report.md and the PNGs (default %(default)s)")
    p.add_argument(
        "--paper",
        action="store_true",
        help="add the published ToMeCIS figures and the published DeiT-S comparison beside ours",
    )
    p.add_argument(
        "--reference",
        default=DEFAULT_REFERENCE,
        help="the matched-speed reference, METHOD:AMOUNT such as tomecis:r13 or evit:keep0.7 (default %(default)s)",
    )
    p.add_argument("--dataset", help="only this dataset fingerprint (a prefix is enough)")
    p.add_argument("--amp", choices=list(AMP_NAMES), help="only this autocast setting")
    p.add_argument("--batch-size", type=int, help="only this benchmark batch size")
    p.add_argument("--models", help="only these models, comma-separated short or timm names")
    p.add_argument(
        "--method",
        "--mode",
        dest="methods",
        help=f"only these methods, comma-separated (the baseline stays): {methods_help()}",
    )
    p.add_argument(
        "--bootstrap",
        dest="bootstrap_samples",
        type=int,
        default=10_000,
        help="bootstrap resamples for the CI (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument(
        "--classes",
        dest="top_classes",
        type=int,
        default=3,
        help="classes that lose most, per comparison (default %(default)s)",
    )
    return p


def parse_methods(text: str) -> List[str]:
    """``"tomecis,evit"`` -> ``["tomecis", "evit"]``; an unknown name raises ``ValueError`` naming it."""
    names, unknown = [], []
    for item in dict.fromkeys(m.strip() for m in str(text).split(",") if m.strip()):
        try:  # a researcher's method by name (an installed entry point) or import path gives its name
            names.append(method_spec(item).name)
        except ValueError:
            unknown.append(item)
    if not names or unknown:
        raise ValueError(
            f"unknown method {','.join(unknown) or repr(text)}; choose from {', '.join(METHOD_NAMES)}, or a "
            "method of your own by its entry point's name or import path (python -m orchestrator.sweep --list-methods)"
        )
    return list(dict.fromkeys(names))


def config_from_args(argv: Optional[Sequence[str]] = None) -> ReportConfig:
    """Parse and check the arguments (``clipattern``'s pattern: each ``dest`` is a ReportConfig field)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bootstrap_samples < 100:
        parser.error(f"--bootstrap must be >= 100 for a usable interval, got {args.bootstrap_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.top_classes < 0:
        parser.error(f"--classes must be >= 0, got {args.top_classes}")
    parsed_or_exit(parser, "--reference", parse_reference, args.reference)
    methods = parsed_or_exit(parser, "--method", parse_methods, args.methods) if args.methods else None
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    return ReportConfig(**{**vars(args), "models": models, "methods": methods})


def main(argv: Optional[Sequence[str]] = None) -> int:
    cfg = config_from_args(argv)
    return run_or_report(lambda: _build_and_print(cfg), (NoResultsError,))


def _build_and_print(cfg: ReportConfig) -> int:
    report = build_report(cfg)
    print(report.markdown)
    if report.files:
        print("wrote " + ", ".join(report.files), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
