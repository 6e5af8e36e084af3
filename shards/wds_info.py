"""timm's WebDataset layout (`timm/imagenet-1k-wds`): the `_info.json` beside the shards, as a ShardIndex.

    {"name": "imagenet-1k", "splits": {"validation": {"name": "validation", "num_samples": 50000,
        "filenames": ["imagenet1k-validation-00.tar", …], "shard_lengths": [782, …]}, "train": {…}}}

Samples hold `jpg` (the original bytes), `cls` (the class index, timm's sorted-synset order) and `json`, keyed by
the original file stem: the same samples `shards.write` makes, so `shards.read` streams them as they are.
A folder spec reads the `validation` split unless it names another (`DIR#train`); shards named one by one are
counted by whichever split lists them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .shardset import DataSpecError, IndexedShard, ShardIndex

INFO_NAME = "_info.json"
DEFAULT_SPLIT = "validation"
SPLIT_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_info(text: str, where: str, split: str | None = None) -> ShardIndex:
    """An `_info.json`'s text -> ShardIndex listing `split` (default validation); errors name the file and field."""
    chosen = split or DEFAULT_SPLIT
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise DataSpecError(f"{where} is not valid JSON ({error}); copy it again from the dataset") from error
    splits = document.get("splits") if isinstance(document, dict) else None
    if not isinstance(splits, dict) or not splits:
        raise DataSpecError(f"{where} has no 'splits' object; it is not a timm WebDataset _info.json")
    if chosen not in splits:
        raise DataSpecError(
            f"{where} has no split {chosen!r} (it has {', '.join(sorted(splits))}); name one with FOLDER#SPLIT"
        )
    listed = _split_entries(splits[chosen], where, chosen)
    by_name = {}
    for name, value in sorted(splits.items()):
        if name != chosen:
            by_name.update({entry.name: entry for entry in _split_entries(value, where, name)})
    by_name.update({entry.name: entry for entry in listed})
    n_classes = document.get("num_classes")
    return ShardIndex(
        where=where,
        kind=INFO_NAME,
        listed=listed,
        by_name=by_name,
        n_classes=n_classes if isinstance(n_classes, int) else None,
        about=f"{INFO_NAME} split {chosen}",
    )


def _split_entries(split: Any, where: str, name: str) -> tuple[IndexedShard, ...]:
    """One split's shards (filenames with shard_lengths), checked against its num_samples."""
    place = f"{where}, split {name!r}"
    try:
        filenames = [str(filename) for filename in split["filenames"]]
        lengths = [_count(length) for length in split["shard_lengths"]]
        num_samples = _count(split["num_samples"])
    except (KeyError, TypeError, ValueError) as error:
        raise DataSpecError(
            f"{place} lacks or garbles filenames, shard_lengths or num_samples ({error!r}); copy it again"
        ) from error
    if len(filenames) != len(lengths):
        raise DataSpecError(f"{place}: {len(filenames)} filenames but {len(lengths)} shard_lengths")
    if sum(lengths) != num_samples:
        raise DataSpecError(
            f"{place}: num_samples is {num_samples} but its shard_lengths add up to {sum(lengths)}"
        )
    if len(set(filenames)) != len(filenames):
        raise DataSpecError(f"{place} lists a shard twice")
    return tuple(
        IndexedShard(name=filename, n_samples=length, sha256=None)
        for filename, length in zip(filenames, lengths)
    )


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{value!r} is not a sample count")
    return value


def split_of_spec(item: str) -> tuple[str, str | None]:
    """`DIR#train` -> (`DIR`, `train`); an item without `#` -> (item, None)."""
    if "#" not in item:
        return item, None
    base, split = item.rsplit("#", 1)
    if not SPLIT_NAME_PATTERN.match(split):
        raise DataSpecError(
            f"{item!r}: {split!r} after '#' is not a split name (such as validation or train)"
        )
    return base, split
