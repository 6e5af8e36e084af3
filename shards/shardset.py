"""What a data spec resolves to: shards (URL, name, count, sha256), the ordered set of them, and the index files
beside shards that count them (our manifest.json, or timm's _info.json).

Shared by `shards.spec` (which builds them) and `shards.read` (which streams them); no I/O here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from .manifest import DATASET_TITLE_KEY, MANIFEST_NAME, Manifest

FINGERPRINT_HEX_CHARS = 16
INFO_FINGERPRINT_TAG = "counts-only\n"  # heads the hashed lines when the shards have counts but no sha256s


class DataSpecError(ValueError):
    """A data spec that does not resolve to shards; the message says what to pass."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: the URL it is opened by, its file name, and (from an index file) its sample count and sha256.

    counted_by: the index file the count comes from, MANIFEST_NAME or timm's `_info.json` (which has no sha256s).
    """

    url: str
    name: str
    n_samples: int | None
    sha256: str | None
    counted_by: str = MANIFEST_NAME


@dataclass(frozen=True)
class ShardSet:
    """The shards a data spec names, in order; `total`/`n_classes` are None unless every shard has a count.

    fingerprint: 16 hex characters identifying the data: over the manifest records (name, count, sha256) when
    every shard has one, over names and counts for shards counted by an `_info.json`, else over URLs — so the same
    shards give the same fingerprint wherever they are stored. description: what the set is and where it comes
    from, in a line (`500 images in 5 shards from /data/val (manifest.json)`); title: what the data is called
    when its manifests name a public set (`ImageNetV2 matched-frequency`, shards.named), else ''; neither is
    part of equality.
    """

    shards: tuple[ShardInfo, ...]
    total: int | None
    n_classes: int | None
    fingerprint: str
    description: str = field(default="", compare=False)
    title: str = field(default="", compare=False)

    @property
    def urls(self) -> list[str]:
        return [shard.url for shard in self.shards]

    def __len__(self) -> int:
        return len(self.shards)


def shard_tuple(shards: ShardSet | Sequence[ShardInfo]) -> tuple[ShardInfo, ...]:
    """The shards of a ShardSet (its `.shards`) or of a sequence of ShardInfo, as a tuple."""
    return shards.shards if isinstance(shards, ShardSet) else tuple(shards)


def fingerprint_of(shards: Sequence[ShardInfo]) -> str:
    """16 hex chars: over `name n_samples sha256` lines when every shard has them (equal to `Manifest.fingerprint()`
    when the shards are exactly a manifest's); over a tag and `name n_samples` lines when every shard has a count
    (timm's `_info.json` gives no sha256); else over the URLs.
    """
    if all(shard.sha256 is not None and shard.n_samples is not None for shard in shards):
        lines = "".join(f"{shard.name} {shard.n_samples} {shard.sha256}\n" for shard in shards)
    elif shards and all(shard.n_samples is not None for shard in shards):
        lines = INFO_FINGERPRINT_TAG + "".join(f"{shard.name} {shard.n_samples}\n" for shard in shards)
    else:
        lines = "".join(f"{shard.url}\n" for shard in shards)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


@dataclass(frozen=True)
class IndexedShard:
    """One shard as an index file counts it; sha256 is None for an `_info.json`."""

    name: str
    n_samples: int
    sha256: str | None


@dataclass(frozen=True)
class ShardIndex:
    """An index file beside shards: our manifest.json, or timm's `_info.json`.

    where: its path or URL; kind: its file name; listed: the shards a folder spec reads, in order (an `_info.json`:
    the chosen split's); by_name: every shard it counts (an `_info.json`: every split's), for shards named one by
    one; n_classes: the label-space size it states, else None; about: a few words for descriptions; title: the
    public set a manifest names (its `made.dataset_title`), else ''.
    """

    where: str
    kind: str
    listed: tuple[IndexedShard, ...]
    by_name: Mapping[str, IndexedShard]
    n_classes: int | None
    about: str = ""
    title: str = ""

    def shard(self, url: str, entry: IndexedShard) -> ShardInfo:
        """The ShardInfo of a shard this index counts, opened by `url`."""
        return ShardInfo(
            url=url, name=entry.name, n_samples=entry.n_samples, sha256=entry.sha256, counted_by=self.kind
        )

    def entry_for(self, name: str, shard: str) -> IndexedShard:
        """This index's entry for the shard file `name` (at `shard`); one it does not list is an error."""
        entry = self.by_name.get(name)
        if entry is None:
            fix = (
                "rewrite the shards with python -m shards.write --force"
                if self.kind == MANIFEST_NAME
                else f"copy the dataset again with its {self.kind}"
            )
            raise DataSpecError(
                f"shard {shard} is not listed in {self.where} beside it; it is stale or foreign: remove it, or {fix}"
            )
        return entry


def index_of_manifest(manifest: Manifest, where: str) -> ShardIndex:
    """A manifest as a ShardIndex."""
    entries = tuple(IndexedShard(record.name, record.n_samples, record.sha256) for record in manifest.shards)
    return ShardIndex(
        where=where,
        kind=MANIFEST_NAME,
        listed=entries,
        by_name={entry.name: entry for entry in entries},
        n_classes=manifest.n_classes,
        about=MANIFEST_NAME,
        title=str(manifest.made.get(DATASET_TITLE_KEY) or ""),
    )


class IndexCache:
    """The index beside shards, per folder (a local Path or a folder URL), loaded once; remembers those used."""

    def __init__(self) -> None:
        self._by_place: dict[object, ShardIndex | None] = {}
        self._used: dict[str, ShardIndex] = {}

    def get(self, place: object, load: Callable[[], ShardIndex | None]) -> ShardIndex | None:
        if place not in self._by_place:
            self._by_place[place] = load()
        return self._by_place[place]

    def use(self, index: ShardIndex) -> None:
        """Remember that `index` counted some of the shards (its n_classes then describes the set)."""
        self._used.setdefault(index.where, index)

    def used(self) -> list[ShardIndex]:
        return list(self._used.values())
