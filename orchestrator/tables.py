"""Markdown tables in the paper's format, used by both the sweep (``sweep_tables``) and the report.

The frames here are points rows (``orchestrator.results.POINT_SCHEMA`` columns, one row per grid
point): model, short_name, mode, r, top1, top5, n_images, n_failed, infer_samples_per_sec,
eval_samples_per_sec, gflops, tokens_out, amp, infer_batch_size, device, dataset. Missing
numbers are shown as "—", never invented.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from tomecis.names import MODES, UNREDUCED, amount_label

from . import paper
from .grid import SETTING_COLUMNS
from .stats import ClassLoss, Comparison

MISSING = "missing"


# --------------------------------------------------------------------------- lines


def line_rows(rows: pd.DataFrame, model: str, mode: str) -> pd.DataFrame:
    """The points rows of one model in one merge mode, in their frame's order."""
    return rows[(rows["model"] == model) & (rows["mode"] == mode)]


def lines_of(rows: pd.DataFrame) -> List[Tuple[str, str, pd.DataFrame]]:
    """(model, mode, rows sorted by r) per line of one setting, in the order models first appear
    (tomecis before the other modes of a model)."""
    lines = []
    for model in dict.fromkeys(rows["model"]):
        for mode in sorted(rows.loc[rows["model"] == model, "mode"].unique(), key=_mode_order):
            lines.append((model, mode, line_rows(rows, model, mode).sort_values("r")))
    return lines


def _mode_order(mode: str) -> Tuple[int, str]:
    """Modes in the order of their table (``tomecis.names.MODES``); unknown ones after, by name."""
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


# --------------------------------------------------------------------------- measured tables


