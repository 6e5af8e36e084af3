"""The matched-speed table: the reference flag, the nearest points in img/s and in GFLOPs, the paired CI of
the difference against the reference, and a missing reference."""

from __future__ import annotations

import numpy as np
import pytest
from report_testing import SMALL, TINY, Frames, correctness, section, table_rows

from orchestrator import report
from orchestrator.matched import Reference, matched_points, nearest, parse_reference

N = 4000


def run_frames(frames: Frames, **kwargs) -> str:
    cfg = report.ReportConfig(results="results", out=None, bootstrap_samples=2000, **kwargs)
    return report.report_from_frames(frames.points, frames.predictions, cfg).markdown


def drawn(rng: np.random.Generator, p_right: float) -> list:
    return list(rng.random(N) < p_right)


def flipped(rng: np.random.Generator, base: list, n_break: int, n_fix: int) -> list:
    """``base`` with exactly ``n_break`` of its right images broken and ``n_fix`` of its wrong ones fixed,
    at random positions: the paired difference is known, 100 (n_fix − n_break) / N points."""
    right = [i for i, ok in enumerate(base) if ok]
    wrong = [i for i, ok in enumerate(base) if not ok]
    changed = set(rng.choice(right, n_break, replace=False)) | set(rng.choice(wrong, n_fix, replace=False))
    return [ok != (i in changed) for i, ok in enumerate(base)]


def matched_frames() -> tuple:
    """deit_small with a known answer: the reference tomecis r13 (200 img/s, 3.00 GFLOPs);
    tome r12 nearest in img/s (195), tome r16 nearest in GFLOPs (2.99);
    evit keep0.9 nearest in img/s (180), keep0.7 nearest in GFLOPs (3.10);
    pitome r13 nearest in both (205 img/s, 3.02 GFLOPs).
    tome r12's predictions differ from the reference's by a known Δ: it breaks 180 of the reference's
    right images and fixes 100 of its wrong ones, 100 (100 − 180) / 4000 = −2.0 points."""
    rng = np.random.default_rng(7)
    reference = drawn(rng, 0.75)
    f = Frames()
    f.add(SMALL, "none", drawn(rng, 0.8), speed=100.0, gflops=4.6)
    f.add(SMALL, "tomecis", drawn(rng, 0.78), r=8, speed=150.0, gflops=3.45)
    f.add(SMALL, "tomecis", reference, r=13, speed=200.0, gflops=3.0)
    f.add(SMALL, "tome", drawn(rng, 0.76), r=8, speed=150.0, gflops=3.4)
    f.add(SMALL, "tome", flipped(rng, reference, 180, 100), r=12, speed=195.0, gflops=3.5)
    f.add(SMALL, "tome", drawn(rng, 0.7), r=16, speed=260.0, gflops=2.99)
    f.add(SMALL, "pitome", drawn(rng, 0.74), r=8, speed=140.0, gflops=3.6)
    f.add(SMALL, "pitome", drawn(rng, 0.73), r=13, speed=205.0, gflops=3.02)
    f.add(SMALL, "evit", drawn(rng, 0.77), keep=0.9, speed=180.0, gflops=3.9)
    f.add(SMALL, "evit", drawn(rng, 0.72), keep=0.7, speed=230.0, gflops=3.1)
    return f, -2.0


def matched_section(markdown: str, model: str = "deit_small (deit_small_patch16_224)") -> str:
    return section(section(markdown, model), "Matched speed")


# --------------------------------------------------------------------------- choosing the points


def test_nearest_points_in_img_s_and_in_gflops_are_chosen():
    f, _ = matched_frames()
    rows = f.points
    ref = parse_reference("tomecis:r13")
    chosen = [(m.method, m.by, m.row["r"], m.row["keep"]) for m in matched_points(rows, ref, ref.find(rows))]
    assert [(m, by, r if r == r else None, k if k == k else None) for m, by, r, k in chosen] == [
        ("tome", ("img/s",), 12.0, None),
        ("tome", ("GFLOPs",), 16.0, None),
        ("pitome", ("img/s", "GFLOPs"), 13.0, None),
        ("evit", ("img/s",), None, 0.9),
        ("evit", ("GFLOPs",), None, 0.7),
    ]


