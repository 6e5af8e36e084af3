"""orchestrator.gpucheck: one line and exit 2 without CUDA; on the CPU, a rehearsal of the whole report,
with Ray (GPU-actor sweep) and with Ray unimportable (the in-process evaluator); offline wheels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from shards_testing import make_imagefolder, tiny_dataset, write_tiny_shards

from orchestrator import gpucheck
from orchestrator.gpucheck import decode, photos
from orchestrator.gpucheck.config import DEFAULT_AMOUNTS
from tomecis.names import REDUCING_METHODS, amount_label

REPO = Path(__file__).resolve().parents[2]
# a timm ViT of 0.4 M parameters (160 px, 6 blocks): the rehearsals stay seconds long on CI's two cores
TINY_MODEL = "test_vit"
BASELINE = ("none", "r0")
# the default check: the baseline and every reduction method at its one default amount
EVERY_METHOD = [BASELINE] + [(m, amount_label(*DEFAULT_AMOUNTS[m])) for m in REDUCING_METHODS]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: gpucheck would run for real")
def test_without_cuda_it_says_so_in_one_line_and_exits_non_zero(tmp_path, capsys):
    assert gpucheck.main(["--out", str(tmp_path / "report")]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "sees no CUDA device here" in lines[0] and not captured.out
    assert not (tmp_path / "report").exists()


def rehearsal_args(out: Path, *more: str) -> list:
    return [
        "--device",
        "cpu",
        "--out",
        str(out),
        "--models",
        TINY_MODEL,
        "--runs",
        "1",
        "--batch-size",
        "4",
        "--no-tests",
        "--random-weights",
        *more,
    ]


def check_rehearsal_report(out: Path, evaluator: str, n_images: int, n_photos: int, points: list) -> tuple:
    """The sections, figures and step times every rehearsal writes, a line per point (``(method,
    amount)``, the baseline first) in every table; returns (report text, figures)."""
    text = (out / "report.md").read_text()
    for heading in (
        "## Machine",
        "## Plan",
        "## Benchmark (none, batch 4",
        "## Decode pass:",
        "## Data path",
        "## Targets",
    ):
        assert heading in text, text
    figures = json.loads((out / "results.json").read_text())
    assert points[0] == BASELINE
    bench = {(row["method"], row["amount"]): row for row in figures["benchmark"]}
    assert list(bench) == points and bench[BASELINE]["flop_ratio"] == pytest.approx(1.0)
    assert all(row["flop_ratio"] > 1.1 for key, row in bench.items() if key != BASELINE)
    assert all(row["explicit_img_per_s"] > 0 and row["fused_vs_explicit"] > 0 for row in bench.values())
    assert all(row["eager_img_per_s"] > 0 and row["aten_ops"] > 0 for row in bench.values())
    assert all(not row["cuda_graphs"] for row in bench.values())  # a CPU rehearsal: nothing is graphed
    assert "| graphed img/s | eager img/s | graphed / eager |" in text and "(eager: no graphs)" in text
    assert all(row["aten_ops"] > bench[BASELINE]["aten_ops"] for key, row in bench.items() if key != BASELINE)
    assert list(figures["decode_pass"]) == [evaluator]
    decode = figures["decode_pass"][evaluator]
    assert [(p["method"], decode_amount(p)) for p in decode["points"]] == points
    assert all(p["n_images"] == n_images for p in decode["points"])
    assert all(p["eval_samples_per_sec"] > 0 and p["infer_samples_per_sec"] > 0 for p in decode["points"])
    assert 0 < decode["grid_efficiency"]
    for method, amount in points:  # its line in the benchmark, decode and agreement tables
        assert text.count(f"| {TINY_MODEL} | {method} | {amount} | ") == 3, (method, amount, text)
        assert f"agreement {TINY_MODEL} {method} {amount}: " in text
    assert [row["workers"] for row in figures["read_bench"]] == [0, 1] and all(
        r["images"] == n_images for r in figures["read_bench"]
    )
    assert f"| grid ({evaluator}): summed infer time / eval wall time |" in text
    assert "no GPU: this run is on the CPU" in text
    agreement = figures["agreement"][evaluator]
    assert [(row["method"], row["amount"], row["images"]) for row in agreement["rows"]] == [
        (*point, n_photos) for point in points
    ]
    assert all(0 <= row["agreement"] <= 100 and not row["real_weights"] for row in agreement["rows"])
    assert f"CPU fp32 reference: {n_photos} images at {len(points)} point(s)" in text
    assert text.count("(random weights: no verdict)") == len(points)
    assert "top-1 agreement with CPU fp32" not in text
    assert text.splitlines()[2:4] == ["Weights:", f"- {TINY_MODEL}: random weights (--random-weights)"]
    steps = figures["seconds"]
    assert set(steps) == {
        f"benchmark {TINY_MODEL}",
        "shards",
        _step_name(evaluator),
        "CPU fp32 reference",
        f"agreement ({evaluator})",
        "shards.bench",
    }
    assert all(seconds >= 0 for seconds in steps.values()) and "## Steps" in text
    assert figures["total_seconds"] >= sum(steps.values()) - 1
    return text, figures


def decode_amount(row: dict) -> str:
    """A points row's amount label (``r`` and ``keep``, NaN where unused, read back from Parquet)."""
    r, keep = row["r"], row.get("keep")
    keep = None if keep is None or keep != keep else keep
    return amount_label(None if keep is not None else int(r), keep)


