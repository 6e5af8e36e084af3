"""Where names live: the modules that say "no Ray" import no Ray (nor torch, for the types of the work)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO


def imported(modules: str, watched=("ray", "torch", "timm")) -> list:
    """Which of ``watched`` a fresh interpreter holds after ``import <modules>``."""
    code = f"import sys, {modules}; print(sorted(m for m in {tuple(watched)!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return eval(out.stdout.strip())  # noqa: S307 - our own print of a list of names


@pytest.mark.parametrize(
    "module", ["orchestrator.points", "orchestrator.spool", "orchestrator.prepare", "orchestrator.results"]
)
def test_the_driver_side_of_a_point_imports_no_ray(module):
    assert "ray" not in imported(module)


def test_the_types_that_travel_to_the_actors_import_neither_ray_nor_torch():
    assert imported("orchestrator.work, orchestrator.errors, orchestrator.grid") == []
