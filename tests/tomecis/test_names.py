"""tomecis.names: the merge-mode table is the one place a mode is declared, and it imports without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_vit

import tomecis
from tomecis import names


def test_every_mode_of_the_table_runs_and_unknown_names_are_refused():
    model = tomecis.patch(tiny_vit(), r=8)
    x = torch.randn(2, 3, 64, 64)
    for mode in names.MODES:
        model.mode = mode
        with torch.inference_mode():
            assert torch.isfinite(model(x)).all()
    assert names.BASELINE_MODE in names.MODES
    for bad in ("evit", None):
        with pytest.raises(ValueError, match="unknown mode .*; choose from tomecis, tome"):
            names.merge_mode(bad)
        with pytest.raises(ValueError, match="unknown mode"):
            model.mode = bad


def test_a_mode_added_to_the_table_is_run_by_the_patch(monkeypatch):
    """What a third mode costs: one entry. Uniform weights (every merged token counts alike) differ from
    both ToMe (size) and ToMeCIS (score) and need no score."""
    uniform = names.MergeMode("uniform", False, lambda score, size: torch.ones_like(size), "plain mean")
    monkeypatch.setitem(names.MERGE_MODES, "uniform", uniform)
    model = tomecis.patch(tiny_vit(), r=8, mode="uniform")
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        logits = {
            mode: model(x) for mode in ("uniform", "tome", "tomecis") if not setattr(model, "mode", mode)
        }
    assert not torch.allclose(logits["uniform"], logits["tome"])
    assert not torch.allclose(logits["uniform"], logits["tomecis"])


def test_names_and_the_report_import_without_torch_timm_or_ray():
    code = (
        "import sys, tomecis.names, clipattern, orchestrator.report; "
        "print(sorted(m for m in ('torch', 'timm', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_tomecis_patch_stays_the_function_after_the_submodule_is_imported():
    code = "from tomecis.patch import MergeState; import tomecis; print(callable(tomecis.patch))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True", out.stderr
