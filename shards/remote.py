"""Remote data specs: s3://, gs://, http(s):// and hf:// URLs -> shards with the counts of the index beside them.

An index is our manifest.json or timm's `_info.json`. A URL is a shard (path ending in `.tar`, or a brace
pattern), an index (path ending in `.json`) or a folder (anything else) by its path, so signed URLs
(`https://h/d/x.tar?sig=…`) work; a folder URL's query is kept for each shard. Indexes are fetched with
`aws s3 cp … -` / `gsutil cat`, urllib, or (hf://) `shards.hub`; s3/gs shards are read through the same CLIs.
"""

from __future__ import annotations

import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import warnings

from braceexpand import braceexpand

from .hub import HubError, fetch_hub_text, hub_endpoint, is_hub_url, parse_hub_url
from .manifest import MANIFEST_NAME, ManifestError, parse_manifest
from .shardset import DataSpecError, IndexCache, ShardIndex, ShardInfo, index_of_manifest
from .wds_info import INFO_NAME, parse_info

REMOTE_FETCH_TIMEOUT_S = 120
HTTP_NOT_FOUND = (404, 410)
HTTP_FORBIDDEN = (401, 403)
CLI_NOT_FOUND = re.compile(r"\(404\)|NoSuchKey|Not Found|No URLs matched|does not exist", re.IGNORECASE)
REMOTE_SCHEMES = re.compile(r"^(s3|gs|https?|hf)://")
INDEX_NAMES = (MANIFEST_NAME, INFO_NAME)  # looked for in this order beside shards and in folders


class _IndexForbidden(DataSpecError):
    """A remote index the server refuses to hand over (HTTP 401/403)."""


def is_remote(item: str) -> bool:
    return REMOTE_SCHEMES.match(item) is not None


def url_path(url: str) -> str:
    """The path component of a URL: `https://h/d/x.tar?sig=…` -> `/d/x.tar` (a query never makes a shard a folder)."""
    return urllib.parse.urlsplit(url).path


def sibling_url(url: str, name: str) -> str:
    """`https://h/d/x.tar?sig=…`, `manifest.json` -> `https://h/d/manifest.json?sig=…` (same folder and query)."""
    parts = urllib.parse.urlsplit(url)
    folder = parts.path.rsplit("/", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(path=f"{folder}/{name}", fragment=""))


def remote_url_to_readable(url: str) -> str:
    """`s3://b/k.tar` -> `pipe:aws s3 cp s3://b/k.tar -`; `gs://…` -> `pipe:gsutil cat gs://…`; http(s), hf unchanged."""
    if url.startswith("s3://"):
        return f"pipe:aws s3 cp {url} -"
    if url.startswith("gs://"):
        return f"pipe:gsutil cat {url}"
    return url


def describe_origin(url: str) -> str:
    """Where a remote URL's bytes come from, for descriptions: for hf:// the Hub endpoint, else ''."""
    return f"Hub at {hub_endpoint()}" if is_hub_url(url) else ""


def resolve_remote_item(item: str, beside: IndexCache, split: str | None) -> list[ShardInfo]:
    """One remote spec item (shard, brace pattern, index or folder URL) -> its shards."""
    if is_hub_url(item):
        _check_hub_url(item)
    path = url_path(item)
    if path.endswith(".tar") or "{" in path:
        if split is not None:
            raise DataSpecError(
                f"{item}#{split}: '#SPLIT' names a split of a folder's {INFO_NAME}, not of shards"
            )
        return [_remote_shard(url, beside) for url in braceexpand(item)]
    if path.endswith(".json"):
        index = _remote_index(item, split, missing_ok=False)
    else:
        index = _folder_index(_with_path(item, path.rstrip("/") + "/"), split)
    beside.use(index)
    return [
        index.shard(remote_url_to_readable(sibling_url(index.where, entry.name)), entry)
        for entry in index.listed
    ]


def _check_hub_url(item: str) -> None:
    try:
        parse_hub_url(item)
    except ValueError as error:
        raise DataSpecError(str(error)) from error


def _with_path(url: str, path: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=path))


