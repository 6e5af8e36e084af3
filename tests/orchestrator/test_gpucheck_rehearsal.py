"""The CPU rehearsal of issue #26, with Ray unimportable and the real assets: the shared DeiT-Tiny checkpoint
is found without a flag and named first, top-1 on the sample photos is that of a trained model, and every
point (the baseline, every method that takes r at r = 13, EViT, DCT and DiffRate at their default keep) has its agreement line
against the CPU fp32 run (few photos and passes, to stay within CI's time)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY_UNIMPORTABLE = (
    "import sys, runpy; sys.modules['ray'] = None\n"  # every `import ray` now raises ImportError
    "sys.argv = ['orchestrator.gpucheck', *sys.argv[1:]]\n"
    "runpy.run_module('orchestrator.gpucheck', run_name='__main__')\n"
)


@pytest.mark.slow
@pytest.mark.assets
def test_cpu_rehearsal_finds_the_shared_checkpoint_and_reports_top1_and_agreement(tmp_path):
    from conftest import DEIT_TINY_WEIGHTS, SAMPLE_IMAGES, require_assets

    require_assets(DEIT_TINY_WEIGHTS, SAMPLE_IMAGES)
    out = tmp_path / "report"
    argv = ["--device", "cpu", "--models", "deit_tiny", "--r", "0,13", "--no-tests", "--out", str(out)]
    argv += ["--photos-limit", "32", "--agree-images", "12", "--runs", "1", "--batch-size", "8"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", RAY_UNIMPORTABLE, *argv],
        cwd=REPO,  # as a user runs it, from the checkout's root
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: the CPU misses a GPU speed target
    text = (out / "report.md").read_text()
    lines = text.splitlines()
    assert lines[2] == "Weights:" and lines[3].startswith("- deit_tiny_patch16_224: ")
    assert str(DEIT_TINY_WEIGHTS.name) in lines[3] and re.search(
        r"\(sha256 [0-9a-f]{12}, found by default\)", lines[3]
    )
    assert "- Ray: not installed" in text
    assert "- evit takes --keep, none given: at its default keep0.7" in text  # the plan says why
    figures = json.loads((out / "results.json").read_text())
    points = {(p["method"], _amount(p)): p for p in figures["decode_pass"]["in-process"]["points"]}
    expected = (
        [("none", "r0")]
        + [(m, "r13") for m in ("tomecis", "tome", "pitome", "tofu")]
        + [("evit", "keep0.7"), ("atc", "keep0.7"), ("dct", "keep0.9"), ("diffrate", "keep0.9")]
        + [("mctf", "r13")]
    )
    assert list(points) == expected and all(p["n_images"] == 32 for p in points.values())
    assert points["none", "r0"]["top1"] > 60.0, text  # a trained DeiT-Ti: about 72% on ImageNet val
    assert all(p["top1"] > 50.0 for p in points.values()), text
    rows = {(row["method"], row["amount"]): row for row in figures["agreement"]["in-process"]["rows"]}
    assert list(rows) == expected and all(
        row["images"] == 12 and row["real_weights"] for row in rows.values()
    )
    for method, amount in expected:
        assert re.search(
            rf"^agreement deit_tiny_patch16_224 {method} {amount}: [0-9.]+% of 12 images ", text, re.M
        )
    # on the CPU the "device" run is the CPU in fp32 too: the same images give the same predictions
    assert all(row["agreement"] == 100.0 for row in rows.values())
    assert (
        "| deit_tiny_patch16_224 none r0 (none): top-1 agreement with CPU fp32, 12 images | 100.00% | >= 99.50% | PASS |"
        in text
    )
    assert (
        "| deit_tiny_patch16_224 evit keep0.7 (none): top-1 agreement with CPU fp32, 12 images | 100.00% | >= 99.00% | PASS |"
        in text
    )
    assert f"CPU fp32 reference: 12 images at {len(expected)} point(s)" in text


def _amount(row: dict) -> str:
    from tomecis.names import amount_label

    return amount_label(row["r"], row["keep"])  # in-process rows: None where unused
