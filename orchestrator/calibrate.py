"""Methods matched to a reference by construction (``--match METHOD:AMOUNT``): find the amount of a method
whose speed or GFLOPs is nearest the reference's, and put it in the grid as an ordinary point.

``search`` is a pure search over ``measure(amount) -> float``, monotone in the amount (img/s grows with r
and falls with keep; GFLOPs the other way): it measures both ends of the amounts a method takes, then
bisects, and stops as soon as a measurement is within ``TOLERANCE`` of the target. r is searched over the
integers, keep over multiples of ``KEEP_STEP``; two keeps that give the same token counts (``key``) are
one point, the larger keep. A target outside what the method reaches gives the nearest end.
``add_matched`` puts the found amounts in a grid. ``CalibrationStore`` keeps speed calibrations in the
results folder, so that a rerun (after a crash, Ctrl-C or a failed point) matches the same amounts as the
run it resumes, instead of timing again and perhaps landing on other amounts. No torch, no Ray
(``orchestrator.matching`` measures).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Sequence, Tuple

from tomecis.names import amount_label

from .grid import Amount, GridPoint

TOLERANCE = 0.02  # a measurement this close to the target (relative) stops the search
KEEP_STEP = 0.005  # keep ratios searched: multiples of this, in (0, 1)
KEEP_DECIMALS = 6
MATCH_BY = ("speed", "gflops")
MATCHED_COLUMNS = ("matched_to", "matched_reference_value", "matched_value")  # the points row says it


@dataclass(frozen=True)
class MatchTarget:
    """The reference (method, amount) and what to match on (``speed`` or ``gflops``)."""

    method: str
    amount: Amount
    by: str = "speed"  # or "gflops" (MATCH_BY)

    @property
    def label(self) -> str:
        """``tomecis:r13``: how ``--match`` and the rows' ``matched_to`` write it."""
        return f"{self.method}:{amount_label(*self.amount)}"


def r_candidates(max_r: int) -> List[Amount]:
    """``(1, None) ... (max_r, None)``: every reducing r a model takes."""
    return [(r, None) for r in range(1, max_r + 1)]


def keep_candidates(step: float = KEEP_STEP) -> List[Amount]:
    """``(None, 0.005) ... (None, 0.995)``: multiples of ``step`` below 1 (each rounded to 6 decimals)."""
    return [(None, round(i * step, KEEP_DECIMALS)) for i in range(1, round(1 / step))]


@dataclass(frozen=True)
class Found:
    """What ``search`` found: the amount, its measured value, the target, whether it is within the
    tolerance (``reached``) and whether the target lies within what the amounts reach (``reachable``:
    False means the amount is the nearest end)."""

    amount: Amount
    value: float
    target: float
    reached: bool
    reachable: bool
    measurements: int  # calls of ``measure``
    measured_at: Amount  # the candidate whose measurement gave ``value`` (one of ``amount``'s token counts)

    @property
    def gap(self) -> float:
        """Relative distance of the value from the target: ``value / target - 1``."""
        return self.value / self.target - 1.0


def search(
    measure: Callable[[Amount], float],
    target: float,
    candidates: Sequence[Amount],
    key: Optional[Callable[[Amount], Hashable]] = None,
    tolerance: float = TOLERANCE,
) -> Found:
    """The candidate whose ``measure`` is nearest ``target``, with ``candidates`` in increasing amount and
    ``measure`` monotone over them (either way). Both ends are measured first; a target outside them
    gives the nearer end; else a bisection stops at the first value within ``tolerance`` (relative).
    ``key``: candidates with equal keys (token counts) are one point: measured once, and the largest
    such candidate is the one returned."""
    if not candidates:
        raise ValueError("no amounts to search")
    probe = _Probe(measure, candidates, key)
    close = lambda v: abs(v / target - 1.0) <= tolerance  # noqa: E731 - one expression, named for reading
    lo, hi = 0, len(candidates) - 1
    v_lo, v_hi = probe.value(lo), probe.value(hi)
    increasing = v_hi >= v_lo
    reachable = min(v_lo, v_hi) <= target <= max(v_lo, v_hi) or close(v_lo) or close(v_hi)
    if reachable and not (close(v_lo) or close(v_hi)):
        while hi - lo > 1:
            mid = (lo + hi) // 2
            value = probe.value(mid)
            if close(value):
                break
            if (value < target) == increasing:
                lo = mid
            else:
                hi = mid
    best = min(probe.values, key=lambda i: (abs(probe.values[i] - target), -i))
    value, measured_at = probe.value(best), candidates[probe.origin[best]]
    best = probe.last_of_key(best)
    return Found(candidates[best], value, target, close(value), reachable, probe.calls, measured_at)


