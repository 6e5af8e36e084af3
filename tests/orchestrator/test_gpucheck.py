"""orchestrator.gpucheck: one line and exit 2 without CUDA; on the CPU, a rehearsal of the whole report."""

from __future__ import annotations

import json

import pytest
import torch

from orchestrator import gpucheck
from shards.testing import tiny_dataset, write_tiny_shards


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpucheck would run for real")
def test_without_cuda_it_says_so_in_one_line_and_exits_non_zero(tmp_path, capsys):
    assert gpucheck.main(["--out", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA device here" in lines[0] and not captured.out
    assert not (tmp_path / "report").exists()


@pytest.mark.slow
def test_cpu_rehearsal_writes_every_section_of_the_report(tmp_path):
    """The same steps on the CPU with a tiny grid: benchmark with FLOP ratio and fused / explicit, a sweep
    with eval against infer img/s, shards.bench, and a verdict per target."""
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12, n_classes=3), shard_size=4)
    out = tmp_path / "report"
    argv = [
        "--device",
        "cpu",
        "--out",
        str(out),
        "--data",
        str(tmp_path / "shards"),
        "--models",
        "deit_tiny",
        "--r",
        "0,8",
        "--runs",
        "1",
        "--batch-size",
        "4",
        "--no-tests",
    ]
    assert gpucheck.main(argv) in (0, 1)  # 1 when a CPU misses a GPU target; the report says which
    text = (out / "report.md").read_text()
    for heading in ("## Machine", "## Benchmark (none, batch 4", "## Sweep on", "## Data path", "## Targets"):
        assert heading in text, text
    figures = json.loads((out / "results.json").read_text())
    bench = {row["r"]: row for row in figures["benchmark"]}
    assert (
        set(bench) == {0, 8} and bench[0]["flop_ratio"] == pytest.approx(1.0) and bench[8]["flop_ratio"] > 1.2
    )
    assert all(row["explicit_img_per_s"] > 0 and row["fused_vs_explicit"] > 0 for row in bench.values())
    sweep_points = figures["sweep"]
    assert sorted(p["r"] for p in sweep_points) == [0, 8] and all(p["n_images"] == 12 for p in sweep_points)
    assert all(p["eval_samples_per_sec"] > 0 and p["infer_samples_per_sec"] > 0 for p in sweep_points)
    assert 0 < figures["grid_efficiency"]
    assert [row["workers"] for row in figures["read_bench"]] == [0, 1] and all(
        r["images"] == 12 for r in figures["read_bench"]
    )
    assert "| grid: summed infer time / eval wall time |" in text
    assert "no GPU: this run is on the CPU" in text


@pytest.mark.assets
def test_default_shards_repeat_the_sample_photos(tmp_path):
    """Without --data: the 500 real photos, ``repeat`` times over, 250 a shard, every key once."""
    from conftest import SAMPLE_IMAGES, require_assets

    import shards

    require_assets(SAMPLE_IMAGES)
    data = gpucheck.sample_shards(gpucheck.GpuCheckConfig(out=str(tmp_path), repeat=2))
    shardset = shards.resolve_data(data)
    assert [s.n_samples for s in shardset.shards] == [250, 250, 250, 250]
    keys = [
        k
        for _, _, batch_keys in shards.iter_batches(shardset, lambda im: torch.zeros(1), 100)
        for k in batch_keys
    ]
    assert len(keys) == len(set(keys)) == 1000 and sum(k.endswith("_copy01") for k in keys) == 500
    assert (
        gpucheck.sample_shards(gpucheck.GpuCheckConfig(out=str(tmp_path), repeat=2)) == data
    )  # written once


def test_a_missing_sample_is_a_failed_step_not_a_silent_skip(tmp_path, monkeypatch, capsys):
    """No --data and no sample photos where gpucheck looks: the sweep step is reported FAILED, exit 1."""
    monkeypatch.setattr(gpucheck, "SAMPLE_PLACES", (tmp_path / "nowhere",))
    argv = [
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "report"),
        "--models",
        "deit_tiny",
        "--r",
        "0",
        "--runs",
        "1",
        "--batch-size",
        "2",
        "--no-tests",
    ]
    assert gpucheck.main(argv) == 1
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## sweep: FAILED" in text and str(tmp_path / "nowhere") in text
