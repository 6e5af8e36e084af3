"""orchestrator.gpucheck.agreement: per-image top-1 agreement of the device run with the CPU fp32 run,
matched by photo, and its verdict rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.gpucheck.agreement import agreement, agreement_rows, agreement_table, check_agreement
from orchestrator.gpucheck.config import CheckPoint, GpuCheckConfig, check_points, methods_of
from orchestrator.gpucheck.decode import PassResult
from orchestrator.gpucheck.report import Report
from orchestrator.gpucheck.weights import ModelWeights


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
    points = [CheckPoint("m", "tomecis", 0), CheckPoint("m", "tomecis", 13), CheckPoint("rand", "tomecis", 0)]
    keys = [f"p{i:03d}_copy00" for i in range(200)]
    labels = {k: i % 7 for i, k in enumerate(keys)}
    device, cpu = PassResult(labels=labels), PassResult(labels=labels)
    for p in points:
        device.top1[(p.model, p.method, p.amount)] = dict(labels)
        cpu.top1[(p.model, p.method, p.amount)] = dict(labels)
    cpu.top1[("m", "tomecis", 0)][keys[0]] = 99  # r = 0: 1 of 200 differs: 99.5%, a pass
    for k in keys[:3]:
        cpu.top1[("m", "tomecis", 13)][k] = 99  # r = 13: 3 of 200: 98.5%, a fail
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
    assert "agreement m tomecis r=13: 98.50% of 200 images (cuda fp16 vs CPU fp32)" in table
    assert table.count("(random weights: no verdict)") == 1
    with pytest.raises(ValueError, match="m tomecis r=8: no predictions"):
        agreement_rows([CheckPoint("m", "tomecis", 8)], device, cpu, weights)


def test_the_points_are_one_list_from_models_and_r():
    cfg = GpuCheckConfig(models=["a", "b"], r_values=[0, 13])
    points = check_points(cfg)
    assert [(p.model, p.method, p.amount) for p in points] == [
        ("a", "tomecis", 0),
        ("a", "tomecis", 13),
        ("b", "tomecis", 0),
        ("b", "tomecis", 13),
    ]
    assert methods_of(points) == {"tomecis": [0, 13]} and methods_of(points, "b") == {"tomecis": [0, 13]}
    assert [p.unreduced for p in points] == [True, False, True, False]