class _Probe:
    """Measurements by candidate index, each key (token counts) measured once."""

    def __init__(self, measure, candidates, key):
        self.measure, self.candidates, self.key = measure, candidates, key
        self.values: Dict[int, float] = {}
        self.keys: Dict[int, Hashable] = {}
        self.by_key: Dict[Hashable, int] = {}  # key -> the index measured for it
        self.origin: Dict[int, int] = {}  # index -> the index whose measurement it holds
        self.calls = 0

    def key_of(self, i: int) -> Hashable:
        if i not in self.keys:
            self.keys[i] = self.key(self.candidates[i])
        return self.keys[i]

    def value(self, i: int) -> float:
        if i in self.values:
            return self.values[i]
        k = self.key_of(i) if self.key is not None else None
        if k is not None and k in self.by_key:
            self.origin[i] = self.by_key[k]
            self.values[i] = self.values[self.origin[i]]
        else:
            self.calls += 1
            self.values[i] = float(self.measure(self.candidates[i]))
            self.origin[i] = i
            if k is not None:
                self.by_key[k] = i
        return self.values[i]

    def last_of_key(self, i: int) -> int:
        """The largest index with ``i``'s key (equal keys are contiguous: counts are monotone in the amount)."""
        if self.key is None:
            return i
        k, lo, hi = self.key_of(i), i, len(self.candidates) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.key_of(mid) == k:
                lo = mid
            else:
                hi = mid - 1
        return lo


# --------------------------------------------------------------------------- one model's matched points


@dataclass(frozen=True)
class Calibration:
    """One method of one model matched to the reference: the amount found and the figures at calibration
    (img/s timed in turns with the reference, or GFLOPs), which the point's row keeps."""

    model: str
    method: str
    amount: Amount
    by: str  # "speed" or "gflops"
    reference: str  # "tomecis:r13"
    value: float  # the point's img/s or GFLOPs at calibration
    reference_value: float  # the reference's, measured with it
    reached: bool  # within TOLERANCE
    reachable: bool  # False: the target lies beyond every amount the method takes (nearest end used)

    @property
    def matched_to(self) -> str:
        """``tomecis:r13 by speed``: the points row's ``matched_to``."""
        return f"{self.reference} by {self.by}"

    @property
    def gap(self) -> float:
        return self.value / self.reference_value - 1.0

    def columns(self) -> Dict[str, object]:
        """The points row's ``MATCHED_COLUMNS``."""
        return dict(zip(MATCHED_COLUMNS, (self.matched_to, self.reference_value, self.value)))

    def line(self) -> str:
        """One line saying what was matched, or that the reference cannot be reached."""
        unit = "img/s" if self.by == "speed" else "GFLOPs"
        fmt = "{:.1f}" if self.by == "speed" else "{:.3f}"
        amount = amount_label(*self.amount)
        figures = (
            f"{fmt.format(self.value)} {unit} against {fmt.format(self.reference_value)} ({self.gap:+.1%})"
        )
        head = f"match: {self.model} {self.method} {amount} by {self.by}"
        if not self.reachable:
            return (
                f"{head}: {self.method} cannot reach {self.reference} at any amount it takes; the nearest end, "
                f"{amount}, gives {figures}"
            )
        within = "" if self.reached else f" (not within {TOLERANCE:.0%}: the nearest amount)"
        return f"{head}: {figures}{within}"


