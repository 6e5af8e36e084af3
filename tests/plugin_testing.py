"""Methods of one's own, built in temporary directories outside the repository: the README's example
module, malformed methods, and packages declaring them as entry points (a ``*.dist-info`` beside them, as
``pip install`` leaves one)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]

# reduce() of a method that prunes the last `count` tokens, then breaks the way its name says at block 2
MALFORMED = """
import torch

from tomecis import Method

BREAKS = {kind!r}


def count(tokens, index, depth, r, keep):
    return max(0, min(r, tokens - 2))


def reduce(method, view, state):
    x = view.x[:, : view.x.shape[1] - view.count]  # [B, N - count, C]
    if view.index != 2:
        return x
    if BREAKS == "shape":
        return view.x
    if BREAKS == "dtype":
        return x.double()
    if BREAKS == "class_token":
        return x.flip(1)
    if BREAKS == "batch":
        return x[:1]
    if BREAKS == "nan":
        return x * float("nan")
    if BREAKS == "raises":
        raise IndexError("my bug")
    return x


METHOD = Method(name={name!r}, amounts=("r",), summary="breaks: " + BREAKS, count=count, reduce=reduce)
"""

BREAKS = {
    "shape": r"reduce returned shape \[\d+, \d+, \d+\], expected \[B, N - count, C\]",
    "dtype": "reduce returned torch.float64",
    "class_token": "class token moved or changed",
    "batch": "the batch size changed",
    "nan": "NaN or inf",
    "raises": "reduce raised IndexError: my bug",
}


def malformed_module(name: str, kind: str) -> str:
    """Source of a module whose ``METHOD`` (called ``name``) breaks at block 2 as ``kind`` says."""
    return MALFORMED.format(kind=kind, name=name)


def readme_example() -> str:
    """The module the README's section 'Add your own method' prints, exactly as printed."""
    text = (REPO / "README.md").read_text()
    section = text.split("### Add your own method\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "README.md: 'Add your own method' has no ```python block"
    return match.group(1)


def write_package(
    root: Path, package: str, modules: Dict[str, str], dist: str = "", entry_points: Dict[str, str] = ()
) -> Path:
    """``root/package/{__init__,<module>}.py``, and where ``dist`` is given (``name-version``) a
    ``root/<name>-<version>.dist-info`` declaring ``entry_points`` (method name -> ``module:ATTR``) under
    the group ``tomecis.methods``; returns ``root``, the directory to put on ``sys.path``."""
    (root / package).mkdir(parents=True, exist_ok=True)
    (root / package / "__init__.py").write_text("")
    for name, source in modules.items():
        (root / package / f"{name}.py").write_text(source)
    if dist:
        name, version = dist.rsplit("-", 1)
        info = root / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = "".join(f"{k} = {v}\n" for k, v in dict(entry_points).items())
        (info / "entry_points.txt").write_text(f"[tomecis.methods]\n{lines}")
    return root
