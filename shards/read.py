"""Reading shards: data spec -> shard URLs, an exactly-once split, and the decode + eval-transform batch stream.

    shardset = resolve_data("/data/imagenet-val")             # or $TOMECIS_DATA, a brace pattern, s3://…, a list
    part = split_shards(shardset, n_workers)[worker_index]     # every shard in exactly one part
    stats = ReadStats()
    for images, labels, keys in iter_batches(part, eval_transform(model), batch_size=128, num_workers=4, stats=stats):
        ...                                                    # images [B, 3, H, W] float32, labels [B] int64
    check_complete(stats, part)                                # seen == manifest count for every shard, or an error

Counts are never silently smaller: a sample that fails (an image that does not decode, a class index outside
0..999, a transform that raises) is recorded in `stats.failures` (shard, key, error) and counted in
`stats.per_shard`; a shard that cannot be opened or read raises `ShardReadError`; a shard
that yields a different number of samples than its manifest says raises `ShardCountError`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import webdataset
from braceexpand import braceexpand
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_iterator

from .decode import DECODE_ERRORS, decode_rgb, describe_decode_error
from .manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    ShardRecord,
    parse_manifest,
    read_manifest,
    sha256_of_file,
)
from .synsets import N_IMAGENET_CLASSES

TOMECIS_DATA_ENV = "TOMECIS_DATA"
IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp")
LABEL_FIELD = "cls"
FINGERPRINT_HEX_CHARS = 16
REMOTE_FETCH_TIMEOUT_S = 120
HTTP_NOT_FOUND = (404, 410)
HTTP_FORBIDDEN = (401, 403)
CLI_NOT_FOUND = re.compile(r"\(404\)|NoSuchKey|Not Found|No URLs matched|does not exist", re.IGNORECASE)
SPEC_HELP = (
    "pass a shard folder holding manifest.json (written by python -m shards.write), a manifest path or URL, "
    "a brace pattern such as DIR/imagenet-val-{000000..000049}.tar, a comma-separated list, "
    "or s3://, gs://, http(s):// or pipe: URLs"
)


class DataSpecError(ValueError):
    """A data spec that does not resolve to shards; the message says what to pass."""


class ShardReadError(RuntimeError):
    """A shard that cannot be opened or read to its end (missing, truncated, failing pipe)."""


class ShardCountError(RuntimeError):
    """A shard whose samples seen differ from its manifest count."""


@dataclass(frozen=True)
class ShardInfo:
    """One shard: the URL webdataset opens, its file name, and (from a manifest) its sample count and sha256."""

    url: str
    name: str
    n_samples: int | None
    sha256: str | None


@dataclass(frozen=True)
class ShardSet:
    """The shards a data spec names, in order; `total`/`n_classes` are None unless every shard has a manifest.

    fingerprint: 16 hex characters identifying the data: over the manifest records (name, count, sha256) when
    every shard has one (so the same shards give the same fingerprint wherever they are stored), else over URLs.
    """

    shards: tuple[ShardInfo, ...]
    total: int | None
    n_classes: int | None
    fingerprint: str

    @property
    def urls(self) -> list[str]:
        return [shard.url for shard in self.shards]

    def __len__(self) -> int:
        return len(self.shards)


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

    @property
    def n_seen(self) -> int:
        return self.n_images + self.n_failed

    def merge(self, other: ReadStats) -> None:
        """Add another read's counts (e.g. another worker's part) into this one."""
        self.n_images += other.n_images
        self.n_failed += other.n_failed
        for url, count in other.per_shard.items():
            self.per_shard[url] = self.per_shard.get(url, 0) + count
        self.failures.extend(other.failures)

    def describe(self) -> str:
        text = f"{self.n_images} images decoded, {self.n_failed} failed, from {len(self.per_shard)} shards"
        if self.failures:
            first = self.failures[0]
            text += f"; first failure: {first.shard} key {first.key}: {first.error}"
        return text


# ---------------------------------------------------------------------------------------------- resolving


def resolve_data(spec: str | os.PathLike | Sequence[str] | None = None) -> ShardSet:
    """Data spec -> ShardSet. None reads $TOMECIS_DATA. See SPEC_HELP for the accepted forms."""
    items = _spec_items(spec)
    shards: list[ShardInfo] = []
    manifests: list[Manifest] = []
    beside = _Manifests()
    for item in items:
        item_shards, item_manifests = _resolve_item(item, beside)
        shards.extend(item_shards)
        manifests.extend(item_manifests)
    manifests.extend(beside.used())
    if not shards:
        raise DataSpecError(f"data spec {spec!r} names no shards; {SPEC_HELP}")
    _check_unique(shards)
    return _shard_set(tuple(shards), manifests)


def _spec_items(spec: str | os.PathLike | Sequence[str] | None) -> list[str]:
    if spec is None:
        spec = os.environ.get(TOMECIS_DATA_ENV, "").strip()
        if not spec:
            raise DataSpecError(f"no data given and ${TOMECIS_DATA_ENV} is not set; {SPEC_HELP}")
    if isinstance(spec, (str, os.PathLike)):
        items = split_top_level_commas(os.fspath(spec))
    else:
        items = [os.fspath(item) for item in spec]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise DataSpecError(f"data spec {spec!r} is empty; {SPEC_HELP}")
    return items


def split_top_level_commas(text: str) -> list[str]:
    """Split on commas outside braces: `a.tar,b-{0..2}.tar` -> ['a.tar', 'b-{0..2}.tar']; `{a,b}` stays whole."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "{":
            depth += 1
        elif char == "}":
            depth = max(depth - 1, 0)
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _resolve_item(item: str, beside: _Manifests) -> tuple[list[ShardInfo], list[Manifest]]:
    """One spec item -> its shards, and the manifests it named explicitly (folder or .json items)."""
    if item.startswith("pipe:"):
        return [
            ShardInfo(url=url, name=_name_in_url(url), n_samples=None, sha256=None) for url in braceexpand(item)
        ], []
    if item.startswith("file://"):
        item = urllib.parse.unquote(urllib.parse.urlparse(item).path)
    if _is_remote(item):
        return _resolve_remote_item(item, beside)
    return _resolve_local_item(item, beside)


def _is_remote(item: str) -> bool:
    return re.match(r"^(s3|gs|https?)://", item) is not None


def _url_path(url: str) -> str:
    """The path component of a URL: `https://h/d/x.tar?sig=…` -> `/d/x.tar` (a query never makes a shard a folder)."""
    return urllib.parse.urlsplit(url).path


def _sibling_url(url: str, name: str) -> str:
    """`https://h/d/x.tar?sig=…`, `manifest.json` -> `https://h/d/manifest.json?sig=…` (same folder and query)."""
    parts = urllib.parse.urlsplit(url)
    folder = parts.path.rsplit("/", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(path=f"{folder}/{name}", fragment=""))


def _resolve_remote_item(item: str, beside: _Manifests) -> tuple[list[ShardInfo], list[Manifest]]:
    path = _url_path(item)
    if path.endswith(".tar") or "{" in path:
        return [_remote_shard(url, beside) for url in braceexpand(item)], []
    if path.endswith(".json"):
        manifest_url = item
    else:  # a folder: its manifest.json
        manifest_url = _sibling_url(_with_path(item, path.rstrip("/") + "/"), MANIFEST_NAME)
    manifest = _remote_manifest(manifest_url, required=True)
    shards = [
        ShardInfo(
            url=remote_url_to_readable(_sibling_url(manifest_url, record.name)),
            name=record.name,
            n_samples=record.n_samples,
            sha256=record.sha256,
        )
        for record in manifest.shards
    ]
    return shards, [manifest]


def _with_path(url: str, path: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=path))


