"""orchestrator.calibrate: the search for the amount matched to a reference, on stand-ins whose speed is a
known function of the amount, and the matched points put into a grid."""

from __future__ import annotations

import pytest

from orchestrator.calibrate import (
    TOLERANCE,
    Calibration,
    CalibrationStore,
    MatchTarget,
    add_matched,
    keep_candidates,
    r_candidates,
    search,
)
from orchestrator.grid import build_grid
from orchestrator.results import ResultsDir


def speed_of_r(amount) -> float:
    """A stand-in model whose img/s grows with r: 1000 at r 0, x(1 + r / 10)."""
    return 1000.0 * (1 + amount[0] / 10)


def tokens_of_keep(amount) -> tuple:
    """Per-block token counts of a stand-in at keep k: 196 patches, ceil(196 k) kept at each of 3 blocks."""
    counts, n = [], 196
    for _ in range(3):
        n = max(1, -(-int(round(n * amount[1] * 1e6)) // 1_000_000))
        counts.append(n)
    return tuple(counts)


def gflops_of_keep(amount) -> float:
    """GFLOPs of that stand-in: proportional to the tokens each block processes."""
    return 0.01 * (197 + sum(1 + t for t in tokens_of_keep(amount)))


def test_the_r_whose_speed_is_nearest_the_target_is_found_in_few_measurements():
    calls = []

    def measure(amount):
        calls.append(amount)
        return speed_of_r(amount)

    target = speed_of_r((37, None)) * 1.001
    found = search(measure, target, r_candidates(98))
    assert found.amount == (37, None) and found.reached and found.reachable
    assert abs(found.gap) <= TOLERANCE and found.measurements == len(set(calls)) <= 10


def test_a_falling_measure_is_searched_the_other_way():
    """GFLOPs fall as r grows: the same search finds the r nearest the target."""
    found = search(
        lambda a: 100.0 / speed_of_r(a), 100.0 / speed_of_r((20, None)), r_candidates(98), tolerance=0.001
    )
    assert found.amount == (20, None)


def test_the_search_stops_within_the_tolerance_not_at_the_exact_amount():
    """Speeds 1% apart: any amount within 2% stops the search, which then reports that amount."""
    found = search(speed_of_r, 5000.0, r_candidates(98))
    assert found.reached and abs(found.value / 5000.0 - 1) <= TOLERANCE


@pytest.mark.parametrize("target, end", [(100.0, (1, None)), (1e6, (98, None))])
def test_a_target_out_of_reach_gives_the_nearest_end(target, end):
    found = search(speed_of_r, target, r_candidates(98))
    assert found.amount == end and not found.reachable and not found.reached
    assert found.measurements == 2  # both ends, nothing else


def test_keep_is_searched_in_steps_of_0_005_and_equal_counts_give_the_larger_keep():
    candidates = keep_candidates()
    assert candidates[0] == (None, 0.005) and candidates[-1] == (None, 0.995) and (None, 0.7) in candidates
    target = gflops_of_keep((None, 0.61))
    found = search(gflops_of_keep, target, candidates, key=tokens_of_keep, tolerance=1e-9)
    assert tokens_of_keep(found.amount) == tokens_of_keep((None, 0.61))
    larger = (None, round(found.amount[1] + 0.005, 6))
    assert tokens_of_keep(larger) != tokens_of_keep(found.amount)  # the largest keep with those counts
    assert tokens_of_keep(found.measured_at) == tokens_of_keep(found.amount)


def test_keeps_with_the_same_counts_are_measured_once():
    measured = []

    def measure(amount):
        measured.append(tokens_of_keep(amount))
        return gflops_of_keep(amount)

    search(measure, gflops_of_keep((None, 0.3)), keep_candidates(), key=tokens_of_keep, tolerance=1e-9)
    assert len(measured) == len(set(measured))


def calibration(model, method, amount, by="gflops") -> Calibration:
    return Calibration(model, method, amount, by, "tomecis:r13", 1.0, 1.01, True, True)


def test_matched_points_join_the_grid_or_mark_a_planned_one_and_the_reference_joins():
    grid = build_grid(["deit_tiny_patch16_224"], [8, 16], ["tome", "evit"], dataset="d", keep_values=[0.7])
    found = [
        calibration("deit_tiny_patch16_224", "tome", (16, None)),  # planned already: marked
        calibration("deit_tiny_patch16_224", "evit", (None, 0.785)),  # new
    ]
    points, marks = add_matched(grid, ("tomecis", (13, None)), found)
    keys = [p.key[1:] for p in points]
    assert keys == [
        ("none", 0, None),
        ("tome", 8, None),
        ("tome", 16, None),
        ("tome", None, 0.7),
        ("evit", None, 0.7),
        ("evit", None, 0.785),
        ("tomecis", 13, None),
    ]
    assert {p.key[1:]: c.method for p, c in marks.items()} == {
        ("tome", 16, None): "tome",
        ("evit", None, 0.785): "evit",
    }
    assert len(points) == len(set(points))


def test_a_calibration_says_what_it_matched_and_when_the_reference_is_out_of_reach():
    ok = calibration("deit_tiny_patch16_224", "tome", (12, None), by="speed")
    assert ok.matched_to == "tomecis:r13 by speed"
    assert ok.columns() == {
        "matched_to": "tomecis:r13 by speed",
        "matched_reference_value": 1.01,
        "matched_value": 1.0,
    }
    assert "-1.0%" in ok.line()
    far = Calibration("m", "evit", (None, 0.005), "gflops", "tomecis:r13", 0.78, 0.5, False, False)
    assert "evit cannot reach tomecis:r13 at any amount it takes" in far.line() and "keep0.005" in far.line()


def test_speed_calibrations_are_kept_per_timing_setting_for_reruns(tmp_path):
    """A rerun finds what an earlier run timed, for the same reference, device, batch, amp and CUDA graphs
    only; a newer calibration of a (model, method) replaces the kept one; a damaged file names itself."""
    results = ResultsDir(str(tmp_path / "out"))
    target = MatchTarget("tomecis", (13, None), "speed")
    store = CalibrationStore.of(results, target, "cpu", 16, "none", True)
    assert store.load() == {}
    tome = Calibration("deit_tiny", "tome", (12, None), "speed", "tomecis:r13", 53.0, 53.7, True, True)
    evit = Calibration("deit_tiny", "evit", (None, 0.715), "speed", "tomecis:r13", 69.6, 68.3, True, True)
    store.save([tome, evit])
    again = CalibrationStore.of(ResultsDir(str(tmp_path / "out")), target, "cpu", 16, "none", True)
    assert again.load() == {("deit_tiny", "tome"): tome, ("deit_tiny", "evit"): evit}
    for other in (
        CalibrationStore.of(results, target, "cpu", 32, "none", True),
        CalibrationStore.of(results, target, "cuda", 16, "none", True),
        CalibrationStore.of(results, MatchTarget("tomecis", (16, None), "speed"), "cpu", 16, "none", True),
    ):
        assert other.load() == {} and other.path != store.path
    newer = Calibration("deit_tiny", "tome", (13, None), "speed", "tomecis:r13", 55.0, 55.2, True, True)
    store.save([newer])
    assert store.load()[("deit_tiny", "tome")] == newer and ("deit_tiny", "evit") in store.load()
    (tmp_path / "out" / "calibrations" / store.path.rsplit("/", 1)[1]).write_text("{not json")
    with pytest.raises(ValueError, match=r"calibrations/.*\.json: cannot read the kept calibrations"):
        store.load()
