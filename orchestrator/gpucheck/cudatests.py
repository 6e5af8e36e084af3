"""Step 6: ``tests/test_cuda.py`` in a subprocess (CUDA against CPU logits, autocast finiteness, r = 0
against timm, SDPA against the explicit attention matrix, a GPU-actor sweep against a CPU-actor sweep)."""

from __future__ import annotations

import subprocess
import sys
from typing import Tuple

from .config import REPO


def run_cuda_tests(timeout: float = 240.0) -> Tuple[bool, str]:
    """``pytest tests/test_cuda.py`` in a subprocess; returns (passed?, its summary lines)."""
    test_file = REPO / "tests" / "test_cuda.py"
    if not test_file.exists():
        return False, f"{test_file} not found: run gpucheck from a checkout of the repository"
    command = [sys.executable, "-m", "pytest", str(test_file), "-q", "-rA", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"tests/test_cuda.py did not finish within {timeout:.0f}s"
    lines = [
        line
        for line in done.stdout.splitlines()
        if line.startswith(("PASSED", "FAILED", "SKIPPED", "ERROR")) or " passed" in line or " failed" in line
    ]
    return done.returncode == 0, "\n".join(lines[-40:]) or done.stdout[-3000:] + done.stderr[-2000:]