def _folder_index(folder_url: str, split: str | None) -> ShardIndex:
    """The index of a remote folder: its manifest.json, else its `_info.json` (only that when a split is named)."""
    names = (INFO_NAME,) if split is not None else INDEX_NAMES
    for name in names:
        index = _remote_index(sibling_url(folder_url, name), split, missing_ok=True)
        if index is not None:
            return index
    tried = " nor ".join(sibling_url(folder_url, name) for name in names)
    raise DataSpecError(
        f"cannot fetch manifest: there is no {tried}; give the folder that holds the shards and their "
        f"{MANIFEST_NAME} (python -m shards.write) or {INFO_NAME} (timm's layout), or pass the shard URLs"
    )


def _remote_shard(url: str, beside: IndexCache) -> ShardInfo:
    """A remote shard URL, with its count (and sha256) from the index in its folder when there is one."""
    name = url_path(url).rsplit("/", 1)[-1]
    index = beside.get(sibling_url(url, ""), lambda: _index_beside(url))
    if index is None:
        return ShardInfo(url=remote_url_to_readable(url), name=name, n_samples=None, sha256=None)
    beside.use(index)
    return index.shard(remote_url_to_readable(url), index.entry_for(name, shard=url))


def _index_beside(url: str) -> ShardIndex | None:
    """manifest.json, else `_info.json`, beside a shard; None when neither is there, or (signed URLs) forbidden."""
    for name in INDEX_NAMES:
        index_url = sibling_url(url, name)
        try:
            index = _remote_index(index_url, None, missing_ok=True)
        except _IndexForbidden as error:
            if not urllib.parse.urlsplit(index_url).query:
                raise
            warnings.warn(
                f"{error}; the shards beside it are signed URLs, whose signature covers only themselves, so they "
                "are read without manifest counts and a shortened shard goes unnoticed: give the folder's "
                "manifest URL with a token valid for the whole folder to have counts checked"
            )
            return None
        if index is not None:
            return index
    return None


def _remote_index(index_url: str, split: str | None, missing_ok: bool) -> ShardIndex | None:
    """The index (manifest or `_info.json`, by file name) at a URL; None when it is not there and missing_ok."""
    text = fetch_remote_text(index_url, missing_ok=missing_ok)
    if text is None:
        return None
    if url_path(index_url).endswith(INFO_NAME):
        return parse_info(text, index_url, split)
    if split is not None:
        raise DataSpecError(
            f"{index_url}#{split}: '#SPLIT' names a split of an {INFO_NAME}, not of a manifest"
        )
    try:
        return index_of_manifest(parse_manifest(text, index_url), index_url)
    except ManifestError as error:
        raise DataSpecError(str(error)) from error


def fetch_remote_text(url: str, missing_ok: bool = False) -> str | None:
    """A small remote file (an index) as text: via aws/gsutil for s3/gs, urllib for http(s), shards.hub for hf.

    missing_ok: None when the file does not exist (HTTP 404/410, or the CLI says not found); any other failure
    raises DataSpecError (`_IndexForbidden` for HTTP 401/403 outside the Hub), since an index that cannot be
    checked for must not be taken as absent.
    """
    if is_hub_url(url):
        try:
            return fetch_hub_text(url, missing_ok)
        except HubError as error:
            raise DataSpecError(str(error)) from None
    if url.startswith(("http://", "https://")):
        return _fetch_http_text(url, missing_ok)
    return _fetch_with_cli(url, missing_ok)


def _fetch_with_cli(url: str, missing_ok: bool) -> str | None:
    command = ["aws", "s3", "cp", url, "-"] if url.startswith("s3://") else ["gsutil", "cat", url]
    try:
        done = subprocess.run(command, capture_output=True, timeout=REMOTE_FETCH_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataSpecError(
            f"cannot run {' '.join(command)} to fetch {url} ({error}); install and configure "
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
    what = "manifest" if url_path(url).endswith(MANIFEST_NAME) else "index"
    try:
        with urllib.request.urlopen(url, timeout=REMOTE_FETCH_TIMEOUT_S) as response:
            return response.read().decode("utf-8")
    except urllib.error.HTTPError as error:
        if missing_ok and error.code in HTTP_NOT_FOUND:
            return None
        kind = _IndexForbidden if error.code in HTTP_FORBIDDEN else DataSpecError
        raise kind(f"cannot fetch {what} {url} ({error}); check the URL, or pass the shard URLs") from error
    except OSError as error:
        raise DataSpecError(
            f"cannot fetch {what} {url} ({error}); check the URL, or pass the shard URLs"
        ) from error
