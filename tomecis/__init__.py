"""ToMeCIS: Token Merging with Class Importance Score for timm Vision Transformers.

The public names below are loaded on first use, so that ``tomecis.names`` (what a results reader needs)
imports without torch or timm. ``tomecis.patch`` is the function, as always, even after the submodule of the
same name has been imported.

A researcher's own method is declared with the same class as the built-in ones::

    from tomecis import BlockView, Method  # Method: torch-free; BlockView: what a block hands reduce
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_EXPORTS = {  # public name -> submodule that defines it
    "bipartite_soft_matching": "merge",
    "class_attention": "merge",
    "class_importance": "merge",
    "merge_weighted": "merge",
    "check_supported": "models",
    "create_model": "models",
    "max_r": "models",
    "resolve_model_name": "models",
    "MergeState": "patch",
    "patch": "patch",
    "set_reduction": "patch",
    "parse_r_values": "schedule",
    "resolve_schedule": "schedule",
    "BlockView": "methods",
    "TokenState": "methods",
    "Method": "names",
    "MethodError": "names",
    "METHODS": "names",
    "METHOD_NAMES": "names",
    "UNREDUCED": "names",
    "method_spec": "names",
    "list_methods": "names",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tomecis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Keeps ``tomecis.patch`` the function: importing ``tomecis.patch`` (the submodule) would otherwise
    replace the package attribute with the module (``sys.modules["tomecis.patch"]`` still holds it)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