def _remote_shard(url: str, beside: _Manifests) -> ShardInfo:
    """A remote shard URL, with its count and sha256 from the manifest.json in its folder when there is one."""
    manifest_url = _sibling_url(url, MANIFEST_NAME)
    name = _url_path(url).rsplit("/", 1)[-1]
    manifest = beside.get(manifest_url, lambda: _remote_manifest(manifest_url, required=False))
    if manifest is None:
        return ShardInfo(url=remote_url_to_readable(url), name=name, n_samples=None, sha256=None)
    record = _record_beside(manifest, name, shard=url, manifest_where=manifest_url)
    beside.mark_used(manifest_url)
    return ShardInfo(
        url=remote_url_to_readable(url), name=record.name, n_samples=record.n_samples, sha256=record.sha256
    )


def _remote_manifest(manifest_url: str, required: bool) -> Manifest | None:
    """The manifest at a URL. Not required: None when none is there, or (signed URLs) when it is forbidden."""
    try:
        text = _fetch_remote_text(manifest_url, missing_ok=not required)
    except _ManifestForbidden as error:
        if required or not urllib.parse.urlsplit(manifest_url).query:
            raise
        warnings.warn(
            f"{error}; the shards beside it are signed URLs, whose signature covers only themselves, so they are "
            "read without manifest counts and a shortened shard goes unnoticed: give the folder's manifest URL "
            "with a token valid for the whole folder to have counts checked"
        )
        return None
    if text is None:
        return None
    try:
        return parse_manifest(text, manifest_url)
    except ManifestError as error:
        raise DataSpecError(str(error)) from error


