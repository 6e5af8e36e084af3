"""tomecis.speedup: the speed-up over the baseline as the median of paired per-round ratios, with its
order-statistics interval; on a stand-in timing, noise widens the interval and drift shared by both
sides of a round does not."""

import math
import random

import pytest
import torch
from torch import nn

from tomecis import benchmark as bm
from tomecis.speedup import (
    median_rank_interval,
    min_rounds,
    rounds_for_half_width,
    speedup_interval,
    speedup_text,
)


def test_the_ranks_and_their_exact_coverage():
    k, coverage = median_rank_interval(20)
    assert k == 6 and coverage == pytest.approx(1 - 2 * sum(math.comb(20, i) for i in range(6)) / 2**20)
    assert coverage == pytest.approx(0.9586, abs=1e-4)
    assert median_rank_interval(5) == (None, pytest.approx(1 - 2 / 32))  # even [min, max] covers 93.75%
    assert min_rounds() == 6 and median_rank_interval(6)[0] == 1
    assert min_rounds(0.99) == 8


def test_interval_of_known_ratios():
    baseline = [2.0] * 20
    point = [2.0 / (1.0 + i / 100) for i in range(20)]  # ratios 1.00, 1.01, ..., 1.19
    got = speedup_interval(point, baseline)
    assert got.speedup == pytest.approx(1.095) and got.rounds == 20
    assert (got.low, got.high) == (pytest.approx(1.05), pytest.approx(1.14))  # the 6th and 15th ratio
    assert got.text() == f"{got.speedup:.2f}x [1.05, 1.14]"
    few = speedup_interval(point[:5], baseline[:5])
    assert math.isnan(few.low) and few.text() == f"{few.speedup:.2f}x"
    assert (
        speedup_text(1.523, 1.49, 1.551) == "1.52x [1.49, 1.55]" and speedup_text(1.5, None, 2.0) == "1.50x"
    )


def test_rounds_are_paired_and_checked():
    with pytest.raises(ValueError, match="the point has 3 timed rounds and the baseline 2"):
        speedup_interval([1.0, 1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="0 s or less"):
        speedup_interval([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="no timed round"):
        speedup_interval([], [])


def test_rounds_for_a_half_width():
    assert rounds_for_half_width(0.02, 0.05) == math.ceil((1.95996 * 1.25331 * 0.05 / 0.02) ** 2)  # 38
    assert rounds_for_half_width(0.5, 0.01) == 6  # never below the fewest that give an interval


class FakeClock:
    """Stands in for the ``time`` module inside ``tomecis.benchmark``: ``perf_counter`` reads a clock that
    only the stand-in models advance, so a timing is exactly what they were told to take."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class StandIn(nn.Module):
    """A stand-in model whose forward takes ``seconds`` x a factor drawn per call (noise) x the machine's
    current slowness (drift, shared by every setting of a round), on ``clock``."""

    pretrained_cfg = {"input_size": (3, 2, 2)}

    def __init__(self, seconds: float, noise: float, machine: dict, clock: FakeClock, seed: int):
        super().__init__()
        self.seconds, self.noise, self.machine, self.clock = seconds, noise, machine, clock
        self.rng = random.Random(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = math.exp(self.rng.gauss(0.0, self.noise)) if self.noise else 1.0
        self.clock.now += self.seconds * factor * self.machine["slowness"]
        return x


def timed_speedup(monkeypatch, noise: float, drift: float = 0.0, rounds: int = 20):
    """The speed-up of a 4 ms stand-in over an 8 ms one, timed in turns by ``time_in_turns`` on a fake
    clock; the machine slows by ``drift`` (relative) at the start of every round."""
    clock, machine = FakeClock(), {"slowness": 1.0}
    monkeypatch.setattr(bm, "time", clock)
    base, point = StandIn(0.008, noise, machine, clock, 1), StandIn(0.004, noise, machine, clock, 2)

    def drifting_base():
        machine["slowness"] += drift  # the start of a round: everything after it runs slower
        return base

    timings = bm.time_in_turns([drifting_base, lambda: point], 1, torch.device("cpu"), warmup=0, runs=rounds)
    return speedup_interval(timings.seconds[1], timings.seconds[0]), timings


def test_injected_noise_widens_the_interval_and_shared_drift_does_not(monkeypatch):
    quiet, _ = timed_speedup(monkeypatch, 0.0)
    noisy, _ = timed_speedup(monkeypatch, 0.2)
    assert (quiet.speedup, quiet.low, quiet.high) == (
        pytest.approx(2.0),
        pytest.approx(2.0),
        pytest.approx(2.0),
    )
    assert noisy.low <= noisy.speedup <= noisy.high and noisy.high - noisy.low > 0.2
    assert noisy.low < 2.0 < noisy.high and noisy.spread > 0.1 > quiet.spread
    drifting, timings = timed_speedup(monkeypatch, 0.0, drift=0.05)  # slower by 5% of its start each round
    assert max(timings.seconds[0]) > 1.5 * min(timings.seconds[0])  # the baseline alone drifted ~80%
    assert (drifting.low, drifting.high) == (pytest.approx(2.0), pytest.approx(2.0))  # paired: it divides out
