"""``--wheels DIR``: the pure-Python wheels a stock PyTorch image lacks (webdataset, braceexpand),
installed offline into the report folder and put first on the path of this process and its children."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import List

from .machine import package_version


def install_wheels(folder: Path, target: Path) -> List[str]:
    """The wheels in ``folder`` whose distribution this Python lacks, installed offline (``pip install
    --no-index --no-deps --target``) into ``target``, which goes first on ``sys.path`` and ``PYTHONPATH`` so
    that loader workers and the tests' subprocess see it too. Returns the wheels installed (none when
    everything is there already, e.g. from an earlier run into the same folder)."""
    wheels = sorted(Path(folder).glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no .whl file in {folder}")
    put_first_on_path(target)
    missing = [w for w in wheels if package_version(w.name.split("-")[0]) == "not installed"]
    if missing:
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile"]
        command += ["--disable-pip-version-check", "--quiet", "--upgrade", "--target", str(target)]
        done = subprocess.run(command + [str(w) for w in missing], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"pip could not install {', '.join(w.name for w in missing)}: {done.stderr[-2000:]}"
            )
        put_first_on_path(target)
    return [w.name for w in missing]


def put_first_on_path(target: Path) -> None:
    """``target`` (when it exists) first on ``sys.path`` and ``PYTHONPATH``, once."""
    if not target.is_dir():
        return
    where = str(target.resolve())
    if where not in sys.path:
        sys.path.insert(0, where)
    others = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != where]
    os.environ["PYTHONPATH"] = os.pathsep.join([where, *others])
    importlib.invalidate_caches()
