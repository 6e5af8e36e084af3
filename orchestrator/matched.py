"""Methods compared at matched speed: a reference point (default ToMeCIS r = 13) and, for every other
method of the same model and setting, its point nearest in measured img/s and its point nearest in GFLOPs;
where the sweep found a method's point by ``--match`` (its row's ``matched_to`` names this reference), that
point takes the place of the nearest one, and the table says its remaining gap at calibration.

``parse_reference`` reads ``--reference METHOD:AMOUNT``; ``matched_points`` picks the points;
``matched_table`` writes them with the paired Δ top-1 against the reference (``orchestrator.stats``,
computed by the report, which holds the predictions). Pure pandas: no files, no plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from tomecis.names import METHOD_NAMES, UNREDUCED, amount_label, check_amount

from .stats import PairedStats
from .tables import amount_of, cell, ci_cell, method_order, p_cell, reduced_points, speedup_cell, speedup_of

DEFAULT_REFERENCE = "tomecis:r13"
SPEED, FLOPS = "infer_samples_per_sec", "gflops"
MATCH_COLUMNS = {
    SPEED: "img/s",
    FLOPS: "GFLOPs",
}  # the columns a point is matched on, as the table names them
MATCH_BY = {SPEED: "speed", FLOPS: "gflops"}  # the column -> the sweep's --match-by that calibrates it


@dataclass(frozen=True)
class Reference:
    """The point every method is matched to: a method and one amount (``r`` or ``keep``)."""

    method: str
    r: Optional[int] = None
    keep: Optional[float] = None

    def label(self) -> str:
        """``tomecis r13``."""
        return f"{self.method} {amount_label(self.r, self.keep)}"

    def matched_to(self, column: str) -> str:
        """``tomecis:r13 by speed``: the ``matched_to`` of a point the sweep calibrated to this reference
        on ``column`` (``SPEED`` or ``FLOPS``)."""
        return f"{self.method}:{amount_label(self.r, self.keep)} by {MATCH_BY[column]}"

    def find(self, model_rows: pd.DataFrame) -> Optional[pd.Series]:
        """This reference's row among one model's rows of one setting (None when it has none)."""
        for _, row in reduced_points(model_rows).iterrows():
            r, keep = amount_of(row)
            if row["method"] == self.method and r == self.r and _same_keep(keep, self.keep):
                return row
        return None


def _same_keep(a: Optional[float], b: Optional[float]) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and math.isclose(a, b, abs_tol=1e-9))


def parse_reference(text: str) -> Reference:
    """``tomecis:r13`` or ``evit:keep0.7`` -> ``Reference``; anything else raises ``ValueError`` naming
    the text and the part that is wrong."""
    method, sep, amount = str(text).strip().partition(":")
    if not sep or not method or not amount:
        raise ValueError(f"reference {text!r} is not METHOD:AMOUNT (for example tomecis:r13 or evit:keep0.7)")
    if method not in METHOD_NAMES or method == UNREDUCED:
        methods = ", ".join(m for m in METHOD_NAMES if m != UNREDUCED)
        raise ValueError(f"reference {text!r}: unknown method {method!r}; choose from {methods}")
    r, keep = _parse_amount(text, amount)
    try:
        check_amount(method, r, keep)
    except ValueError as err:
        raise ValueError(f"reference {text!r}: {err}") from None
    if r == 0 or keep == 1.0:
        raise ValueError(
            f"reference {text!r}: {amount!r} reduces nothing; give a reducing amount such as r13"
        )
    return Reference(method, r, keep)


def _parse_amount(text: str, amount: str) -> Tuple[Optional[int], Optional[float]]:
    """``r13`` -> (13, None); ``keep0.7`` -> (None, 0.7)."""
    if not amount.startswith(("r", "keep")):
        raise ValueError(
            f"reference {text!r}: amount {amount!r} is neither r<INT> (r13) nor keep<RATIO> (keep0.7)"
        )
    kind, number = ("keep", amount[4:]) if amount.startswith("keep") else ("r", amount[1:])
    try:
        return (int(number), None) if kind == "r" else (None, float(number))
    except ValueError:
        raise ValueError(
            f"reference {text!r}: cannot read {kind} from {amount!r} (write r13 or keep0.7)"
        ) from None


# --------------------------------------------------------------------------- choosing the points


@dataclass(frozen=True)
class Match:
    """A method's point nearest the reference on ``by`` (``img/s``, ``GFLOPs`` or both, when one point is
    nearest on both); ``row`` None when the method has no point with either number."""

    method: str
    by: Tuple[str, ...]
    row: Optional[pd.Series]
    calibrated: Tuple[str, ...] = ()  # of ``by``: those the sweep matched by construction (``--match``)

    @property
    def gap(self) -> Optional[float]:
        """The calibrated point's remaining gap to the reference at calibration, in %: (its value over
        the reference's, measured together) − 1; None for a point only nearest in the grid."""
        if not self.calibrated or self.row is None:
            return None
        value, reference = self.row.get("matched_value"), self.row.get("matched_reference_value")
        if value is None or reference is None or pd.isna(value) or pd.isna(reference) or not reference:
            return None
        return 100.0 * (float(value) / float(reference) - 1.0)


def nearest(candidates: pd.DataFrame, column: str, target: float) -> Optional[pd.Series]:
    """The candidate whose ``column`` is nearest ``target`` (ties: the first, in the candidates' order);
    None when no candidate has a value."""
    valued = candidates[candidates[column].notna()]
    if valued.empty or target is None or pd.isna(target):
        return None
    distance = np.abs(valued[column].to_numpy(float) - float(target))
    return valued.iloc[int(np.argmin(distance))]


