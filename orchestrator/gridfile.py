"""``--grid FILE.toml``: a sweep's grid (and any of its options) in a file, read into what the flags give.

    models = ["deit_tiny", "deit_small"]
    batch_size = 64                      # any option of the CLI, by its name (--batch-size: batch_size)
    [methods]
    tomecis = { r = "8-16" }             # as --amounts tomecis=r:8-16
    tome    = { r = [8, 13, 16] }
    pitome  = { keep = [0.9, 0.925, 0.95, 0.975] }
    evit    = { keep = "0.5-0.9:0.1" }

A method of ``[methods]`` runs at its own amounts (``--amounts``); an option given on the command line
overrides the file's (an ``--amounts`` for a method replaces that method's amounts from the file). Every
error names the file, the key and the value, and comes before anything runs. No torch, no Ray.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Sequence

from .grid import Amount, parse_amount_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (pyproject installs tomli there)
    import tomli as tomllib

MODELS_KEY, METHODS_KEY = "models", "methods"
NOT_IN_A_FILE = ("grid", "help", "dry_run")  # options that make no sense inside the grid file itself


@dataclass
class GridFile:
    """What one grid file holds: ``methods`` (method -> its amounts, file order) and ``options`` (an
    option's key -> the value as the file gives it; ``models`` among them)."""

    path: str
    methods: Dict[str, List[Amount]] = field(default_factory=dict)
    options: Dict[str, object] = field(default_factory=dict)

    def where(self, key: str, value: object) -> str:
        """``g.toml: methods.evit.keep = '0.5-0.9:0.1'``: the culprit of an error."""
        return f"{self.path}: {key} = {value!r}"


def read_grid_file(path: str) -> GridFile:
    """The grid file at ``path``: its ``[methods]`` parsed into amounts (a method the table does not know,
    a kind it does not take or a malformed spec raise ``ValueError`` naming the file, key and value);
    the other top-level keys kept as options, checked against the CLI by ``apply_to_parser``."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ValueError(f"--grid {path}: no such file") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"--grid {path}: not valid TOML: {err}") from None
    grid = GridFile(str(path))
    methods = data.pop(METHODS_KEY, {})
    if not isinstance(methods, dict):
        raise ValueError(
            f"{grid.where(METHODS_KEY, methods)}: [methods] is a table of METHOD = {{ r = ... }} or {{ keep = ... }}"
        )
    for method, kinds in methods.items():
        grid.methods[method] = _method_amounts(grid, method, kinds)
    grid.options = dict(data)
    return grid


def _method_amounts(grid: GridFile, method: str, kinds: object) -> List[Amount]:
    """One ``[methods]`` entry: ``{ r = "8-16" }``, ``{ keep = [0.9, 0.95] }`` (both kinds allowed)."""
    key = f"{METHODS_KEY}.{method}"
    if not isinstance(kinds, dict) or not kinds:
        raise ValueError(
            f'{grid.where(key, kinds)}: give {method} = {{ r = "8-16" }} or {{ keep = [0.7, 0.9] }}'
        )
    amounts: List[Amount] = []
    for kind, value in kinds.items():
        where = grid.where(f"{key}.{kind}", value)
        amounts += [
            a for a in parse_amount_spec(method, kind, _spec_text(value, where), where) if a not in amounts
        ]
    return amounts


def _spec_text(value: object, where: str) -> str:
    """A spec string, a number, or a list of numbers, as the text ``--amounts`` would carry."""
    if isinstance(value, str):
        return value
    items = value if isinstance(value, list) else [value]
    if not items or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in items):
        raise ValueError(f'{where}: give a spec string ("8-16", "0.5-0.9:0.1") or a list of numbers')
    return ",".join(repr(v) for v in items)


# --------------------------------------------------------------------------- the file's options on the CLI


def option_keys(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Each option's key in a grid file (its long name without dashes, ``-`` as ``_``: ``batch_size``,
    ``no_cuda_graphs``) -> its argparse action."""
    keys: Dict[str, argparse.Action] = {}
    for action in parser._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                key = option[2:].replace("-", "_")
                if key not in NOT_IN_A_FILE:
                    keys[key] = action
    return keys


def apply_to_parser(parser: argparse.ArgumentParser, grid: GridFile, reserved: Sequence[str] = ()) -> None:
    """The file's options become the parser's defaults, so the command line overrides them. ``reserved``:
    option keys the caller reads from ``grid`` itself (``amounts``: the ``[methods]`` table). An unknown
    key, or a value the option refuses, raises ``ValueError`` naming the file, key and value."""
    keys = option_keys(parser)
    for key, value in grid.options.items():
        action = keys.get(key)
        if action is None or key in reserved:
            known = ", ".join(sorted({MODELS_KEY, METHODS_KEY, *(k for k in keys if k not in reserved)}))
            raise ValueError(f"{grid.where(key, value)}: unknown key; a grid file takes {known}")
        dest, default = _default(action, key, value, grid.where(key, value))
        parser.set_defaults(**{dest: default})
        if action.required:
            action.required = False  # the file gives it; the command line may still override it


def _default(action: argparse.Action, key: str, value: object, where: str) -> tuple:
    """``(dest, default)`` for one option from the file's value, checked as the command line would be."""
    if action.nargs == 0:  # a switch: --force, --no-progress, --bench / --no-bench
        if not isinstance(value, bool):
            raise ValueError(f"{where}: {key} is a switch; give true or false")
        if isinstance(action, argparse.BooleanOptionalAction):
            negative = key.startswith("no_")
            return action.dest, (not value) if negative else value
        return action.dest, action.const if value else action.default
    if isinstance(value, bool) or isinstance(value, (dict,)):
        raise ValueError(
            f"{where}: {key} takes a value such as on the command line, not {type(value).__name__}"
        )
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    if action.type is not None:
        try:
            converted = action.type(text)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None
    else:
        converted = text
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{where}: choose from {', '.join(map(str, action.choices))}")
    return action.dest, converted


def file_amounts(grid: GridFile, command_line: Mapping[str, Sequence[Amount]]) -> Dict[str, List[Amount]]:
    """The file's methods with their amounts, each one the command line's ``--amounts`` names replaced by
    those (file order, then the command line's new methods)."""
    merged = {method: list(amounts) for method, amounts in grid.methods.items()}
    merged.update({method: list(amounts) for method, amounts in command_line.items()})
    return merged
