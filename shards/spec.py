"""Data spec -> ShardSet: which shards to read, with their counts from the manifest beside them.

    shardset = resolve_data("/data/imagenet-val")   # or $TOMECIS_DATA, a brace pattern, s3://…, a list
    shardset.shards                                 # ShardInfo(url, name, n_samples, sha256) in order
    shardset.total, shardset.fingerprint            # from the manifest when every shard has one

The forms (SPEC_HELP): a shard folder with manifest.json, a manifest path or URL, a brace pattern, a comma list,
s3://, gs://, http(s):// or pipe: URLs. Remote manifests are fetched with aws/gsutil or urllib; the shards
themselves are opened by `shards.read`.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from braceexpand import braceexpand

from .manifest import MANIFEST_NAME, Manifest, ManifestError, ShardRecord, parse_manifest, read_manifest

TOMECIS_DATA_ENV = "TOMECIS_DATA"
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



def shard_tuple(shards: ShardSet | Sequence[ShardInfo]) -> tuple[ShardInfo, ...]:
    """The shards of a ShardSet (its `.shards`) or of a sequence of ShardInfo, as a tuple."""
    return shards.shards if isinstance(shards, ShardSet) else tuple(shards)



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
