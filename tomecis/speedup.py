"""A speed-up over a baseline with its confidence interval, from timings taken in paired rounds.

``tomecis.benchmark.time_in_turns`` times every setting once per round (round i of every setting before
round i + 1 of any), so round i of a point and round i of the baseline ran side by side and saw the same
machine: their ratio, ``baseline seconds / point seconds``, is that round's speed-up with the machine's
drift (clocks, neighbours) divided out. The speed-up is the median of those per-round ratios, and its
interval is the distribution-free order-statistics interval of a median: with n ratios sorted,
``[ratio_(k), ratio_(n+1-k)]`` holds the true median with probability ``1 - 2 P(Binomial(n, 1/2) < k)``
whatever the ratios' distribution (rounds assumed independent), and the largest k keeping that at or
above the level is taken. No resampling and no seed: the same seconds always give the same interval,
and one stalled round (a garbage collection, a neighbour's burst) moves it by at most one rank.

Pure Python (no torch): the report and the sweep's driver read it too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

LEVEL = 0.95


@dataclass(frozen=True)
class SpeedupInterval:
    """A point's speed-up over its baseline from ``rounds`` paired rounds: the median per-round ratio and
    its order-statistics interval (``low``/``high`` NaN when too few rounds reach ``level``;
    ``coverage``: the interval's exact coverage, at least ``level`` when there is one; ``spread``: the
    ratios' relative scatter, 1.4826 x their median absolute deviation over the median, a standard
    deviation that one stalled round does not inflate)."""

    speedup: float
    low: float
    high: float
    rounds: int
    coverage: float
    spread: float = float("nan")

    @property
    def has_interval(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def text(self) -> str:
        """``1.52x [1.49, 1.55]``; ``1.52x`` alone without an interval."""
        return speedup_text(self.speedup, self.low, self.high)


def speedup_text(speedup: float, low: Optional[float], high: Optional[float]) -> str:
    """``1.52x [1.49, 1.55]``, or ``1.52x`` when the bounds are missing (None or NaN)."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{speedup:.2f}x"
    return f"{speedup:.2f}x [{low:.2f}, {high:.2f}]"


def median_rank_interval(n: int, level: float = LEVEL) -> Tuple[Optional[int], float]:
    """``(k, coverage)``: the 1-based rank k such that ``[x_(k), x_(n+1-k)]`` of n sorted values covers
    their population median with probability ``coverage >= level``, k as large as possible; ``(None,
    coverage of [min, max])`` when even the full range falls short (n < 6 at 95%)."""
    if n < 1:
        return None, 0.0
    tail, best = 0.0, None  # tail = P(Binomial(n, 1/2) <= k - 1)
    coverage_of_best = 1.0 - 2.0 * 0.5**n
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) * 0.5**n
        coverage = 1.0 - 2.0 * tail
        if coverage < level:
            break
        best, coverage_of_best = k, coverage
    return best, coverage_of_best


def min_rounds(level: float = LEVEL) -> int:
    """The fewest rounds whose order-statistics interval reaches ``level`` (6 at 95%)."""
    n = 1
    while median_rank_interval(n, level)[0] is None:
        n += 1
    return n


def speedup_interval(
    point_seconds: Sequence[float], baseline_seconds: Sequence[float], level: float = LEVEL
) -> SpeedupInterval:
    """The speed-up of a point over its baseline from seconds timed in paired rounds
    (``point_seconds[i]`` and ``baseline_seconds[i]`` from round i of the same ``time_in_turns``).

    Raises ``ValueError`` when the two lists differ in length, are empty, or hold a time <= 0."""
    n = len(point_seconds)
    if n != len(baseline_seconds):
        raise ValueError(
            f"paired rounds: the point has {n} timed rounds and the baseline {len(baseline_seconds)}; "
            "time both in the same time_in_turns call"
        )
    if n == 0:
        raise ValueError("paired rounds: no timed round (give at least one run)")
    if min(point_seconds) <= 0 or min(baseline_seconds) <= 0:
        raise ValueError("paired rounds: a timed round of 0 s or less; the clock or the timing is broken")
    ratios = sorted(b / p for b, p in zip(baseline_seconds, point_seconds))
    middle = _median(ratios)
    spread = 1.4826 * _median([abs(r - middle) for r in ratios]) / middle
    k, coverage = median_rank_interval(n, level)
    if k is None:
        return SpeedupInterval(middle, float("nan"), float("nan"), n, coverage, spread)
    return SpeedupInterval(middle, ratios[k - 1], ratios[n - k], n, coverage, spread)


def _median(values: Sequence[float]) -> float:
    ordered, n = sorted(values), len(values)
    return ordered[(n - 1) // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def rounds_for_half_width(half_width: float, spread: float, level: float = LEVEL) -> int:
    """Rounds needed for an interval of about ``±half_width`` (relative, 0.02 = ±2%) when the per-round
    ratios scatter with relative standard deviation ``spread``: the median of n roughly normal values has
    standard error ``sqrt(pi / 2) * spread / sqrt(n)``, so ``n = (z * 1.2533 * spread / half_width)^2``
    (never fewer than ``min_rounds``)."""
    if half_width <= 0 or spread < 0:
        raise ValueError(f"half_width must be > 0 and spread >= 0, got {half_width} and {spread}")
    z = _normal_quantile(0.5 + level / 2)
    return max(min_rounds(level), math.ceil((z * math.sqrt(math.pi / 2) * spread / half_width) ** 2))


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (bisection on ``math.erf``; p in (0, 1))."""
    low, high = -10.0, 10.0
    for _ in range(100):
        mid = (low + high) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