def _step_name(evaluator: str) -> str:
    return "decode pass, in-process" if evaluator == "in-process" else "decode pass, Ray actors"


@pytest.mark.ray
@pytest.mark.slow
def test_cpu_rehearsal_with_ray_runs_the_gpu_actor_sweep(tmp_path):
    """With Ray installed, the default decode pass is a sweep on (here: CPU) actors, as on a GPU cluster."""
    pytest.importorskip("ray", reason="needs Ray (the actor sweep); the in-process rehearsal runs without it")
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12, n_classes=3), shard_size=4)
    out = tmp_path / "report"
    argv = rehearsal_args(out, "--data", str(tmp_path / "shards"), "--methods", "tomecis", "--r", "0,8")
    assert gpucheck.main(argv) in (0, 1)
    text, _ = check_rehearsal_report(out, "ray", 12, 12, [BASELINE, ("tomecis", "r8")])
    assert "sweep on cpu actors (Ray " in text


@pytest.mark.slow
def test_cpu_rehearsal_with_ray_unimportable_runs_the_evaluator_in_process(tmp_path):
    """``import ray`` fails in the child (as on a stock PyTorch image): the whole rehearsal still runs, the
    decode pass in-process, on shards written from a folder of photos (the first 6, twice over), at the
    default points: the baseline and every reduction method, each with its line in every table."""
    photos = make_imagefolder(tmp_path / "photos", tiny_dataset(n_images=8, n_classes=3))
    out = tmp_path / "report"
    argv = rehearsal_args(out, "--photos", str(photos), "--photos-limit", "6", "--repeat", "2")
    prelude = (
        "import sys; sys.modules['ray'] = None\n"  # every `import ray` now raises ImportError
        "try:\n    import ray\nexcept ImportError:\n    pass\nelse:\n    sys.exit('ray still imports')\n"
        "from orchestrator import gpucheck\n"
        "sys.exit(gpucheck.main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", prelude, *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stderr[
        -3000:
    ]  # 1: a CPU misses a GPU target; the report says which
    text, figures = check_rehearsal_report(out, "in-process", 12, 6, EVERY_METHOD)
    assert "- Ray: not installed (the decode pass runs the evaluator in-process)" in text
    assert "## Decode pass: in-process evaluator (no Ray" in text and "## Decode pass: sweep" not in text
    assert "gpucheck: decode pass, in-process: " in done.stderr  # each step's seconds, printed as it ends
    shard_dir = next(out.glob("shards-6x2-*"))
    assert json.loads((shard_dir / "manifest.json").read_text())["total"] == 12


def test_the_evaluator_is_chosen_by_whether_ray_imports(monkeypatch):
    assert gpucheck.evaluators_to_run("auto", has_ray=False) == ["in-process"]
    assert gpucheck.evaluators_to_run("auto", has_ray=True) == ["ray"]
    assert gpucheck.evaluators_to_run("both", has_ray=True) == ["in-process", "ray"]
    monkeypatch.setattr(decode, "ray_version", lambda: None)
    with pytest.raises(RuntimeError, match="Ray is not installed here; --evaluator in-process"):
        gpucheck.run_sweep_step(gpucheck.GpuCheckConfig(), "unused", [], {})


def test_the_in_process_evaluator_gets_a_gpu_actors_loader_workers(monkeypatch):
    """One actor's shape on this machine, from placement: a GPU actor feeds the GPU from one core and
    decodes on the others; a CPU actor decodes itself."""
    monkeypatch.setattr(decode.os, "cpu_count", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    gpu = gpucheck.local_actor_shape("cuda")
    assert (gpu.threads, gpu.loader_workers) == (16, 15)
    cpu = gpucheck.local_actor_shape("cpu")
    assert (cpu.threads, cpu.loader_workers) == (4, 0)


@pytest.mark.assets
def test_default_shards_repeat_the_sample_photos(tmp_path):
    """Without --data: the first ``photos_limit`` real photos, ``repeat`` times over, 250 a shard, every key
    once; the default limit (250 photos, 27 MB) is what the offline recipe carries."""
    from conftest import SAMPLE_IMAGES, require_assets

    import shards

    require_assets(SAMPLE_IMAGES)
    config = gpucheck.GpuCheckConfig(out=str(tmp_path), repeat=2, photos_limit=500)
    data = gpucheck.sample_shards(config)
    shardset = shards.resolve_data(data)
    assert [s.n_samples for s in shardset.shards] == [250, 250, 250, 250]
    keys = [
        k
        for _, _, batch_keys in shards.iter_batches(shardset, lambda im: torch.zeros(1), 100)
        for k in batch_keys
    ]
    assert len(keys) == len(set(keys)) == 1000 and sum(k.endswith("_copy01") for k in keys) == 500
    assert gpucheck.sample_shards(config) == data  # written once
    default = gpucheck.list_photos(SAMPLE_IMAGES, gpucheck.GpuCheckConfig().photos_limit)
    assert len(default) == 250 and sum(p.stat().st_size for p in default) < 30e6
    assert gpucheck.GpuCheckConfig().repeat is None and gpucheck.GPU_IMAGES // 250 == 40  # 10,000 on a GPU


def test_photos_limit_takes_the_first_photos_by_path(tmp_path):
    images = tiny_dataset(n_images=5, n_classes=2)
    folder = make_imagefolder(tmp_path / "photos", images)
    (folder / "notes.txt").write_text("not a photo")
    chosen = gpucheck.list_photos(folder, 3)
    assert chosen == sorted(folder.glob("*/*.JPEG"))[:3]
    with pytest.raises(FileNotFoundError, match="<synset>/<name>.JPEG"):
        gpucheck.list_photos(tmp_path, None)


def test_a_missing_sample_is_a_failed_step_not_a_silent_skip(tmp_path, monkeypatch, capsys):
    """No --data and no sample photos where gpucheck looks: the shards step is reported FAILED, exit 1."""
    monkeypatch.setattr(photos, "SAMPLE_PLACES", (tmp_path / "nowhere",))
    argv = [
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "report"),
        "--models",
        TINY_MODEL,
        "--methods",
        "none",
        "--runs",
        "1",
        "--batch-size",
        "2",
        "--no-tests",
    ]
    assert gpucheck.main(argv) == 1
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## shards: FAILED" in text and str(tmp_path / "nowhere") in text
    assert "| shards | 0.0 | FAILED |" in text


def make_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure-Python wheel holding one module ``<name>`` with ``VERSION = <version>``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(f"{name}.py", f"VERSION = {version!r}\n")
        whl.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        whl.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        whl.writestr(f"{info}/RECORD", f"{name}.py,,\n{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n")
    return path


def test_wheels_are_installed_offline_once_and_seen_by_child_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    make_wheel(tmp_path / "wheels", "gpucheck_offline_probe", "1.2.3")
    make_wheel(tmp_path / "wheels", "pytest", "0.0.1")  # installed already: left alone
    target = tmp_path / "report" / "site-packages"
    assert gpucheck.install_wheels(tmp_path / "wheels", target) == [
        "gpucheck_offline_probe-1.2.3-py3-none-any.whl"
    ]
    import gpucheck_offline_probe

    assert gpucheck_offline_probe.VERSION == "1.2.3"
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(target.resolve()), "/elsewhere"]
    child = subprocess.run(
        [sys.executable, "-c", "import gpucheck_offline_probe as p; print(p.VERSION)"],
        capture_output=True,
        text=True,
    )
    assert child.stdout.strip() == "1.2.3"
    assert gpucheck.install_wheels(tmp_path / "wheels", target) == []  # a rerun finds them there
    with pytest.raises(FileNotFoundError, match="no .whl file"):
        gpucheck.install_wheels(tmp_path, target)
    sys.modules.pop("gpucheck_offline_probe", None)