def remote_url_to_readable(url: str) -> str:
    """`s3://b/k.tar` -> `pipe:aws s3 cp s3://b/k.tar -`; `gs://…` -> `pipe:gsutil cat gs://…`; http(s) unchanged."""
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {url} -"
    if url.startswith("gs://"):
        return f"pipe:gsutil cat {url}"
    return url


class _ManifestForbidden(DataSpecError):
    """A remote manifest the server refuses to hand over (HTTP 401/403)."""


def _fetch_remote_text(url: str, missing_ok: bool = False) -> str | None:
    """A small remote file (a manifest) as text: via aws/gsutil for s3/gs, urllib for http(s).

    missing_ok: None when the file does not exist (HTTP 404/410, or the CLI says not found); any other failure
    raises DataSpecError (`_ManifestForbidden` for HTTP 401/403), since a manifest that cannot be checked for
    must not be taken as absent.
    """
    if url.startswith(("http://", "https://")):
        return _fetch_http_text(url, missing_ok)
    command = ["aws", "s3", "cp", url, "-"] if url.startswith("s3://") else ["gsutil", "cat", url]
    try:
        done = subprocess.run(command, capture_output=True, timeout=REMOTE_FETCH_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataSpecError(
            f"cannot run {' '.join(command)} to fetch manifest {url} ({error}); install and configure "
            f"{command[0]}, or pass the shards as pipe: URLs to read them without manifest counts"
        ) from error
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        if missing_ok and CLI_NOT_FOUND.search(message):
            return None
        raise DataSpecError(
            f"{' '.join(command)} failed (exit {done.returncode}): {message}; check the URL and credentials, "
            "or pass the shards as pipe: URLs to read them without manifest counts"
        )
    return done.stdout.decode("utf-8")


def _fetch_http_text(url: str, missing_ok: bool) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_FETCH_TIMEOUT_S) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        if missing_ok and error.code in HTTP_NOT_FOUND:
            return None
        kind = _ManifestForbidden if error.code in HTTP_FORBIDDEN else DataSpecError
        raise kind(f"cannot fetch manifest {url} ({error}); check the URL, or pass the shard URLs") from error
    except OSError as error:
        raise DataSpecError(f"cannot fetch manifest {url} ({error}); check the URL, or pass the shard URLs") from error


def _name_in_url(url: str) -> str:
    """The shard file name inside a URL or pipe command: the last token ending in .tar, else the whole URL."""
    tokens = [token for token in re.split(r"[\s/]+", url) if token.endswith(".tar")]
    return tokens[-1] if tokens else url


