"""Reading shards: an exactly-once split, and the decode + eval-transform batch stream with its counts checked.

    shardset = resolve_data("/data/imagenet-val")             # shards.spec: data spec -> ShardSet with counts
    part = split_shards(shardset, n_workers)[worker_index]     # every shard in exactly one part
    stats = ReadStats()
    for images, labels, keys in iter_batches(part, eval_transform(model), batch_size=128, num_workers=4, stats=stats):
        ...                                                    # images [B, 3, H, W] float32, labels [B] int64
    check_complete(stats, part)                                # seen == manifest count for every shard, or an error

Counts are never silently smaller: a sample that fails (an image that does not decode, a class index outside
0..999, a transform that raises) is recorded in `stats.failures` (shard, key, error) and counted in
`stats.per_shard`; a shard that cannot be opened or read raises `ShardReadError`; a shard
that yields a different number of samples than its manifest says raises `ShardCountError`.
Resolution (`resolve_data`, `TOMECIS_DATA_ENV`) lives in `shards.spec`, the shard records (`ShardInfo`,
`ShardSet`, `fingerprint_of`) in `shards.shardset`, the transforms in `shards.transforms`; this module imports
the Hub client (`shards.hub`) only when it opens an hf:// shard.
"""

from __future__ import annotations

import http.client
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .decode import DECODE_ERRORS, decode_rgb, describe_decode_error
from .manifest import MANIFEST_NAME, sha256_of_file
from .shardset import ShardInfo, ShardSet, shard_tuple
from .synsets import N_IMAGENET_CLASSES

IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
LABEL_FIELD = "cls"


class ShardReadError(RuntimeError):
    """A shard that cannot be opened or read to its end (missing, truncated, failing pipe)."""


class ShardCountError(RuntimeError):
    """A shard whose samples seen differ from its manifest count."""


