"""ImageNet-1k as deterministic WebDataset shards: `shards.write` makes them, `shards.spec` finds them (data spec ->
shards with counts), `shards.read` streams them.

The public names are offered here too, each loaded lazily from the one module that defines it, so that
`python -m shards.write` does not import timm and `shards.read` does not import the Hub client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from .manifest import MANIFEST_NAME, Manifest, ManifestError, read_manifest
    from .read import (
        Batch,
        DecodeFailure,
        ReadStats,
        ShardBatch,
        ShardCountError,
        ShardReadError,
        check_complete,
        iter_batches,
        read_shard,
        split_shards,
        verify_checksums,
    )
    from .shardset import DataSpecError, ShardInfo, ShardSet
    from .spec import TOMECIS_DATA_ENV, resolve_data
    from .synsets import imagenet_synsets, synset_index
    from .transforms import data_config, eval_transform
    from .write import WriteConfig, WriteSummary, write_shards

_EXPORTS = {
    "read": (
        "Batch",
        "DecodeFailure",
        "ReadStats",
        "ShardCountError",
        "ShardBatch",
        "ShardReadError",
        "check_complete",
        "iter_batches",
        "read_shard",
        "split_shards",
        "verify_checksums",
    ),
    "shardset": ("DataSpecError", "ShardInfo", "ShardSet"),
    "spec": ("TOMECIS_DATA_ENV", "resolve_data"),
    "transforms": ("data_config", "eval_transform"),
    "write": ("WriteConfig", "WriteSummary", "write_shards"),
    "manifest": ("MANIFEST_NAME", "Manifest", "ManifestError", "read_manifest"),
    "synsets": ("imagenet_synsets", "synset_index"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "Batch",
    "DataSpecError",
    "DecodeFailure",
    "MANIFEST_NAME",
    "Manifest",
    "ManifestError",
    "ReadStats",
    "ShardBatch",
    "ShardCountError",
    "ShardInfo",
    "ShardReadError",
    "ShardSet",
    "TOMECIS_DATA_ENV",
    "WriteConfig",
    "WriteSummary",
    "check_complete",
    "data_config",
    "eval_transform",
    "imagenet_synsets",
    "iter_batches",
    "read_manifest",
    "read_shard",
    "resolve_data",
    "split_shards",
    "synset_index",
    "verify_checksums",
    "write_shards",
]


_SUBMODULES = ("decode", "manifest", "read", "shardset", "sources", "spec", "synsets", "transforms", "write")


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # `import shards; shards.read.X` works without importing shards.read first
        return import_module(f".{name}", __name__)
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'shards' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