def calibrated(candidates: pd.DataFrame, reference: Reference, column: str) -> Optional[pd.Series]:
    """The candidate the sweep matched to ``reference`` on ``column`` (``--match``, its ``matched_to``),
    the last when several are; None when none is (or the results predate the column)."""
    if "matched_to" not in candidates.columns:
        return None
    hits = candidates[candidates["matched_to"] == reference.matched_to(column)]
    return hits.iloc[-1] if not hits.empty else None


def matched_points(model_rows: pd.DataFrame, reference: Reference, reference_row: pd.Series) -> List[Match]:
    """For every reduced method of the model but the reference's, its point matched to the reference in
    img/s and in GFLOPs: the one the sweep calibrated (``calibrated``), else the nearest (one ``Match``
    when the same point serves both)."""
    reduced = reduced_points(model_rows)
    matches: List[Match] = []
    for method in sorted(set(reduced["method"]) - {reference.method}, key=method_order):
        candidates = reduced[reduced["method"] == method]
        picked: Dict[str, Optional[pd.Series]] = {}
        built: List[str] = []
        for column, label in MATCH_COLUMNS.items():
            row = calibrated(candidates, reference, column)
            if row is not None:
                built.append(label)
            picked[label] = row if row is not None else nearest(candidates, column, reference_row[column])
        rows = [(label, row) for label, row in picked.items() if row is not None]
        if not rows:
            matches.append(Match(method, (), None))
        elif len(rows) == 2 and rows[0][1].name == rows[1][1].name:
            matches.append(Match(method, tuple(label for label, _ in rows), rows[0][1], tuple(built)))
        else:
            matches.extend(
                Match(method, (label,), row, (label,) if label in built else ()) for label, row in rows
            )
    return matches


# --------------------------------------------------------------------------- the table


def matched_table(
    reference_row: pd.Series,
    matches: Sequence[Match],
    stats: Sequence[Optional[PairedStats]],
    level: float = 0.95,
    base_speed: Optional[float] = None,
) -> str:
    """Markdown: method | matched on | amount | img/s | GFLOPs | top-1 | Δ top-1 | CI | McNemar p | images |
    speed-up | speed vs reference, the reference first; ``stats[i]``: ``matches[i]``'s paired
    statistics against the reference (None: no predictions for one of the two). Δ top-1 is the paired
    difference on the images both scored. The speed-up (over the baseline, whose img/s is ``base_speed``:
    ``tables.speedup_of``) carries its 95% interval, and ``speed_versus`` says whether the point's speed
    differs from the reference's beyond the two intervals."""
    pct = f"{100 * level:g}% CI"
    lines = [
        f"| method | matched on | amount | img/s | GFLOPs | top-1 | Δ top-1 vs reference | {pct} | McNemar p | images "
        "| speed-up | speed vs reference |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
        _match_line(reference_row["method"], "(reference)", reference_row, None, base_speed, reference=True),
    ]
    for match, paired in zip(matches, stats):
        if match.row is None:
            lines.append(
                f"| {match.method} | — | — | — | — | — | — | — | — | no point with img/s or GFLOPs | — | — |"
            )
        else:
            speed = speed_versus(match.row, reference_row, base_speed)
            lines.append(_match_line(match.method, _matched_on(match), match.row, paired, base_speed, speed))
    return "\n".join(lines)


def speed_versus(row: pd.Series, reference_row: pd.Series, base_speed: Optional[float] = None) -> str:
    """Whether ``row``'s speed-up differs from the reference's beyond their 95% intervals: ``faster`` or
    ``slower (intervals apart)`` when the intervals do not overlap, ``same within the intervals`` when they
    do (the two cannot be told apart), ``no interval`` where either row has none (older results, or fewer
    than 6 timing rounds). Non-overlap of two 95% intervals is a conservative test: a real gap slightly
    smaller than the intervals' reach is called the same."""
    speed, low, high = speedup_of(row, base_speed)
    _, ref_low, ref_high = speedup_of(reference_row, base_speed)
    if speed is None or None in (low, high, ref_low, ref_high):
        return "no interval"
    if low > ref_high:
        return "faster (intervals apart)"
    if high < ref_low:
        return "slower (intervals apart)"
    return "same within the intervals"


def _matched_on(match: Match) -> str:
    """``img/s``, ``img/s and GFLOPs``, ``img/s (calibrated, gap +0.8%)``: how the point was chosen."""
    text = " and ".join(match.by)
    if not match.calibrated:
        return text
    gap = match.gap
    gap_text = f", gap {gap:+.1f}%" if gap is not None else ""
    return f"{text} (calibrated by {' and '.join(match.calibrated)}{gap_text})"


def _match_line(
    method: str,
    by: str,
    row: pd.Series,
    paired: Optional[PairedStats],
    base_speed: Optional[float],
    speed: str = "",
    reference: bool = False,
) -> str:
    stats_cells = ["+0.00", "—", "—", "—"] if reference else ["—", "—", "—", "no predictions"]
    if paired is not None:
        stats_cells = [
            f"{paired.delta:+.2f}",
            ci_cell(paired.ci_low, paired.ci_high),
            p_cell(paired.p_value),
            str(paired.n),
        ]
    cells = [
        method,
        by,
        amount_label(*amount_of(row)),
        cell(row[SPEED], "{:.1f}"),
        cell(row[FLOPS], "{:.2f}"),
        cell(row["top1"], "{:.2f}"),
        *stats_cells,
        speedup_cell(row, base_speed),
        "—" if reference else speed,
    ]
    return "| " + " | ".join(cells) + " |"
