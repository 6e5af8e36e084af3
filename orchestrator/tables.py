"""Markdown tables in the paper's format, used by both the sweep (``sweep_tables``) and the report.

The frames here are points rows, one row per grid point: the identity columns model, method, r (None for
``keep`` points), keep (None for ``r`` points), amp, infer_batch_size, weights, device, dataset, and the
measured columns (top1, top5, n_images, n_failed, infer_samples_per_sec, gflops, tokens_out, cuda_graphs,
...). Missing numbers are shown as "—", never invented.

Every method of a model is compared with one baseline, the unreduced model (``tomecis.names.UNREDUCED``,
``r = 0``). Results written before that point existed have none: there each method's ``r = 0`` row is the
same unreduced network, and the first of them in the method table (``METHOD_NAMES`` order) is the baseline
(``baseline_of`` says which).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd

from tomecis.names import METHOD_NAMES, METHODS, UNREDUCED, amount_label
from tomecis.speedup import speedup_text

from . import paper
from .stats import ClassLoss, Comparison

MISSING = "missing"
# The columns that make rows comparable (a point's identity but its model, method and amount).
SETTING_COLUMNS = ("dataset", "amp", "infer_batch_size", "device", "weights")
POINT_COLUMNS = ("model", "method", "r", "keep")  # one point of a setting

Amount = Tuple[Optional[int], Optional[float]]  # (r, keep): exactly one is set, the unreduced (0, None)


# --------------------------------------------------------------------------- columns and amounts


def with_method_columns(points: pd.DataFrame) -> pd.DataFrame:
    """``points`` with ``method`` and ``keep`` columns: frames read before the results schema had them
    (a ``mode`` column, no ``keep``) get ``mode`` renamed and a null ``keep``; others are returned as they are."""
    if "method" not in points.columns and "mode" in points.columns:
        points = points.rename(columns={"mode": "method"})
    if "keep" not in points.columns:
        points = points.assign(keep=pd.Series(float("nan"), index=points.index, dtype=float))
    return points


def amount_of(row: Mapping) -> Amount:
    """``(r, keep)`` of a points row, each None where null."""
    r, keep = row["r"], row["keep"]
    return (None if pd.isna(r) else int(r)), (None if pd.isna(keep) else float(keep))


def amount_text(row: Mapping) -> str:
    """``r13``, ``keep0.9``: a row's amount as ``tomecis.names.amount_label`` writes it."""
    return amount_label(*amount_of(row))


def point_label(row: Mapping) -> str:
    """``tomecis r13``, ``evit keep0.7``, ``none``."""
    return UNREDUCED if row["method"] == UNREDUCED else f"{row['method']} {amount_text(row)}"


def amount_order(amount: Amount) -> Tuple[int, float]:
    """r amounts first (ascending), then keep ratios (descending): weakest reduction first within a kind."""
    r, keep = amount
    return (0, float(r)) if r is not None else (1, -float(keep if keep is not None else 1.0))


def method_order(method: str) -> Tuple[int, str]:
    """Methods in the order of their table (``METHOD_NAMES``); unknown ones after, by name."""
    return (METHOD_NAMES.index(method) if method in METHOD_NAMES else len(METHOD_NAMES), str(method))


def unreduced_mask(rows: pd.DataFrame) -> pd.Series:
    """Rows of the unreduced network: method ``none``, ``r = 0`` or ``keep = 1`` (older results' baselines)."""
    keep = pd.to_numeric(rows["keep"], errors="coerce")
    return (rows["method"] == UNREDUCED) | (rows["r"] == 0) | (keep >= 1.0)