def test_nearest_breaks_ties_by_the_first_candidate_and_skips_missing_values():
    f = Frames()
    f.add(TINY, "tome", correctness(4, [0]), r=8, speed=190.0)
    f.add(TINY, "tome", correctness(4, [0]), r=12, speed=210.0)
    f.add(TINY, "tome", correctness(4, [0]), r=16, speed=None)
    picked = nearest(f.points, "infer_samples_per_sec", 200.0)
    assert picked["r"] == 8
    assert nearest(f.points.iloc[2:], "infer_samples_per_sec", 200.0) is None


def test_the_matched_table_reads_as_constructed():
    md = run_frames(matched_frames()[0])
    matched = matched_section(md)
    assert "every method against tomecis r13" in matched
    rows = table_rows(matched, key_cells=2)
    assert rows["tomecis (reference)"][2:5] == ["r13", "200.0", "3.00"]
    assert rows["tome img/s"][2:5] == ["r12", "195.0", "3.50"]
    assert rows["tome GFLOPs"][2:5] == ["r16", "260.0", "2.99"]
    assert rows["pitome img/s and GFLOPs"][2:5] == ["r13", "205.0", "3.02"]
    assert rows["evit img/s"][2] == "keep0.9" and rows["evit GFLOPs"][2] == "keep0.7"
    assert "tomecis img/s" not in rows and not any(key.startswith("none") for key in rows)


def test_speedups_print_their_intervals_and_say_whether_a_method_differs_from_the_reference():
    """With the sweep's speed-up columns: the model table and the matched table print ``2.00x [1.95, 2.05]``,
    and 'speed vs reference' is apart only where the intervals do not overlap; rows without the columns
    (pitome here, older results) fall back on the img/s ratio and say there is no interval."""
    f, _ = matched_frames()
    intervals = {
        ("tomecis", 13, None): (2.0, 1.95, 2.05),
        ("tome", 12, None): (1.95, 1.9, 2.0),  # overlaps the reference's
        ("tome", 16, None): (2.6, 2.5, 2.7),
        ("evit", None, 0.9): (1.8, 1.75, 1.85),
    }
    for row in f.rows:
        found = intervals.get((row["method"], row["r"], row["keep"]))
        if found:
            row.update(speedup=found[0], speedup_low=found[1], speedup_high=found[2])
    md = run_frames(f)
    rows = table_rows(matched_section(md), key_cells=2)
    assert rows["tomecis (reference)"][10:] == ["2.00x [1.95, 2.05]", "—"]
    assert rows["tome img/s"][10:] == ["1.95x [1.90, 2.00]", "same within the intervals"]
    assert rows["tome GFLOPs"][10:] == ["2.60x [2.50, 2.70]", "faster (intervals apart)"]
    assert rows["evit img/s"][10:] == ["1.80x [1.75, 1.85]", "slower (intervals apart)"]
    assert rows["pitome img/s and GFLOPs"][10:] == ["2.05x", "no interval"]  # 205 / 100 img/s
    model_rows = table_rows(section(md, "deit_small (deit_small_patch16_224)"), key_cells=2)
    assert model_rows["tomecis 13"][6] == "2.00x [1.95, 2.05]" and model_rows["tomecis 8"][6] == "1.50x"
    old = table_rows(matched_section(run_frames(matched_frames()[0])), key_cells=2)  # no columns at all
    assert old["tome img/s"][10:] == ["1.95x", "no interval"]


def test_the_paired_difference_against_the_reference_and_its_ci():
    """Δ top-1 is tome r12 − tomecis r13 on the same images (their top-1 difference, exactly: the
    constructed −2.0), and its 95% CI contains it with about the width 4,000 images give."""
    f, true_delta = matched_frames()
    points = f.points
    top1 = dict(zip(points["method"] + points["r"].astype(str), points["top1"]))
    cells = table_rows(matched_section(run_frames(f)), key_cells=2)["tome img/s"]
    delta, ci = float(cells[6]), cells[7]
    assert delta == pytest.approx(top1["tome12.0"] - top1["tomecis13.0"], abs=0.0051)
    low, high = (float(v) for v in ci.strip("[]").split(","))
    assert delta == true_delta == -2.0 and low < true_delta < high
    assert 1.0 < high - low < 2.0  # 280 changed images of 4,000: about ±0.8 points
    assert cells[8] == "2e-06"  # exact McNemar, 100 fixed against 180 broken
    assert cells[9] == str(N)


