"""Packaging: a data folder called `shards/` in the working directory must not shadow the packages.

`python -m ...` puts the cwd first on sys.path, where PathFinder finds `./shards` (no `__init__.py`,
just .tar files) as a namespace package. With setuptools' default ("lenient") editable mode a flat
layout gets a meta-path finder placed *after* PathFinder, so `shards` became that empty namespace
(`AttributeError: module 'shards' has no attribute 'read'`, issue #16). pyproject.toml maps the
flat layout explicitly (`package-dir = {"" = "."}`), which makes a plain `pip install -e .` write a
static .pth (the repo dir on sys.path) instead, where the regular package beats the namespace portion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_clis_run_from_a_directory_holding_a_shards_folder_under_a_plain_editable_install(tmp_path):
    main_purelib = Path(sysconfig.get_paths()["purelib"])
    if (main_purelib / "shards" / "__init__.py").exists():
        pytest.skip(
            f"{main_purelib} holds a non-editable copy of the packages, which would hide the editable one"
        )

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    # A fresh venv that sees this environment's packages (torch, Ray, pip, setuptools...) through a
    # plain path line in a .pth: .pth files *inside* that directory (its own editable install of this
    # project) are not processed, so the only install of the project it sees is the one made below.
    venv = tmp_path / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    if made.returncode != 0:
        pytest.skip(f"cannot create a virtual environment on this machine: {made.stderr.strip()[-500:]}")
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
        ).stdout.strip()
    )
    (purelib / "_main_env.pth").write_text(f"{main_purelib}\n")

    version = _run([str(python), "-c", "import setuptools; print(setuptools.__version__)"], tmp_path, env)
    assert version.returncode == 0, version.stderr
    if (
        int(version.stdout.split(".")[0]) < 68
    ):  # pyproject requires setuptools>=68: put one in the venv itself
        got = _run([str(python), "-m", "pip", "install", "-q", "setuptools>=68", "wheel"], tmp_path, env, 300)
        assert got.returncode == 0, got.stdout + got.stderr

    # The habit: a plain editable install (no editable_mode=compat), build backend from the environment.
    installed = _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-e",
            str(REPO),
        ],
        tmp_path,
        env,
        300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    (work / "shards" / "imagenet-val-000000.tar").write_bytes(b"\0" * 1024)

    hint = (
        "a `shards/` data folder in the cwd shadows the `shards` package under a plain editable install: "
        'keep `package-dir = {"" = "."}` in pyproject\'s [tool.setuptools] (issue #16)'
    )
    for args in (["-m", "orchestrator.sweep", "--help"], ["-m", "shards.write", "--help"]):
        done = _run([str(python), *args], work, env)
        assert done.returncode == 0, f"{' '.join(args)} failed: {hint}\n{done.stderr[-3000:]}"
        assert "usage" in done.stdout.lower()

    check = (
        "import shards, orchestrator.sweep, orchestrator.report, shards.read, tomecis, clipattern; "
        "print(shards.__file__); print(shards.read.__file__); print(clipattern.__file__)"
    )
    done = _run([str(python), "-c", check], work, env)
    assert done.returncode == 0, f"{hint}\n{done.stderr[-3000:]}"
    assert done.stdout.split() == [
        str(REPO / "shards" / "__init__.py"),
        str(REPO / "shards" / "read.py"),
        str(REPO / "clipattern" / "__init__.py"),
    ], hint