@dataclass(frozen=True)
class CalibrationStore:
    """Speed calibrations kept in ``<out>/calibrations/<setting>.json``, one file per timing setting
    (reference, device, batch size, amp, CUDA graphs: what the timed speed depends on). ``results`` is an
    ``orchestrator.results.ResultsDir`` (``path``, ``read_bytes``, ``write_bytes``: atomic, also on object
    stores); the sweep's lease makes it the folder's one writer."""

    results: object
    setting: Tuple[Tuple[str, object], ...]  # (name, value) pairs, in a fixed order

    @classmethod
    def of(cls, results, target: "MatchTarget", device: str, batch_size: int, amp: str, cuda_graphs: bool):
        setting = dict(
            reference=target.label, by=target.by, device=device, batch_size=batch_size, amp=amp,
            cuda_graphs=cuda_graphs,
        )  # fmt: skip
        return cls(results, tuple(setting.items()))

    @property
    def path(self) -> str:
        digest = hashlib.sha256(json.dumps(self.setting).encode()).hexdigest()[:16]
        return self.results.path("calibrations", f"{digest}.json")

    def load(self) -> Dict[Tuple[str, str], Calibration]:
        """(model, method) -> the calibration kept for this setting; empty when none is."""
        try:
            record = json.loads(self.results.read_bytes(self.path))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise ValueError(
                f"{self.path}: cannot read the kept calibrations ({err}); delete the file to time again"
            ) from err
        found = [Calibration(**{**c, "amount": tuple(c["amount"])}) for c in record["calibrations"]]
        return {(c.model, c.method): c for c in found}

    def save(self, calibrations: Iterable[Calibration]) -> None:
        """Keep ``calibrations`` with those already kept (a new one of a (model, method) replaces the old)."""
        kept = {**self.load(), **{(c.model, c.method): c for c in calibrations}}
        record = dict(setting=dict(self.setting), calibrations=[dataclasses.asdict(c) for c in kept.values()])
        self.results.write_bytes(self.path, json.dumps(record, indent=1).encode())


def unmatched_columns() -> Dict[str, object]:
    """``MATCHED_COLUMNS`` of a point no match produced."""
    return {column: None for column in MATCHED_COLUMNS}


def add_matched(
    grid: Sequence[GridPoint], reference: Tuple[str, Amount], calibrations: Sequence[Calibration]
) -> Tuple[List[GridPoint], Dict[GridPoint, Calibration]]:
    """``grid`` with each model's reference point (if absent) and each calibration's point: a point
    already planned at that amount is marked instead of added. Returns the grid (new points after their
    method's points of the model) and point -> its calibration."""
    points = list(grid)
    marks: Dict[GridPoint, Calibration] = {}
    ref_method, ref_amount = reference
    models = list(dict.fromkeys(p.model for p in points))
    for model in models:
        _insert(points, model, ref_method, ref_amount)
    for found in calibrations:
        marks[_insert(points, found.model, found.method, found.amount)] = found
    return points, marks


def _insert(points: List[GridPoint], model: str, method: str, amount: Amount) -> GridPoint:
    """The point of ``model`` at (method, amount): the planned one, else a new one placed after the
    model's last point of ``method`` (or the model's last point), in place in ``points``."""
    mine = [i for i, p in enumerate(points) if p.model == model]
    template = points[mine[0]]
    point = dataclasses.replace(template, method=method, r=amount[0], keep=amount[1])
    if point in points:
        return point
    same_method = [i for i in mine if points[i].method == method]
    points.insert((same_method or mine)[-1] + 1, point)
    return point
