"""Tables, paired statistics and plots from a results directory. Knows nothing of Ray or models.

    python -m orchestrator.report results/ [--out report/] [--paper] [--dataset FP] [--amp none] [--batch-size 128]

For each *setting* (dataset fingerprint, amp, benchmark batch size, device: rows from different
settings are never compared with one another) the report has:

- per model and mode, a table in the paper's format (r, top-1, top-5, img/s, speed-up over r = 0,
  Δ top-1, GFLOPs, tokens left), with the r values other lines of the setting have but this one
  lacks shown as missing;
- paired statistics from the per-image predictions: each r against r = 0 of the same model and
  mode, and every merge mode against the baseline mode (``tome``, ``tomecis.names.BASELINE_MODE``) at the
  same r: images fixed / broken, Δ top-1 with a 95%
  paired-bootstrap confidence interval, the exact McNemar p-value and the classes that lose most;
- a PNG: top-1 against img/s (one line per model and mode, points labelled with r) beside
  Δ top-1 against speed-up over r = 0.

``--paper`` adds the published ToMeCIS numbers (``orchestrator.paper``) as a reference series,
marked as figures from another machine. The Markdown is printed and written to ``OUT/report.md``.

This module is the CLI and the assembly of the report: the results directory is read by
``orchestrator.results``, the paired statistics are ``orchestrator.stats``, the tables
``orchestrator.tables`` and the figure ``orchestrator.plot``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd
import pyarrow.fs as pafs

from clipattern import run_or_report
from tomecis.names import BASELINE_MODE, MODES, modes_help

from . import paper
from .grid import AMPS, KEY_COLUMNS, SETTING_COLUMNS
from .plot import plot_accuracy_throughput
from .results import PREDICTIONS_DIR, ResultsDir
from .stats import Comparison, paired_stats
from .tables import (
    line_heading,
    line_rows,
    lines_of,
    model_table,
    paired_table,
    published_table,
    table_notes,
    unmerged_spread,
    versus_published_table,
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
    mode: Optional[str] = None
    bootstrap_samples: int = 10_000
    seed: int = 0
    level: float = 0.95
    top_classes: int = 3


@dataclass(frozen=True, order=True)
class Setting:
    """What makes rows comparable: same images, same autocast, same benchmark batch, same device, same
    weights. One field per setting column (``grid.SETTING_COLUMNS``: a point's identity but its model,
    mode and r), in the order settings of equal size are listed."""

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

    def label(self) -> str:
        return f"dataset {self.dataset}, amp {self.amp}, batch {self.infer_batch_size}, {self.device}, weights {self.weights}"


@dataclass
class Report:
    """The Markdown and the files written (``report.md`` first, then the PNGs)."""

    markdown: str
    files: List[str] = field(default_factory=list)


# --------------------------------------------------------------------------- nothing to report


def explain_empty(results: ResultsDir) -> str:
    """Why a results directory has nothing to report, and what to do next."""
    info = results.fs.get_file_info(results.root)
    sweep = f"python -m orchestrator.sweep --models deit_tiny --r 0,8-16 --data SHARDS --out {results.uri}"
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
    """The rows matching ``--dataset`` (prefix), ``--amp``, ``--batch-size``, ``--models``, ``--mode``.

    Raises ``NoResultsError`` naming the filter and the values present when nothing matches."""
    wanted = set(cfg.models or ())
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
            lambda p: p["model"].isin(wanted) | p["short_name"].isin(wanted),
        ),
        ("--mode", cfg.mode, "mode", lambda p: p["mode"] == cfg.mode),
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


def drop_superseded(points: pd.DataFrame) -> Tuple[pd.DataFrame, int]:
    """Keep the latest row (by ``finished``) per (setting, model, mode, r); returns the rows, with the
    setting columns' placeholders filled in, and how many were dropped."""
    key = list(SETTING_COLUMNS) + list(KEY_COLUMNS)
    ordered = _with_setting_defaults(points).sort_values("finished", kind="stable")
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


# --------------------------------------------------------------------------- the report


def setting_comparisons(rows: pd.DataFrame, predictions: pd.DataFrame, cfg: ReportConfig) -> List[Comparison]:
    """Each r against r = 0 of its line, then every other mode against the baseline mode
    (``BASELINE_MODE``, ToMe) at every r both have (r > 0).

    ``rows``: the points rows of one setting; ``predictions``: ``ResultsDir.read_predictions`` (key, label,
    pred, correct, point_file), matched to the rows through ``point_file``."""
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
    for model, mode, line in lines_of(rows):
        if mode == BASELINE_MODE:
            continue
        baseline = line_rows(rows, model, BASELINE_MODE).set_index("r")
        candidate = line.set_index("r")
        for r in sorted(set(baseline.index) & set(candidate.index)):
            if r != 0:
                compare(model, f"r={r} {mode} vs {BASELINE_MODE}", baseline.loc[r], candidate.loc[r])
    return comparisons