def sorted_points(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows in method-table order, then amount order (see ``amount_order``)."""
    keys = [
        (method_order(m), amount_order(amount_of(row)))
        for m, (_, row) in zip(rows["method"], rows.iterrows())
    ]
    order = sorted(range(len(rows)), key=lambda i: keys[i])
    return rows.iloc[order]


def reduced_points(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows that reduce tokens (not the unreduced network), in table order."""
    return sorted_points(rows[~unreduced_mask(rows)])


def models_of(rows: pd.DataFrame) -> List[str]:
    """Models in the order they first appear."""
    return list(dict.fromkeys(rows["model"]))


# --------------------------------------------------------------------------- the baseline


@dataclass(frozen=True)
class Baseline:
    """A model's one baseline in one setting: its row (None: there is none) and how it was chosen."""

    row: Optional[pd.Series]
    note: str = ""

    def value(self, column: str) -> Optional[float]:
        """The baseline's ``column``, None when there is no baseline or no value."""
        if self.row is None or not ok(self.row[column]):
            return None
        return float(self.row[column])


def baseline_of(model_rows: pd.DataFrame) -> Baseline:
    """The unreduced point of one model in one setting: its ``none`` row; in results from before that
    point existed, the ``r = 0`` row of the first method in ``METHOD_NAMES`` order (the note says which)."""
    unreduced = sorted_points(model_rows[unreduced_mask(model_rows)])
    none = unreduced[unreduced["method"] == UNREDUCED]
    if len(none):
        return Baseline(none.iloc[0])
    if unreduced.empty:
        return Baseline(
            None, f"no unreduced point ({UNREDUCED}, r = 0): speed-up, Δ top-1 and paired statistics need it"
        )
    row = unreduced.iloc[0]
    methods = ", ".join(dict.fromkeys(unreduced["method"]))
    return Baseline(
        row,
        f"baseline: {row['method']} {amount_text(row)} (results from before the one unreduced point; "
        f"the unreduced rows of {methods} are the same network, the first in the method table is used)",
    )


# --------------------------------------------------------------------------- measured tables


def expected_amounts(rows: pd.DataFrame) -> List[Amount]:
    """Every amount a reduced point of these rows has, in amount order; a point ``--match`` found
    (``matched_to`` set) is its method's own and expected of no other."""
    chosen = rows[~unreduced_mask(rows)]
    if "matched_to" in chosen.columns:
        chosen = chosen[chosen["matched_to"].isna()]
    amounts = {amount_of(row) for _, row in chosen.iterrows()}
    return sorted(amounts, key=amount_order)


Expected = Union[Iterable[Amount], Mapping[str, Sequence[Amount]]]  # shared amounts, or per method


def planned_of(model_rows: pd.DataFrame) -> Optional[Dict[str, List[Amount]]]:
    """Method -> the amounts the sweeps that wrote these rows planned for it (their ``planned`` column,
    every run's plan joined), or None for rows from before the column (``expected_amounts`` then)."""
    if "planned" not in model_rows.columns:
        return None
    plans = [json.loads(text) for text in model_rows["planned"].dropna().unique()]
    if not plans:
        return None
    joined: Dict[str, set] = {}
    for plan in plans:
        for method, amounts in plan.items():
            joined.setdefault(method, set()).update((r, keep) for r, keep in amounts)
    return {method: sorted(amounts, key=amount_order) for method, amounts in joined.items()}


def missing_amounts(model_rows: pd.DataFrame, expected: Expected) -> Dict[str, List[Amount]]:
    """Per method of the model, the ``expected`` amounts of a kind it takes (unknown methods: of a kind
    it has) without a row; with ``expected`` a mapping (method -> its amounts, as a sweep with
    ``--amounts`` planned them), exactly that method's amounts without a row."""
    if isinstance(expected, Mapping):
        return _missing_per_method(model_rows, expected)
    missing = {}
    reduced = reduced_points(model_rows)
    for method, rows in reduced.groupby("method", sort=False):
        have = {amount_of(row) for _, row in rows.iterrows()}
        kinds = (
            METHODS[method].amounts
            if method in METHODS
            else {"r" if r is not None else "keep" for r, _ in have}
        )
        lacking = [a for a in expected if a not in have and ("r" if a[0] is not None else "keep") in kinds]
        if lacking:
            missing[method] = lacking
    return missing


def _missing_per_method(
    model_rows: pd.DataFrame, expected: Mapping[str, Sequence[Amount]]
) -> Dict[str, List[Amount]]:
    reduced = reduced_points(model_rows)
    missing = {}
    for method, amounts in expected.items():
        have = {amount_of(row) for _, row in reduced[reduced["method"] == method].iterrows()}
        lacking = [a for a in amounts if a not in have]
        if lacking:
            missing[method] = lacking
    return missing


def model_table(model_rows: pd.DataFrame, expected: Optional[Expected] = None) -> str:
    """One model's points of one setting in the paper's format, the baseline first:
    method | r | keep | top-1 | top-5 | img/s | speed-up | Δ top-1 | GFLOPs | tokens.

    ``img/s`` is ``infer_samples_per_sec`` (the model alone); speed-up and Δ top-1 are against the
    baseline (``baseline_of``). Amounts in ``expected`` that a method takes but lacks are listed as missing."""
    base = baseline_of(model_rows)
    lines = [
        "| method | r | keep | top-1 | top-5 | img/s | speed-up | Δ top-1 | GFLOPs | tokens |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    if base.row is not None:
        lines.append(_point_line(base.row, base, baseline=True))
    reduced = reduced_points(model_rows)
    missing = missing_amounts(model_rows, expected or ())
    for method in sorted(set(reduced["method"]) | set(missing), key=method_order):
        entries = [(amount_of(row), row) for _, row in reduced[reduced["method"] == method].iterrows()]
        entries += [(a, None) for a in missing.get(method, [])]
        for amount, row in sorted(entries, key=lambda e: amount_order(e[0])):
            if row is None:
                lines.append(
                    f"| {method} | {_r_cell(amount[0])} | {_keep_cell(amount[1])} | {MISSING} |" + " — |" * 6
                )
            else:
                lines.append(_point_line(row, base))
    return "\n".join(lines)


def _point_line(row: pd.Series, base: Baseline, baseline: bool = False) -> str:
    """One table line; the baseline's own speed-up and Δ are 1.00x and +0.00 by construction."""
    r, keep = amount_of(row)
    method = row["method"] if row["method"] == UNREDUCED or not baseline else f"{row['method']} (unreduced)"
    speed, base_speed, base_top1 = (
        row["infer_samples_per_sec"],
        base.value("infer_samples_per_sec"),
        base.value("top1"),
    )
    cells = [
        method,
        _r_cell(r),
        _keep_cell(keep),
        cell(row["top1"], "{:.2f}"),
        cell(row["top5"], "{:.2f}"),
        cell(speed, "{:.1f}"),
        "1.00x" if baseline else speedup_cell(row, base_speed),
        cell(row["top1"] - base_top1 if base_top1 is not None else None, "{:+.2f}"),
        cell(row["gflops"], "{:.2f}"),
        cell(row["tokens_out"], "{:.0f}"),
    ]
    return "| " + " | ".join(cells) + " |"


def _r_cell(r: Optional[int]) -> str:
    return "—" if r is None else str(r)


def _keep_cell(keep: Optional[float]) -> str:
    return "—" if keep is None else f"{keep:g}"


def sweep_tables(
    points: pd.DataFrame,
    models: Iterable[str],
    dataset: str,
    methods: Sequence[str],
    amp: str,
    batch_size: int,
    planned: Optional[Mapping[str, Mapping[str, Sequence[Amount]]]] = None,
) -> str:
    """A table per model (``model_table``: its baseline, then each of ``methods`` at every amount) for the
    points of one sweep's settings (all rows, this run's and earlier ones).

    ``methods``: a list of method names or a single name; the unreduced baseline is always shown.
    ``planned``: model -> method -> the amounts the sweep planned (what a missing point is measured
    against; without it, every amount any method has)."""
    if points.empty:
        return "(no results)"
    # the setting columns a sweep names for all its points (weights are per model; its device is a kind,
    # the rows' a device name): the sweep reads its own points files already
    chosen = with_method_columns(points)
    chosen = rows_of_setting(chosen, {"dataset": dataset, "amp": amp, "infer_batch_size": batch_size})
    wanted = {methods} if isinstance(methods, str) else set(methods)
    chosen = chosen[chosen["method"].isin(wanted | {UNREDUCED}) | unreduced_mask(chosen)]
    blocks: List[str] = []
    for model in dict.fromkeys(models):
        rows = chosen[chosen["model"] == model]
        if rows.empty:
            continue
        head = f"{model_heading(rows)}, amp {amp}, batch {batch_size}, {rows['device'].iloc[0]}"
        expected = planned[model] if planned is not None and model in planned else expected_amounts(rows)
        blocks.append(head + "\n" + model_table(rows, expected))
    return "\n\n".join(blocks) if blocks else "(no results for these settings)"


def rows_of_setting(points: pd.DataFrame, setting: Mapping[str, object]) -> pd.DataFrame:
    """The rows whose setting columns (``SETTING_COLUMNS``) named in ``setting`` hold its values."""
    unknown = [c for c in setting if c not in SETTING_COLUMNS]
    if unknown:
        raise ValueError(f"{unknown} are not setting columns ({', '.join(SETTING_COLUMNS)})")
    mask = pd.Series(True, index=points.index)
    for column, value in setting.items():
        mask &= points[column] == value
    return points[mask]


def model_heading(model_rows: pd.DataFrame) -> str:
    """``deit_tiny (deit_tiny_patch16_224): 500 images, CUDA graphs`` (+ decode failures when any)."""
    first = model_rows.iloc[0]
    counts = sorted({int(n) for n in model_rows["n_images"]})
    images = "/".join(str(n) for n in counts)
    failed = int(model_rows["n_failed"].fillna(0).max()) if "n_failed" in model_rows else 0
    extra = f", up to {failed} undecodable images left out" if failed else ""
    return f"{first['short_name']} ({first['model']}): {images} images{extra}{graphs_note(model_rows)}"


def graphs_note(rows: pd.DataFrame) -> str:
    """How the rows' forwards ran on the GPU: ``, CUDA graphs``, ``, eager`` or which points ran eagerly;
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
    eager = [
        point_label(row) for (_, row), f in zip(rows.iterrows(), flags) if not (isinstance(f, bool) and f)
    ]
    if len(eager) == len(rows):
        return ", eager (no CUDA graphs)"
    return f", CUDA graphs except {', '.join(eager)} (eager; see graph_error)"


# --------------------------------------------------------------------------- notes under the tables


def table_notes(model_rows: pd.DataFrame, expected: Sequence[Amount]) -> List[str]:
    """Plain-language notes under a model table: how the baseline was chosen, missing points, missing
    throughput, noisy timing."""
    base = baseline_of(model_rows)
    notes = [base.note] if base.note else []
    for method, amounts in missing_amounts(model_rows, expected).items():
        labels = ", ".join(amount_label(*a) for a in amounts)
        notes.append(
            f"missing: {method} at {labels} (not in the results; rerun the sweep with these amounts to fill them)"
        )
    if model_rows["infer_samples_per_sec"].isna().all():
        notes.append("no img/s: the sweep ran with --no-bench")
    slower = slower_than_baseline(model_rows)
    if slower:
        notes.append(
            f"img/s below 0.9x the baseline's at {', '.join(slower)}: reducing tokens removes work, so this is "
            "most likely timing noise (a busy machine); rerun with --force and more --bench-runs on an idle one"
        )
    return notes


def slower_than_baseline(model_rows: pd.DataFrame, tolerance: float = 0.9) -> List[str]:
    """The reduced points of one model (``point_label``) whose img/s is below ``tolerance`` x the baseline's."""
    base_speed = baseline_of(model_rows).value("infer_samples_per_sec")
    if base_speed is None:
        return []
    reduced = reduced_points(model_rows)
    slow = reduced[reduced["infer_samples_per_sec"] < tolerance * base_speed]
    return [point_label(row) for _, row in slow.iterrows()]


def unmerged_spread(rows: pd.DataFrame, tolerance: float = 1.2) -> List[str]:
    """Notes for models whose unreduced rows (several only in older results: one per method) differ in
    img/s by more than ``tolerance`` x: they run the same network, so the gap is the timing's own noise."""
    notes = []
    unreduced = rows[unreduced_mask(rows) & rows["infer_samples_per_sec"].notna()]
    for model, group in unreduced.groupby("model", sort=False):
        group = sorted_points(group)
        speeds = group["infer_samples_per_sec"]
        if len(group) > 1 and speeds.max() > tolerance * speeds.min():
            per_point = ", ".join(
                f"{point_label(row)} {row['infer_samples_per_sec']:.1f}" for _, row in group.iterrows()
            )
            notes.append(
                f"{group['short_name'].iloc[0]} unreduced is the same network in every row, yet its img/s differ "
                f"{speeds.max() / speeds.min():.1f}x ({per_point}): treat img/s of this setting as noisy"
            )
    return notes


# --------------------------------------------------------------------------- published figures


def published_table(model: str) -> str:
    """The paper's ToMeCIS numbers for one model: r | top-1 | img/s | speed-up | Δ top-1."""
    _, by_r = paper.PUBLISHED[model]
    base_top1, base_speed = by_r[0]
    lines = ["| r | top-1 | img/s | speed-up | Δ top-1 |", "|--:|--:|--:|--:|--:|"]
    for r, (top1, speed) in sorted(by_r.items()):
        lines.append(
            f"| {r} | {top1:.3f} | {speed:.1f} | {speed / base_speed:.2f}x | {top1 - base_top1:+.2f} |"
        )
    return "\n".join(lines)


def versus_published_table(model_rows: pd.DataFrame, model: str) -> Optional[str]:
    """Our ToMeCIS Δ top-1 and speed-up beside the paper's at the r values both have (None without a
    baseline or without such a point)."""
    base = baseline_of(model_rows)
    if base.row is None:
        return None
    _, by_r = paper.PUBLISHED[model]
    ours = model_rows[
        (model_rows["method"] == paper.METHOD)
        & model_rows["r"].isin(list(by_r))
        & ~unreduced_mask(model_rows)
    ]
    if ours.empty:
        return None
    lines = [
        "| r | Δ top-1 here | Δ top-1 published | speed-up here | speed-up published |",
        "|--:|--:|--:|--:|--:|",
    ]
    base_speed = base.value("infer_samples_per_sec")
    for _, row in sorted_points(ours).iterrows():
        r = int(row["r"])
        ptop, pspeed = by_r[r]
        lines.append(
            f"| {r} | {row['top1'] - base.value('top1'):+.2f} | {ptop - by_r[0][0]:+.2f} | "
            f"{speedup_cell(row, base_speed)} | {pspeed / by_r[0][1]:.2f}x |"
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
            f"{ci_cell(s.ci_low, s.ci_high)} | {p_cell(s.p_value)} | {classes} |"
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


# --------------------------------------------------------------------------- cells


def speedup_of(
    row: Mapping, base_speed: Optional[float]
) -> Tuple[Optional[float], Optional[float], Optional[float]]:
    """``(speed-up, low, high)`` of a points row over its model's baseline: the row's paired speed-up and
    95% interval (``speedup``, ``speedup_low``, ``speedup_high``: the median per-round ratio, timed in turns
    with the baseline); for rows without them (results from before, or ``--bench-runs`` under 6: no bounds)
    the ratio of img/s to ``base_speed`` and no bounds; None where there is no number at all."""
    paired = row.get("speedup")
    if ok(paired):
        low, high = row.get("speedup_low"), row.get("speedup_high")
        return float(paired), (float(low) if ok(low) else None), (float(high) if ok(high) else None)
    speed = row.get("infer_samples_per_sec")
    return (float(speed) / base_speed if ok(speed) and base_speed else None), None, None


def speedup_cell(row: Mapping, base_speed: Optional[float]) -> str:
    """``1.52x [1.49, 1.55]`` (``speedup_of``); ``1.52x`` without an interval; "—" without a speed-up."""
    speedup, low, high = speedup_of(row, base_speed)
    return "—" if speedup is None else speedup_text(speedup, low, high)


def ci_cell(low: float, high: float) -> str:
    """``[-1.20, +0.40]``."""
    return f"[{low:+.2f}, {high:+.2f}]"


def p_cell(value: float) -> str:
    return f"{value:.2g}" if value < 0.01 else f"{value:.2f}"


def ok(value: Optional[float]) -> bool:
    """A number is there (not None, not NaN)."""
    return value is not None and not pd.isna(value)


def cell(value: Optional[float], fmt: str) -> str:
    """``value`` formatted, or "—" when it is missing."""
    return fmt.format(value) if ok(value) else "—"