def model_table(points: pd.DataFrame, expected_r: Optional[Iterable[int]] = None) -> str:
    """One model's points in the paper's format: r | top-1 | top-5 | img/s | speed-up | Δ top-1 | eval img/s | GFLOPs | tokens.

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
    points: pd.DataFrame,
    models: Iterable[str],
    dataset: str,
    methods: Sequence[str],
    amp: str,
    batch_size: int,
) -> str:
    """A table per model for the points of one sweep's settings (all rows, this run's and earlier ones):
    its baseline (method ``none``) first, then a line per method and amount of ``methods`` (a list or a
    single name), speed-up and Δ top-1 against the baseline."""
    if points.empty:
        return "(no results)"
    # the setting columns a sweep names for all its points (weights are per model; its device is a kind,
    # the rows' a device name): read_points_of already chose the sweep's own files
    chosen = rows_of_setting(points, {"dataset": dataset, "amp": amp, "infer_batch_size": batch_size})
    wanted = [UNREDUCED] + [m for m in ([methods] if isinstance(methods, str) else methods) if m != UNREDUCED]
    blocks: List[str] = []
    for model in dict.fromkeys(models):
        rows = chosen[(chosen["model"] == model) & chosen["method"].isin(wanted)]
        if rows.empty:
            continue
        first = rows.iloc[0]
        head = f"{first['short_name']} ({model}), amp {amp}, batch {batch_size}, {first['device']}, {int(first['n_images'])} images"
        blocks.append(head + "\n" + amount_table(rows, wanted))
    return "\n\n".join(blocks) if blocks else "(no results for these settings)"


def amount_table(rows: pd.DataFrame, methods: Sequence[str]) -> str:
    """One model's points, a line per method and amount (``methods`` order; r ascending, then keep
    descending): method | amount | top-1 | top-5 | img/s | speed-up | Δ top-1 | eval img/s | GFLOPs | tokens,
    speed-up and Δ top-1 against the model's unreduced point (method ``none``) when present."""
    base = rows[rows["method"] == UNREDUCED]
    base_top1 = base["top1"].iloc[0] if len(base) else None
    base_speed = base["infer_samples_per_sec"].iloc[0] if len(base) else None
    lines = [
        "| method | amount | top-1 | top-5 | img/s | speed-up | Δ top-1 | eval img/s | GFLOPs | tokens |",
        "|---|---|" + "--:|" * 8,
    ]
    order = {m: i for i, m in enumerate(methods)}
    ranked = rows.assign(
        _m=rows["method"].map(order),
        _kind=rows["keep"].notna(),
        _amount=rows["r"].fillna(0) - rows["keep"].fillna(0),
    ).sort_values(["_m", "_kind", "_amount"])
    for row in ranked.itertuples():
        keep = None if pd.isna(row.keep) else float(row.keep)
        speed = row.infer_samples_per_sec
        cells = [
            row.method,
            amount_label(None if keep is not None else int(row.r), keep),
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


def rows_of_setting(points: pd.DataFrame, setting: Mapping[str, object]) -> pd.DataFrame:
    """The rows whose setting columns (``grid.SETTING_COLUMNS``) named in ``setting`` hold its values."""
    unknown = [c for c in setting if c not in SETTING_COLUMNS]
    if unknown:
        raise ValueError(f"{unknown} are not setting columns ({', '.join(SETTING_COLUMNS)})")
    mask = pd.Series(True, index=points.index)
    for column, value in setting.items():
        mask &= points[column] == value
    return points[mask]


def line_heading(rows: pd.DataFrame, mode: str) -> str:
    """``deit_tiny (deit_tiny_patch16_224), tomecis: 500 images, CUDA graphs`` (+ decode failures when any)."""
    first = rows.iloc[0]
    counts = sorted({int(n) for n in rows["n_images"]})
    images = "/".join(str(n) for n in counts)
    failed = int(rows["n_failed"].fillna(0).max())
    extra = f", up to {failed} undecodable images left out" if failed else ""
    return f"{first['short_name']} ({first['model']}), {mode}: {images} images{extra}{graphs_note(rows)}"


def graphs_note(rows: pd.DataFrame) -> str:
    """How the line's forwards ran on the GPU: ``, CUDA graphs``, ``, eager`` or which r ran eagerly;
    nothing for CPU rows or files that predate the column."""
    if (
        "cuda_graphs" not in rows
        or not rows["device"].astype(str).str.contains("cuda|NVIDIA|GPU", case=False).any()
    ):
        return ""
    flags = rows["cuda_graphs"]
    if flags.isna().all():
        return ""
    if flags.fillna(False).astype(bool).all():
        return ", CUDA graphs"
    eager = sorted(int(r) for r, f in zip(rows["r"], flags) if not (isinstance(f, bool) and f))
    if len(eager) == len(rows):
        return ", eager (no CUDA graphs)"
    return f", CUDA graphs except r = {', '.join(map(str, eager))} (eager; see graph_error)"


# --------------------------------------------------------------------------- notes under the tables


def table_notes(rows: pd.DataFrame, expected_r: Sequence[int]) -> List[str]:
    """Plain-language notes under a model table: missing points, missing baseline, missing throughput."""
    notes = []
    missing = sorted(set(expected_r) - {int(r) for r in rows["r"]})
    if missing:
        notes.append(
            f"missing: r = {', '.join(map(str, missing))} (not in the results; rerun the sweep with these r to fill them)"
        )
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


# --------------------------------------------------------------------------- published figures


def published_table(model: str) -> str:
    """The paper's numbers for one model: r | top-1 | img/s | speed-up | Δ top-1."""
    _, by_r = paper.PUBLISHED[model]
    base_top1, base_speed = by_r[0]
    lines = ["| r | top-1 | img/s | speed-up | Δ top-1 |", "|--:|--:|--:|--:|--:|"]
    for r, (top1, speed) in sorted(by_r.items()):
        lines.append(
            f"| {r} | {top1:.3f} | {speed:.1f} | {speed / base_speed:.2f}x | {top1 - base_top1:+.2f} |"
        )
    return "\n".join(lines)


def versus_published_table(rows: pd.DataFrame, model: str) -> Optional[str]:
    """Our Δ top-1 and speed-up beside the paper's, at the r values both have (None without r = 0)."""
    base = rows[rows["r"] == 0]
    if base.empty:
        return None
    _, by_r = paper.PUBLISHED[model]
    top0, speed0 = base["top1"].iloc[0], base["infer_samples_per_sec"].iloc[0]
    lines = [
        "| r | Δ top-1 here | Δ top-1 published | speed-up here | speed-up published |",
        "|--:|--:|--:|--:|--:|",
    ]
    for row in rows.sort_values("r").itertuples():
        if int(row.r) not in by_r:
            continue
        ptop, pspeed = by_r[int(row.r)]
        ours_speed = (
            row.infer_samples_per_sec / speed0 if _ok(row.infer_samples_per_sec) and _ok(speed0) else None
        )
        lines.append(
            f"| {row.r} | {row.top1 - top0:+.2f} | {ptop - by_r[0][0]:+.2f} | {_num(ours_speed, '{:.2f}x')} | {pspeed / by_r[0][1]:.2f}x |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- paired statistics


def paired_table(comparisons: Sequence[Comparison], short_names: Dict[str, str], level: float = 0.95) -> str:
    """Markdown: model | comparison | images | fixed | broken | Δ top-1 | CI | McNemar p | classes losing most."""
    pct = f"{100 * level:g}% CI"
    lines = [
        f"| model | comparison | images | fixed | broken | Δ top-1 | {pct} | McNemar p | classes losing most |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|",
    ]
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


def _ok(value: Optional[float]) -> bool:
    return value is not None and not pd.isna(value)


def _num(value: Optional[float], fmt: str) -> str:
    return fmt.format(value) if _ok(value) else "—"