class _Manifests:
    """The manifest beside shards, per folder (a local Path or a manifest URL), loaded once; remembers the used."""

    def __init__(self) -> None:
        self._by_place: dict[Path | str, Manifest | None] = {}
        self._used: dict[Path | str, Manifest] = {}

    def get(self, place: Path | str, load: Callable[[], Manifest | None]) -> Manifest | None:
        if place not in self._by_place:
            self._by_place[place] = load()
        return self._by_place[place]

    def mark_used(self, place: Path | str) -> None:
        manifest = self._by_place.get(place)
        if manifest is not None:
            self._used[place] = manifest

    def used(self) -> list[Manifest]:
        return list(self._used.values())


def _resolve_local_item(item: str, beside: _Manifests) -> tuple[list[ShardInfo], list[Manifest]]:
    path = Path(item).expanduser()
    if path.is_dir():
        return _shards_of_local_manifest(path / MANIFEST_NAME, beside), []
    if path.suffix == ".json":
        return _shards_of_local_manifest(path, beside), []
    shard_paths = [Path(expanded).expanduser() for expanded in braceexpand(item)]
    missing = [path for path in shard_paths if not path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more of the {len(shard_paths)} it names)" if len(missing) > 1 else ""
        raise DataSpecError(f"shard {missing[0]}{more}, from data spec {item!r}, does not exist; {SPEC_HELP}")
    return [_local_shard(path, beside) for path in shard_paths], []


def _shards_of_local_manifest(manifest_path: Path, beside: _Manifests) -> list[ShardInfo]:
    folder = manifest_path.parent
    if not manifest_path.is_file():
        raise DataSpecError(
            f"{folder} holds no {MANIFEST_NAME}; write the shards with python -m shards.write, or name the shards "
            f"with a brace pattern ({folder}/imagenet-val-{{000000..000009}}.tar) to read them without counts"
        )
    manifest = _local_manifest(beside, folder)
    beside.mark_used(folder)
    shards = []
    for record in manifest.shards:
        shard_path = folder / record.name
        if not shard_path.is_file():
            raise DataSpecError(
                f"manifest {manifest_path} lists {record.name}, which is missing from {folder}; "
                "copy the shard there or rewrite the shards with python -m shards.write --force"
            )
        shards.append(
            ShardInfo(url=str(shard_path), name=record.name, n_samples=record.n_samples, sha256=record.sha256)
        )
    return shards


def _local_manifest(beside: _Manifests, folder: Path) -> Manifest | None:
    """`folder/manifest.json`, or None when there is none; a broken one is a DataSpecError."""
    return beside.get(folder, lambda: _read_local_manifest(folder / MANIFEST_NAME))


def _read_local_manifest(path: Path) -> Manifest | None:
    if not path.is_file():
        return None
    try:
        return read_manifest(path)
    except ManifestError as error:
        raise DataSpecError(str(error)) from error


def _local_shard(shard_path: Path, beside: _Manifests) -> ShardInfo:
    folder = shard_path.parent
    manifest = _local_manifest(beside, folder)
    if manifest is None:
        return ShardInfo(url=str(shard_path), name=shard_path.name, n_samples=None, sha256=None)
    where = str(folder / MANIFEST_NAME)
    record = _record_beside(manifest, shard_path.name, shard=str(shard_path), manifest_where=where)
    beside.mark_used(folder)
    return ShardInfo(url=str(shard_path), name=record.name, n_samples=record.n_samples, sha256=record.sha256)


def _record_beside(manifest: Manifest, name: str, shard: str, manifest_where: str) -> ShardRecord:
    """The manifest's record of the shard named `name`; a shard it does not list is stale or foreign: an error."""
    record = next((record for record in manifest.shards if record.name == name), None)
    if record is None:
        raise DataSpecError(
            f"shard {shard} is not listed in {manifest_where} beside it; it is stale or foreign: "
            "remove it, or rewrite the shards with python -m shards.write --force"
        )
    return record


def _check_unique(shards: list[ShardInfo]) -> None:
    seen: set[str] = set()
    for shard in shards:
        if shard.url in seen:
            raise DataSpecError(f"shard {shard.url} is named twice in the data spec; each shard must be read once")
        seen.add(shard.url)