def test_another_reference_is_used_when_asked():
    f, _ = matched_frames()
    rows = table_rows(matched_section(run_frames(f, reference="evit:keep0.7")), key_cells=2)
    assert rows["evit (reference)"][2:4] == ["keep0.7", "230.0"]
    # 230 img/s, 3.10 GFLOPs: tome r16 (260, 2.99) is nearest on both; so is tomecis r13 (200, 3.00)
    assert rows["tome img/s and GFLOPs"][2] == "r16" and rows["tomecis img/s and GFLOPs"][2] == "r13"
    assert rows["pitome img/s and GFLOPs"][2] == "r13"


def test_a_missing_reference_is_one_line_not_a_crash():
    f, _ = matched_frames()
    f.add(TINY, "tome", correctness(10, range(5)), r=8)
    md = run_frames(f)
    tiny = matched_section(md, "deit_tiny (deit_tiny_patch16_224)")
    assert "no tomecis r13 point for deit_tiny in this setting, so no matched-speed table" in tiny
    assert "points present: tome r8" in tiny and "|" not in tiny
    assert "tome img/s" in table_rows(matched_section(md), key_cells=2)  # the other model still has its table


# --------------------------------------------------------------------------- the reference flag


def test_references_parse():
    assert parse_reference("tomecis:r13") == Reference("tomecis", 13, None)
    assert parse_reference("evit:keep0.7") == Reference("evit", None, 0.7)
    assert parse_reference(" tome:r8 ").label() == "tome r8"


@pytest.mark.parametrize(
    "text, culprit",
    [
        ("tomecis", "is not METHOD:AMOUNT"),
        ("fast:r13", "unknown method 'fast'"),
        ("none:r0", "unknown method 'none'"),
        ("tomecis:13", "amount '13' is neither"),
        ("tomecis:rx", "cannot read r from 'rx'"),
        ("tomecis:keepx", "cannot read keep from 'keepx'"),
        ("evit:r13", "method 'evit' takes --keep, not --r"),
        ("tome:keep1.5", "keep must lie in (0, 1]"),
        ("tome:r0", "'r0' reduces nothing"),
    ],
)
def test_a_bad_reference_names_the_culprit(text, culprit):
    with pytest.raises(ValueError) as err:
        parse_reference(text)
    assert f"reference {text.strip()!r}" in str(err.value) and culprit in str(err.value)