class Batch(NamedTuple):
    """images: [B, 3, H, W] float32 (transformed); labels: [B] int64 class indices; keys: B sample keys."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]


class ShardBatch(NamedTuple):
    """A Batch that also names, per key, the URL of the shard it came from (`iter_batches(..., with_shards=True)`).

    A batch can span shards (a loader worker's batch runs on into its next shard), so `shards` is per key: [B]."""

    images: torch.Tensor
    labels: torch.Tensor
    keys: list[str]
    shards: list[str]


@dataclass(frozen=True)
class DecodeFailure:
    """A sample that was read but could not be decoded: its shard URL, key and the error."""

    shard: str
    key: str
    error: str


@dataclass
class ReadStats:
    """What a read saw. per_shard: shard URL -> samples seen (decoded or failed); use a fresh one per read."""

    n_images: int = 0
    n_failed: int = 0
    per_shard: dict[str, int] = field(default_factory=dict)
    failures: list[DecodeFailure] = field(default_factory=list)

    def merge(self, other: ReadStats) -> None:
        """Add another read's counts (e.g. another worker's part) into this one."""
        self.n_images += other.n_images
        self.n_failed += other.n_failed
        for url, count in other.per_shard.items():
            self.per_shard[url] = self.per_shard.get(url, 0) + count
        self.failures.extend(other.failures)


def verify_checksums(shards: Sequence[ShardInfo]) -> None:
    """Compare each local shard's sha256 with its manifest's; raises ShardReadError naming the first mismatch.

    Remote shards and shards without a recorded sha256 are skipped (hashing reads every byte: seconds per GB).
    """
    for shard in shards:
        if shard.sha256 is None or "://" in shard.url or shard.url.startswith("pipe:"):
            continue
        actual = sha256_of_file(Path(shard.url))
        if actual != shard.sha256:
            raise ShardReadError(
                f"shard {shard.url} has sha256 {actual[:12]}…, its manifest says {shard.sha256[:12]}…; "
                "the shard or manifest was changed or damaged: rewrite with python -m shards.write --force"
            )


# ---------------------------------------------------------------------------------------------- splitting


def split_shards(shardset: ShardSet | Sequence[ShardInfo], n: int) -> list[tuple[ShardInfo, ...]]:
    """Split shards over `n` workers so every shard is in exactly one part, balanced by sample count.

    Greedy: shards by count, largest first (ties: earlier first), each onto the least-loaded part (ties: lower
    index). Within a part shards keep their original order. Parts may be empty when n > shards. Shards without
    a count weigh the mean known count (1 when none is known). Deterministic for the same input.
    """
    if n < 1:
        raise ValueError(f"cannot split shards over {n} workers; n must be at least 1")
    shards = shard_tuple(shardset)
    weights = _shard_weights(shards)
    loads = [0.0] * n
    members: list[list[int]] = [[] for _ in range(n)]
    for index in sorted(range(len(shards)), key=lambda i: (-weights[i], i)):
        part = min(range(n), key=lambda p: (loads[p], p))
        members[part].append(index)
        loads[part] += weights[index]
    return [tuple(shards[i] for i in sorted(part)) for part in members]


def _shard_weights(shards: tuple[ShardInfo, ...]) -> list[float]:
    known = [shard.n_samples for shard in shards if shard.n_samples is not None]
    fallback = sum(known) / len(known) if known else 1.0
    return [float(shard.n_samples) if shard.n_samples is not None else fallback for shard in shards]


# ---------------------------------------------------------------------------------------------- reading


def iter_batches(
    shards: ShardSet | Sequence[ShardInfo],
    transform: Callable[[Any], torch.Tensor],
    batch_size: int,
    num_workers: int = 0,
    stats: ReadStats | None = None,
    *,
    check_counts: bool = True,
    pin_memory: bool = False,
    with_shards: bool = False,
) -> Iterator[Batch] | Iterator[ShardBatch]:
    """Decode + transform exactly `shards`, yielding Batch(images [B,3,H,W] f32, labels [B] i64, keys).

    num_workers > 0: DataLoader worker processes, each reading its own shards (split_shards over the loader
    workers), so each shard is read by exactly one of them; batches then interleave across workers, and a batch
    never exceeds batch_size (a worker's last one may be smaller). Failures and counts from the workers travel
    with the batches into `stats`. At the end, with check_counts, `check_complete` raises ShardCountError on any
    shortfall against the manifest counts. Raises ShardReadError for a shard that cannot be read.
    with_shards: yield ShardBatch, which adds `shards`, the shard URL of each key.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    stats = stats if stats is not None else ReadStats()
    shards = shard_tuple(shards)
    for chunk in _chunk_stream(shards, transform, batch_size, num_workers, pin_memory):
        stats.merge(chunk.stats)
        if chunk.keys and with_shards:
            yield ShardBatch(
                images=chunk.images, labels=chunk.labels, keys=chunk.keys, shards=chunk.key_shards
            )
        elif chunk.keys:
            yield Batch(images=chunk.images, labels=chunk.labels, keys=chunk.keys)
    if check_counts:
        check_complete(stats, shards)


def check_complete(stats: ReadStats, shards: ShardSet | Sequence[ShardInfo]) -> None:
    """Raise ShardCountError naming the first shard whose samples seen differ from its manifest count.

    A shard never read at all is an error; shards without a count (from manifest.json or timm's _info.json) are only
    checked for having been read.
    """
    for shard in shard_tuple(shards):
        seen = stats.per_shard.get(shard.url)
        if seen is None:
            raise ShardCountError(
                f"shard {shard.url} was never read; expected {shard.n_samples} samples from it"
            )
        if shard.n_samples is not None and seen != shard.n_samples:
            raise ShardCountError(_count_mismatch(shard, seen))


def _count_mismatch(shard: ShardInfo, seen: int) -> str:
    if shard.counted_by == MANIFEST_NAME:
        return (
            f"shard {shard.url}: the manifest says {shard.n_samples} samples, the stream gave {seen}; the shard "
            "and manifest disagree (truncated or replaced shard?): rewrite with python -m shards.write --force"
        )
    return (
        f"shard {shard.url}: its {shard.counted_by} says {shard.n_samples} samples, the stream gave {seen}; the "
        "shard is incomplete or replaced (a partial download or copy?): copy it again"
    )


def read_shard(
    shard: ShardInfo, transform: Callable[[Any], torch.Tensor], batch_size: int, num_workers: int = 0
) -> tuple[list[Batch], ReadStats]:
    """All batches of one shard plus its stats, checked complete against the manifest."""
    stats = ReadStats()
    batches = list(iter_batches([shard], transform, batch_size, num_workers, stats, check_counts=True))
    return batches, stats


@dataclass
class _Chunk:
    """What the sample stream hands over per step: a batch (maybe empty) plus what was seen since the last chunk.

    images: [b, 3, H, W] or None when b == 0; key_shards: the shard URL of each key (a chunk can span shards);
    stats: the samples seen since the last chunk (n_images == b, per-shard counts, decode failures).
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None
    keys: list[str]
    key_shards: list[str]
    stats: ReadStats

    def pin_memory(self) -> _Chunk:
        """Called by DataLoader(pin_memory=True)."""
        if self.images is None:
            return self
        return replace(self, images=self.images.pin_memory(), labels=self.labels.pin_memory())


def _chunk_stream(
    shards: tuple[ShardInfo, ...], transform: Callable, batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[_Chunk]:
    num_workers = min(num_workers, len(shards))  # a loader worker without a shard would have nothing to read
    if num_workers == 0:
        yield from _chunks_of(shards, transform, batch_size)
        return
    dataset = _ShardChunks(shards, transform, batch_size)
    loader = DataLoader(
        dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory
    )
    batches = iter(loader)
    try:
        yield from batches
    finally:
        _stop_loader_workers(batches)


def _stop_loader_workers(batches: Iterator[_Chunk]) -> None:
    """Stop the DataLoader's worker processes now, also after an error or an early stop.

    Left to garbage collection (an error's traceback holds the loader iterator in a reference cycle), the
    shutdown can stall for DataLoader's 5 s join timeout per worker.
    """
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


def _as_is(chunk: _Chunk) -> _Chunk:
    return chunk


class _ShardChunks(IterableDataset):
    """In DataLoader worker w of W: the chunks of split_shards(shards, W)[w]; in the main process: of all shards."""

    def __init__(self, shards: tuple[ShardInfo, ...], transform: Callable, batch_size: int) -> None:
        super().__init__()
        self.shards = shards
        self.transform = transform
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[_Chunk]:
        worker = get_worker_info()
        mine = self.shards if worker is None else split_shards(self.shards, worker.num_workers)[worker.id]
        return _chunks_of(mine, self.transform, self.batch_size)


def _chunks_of(shards: Sequence[ShardInfo], transform: Callable, batch_size: int) -> Iterator[_Chunk]:
    """Chunks of up to batch_size decoded samples; the last chunk always comes, carrying the remaining counts."""
    pending = _ChunkBuilder()
    for shard in shards:
        pending.stats.per_shard.setdefault(shard.url, 0)
        for sample in samples_of_shard(shard):
            pending.stats.per_shard[shard.url] = pending.stats.per_shard.get(shard.url, 0) + 1
            decoded = decode_sample(sample, shard, transform)
            if isinstance(decoded, DecodeFailure):
                pending.fail(decoded)
                continue
            pending.add(decoded, sample["__key__"], shard.url)
            if len(pending.keys) == batch_size:
                yield pending.chunk()
                pending = _ChunkBuilder()
    yield pending.chunk()


@dataclass
class _ChunkBuilder:
    """The decoded samples and counts of the chunk being filled."""

    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    key_shards: list[str] = field(default_factory=list)
    stats: ReadStats = field(default_factory=ReadStats)

    def add(self, decoded: tuple[torch.Tensor, int], key: str, shard_url: str) -> None:
        self.images.append(decoded[0])
        self.labels.append(decoded[1])
        self.keys.append(key)
        self.key_shards.append(shard_url)
        self.stats.n_images += 1

    def fail(self, failure: DecodeFailure) -> None:
        self.stats.n_failed += 1
        self.stats.failures.append(failure)

    def chunk(self) -> _Chunk:
        if not self.keys:
            return _Chunk(None, None, [], [], self.stats)
        images, labels = torch.stack(self.images), torch.tensor(self.labels, dtype=torch.int64)
        return _Chunk(images, labels, self.keys, self.key_shards, self.stats)


def decode_sample(
    sample: Mapping[str, Any], shard: ShardInfo, transform: Callable
) -> tuple[torch.Tensor, int] | DecodeFailure:
    """One webdataset sample -> (transformed image [3, H, W], class index), or the DecodeFailure saying why not.

    Fails (never raises) on a missing field, a class index that is not an integer in 0..999, an image that does
    not decode, and a transform that raises or returns something other than a tensor.
    """
    key = sample["__key__"]
    image_field = next((name for name in IMAGE_FIELDS if name in sample), None)
    if image_field is None or LABEL_FIELD not in sample:
        fields = sorted(name for name in sample if not name.startswith("__"))
        return DecodeFailure(shard.url, key, f"sample lacks an image or {LABEL_FIELD!r} field (has {fields})")
    label = parse_class_index(sample[LABEL_FIELD])
    if isinstance(label, str):
        return DecodeFailure(shard.url, key, label)
    try:
        image = decode_rgb(sample[image_field])
    except DECODE_ERRORS as error:
        return DecodeFailure(shard.url, key, describe_decode_error(error))
    return _transformed(image, transform, shard, key, label)


def parse_class_index(raw: Any) -> int | str:
    """The `cls` field (ASCII digits) -> its class index, or a description of why it is not one in 0..999."""
    try:
        label = int(raw)
    except (TypeError, ValueError) as error:
        return f"bad class index {raw[:20] if isinstance(raw, (bytes, str)) else raw!r}: {error}"
    if not 0 <= label < N_IMAGENET_CLASSES:
        return f"class index {label} is outside 0..{N_IMAGENET_CLASSES - 1}"
    return label


def _transformed(
    image: Any, transform: Callable, shard: ShardInfo, key: str, label: int
) -> tuple[torch.Tensor, int] | DecodeFailure:
    try:
        tensor = transform(image)
    except Exception as error:  # noqa: BLE001 - any transform error is this sample's failure, named and counted
        return DecodeFailure(shard.url, key, f"the transform failed: {type(error).__name__}: {error}")
    if not isinstance(tensor, torch.Tensor):
        return DecodeFailure(shard.url, key, f"the transform returned {type(tensor).__name__}, not a tensor")
    return tensor, label


def _open_stream(url: str) -> Any:
    """hf:// through the Hub client, imported only for such a shard (reading local shards never loads it),
    everything else through webdataset."""
    if url.startswith("hf://"):  # shards.hub.HUB_SCHEME
        from .hub import open_hub_url

        return open_hub_url(url)
    return webdataset.gopen(url, "rb")


def samples_of_shard(shard: ShardInfo) -> Iterator[dict[str, Any]]:
    """webdataset samples (`__key__`, `jpg`, `cls`, …) of one shard, read to its end.

    Raises ShardReadError naming the shard when it cannot be opened, is not a tar, is truncated inside a member,
    its pipe command exits with an error, or its download breaks off. hf:// shards are opened by `shards.hub`
    (with $HF_TOKEN), everything else by webdataset (local files, pipe:, http(s) through curl).
    """
    try:
        stream = _open_stream(shard.url)
    except (OSError, ValueError) as error:
        raise ShardReadError(f"cannot open shard {shard.url}: {error}") from error
    finished = False
    try:
        files = (
            {**file, "__url__": shard.url} for file in tar_file_iterator(stream, handler=reraise_exception)
        )
        yield from group_by_keys(files, handler=reraise_exception)
        _close_checked(stream, shard)
        finished = True
    except (tarfile.TarError, OSError, ValueError, EOFError, http.client.HTTPException) as error:
        raise ShardReadError(
            f"cannot read shard {shard.url} to its end: {error}; the shard is truncated or damaged, "
            "or its download failed: rewrite or re-copy it"
        ) from error
    finally:
        if not finished:
            _abandon(stream)


def _close_checked(stream: Any, shard: ShardInfo) -> None:
    """Close the stream; for pipes this waits for the command and raises on a failing exit status."""
    try:
        stream.close()
    except OSError as error:
        raise ShardReadError(f"shard {shard.url}: {error}") from error


def _abandon(stream: Any) -> None:
    """Close a stream that was not read to its end (an error, or the consumer stopped): stop its pipe, if any."""
    process = getattr(stream, "proc", None)
    if process is not None:
        stream.ignore_errors = True
        process.kill()
    stream.close()