def build_report(cfg: ReportConfig) -> Report:
    """Read ``cfg.results``, write the PNGs under ``cfg.out`` (when set) and return the Markdown.

    Raises ``NoResultsError`` when there is nothing to report."""
    results = ResultsDir(cfg.results)
    points = results.read_point_rows()
    if points.empty:
        raise NoResultsError(explain_empty(results))
    points = filter_points(points, cfg)
    points, superseded = drop_superseded(points)
    settings = split_settings(points)
    predictions = results.read_predictions(points["point_file"])
    short_names = dict(zip(points["model"], points["short_name"]))
    if cfg.out:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)

    report = Report("")
    parts = [f"# Results in {cfg.results}", _summary_line(points, settings, superseded)]
    for index, (setting, rows) in enumerate(settings, start=1):
        parts.append(
            _setting_section(index, len(settings), setting, rows, predictions, short_names, cfg, report)
        )
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
    """``## Setting i of n``: noisy-timing warnings, a table per line, the paired statistics and the plot
    (its file is appended to ``report.files``)."""
    parts = [f"## Setting {index} of {total}: {setting.label()}"]
    parts.extend(f"**Warning:** {note}" for note in unmerged_spread(rows))
    expected_r = sorted({int(r) for r in rows["r"]})
    parts.extend(
        _line_block(model, mode, line, expected_r, cfg.paper) for model, mode, line in lines_of(rows)
    )
    comparisons = setting_comparisons(rows, predictions, cfg)
    if comparisons:
        parts.append(_paired_block(comparisons, short_names, cfg))
    if cfg.out:
        name = "accuracy_throughput.png" if total == 1 else f"accuracy_throughput-{index}.png"
        written = plot_accuracy_throughput(
            rows, str(Path(cfg.out) / name), f"Setting {index}: {setting.label()}", cfg.paper
        )
        if written:
            report.files.append(written)
            parts.append(f"![top-1 against img/s]({name})")
        else:
            parts.append("(no plot: no point of this setting has img/s; the sweep ran with --no-bench)")
    return "\n\n".join(parts)


def _line_block(model: str, mode: str, line: pd.DataFrame, expected_r: Sequence[int], published: bool) -> str:
    """``### heading``, the line's table, its notes and (``published``, tomecis) the paper's figures beside ours."""
    block = f"### {line_heading(line, mode)}\n\n{model_table(line, expected_r)}"
    notes = table_notes(line, expected_r)
    if notes:
        block += "\n\n" + "\n".join(f"- {n}" for n in notes)
    if published and mode == paper.MODE and model in paper.PUBLISHED:
        versus = versus_published_table(line, model)
        if versus:
            block += f"\n\nAgainst the published {paper.PUBLISHED[model][0]} figures (another machine, 50,000 images):\n\n{versus}"
    return block


def _paired_block(comparisons: Sequence[Comparison], short_names: Dict[str, str], cfg: ReportConfig) -> str:
    """``### Paired statistics``: how to read them, then the table."""
    return (
        "### Paired statistics (per-image predictions)\n\n"
        f"fixed: wrong before, right after; broken: the reverse. Δ top-1 in points; {100 * cfg.level:g}% CI: paired bootstrap "
        f"({cfg.bootstrap_samples} resamples, seed {cfg.seed}); p: exact McNemar test on the fixed/broken pairs. "
        "A CI spanning 0 (large p) means these images cannot tell the two apart. With few changed images "
        "(under ~25 fixed + broken) the bootstrap CI is too narrow: trust the exact p there. "
        "Classes: the largest net losses, as change / images of the class.\n\n"
        + paired_table(comparisons, short_names, cfg.level)
    )


def _paper_section() -> str:
    parts = [
        "## Published reference (not measured here)",
        f"{paper.CITATION}. {paper.SETTING}. These figures come from another machine and the full validation set: "
        "compare Δ top-1 and speed-up, not absolute img/s.",
    ]
    for model, (name, _) in paper.PUBLISHED.items():
        parts.append(f"### {name} ({model}), published\n\n{published_table(model)}")
    rows = "\n".join(f"| {m} | {t:.2f} | {s:.1f} |" for m, t, s in paper.PUBLISHED_COMPARISON_DEIT_S)
    parts.append(
        "### DeiT-S at similar throughput, published\n\n| method | top-1 | img/s |\n|---|--:|--:|\n" + rows
    )
    return "\n\n".join(parts)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a sweep's --out directory or URI (s3://...)")
    p.add_argument("--out", default="report", help="folder for report.md and the PNGs (default %(default)s)")
    p.add_argument(
        "--paper", action="store_true", help="add the published ToMeCIS numbers as a reference series"
    )
    p.add_argument("--dataset", help="only this dataset fingerprint (a prefix is enough)")
    p.add_argument("--amp", choices=list(AMPS), help="only this autocast setting")
    p.add_argument("--batch-size", type=int, help="only this benchmark batch size")
    p.add_argument("--models", help="only these models, comma-separated short or timm names")
    p.add_argument("--mode", choices=list(MODES), help=f"only this merge mode: {modes_help()}")
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
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    return ReportConfig(**{**vars(args), "models": models})


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