def test_the_cli_refuses_a_bad_reference_before_reading_anything(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nowhere"), "--reference", "evit:r13"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--reference: reference 'evit:r13': method 'evit' takes --keep, not --r" in err
    with pytest.raises(ValueError, match="unknown method 'fast'"):
        report.build_report(report.ReportConfig(results=str(tmp_path), reference="fast:r1"))


# --------------------------------------------------------------------------- points matched by construction


def calibrated_frames() -> Frames:
    """``matched_frames`` plus the points a sweep with ``--match tomecis:r13`` found: tome r13 by speed
    (199 img/s at calibration against the reference's 201: −1.0%), evit keep0.66 by GFLOPs (3.03 against
    3.00: +1.0%), and a tome r14 matched to another reference (ignored here)."""
    rng = np.random.default_rng(8)
    f, _ = matched_frames()
    f.add(
        SMALL,
        "tome",
        drawn(rng, 0.74),
        r=13,
        speed=198.0,
        gflops=3.2,
        matched=("tomecis:r13 by speed", 201.0, 199.0),
    )
    f.add(
        SMALL,
        "evit",
        drawn(rng, 0.7),
        keep=0.66,
        speed=240.0,
        gflops=3.02,
        matched=("tomecis:r13 by gflops", 3.0, 3.03),
    )
    f.add(
        SMALL,
        "tome",
        drawn(rng, 0.7),
        r=14,
        speed=199.5,
        gflops=3.1,
        matched=("tomecis:r8 by speed", 150.0, 150.0),
    )
    return f


def test_points_matched_by_construction_take_the_nearest_ones_place_and_say_their_gap():
    rows = table_rows(matched_section(run_frames(calibrated_frames())), key_cells=2)
    tome = rows["tome img/s (calibrated by img/s, gap -1.0%)"]
    assert tome[2:4] == ["r13", "198.0"]  # not r14 (nearest in img/s, but matched to another reference)
    assert rows["tome GFLOPs"][2] == "r16"  # no tome point calibrated by GFLOPs: the nearest
    assert rows["evit GFLOPs (calibrated by GFLOPs, gap +1.0%)"][2] == "keep0.66"
    assert rows["evit img/s"][2] == "keep0.9"
    assert rows["pitome img/s and GFLOPs"][2] == "r13"  # no matched point: as before


def test_results_without_the_matched_columns_still_report():
    f, _ = matched_frames()
    assert "matched_to" not in f.points.columns
    assert "tome img/s" in table_rows(matched_section(run_frames(f)), key_cells=2)


def test_the_paper_comparison_uses_the_point_matched_by_speed():
    f = calibrated_frames()
    rows = f.points
    ref = parse_reference("tomecis:r13")
    row, why = report._our_point(rows, "tome", ref)
    assert why == "" and row["r"] == 13 and row["matched_to"] == "tomecis:r13 by speed"


def test_amounts_planned_per_method_say_what_is_missing_and_matched_points_are_nobody_elses():
    from orchestrator.tables import expected_amounts, missing_amounts

    f = Frames()
    f.add(SMALL, "none", correctness(10, range(8)))
    f.add(SMALL, "tome", correctness(10, range(7)), r=8)
    f.add(SMALL, "evit", correctness(10, range(6)), keep=0.7)
    f.add(SMALL, "evit", correctness(10, range(6)), keep=0.62, matched=("tomecis:r13 by gflops", 1.47, 1.471))
    planned = {"tome": [(8, None), (13, None)], "evit": [(None, 0.7), (None, 0.62)]}
    assert missing_amounts(f.points, planned) == {"tome": [(13, None)]}
    assert expected_amounts(f.points) == [(8, None), (None, 0.7)]  # keep0.62 is evit's own
    assert missing_amounts(f.points, expected_amounts(f.points)) == {"tome": [(None, 0.7)]}


def test_the_report_reads_what_each_method_was_planned_from_the_rows():
    """A sweep with per-method amounts (``--amounts``, ``--grid``) writes its plan in every row: the report
    calls missing only a planned amount without a row, never another method's amounts."""
    import json

    plan = json.dumps({"tome": [[8, None], [16, None]], "evit": [[None, 0.7]], "pitome": [[None, 0.9]]})
    f = Frames()
    f.add(SMALL, "none", correctness(10, range(8)), planned=plan)
    f.add(SMALL, "tome", correctness(10, range(7)), r=8, planned=plan)
    f.add(SMALL, "evit", correctness(10, range(6)), keep=0.7, planned=plan)
    f.add(SMALL, "pitome", correctness(10, range(6)), keep=0.9, planned=plan)
    markdown = run_frames(f)
    missing = [line for line in markdown.splitlines() if line.startswith("- missing")]
    assert missing == [
        "- missing: tome at r16 (not in the results; rerun the sweep with these amounts to fill them)"
    ], missing
    old = Frames()  # rows from before the column: amounts shared by every method that takes their kind
    for method, amount in (("tome", dict(r=8)), ("pitome", dict(keep=0.9)), ("evit", dict(keep=0.7))):
        old.add(SMALL, method, correctness(10, range(7)), **amount)
    old.add(SMALL, "none", correctness(10, range(8)))
    missing_old = [line for line in run_frames(old).splitlines() if line.startswith("- missing")]
    assert any(line.startswith("- missing: evit at keep0.9") for line in missing_old), missing_old