def _shard_set(shards: tuple[ShardInfo, ...], manifests: list[Manifest]) -> ShardSet:
    counts = [shard.n_samples for shard in shards]
    total = sum(counts) if all(count is not None for count in counts) else None
    n_classes_seen = {manifest.n_classes for manifest in manifests}
    n_classes = n_classes_seen.pop() if total is not None and len(n_classes_seen) == 1 else None
    return ShardSet(shards=shards, total=total, n_classes=n_classes, fingerprint=fingerprint_of(shards))


def fingerprint_of(shards: Sequence[ShardInfo]) -> str:
    """16 hex chars: over `name n_samples sha256` lines when every shard has them, else over the URLs.

    Equal to `Manifest.fingerprint()` when the shards are exactly a manifest's.
    """
    if all(shard.sha256 is not None and shard.n_samples is not None for shard in shards):
        lines = "".join(f"{shard.name} {shard.n_samples} {shard.sha256}\n" for shard in shards)
    else:
        lines = "".join(f"{shard.url}\n" for shard in shards)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()[:FINGERPRINT_HEX_CHARS]


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


def shard_tuple(shards: ShardSet | Sequence[ShardInfo]) -> tuple[ShardInfo, ...]:
    """The shards of a ShardSet (its `.shards`) or of a sequence of ShardInfo, as a tuple."""
    return shards.shards if isinstance(shards, ShardSet) else tuple(shards)


def _shard_weights(shards: tuple[ShardInfo, ...]) -> list[float]:
    known = [shard.n_samples for shard in shards if shard.n_samples is not None]
    fallback = sum(known) / len(known) if known else 1.0
    return [float(shard.n_samples) if shard.n_samples is not None else fallback for shard in shards]


# ---------------------------------------------------------------------------------------------- transforms


def data_config(model_or_cfg: torch.nn.Module | Mapping[str, Any] | str) -> dict[str, Any]:
    """The model's eval data config via timm.data.resolve_data_config.

    Accepts a timm model, a pretrained-cfg dict, or a timm model name. Returns input_size (C, H, W),
    interpolation, crop_pct, crop_mode, mean, std (DeiT: (3, 224, 224), bicubic, 0.9, center, ImageNet mean/std).
    """
    from timm.data import resolve_data_config

    if isinstance(model_or_cfg, torch.nn.Module):
        resolved = resolve_data_config({}, model=model_or_cfg)
    else:
        resolved = resolve_data_config({}, pretrained_cfg=_pretrained_cfg(model_or_cfg))
    keys = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
    return {key: resolved[key] for key in keys if key in resolved}


def _pretrained_cfg(model_or_cfg: Mapping[str, Any] | str) -> dict[str, Any]:
    if isinstance(model_or_cfg, Mapping):
        return dict(model_or_cfg)
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(model_or_cfg)
    if pretrained is None:
        raise ValueError(f"timm knows no pretrained config for {model_or_cfg!r}; pass the model itself")
    return pretrained.to_dict()


def eval_transform(model_or_cfg: torch.nn.Module | Mapping[str, Any] | str) -> Callable[[Any], torch.Tensor]:
    """timm's eval transform for the model: PIL RGB image -> [3, H, W] float32 (DeiT: resize 248 bicubic,
    centre crop 224, ImageNet mean/std)."""
    from timm.data import create_transform

    return create_transform(**data_config(model_or_cfg), is_training=False)


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
        chunk.add_to(stats)
        if chunk.keys and with_shards:
            yield ShardBatch(images=chunk.images, labels=chunk.labels, keys=chunk.keys, shards=chunk.key_shards)
        elif chunk.keys:
            yield Batch(images=chunk.images, labels=chunk.labels, keys=chunk.keys)
    if check_counts:
        check_complete(stats, shards)


