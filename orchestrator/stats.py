"""Paired statistics of two sets of per-image predictions: fixed / broken images, Δ top-1 with a
paired-bootstrap interval, the exact McNemar p-value and the classes that lose most.

Pure numpy / pandas: knows nothing of results directories, Markdown or plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import pandas as pd


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


@dataclass(frozen=True)
class Comparison:
    """One paired comparison: what is compared (for the table) and its statistics (None: no predictions)."""

    model: str
    what: str
    stats: Optional[PairedStats]
    note: str = ""


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
    joined = baseline[["key", "label", "correct"]].merge(
        candidate[["key", "correct"]], on="key", suffixes=("_a", "_b")
    )
    a = joined["correct_a"].to_numpy(bool)
    b = joined["correct_b"].to_numpy(bool)
    n, fixed, broken = len(joined), int((~a & b).sum()), int((a & ~b).sum())
    delta = 100.0 * (fixed - broken) / n if n else float("nan")
    low, high = bootstrap_delta_ci(fixed, broken, n, samples, seed, level)
    return PairedStats(
        n, fixed, broken, delta, low, high, mcnemar_exact(fixed, broken), losing_classes(joined, top_classes)
    )


def bootstrap_delta_ci(
    fixed: int, broken: int, n: int, samples: int = 10_000, seed: int = 0, level: float = 0.95
) -> Tuple[float, float]:
    """Percentile paired-bootstrap interval of Δ top-1 (percentage points).

    Per image the paired difference is +1 (fixed), −1 (broken) or 0, so resampling n images with
    replacement is exactly a multinomial draw of those three counts: ``samples`` draws cost
    nothing whatever n is. Returns (nan, nan) for n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(
        n, [fixed / n, broken / n, (n - fixed - broken) / n], size=samples
    )  # [samples, 3]
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
    log_terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2.0)
        for i in range(k + 1)
    ]
    top = max(log_terms)
    tail = math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    return min(1.0, 2.0 * tail)


def losing_classes(joined: pd.DataFrame, top: int) -> Tuple[ClassLoss, ...]:
    """The ``top`` classes whose correct count falls most (ties: fewer images first, then label).

    ``joined``: one row per image with ``label``, ``correct_a`` (baseline) and ``correct_b`` (candidate)."""
    if joined.empty or top <= 0:
        return ()
    per_class = (
        pd.DataFrame(
            {
                "label": joined["label"],
                "net": joined["correct_b"].astype(int) - joined["correct_a"].astype(int),
            }
        )
        .groupby("label")["net"]
        .agg(["sum", "size"])
    )
    lost = per_class[per_class["sum"] < 0].reset_index().sort_values(["sum", "size", "label"]).head(top)
    return tuple(
        ClassLoss(int(row.label), int(row.sum), int(row.size)) for row in lost.itertuples(index=False)
    )
