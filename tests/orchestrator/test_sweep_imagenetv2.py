"""The main job on a fresh machine: `python -m orchestrator.sweep --models deit_tiny --r 8` with no data option, no
$TOMECIS_DATA and no $HF_TOKEN downloads ImageNetV2 from the Hub (a stand-in on 127.0.0.1, serving a small tar.gz
in ImageNetV2's layout made from the sample photos), writes it as shards, sweeps, and says so in its first line; a
second run asks the Hub nothing and writes no shard; the report's heading names ImageNetV2; with the Hub gone, one
error within seconds. Random weights (`--random-weights`), so no weights are fetched; local Ray, 2 CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, SAMPLE_IMAGES, SHARED_ASSETS
from shards_testing import (
    TinyImage,
    hub_offline,
    images_of_imagefolder,
    make_imagenetv2_tar,
    serve_hub,
    tiny_dataset,
)

from orchestrator import sweep
from orchestrator.report import ReportConfig, build_report
from shards.named import shards_cache_dir

HUB_REPO = "vaishaal/ImageNetV2"
TARBALL = "imagenetv2-matched-frequency.tar.gz"
SYNSET_WORDS = SHARED_ASSETS / "synset_words.txt"
EVERY_NTH_PHOTO = 10  # 50 of the 500 sample photos: the layout and real JPEGs, at a tenth of the CPU time


def imagenetv2_photos() -> list[TinyImage]:
    """Every 10th sample photo, labelled by its synset's line in synset_words.txt (index = line number - 1, as
    ImageNetV2's folders are); generated images when ../shared/assets is absent."""
    if not (SAMPLE_IMAGES.is_dir() and SYNSET_WORDS.is_file()):
        return tiny_dataset(n_images=40, n_classes=20, side=64)
    lines = [line.split()[0] for line in SYNSET_WORDS.read_text().splitlines() if line.strip()]
    photos = images_of_imagefolder(SAMPLE_IMAGES)[::EVERY_NTH_PHOTO]
    assert all(lines.index(photo.synset) == photo.class_index for photo in photos)
    return photos


def sweep_command(out) -> list[str]:
    """The issue's command, with no data option; random weights, one timing run, this machine's own Ray."""
    return [
        *(sys.executable, "-m", "orchestrator.sweep", "--models", "deit_tiny", "--r", "8"),
        *("--random-weights", "--bench-runs", "1", "--batch-size", "16", "--address", "local"),
        *("--no-progress", "--out", str(out)),
    ]


def fresh_env(hf_home, endpoint: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("TOMECIS_DATA", "HF_TOKEN", "HF_HUB_CACHE") and not name.startswith("RAY_")
    }
    return {
        **env,
        "HF_HOME": str(hf_home),
        "HF_ENDPOINT": endpoint,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }


def shard_state(folder) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.iterdir())}


@pytest.mark.ray
@pytest.mark.slow
def test_the_sweep_with_nothing_prepared_downloads_imagenetv2_once_and_sweeps(tmp_path):
    photos = imagenetv2_photos()
    make_imagenetv2_tar(tmp_path / "repo" / TARBALL, photos)
    out = tmp_path / "results"
    with serve_hub({HUB_REPO: tmp_path / "repo"}, cdn=True) as hub:
        env = fresh_env(tmp_path / "hf", hub.endpoint)
        first = subprocess.run(sweep_command(out), env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        assert first.stderr.splitlines()[0].startswith(
            "data: ImageNetV2 matched-frequency is not cached yet: downloading "
            f"hf://datasets/{HUB_REPO}/{TARBALL} (1.26 GB) once into {tmp_path / 'hf' / 'hub'}"
        )
        assert f"reading ImageNetV2 matched-frequency: {len(photos)} images" in first.stderr
        assert "2 point(s) written" in first.stdout
        assert [request.path for request in hub.downloads()] == [f"/cdn/{HUB_REPO}/{TARBALL}"]
        cache = tmp_path / "hf" / "tomecis-shards" / "imagenetv2"
        shards_before, requests_before = shard_state(cache), len(hub.requests)

        again = subprocess.run(sweep_command(out), env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stderr.splitlines()[0].startswith(
            "data: no --data, no $TOMECIS_DATA and no $HF_TOKEN: reading ImageNetV2 matched-frequency: "
            f"{len(photos)} images in 1 shards from {cache} (manifest.json); ImageNetV2 top-1 runs about 10 points"
        )
        assert "0 point(s) written, 2 already done" in again.stdout
        assert len(hub.requests) == requests_before and shard_state(cache) == shards_before

    report = build_report(ReportConfig(results=str(out), out=None, bootstrap_samples=200)).markdown
    heading = report.splitlines()[0]
    assert heading == f"# Results in {out}, on ImageNetV2 matched-frequency"
    assert "**ImageNetV2 top-1 runs about 10 points below ImageNet-1k val" in report
    assert "## Setting 1 of 1: dataset ImageNetV2 matched-frequency (" in report


def test_with_the_hub_gone_the_sweep_stops_within_seconds_naming_the_ways(tmp_path, monkeypatch, capsys):
    hub_offline(monkeypatch, tmp_path / "hf")
    started = time.perf_counter()
    assert sweep.main(["--models", "deit_tiny", "--r", "8", "--random-weights", "--out", str(tmp_path)]) == 1
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("data: ImageNetV2 matched-frequency is not cached yet: downloading")
    assert "cannot reach the Hub at http://127.0.0.1:" in err and "Tried: ImageNetV2 matched-frequency" in err
    assert "Other ways to give data: --data or $TOMECIS_DATA" in err and "Traceback" not in err
    assert not (shards_cache_dir() / "imagenetv2").exists()


def test_the_sweeps_first_line_names_given_data_too(data, capsys):
    shardset = sweep.resolve_data_saying_it(str(data / "shards"))
    assert capsys.readouterr().err == f"data: {shardset.description}\n"
    assert shardset.description.startswith("22 images in 5 shards from ")