def check_complete(stats: ReadStats, shards: ShardSet | Sequence[ShardInfo]) -> None:
    """Raise ShardCountError naming the first shard whose samples seen differ from its manifest count.

    A shard never read at all is an error; shards without a manifest count are only checked for having been read.
    """
    for shard in shard_tuple(shards):
        seen = stats.per_shard.get(shard.url)
        if seen is None:
            raise ShardCountError(f"shard {shard.url} was never read; expected {shard.n_samples} samples from it")
        if shard.n_samples is not None and seen != shard.n_samples:
            raise ShardCountError(
                f"shard {shard.url}: the manifest says {shard.n_samples} samples, the stream gave {seen}; the shard "
                "and manifest disagree (truncated or replaced shard?): rewrite with python -m shards.write --force"
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
    """What the sample stream hands over per step: a batch (maybe empty) plus the bookkeeping since the last chunk.

    images: [b, 3, H, W] or None when b == 0; key_shards: the shard URL of each key (a chunk can span shards);
    seen: shard URL -> samples seen; failures: decode failures.
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None
    keys: list[str]
    key_shards: list[str]
    seen: dict[str, int]
    failures: list[DecodeFailure]

    def add_to(self, stats: ReadStats) -> None:
        stats.n_images += len(self.keys)
        stats.n_failed += len(self.failures)
        for url, count in self.seen.items():
            stats.per_shard[url] = stats.per_shard.get(url, 0) + count
        stats.failures.extend(self.failures)

    def pin_memory(self) -> _Chunk:
        """Called by DataLoader(pin_memory=True)."""
        if self.images is None:
            return self
        return _Chunk(
            self.images.pin_memory(), self.labels.pin_memory(), self.keys, self.key_shards, self.seen, self.failures
        )


def _chunk_stream(
    shards: tuple[ShardInfo, ...], transform: Callable, batch_size: int, num_workers: int, pin_memory: bool
) -> Iterator[_Chunk]:
    num_workers = min(num_workers, len(shards))  # a loader worker without a shard would have nothing to read
    if num_workers == 0:
        yield from _chunks_of(shards, transform, batch_size)
        return
    dataset = _ShardChunks(shards, transform, batch_size)
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=_as_is, pin_memory=pin_memory)
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
    images: list[torch.Tensor] = []
    labels: list[int] = []
    keys: list[str] = []
    key_shards: list[str] = []
    seen: dict[str, int] = {}
    failures: list[DecodeFailure] = []
    for shard in shards:
        seen.setdefault(shard.url, 0)
        for sample in samples_of_shard(shard):
            seen[shard.url] = seen.get(shard.url, 0) + 1
            decoded = decode_sample(sample, shard, transform)
            if isinstance(decoded, DecodeFailure):
                failures.append(decoded)
                continue
            images.append(decoded[0])
            labels.append(decoded[1])
            keys.append(sample["__key__"])
            key_shards.append(shard.url)
            if len(keys) == batch_size:
                yield _make_chunk(images, labels, keys, key_shards, seen, failures)
                images, labels, keys, key_shards, seen, failures = [], [], [], [], {}, []
    yield _make_chunk(images, labels, keys, key_shards, seen, failures)


def _make_chunk(
    images: list[torch.Tensor],
    labels: list[int],
    keys: list[str],
    key_shards: list[str],
    seen: dict[str, int],
    failures: list[DecodeFailure],
) -> _Chunk:
    if not keys:
        return _Chunk(None, None, [], [], seen, failures)
    return _Chunk(torch.stack(images), torch.tensor(labels, dtype=torch.int64), keys, key_shards, seen, failures)


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


def samples_of_shard(shard: ShardInfo) -> Iterator[dict[str, Any]]:
    """webdataset samples (`__key__`, `jpg`, `cls`, …) of one shard, read to its end.

    Raises ShardReadError naming the shard when it cannot be opened, is not a tar, is truncated inside a member,
    or its pipe command exits with an error.
    """
    try:
        stream = webdataset.gopen(shard.url, "rb")
    except (OSError, ValueError) as error:
        raise ShardReadError(f"cannot open shard {shard.url}: {error}") from error
    finished = False
    try:
        files = ({**file, "__url__": shard.url} for file in tar_file_iterator(stream, handler=reraise_exception))
        yield from group_by_keys(files, handler=reraise_exception)
        _close_checked(stream, shard)
        finished = True
    except (tarfile.TarError, OSError, ValueError, EOFError) as error:
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
