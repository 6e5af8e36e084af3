"""orchestrator.gpucheck.agreement: per-image top-1 agreement of the device run with the CPU fp32 run,
matched by photo, and its verdict rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.gpucheck import config_from_args
from orchestrator.gpucheck.agreement import agreement, agreement_rows, agreement_table, check_agreement
from orchestrator.gpucheck.config import (
    BUDGET_SECONDS,
    DEFAULT_AMOUNTS,
    CheckPoint,
    GpuCheckConfig,
    check_points,
    method_amounts,
    methods_of,
)
from orchestrator.gpucheck.decode import PassResult
from orchestrator.gpucheck.plan import benchmark_groups, estimate_seconds, plan_lines
from orchestrator.gpucheck.report import Report
from orchestrator.gpucheck.weights import ModelWeights
from tomecis.names import REDUCING_METHODS, UNREDUCED


def test_agreement_matches_photos_across_copies_and_counts_each_photo_once():
    # the device run read every photo twice (copy00, copy01); the CPU run once
    device = {"a_copy00": 1, "a_copy01": 1, "b_copy00": 2, "b_copy01": 2, "c_copy00": 3, "c_copy01": 9}
    cpu = {"a_copy00": 1, "b_copy00": 5, "c_copy00": 3}
    assert agreement(device, cpu) == (pytest.approx(200 / 3), 3)
    assert agreement({"k1": 4, "k2": 4}, {"k1": 4}) == (100.0, 1)  # other keys: themselves


def test_agreement_refuses_images_the_device_run_never_saw():
    with pytest.raises(ValueError, match="1 image.* not in the device run .*zz"):
        agreement({"a_copy00": 1}, {"a_copy00": 1, "zz_copy00": 2})
    with pytest.raises(ValueError, match="--agree-images must be >= 1"):
        agreement({"a": 1}, {})


def test_rows_table_and_verdicts_per_point(tmp_path: Path):
    points = [CheckPoint("m", "none", 0), CheckPoint("m", "tomecis", 13), CheckPoint("rand", "none", 0)]
    keys = [f"p{i:03d}_copy00" for i in range(200)]
    labels = {k: i % 7 for i, k in enumerate(keys)}
    device, cpu = PassResult(labels=labels), PassResult(labels=labels)
    for p in points:
        device.top1[p.key] = dict(labels)
        cpu.top1[p.key] = dict(labels)
    cpu.top1[("m", "none", 0, None)][keys[0]] = 99  # the baseline: 1 of 200 differs: 99.5%, a pass
    for k in keys[:3]:
        cpu.top1[("m", "tomecis", 13, None)][k] = 99  # r = 13: 3 of 200: 98.5%, a fail
    weights = {
        "m": ModelWeights("m", Path("m.pth"), "ab" * 32, "test"),
        "rand": ModelWeights("rand", why="x"),
    }
    rows = agreement_rows(points, device, cpu, weights)
    assert [(r["agreement"], r["images"], r["disagree"]) for r in rows] == [
        (99.5, 200, 1),
        (98.5, 200, 3),
        (100.0, 200, 0),
    ]
    assert rows[0]["device_top1"] == 100.0 and rows[0]["cpu_top1"] == 99.5
    report = Report(tmp_path)
    check_agreement(report, rows, "fp16")
    assert len(report.verdicts) == 2  # random weights: figures, no verdict
    assert report.verdicts[0].endswith("| 99.50% | >= 99.50% | PASS |")
    assert report.verdicts[1].endswith("| 98.50% | >= 99.00% | FAIL |") and not report.all_passed
    table = agreement_table(rows, "fp16", "cuda", 12.34)
    assert "CPU fp32 reference: 200 images at 3 point(s), 12.3 s" in table
    assert "agreement m tomecis r13: 98.50% of 200 images (cuda fp16 vs CPU fp32)" in table
    assert "agreement m none r0: 99.50% of 200 images" in table
    assert table.count("(random weights: no verdict)") == 1
    with pytest.raises(ValueError, match="m evit keep0.7: no predictions"):
        agreement_rows([CheckPoint("m", "evit", None, 0.7)], device, cpu, weights)


def test_a_keep_point_below_the_reduced_target_fails_and_the_baseline_target_is_the_baselines(tmp_path):
    rows = [
        dict(
            model="m",
            method="none",
            amount="r0",
            unreduced=True,
            agreement=99.4,
            images=500,
            real_weights=True,
        ),
        dict(
            model="m",
            method="evit",
            amount="keep0.7",
            unreduced=False,
            agreement=99.4,
            images=500,
            real_weights=True,
        ),
    ]
    report = Report(tmp_path)
    check_agreement(report, rows, "fp16")
    assert report.verdicts[0].startswith("| m none r0 (fp16)") and report.verdicts[0].endswith(
        ">= 99.50% | FAIL |"
    )
    assert report.verdicts[1].startswith("| m evit keep0.7 (fp16)") and report.verdicts[1].endswith(
        "| PASS |"
    )


def labels(cfg: GpuCheckConfig) -> list:
    return [(p.model, p.method, p.amount) for p in check_points(cfg)]


def test_the_default_points_are_the_baseline_and_every_reduction_method_once():
    points = check_points(GpuCheckConfig(models=["a", "b"]))
    assert [p.method for p in points if p.model == "a"] == [UNREDUCED, *REDUCING_METHODS]
    assert set(DEFAULT_AMOUNTS) == set(REDUCING_METHODS)  # a new method needs its default amount here
    assert labels(GpuCheckConfig(models=["a"])) == [
        ("a", "none", "r0"),
        ("a", "tomecis", "r13"),
        ("a", "tome", "r13"),
        ("a", "pitome", "keep0.9"),
        ("a", "tofu", "keep0.9"),
        ("a", "evit", "keep0.7"),
        ("a", "atc", "keep0.7"),
        ("a", "dct", "keep0.9"),
        ("a", "diffrate", "keep0.9"),
        ("a", "mctf", "r16"),
    ]
    assert [p.unreduced for p in points] == [True] + [False] * 9 + [True] + [False] * 9
    assert points[0].key == ("a", "none", 0, None) and points[3].key == ("a", "pitome", None, 0.9)
    assert methods_of(points, "b")["evit"] == [(None, 0.7)] and method_amounts(GpuCheckConfig())[1] == []


def test_r_and_keep_replace_the_defaults_of_the_methods_that_take_them():
    # --r 0,13 (the #26 rehearsal): the baseline, every method that takes r at r13; evit takes keep only:
    # its default keep, said in a line
    cfg = GpuCheckConfig(models=["a"], r_values=[0, 13])
    assert labels(cfg) == [
        ("a", "none", "r0"),
        ("a", "tomecis", "r13"),
        ("a", "tome", "r13"),
        ("a", "pitome", "r13"),
        ("a", "tofu", "r13"),
        ("a", "evit", "keep0.7"),
        ("a", "atc", "keep0.7"),
        ("a", "dct", "keep0.9"),
        ("a", "diffrate", "keep0.9"),
        ("a", "mctf", "r13"),
    ]
    assert method_amounts(cfg)[1] == [
        f"{m} takes --keep, none given: at its default keep{k}"
        for m, k in (("evit", 0.7), ("atc", 0.7), ("dct", 0.9), ("diffrate", 0.9))
    ]
    # --keep alone: every method that takes keep at it, the r methods too; mctf (r only) at its default r16
    keep_only = labels(GpuCheckConfig(models=["a"], keep_values=[0.8]))
    assert {m for _, m, a in keep_only if a == "keep0.8"} == set(REDUCING_METHODS) - {"mctf"}
    assert ("a", "mctf", "r16") in keep_only
    # both: each method at the kind of its default amount
    both = GpuCheckConfig(models=["a"], r_values=[8, 16], keep_values=[0.8], methods=["tome", "tofu", "evit"])
    assert labels(both) == [
        ("a", "none", "r0"),
        ("a", "tome", "r8"),
        ("a", "tome", "r16"),
        ("a", "tofu", "keep0.8"),
        ("a", "evit", "keep0.8"),
    ]
    # --r 0 for a method that takes r: the baseline alone, said
    only = GpuCheckConfig(models=["a"], r_values=[0], methods=["tomecis"])
    assert labels(only) == [("a", "none", "r0")]
    assert method_amounts(only)[1] == ["tomecis: r0 reduce nothing (the baseline)"]
    assert labels(GpuCheckConfig(models=["a"], methods=["none"])) == [("a", "none", "r0")]


def test_all_amounts_runs_every_method_at_every_amount_it_takes():
    cfg = GpuCheckConfig(models=["a"], all_amounts=True, methods=["tomecis", "evit"])
    assert labels(cfg)[1:] == [
        ("a", "tomecis", "r13"),
        ("a", "tomecis", "keep0.7"),
        ("a", "evit", "keep0.7"),
    ]
    every = GpuCheckConfig(models=["a"], all_amounts=True, r_values=[8], keep_values=[0.9])
    assert [(m, a) for _, m, a in labels(every)][1:] == [
        ("tomecis", "r8"),
        ("tomecis", "keep0.9"),
        ("tome", "r8"),
        ("tome", "keep0.9"),
        ("pitome", "r8"),
        ("pitome", "keep0.9"),
        ("tofu", "r8"),
        ("tofu", "keep0.9"),
        ("evit", "keep0.9"),
        ("atc", "keep0.9"),
        ("dct", "keep0.9"),
        ("diffrate", "keep0.9"),
        ("mctf", "r8"),
    ]


def test_the_flags_give_methods_r_keep_and_all_amounts(capsys):
    cfg = config_from_args(["--method", "tome,evit", "--r", "8-10", "--keep", "0.9,0.7", "--all-amounts"])
    assert (cfg.methods, cfg.r_values, cfg.keep_values, cfg.all_amounts) == (
        ["tome", "evit"],
        [8, 9, 10],
        [0.9, 0.7],
        True,
    )
    default = config_from_args([])
    assert (
        default.methods == list(REDUCING_METHODS) and default.r_values is None and default.keep_values is None
    )
    for bad in (["--methods", "tome,nope"], ["--keep", "1.5"]):
        with pytest.raises(SystemExit):
            config_from_args(bad)
    err = capsys.readouterr().err
    assert "--methods: unknown method 'nope'" in err and "--keep: keep ratio '1.5' must lie in (0, 1]" in err


def test_the_default_plan_fits_the_budget_and_benchmarks_methods_sharing_amounts_together():
    cfg = GpuCheckConfig()
    points = check_points(cfg)
    estimate = estimate_seconds(cfg, points)
    assert sum(estimate.values()) <= BUDGET_SECONDS, estimate
    assert benchmark_groups(points, "deit_small_patch16_224") == [
        dict(methods=["none", "tomecis", "tome"], r_values=[13], keep_values=[]),
        dict(methods=["pitome", "tofu", "dct", "diffrate"], r_values=[], keep_values=[0.9]),
        dict(methods=["evit", "atc"], r_values=[], keep_values=[0.7]),
        dict(methods=["mctf"], r_values=[16], keep_values=[]),
    ]
    lines = plan_lines(cfg, points)
    assert lines[0] == (
        "plan: deit_small: 10 point(s): none r0, tomecis r13, tome r13, pitome keep0.9, tofu keep0.9, evit keep0.7, "
        "atc keep0.7, dct keep0.9, diffrate keep0.9, mctf r16"
    ).replace("deit_small", "deit_tiny")
    assert lines[-1].startswith("plan: about ") and "OVER BUDGET" not in lines[-1]
    assert (
        "OVER BUDGET"
        in plan_lines(GpuCheckConfig(all_amounts=True), check_points(GpuCheckConfig(all_amounts=True)))[-1]
    )


def test_a_points_row_read_back_from_parquet_gives_its_point_key():
    from orchestrator.gpucheck.decode import row_key

    assert row_key(dict(model="m", method="evit", r=float("nan"), keep=0.7)) == ("m", "evit", None, 0.7)
    assert row_key(dict(model="m", method="none", r=0.0, keep=float("nan"))) == CheckPoint("m", "none", 0).key
