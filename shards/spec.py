"""Data spec -> ShardSet: which shards to read, with their counts from the index beside them.

    shardset = resolve_data("/data/imagenet-val")   # or $TOMECIS_DATA, a brace pattern, s3://…, hf://…, a list
    shardset.shards                                 # ShardInfo(url, name, n_samples, sha256) in order
    shardset.total, shardset.fingerprint            # from the index when every shard has a count

The forms (SPEC_HELP): a folder with manifest.json (from `python -m shards.write`) or timm's `_info.json`
(`DIR#train` for another split than validation), an index path or URL, a brace pattern, a comma list, s3://,
gs://, http(s)://, hf:// or pipe: URLs, or a public set by name (`imagenetv2`, shards.named). With no spec and no
$TOMECIS_DATA: timm's ImageNet-1k shards on the Hugging Face Hub when $HF_TOKEN is set, else ImageNetV2 (downloaded
and written as shards once). Remote indexes are fetched by `shards.remote`; shards are opened by `shards.read`.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path

from braceexpand import braceexpand

from .hub import HF_TOKEN_ENV, HubError, hub_token
from .manifest import MANIFEST_NAME, ManifestError, read_manifest
from .named import DEFAULT_NAMED_SET, NAMED_SETS, NamedSet, named_folder, named_set, named_shards
from .remote import describe_origin, is_remote, resolve_remote_item
from .shardset import (
    DataSpecError,
    IndexCache,
    ShardIndex,
    ShardInfo,
    ShardSet,
    fingerprint_of,
    index_of_manifest,
)
from .wds_info import INFO_NAME, parse_info, split_of_spec

TOMECIS_DATA_ENV = "TOMECIS_DATA"
TIMM_IMAGENET_WDS = "hf://datasets/timm/imagenet-1k-wds"
SPEC_HELP = (
    "pass a shard folder holding manifest.json (written by python -m shards.write) or timm's _info.json, "
    "a manifest path or URL, a brace pattern such as DIR/imagenet-val-{000000..000049}.tar, a comma-separated "
    "list, s3://, gs://, http(s)://, hf://datasets/OWNER/NAME or pipe: URLs, or a public set by name: "
    f"{', '.join(NAMED_SETS)} (a local folder of one of these names: write ./NAME)"
)
HUB_DEFAULT_TRIED = (
    f"Tried: {TIMM_IMAGENET_WDS} (the default when there is no --data and no ${TOMECIS_DATA_ENV} and "
    f"${HF_TOKEN_ENV} is set)"
)
NAMED_DEFAULT_ROUTE = f"no --data, no ${TOMECIS_DATA_ENV} and no ${HF_TOKEN_ENV}"
HUB_DEFAULT_HELP = (
    f"or set ${HF_TOKEN_ENV} (a Hugging Face token whose account accepted ImageNet-1k's terms) to stream "
    f"{TIMM_IMAGENET_WDS}"
)


def resolve_data(
    spec: str | os.PathLike | Sequence[str] | None = None, *, announce: Callable[[str], None] | None = None
) -> ShardSet:
    """Data spec -> ShardSet. See SPEC_HELP for the accepted forms.

    None reads $TOMECIS_DATA; when that is unset too, timm's ImageNet-1k shards on the Hub (TIMM_IMAGENET_WDS,
    validation split) if $HF_TOKEN is set, else the public ImageNetV2 (`imagenetv2`, shards.named: downloaded and
    written as shards on first use). A named set, given or by default, and the Hub default are said in a line (what,
    from where, how many images) through `announce` (default: printed to stderr), as is a download before it;
    when the Hub cannot be reached, a DataSpecError names what was tried and the other ways to give data.
    """
    say = announce or _print_to_stderr
    items, default_route = _spec_items(spec)
    named = named_set(items[0]) if len(items) == 1 else None
    if named is not None:
        items = [str(_named_folder(named, say, default_route))]
    beside = IndexCache()
    shards = _resolve_items(items, beside, named, default_route)
    if not shards:
        raise DataSpecError(f"data spec {spec!r} names no shards; {SPEC_HELP}")
    _check_unique(shards)
    shardset = _shard_set(tuple(shards), beside.used(), _spec_text(items))
    if named is not None:
        said = f"{NAMED_DEFAULT_ROUTE}: reading " if default_route else ""
        say(f"data: {said}{shardset.description}; {named.caveat}")
    elif default_route:
        say(
            f"data: no --data and no ${TOMECIS_DATA_ENV}, ${HF_TOKEN_ENV} is set: streaming {shardset.description}"
        )
    return shardset


def _resolve_items(
    items: list[str], beside: IndexCache, named: NamedSet | None, default_route: bool
) -> list[ShardInfo]:
    """Every item's shards; an error on a named set's cache folder says how to have it rewritten, one on the Hub
    default what was tried and the other ways to give data."""
    shards: list[ShardInfo] = []
    try:
        for item in items:
            shards.extend(_resolve_item(item, beside))
    except DataSpecError as error:
        if named is not None:  # its cache folder was changed by hand
            raise DataSpecError(
                f"{error}; or remove {items[0]} to have {named.title} written again"
            ) from None
        if default_route:
            raise DataSpecError(
                f"{error}. {HUB_DEFAULT_TRIED}. Other ways to give data: {SPEC_HELP}"
            ) from None
        raise
    return shards


def _named_folder(named: NamedSet, say: Callable[[str], None], default_route: bool) -> Path:
    """The folder of a named set's shards (shards.named), or a DataSpecError naming what was tried and the
    other ways to give data when the Hub cannot be reached or refuses."""
    try:
        return named_shards(named.name, say)
    except HubError as error:
        why = f" (the default: {NAMED_DEFAULT_ROUTE})" if default_route else ""
        raise DataSpecError(
            f"{error}. Tried: {named.title}{why}, from {named.hub_url}; its shards are not cached in "
            f"{named_folder(named)}. Other ways to give data: --data or ${TOMECIS_DATA_ENV}: {SPEC_HELP}; "
            f"{HUB_DEFAULT_HELP}; or fetch {named.filename} another way and write it with python -m shards.write "
            "SRC --out DIR, then pass --data DIR"
        ) from None


def _spec_text(items: list[str]) -> str:
    """The spec in a description: its items, or the first and a count when there are more than three."""
    if len(items) <= 3:
        return ",".join(items)
    return f"{items[0]},… ({len(items)} items)"


def _print_to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _spec_items(spec: str | os.PathLike | Sequence[str] | None) -> tuple[list[str], bool]:
    """The spec's items, and whether they are a default route (no spec, no $TOMECIS_DATA: timm's ImageNet on the
    Hub when $HF_TOKEN is set, else the public ImageNetV2)."""
    default_route = False
    if spec is None:
        spec = os.environ.get(TOMECIS_DATA_ENV, "").strip()
        if not spec:
            spec = TIMM_IMAGENET_WDS if hub_token() is not None else DEFAULT_NAMED_SET
            default_route = True
    if isinstance(spec, (str, os.PathLike)):
        items = split_top_level_commas(os.fspath(spec))
    else:
        items = [os.fspath(item) for item in spec]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise DataSpecError(f"data spec {spec!r} is empty; {SPEC_HELP}")
    return items, default_route


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


def _resolve_item(item: str, beside: IndexCache) -> list[ShardInfo]:
    """One spec item -> its shards, counted by the index beside them (or named by a folder/index item)."""
    if item.startswith("pipe:"):
        return [
            ShardInfo(url=url, name=_name_in_url(url), n_samples=None, sha256=None)
            for url in braceexpand(item)
        ]
    item, split = split_of_spec(item)
    if item.startswith("file://"):
        item = _file_url_path(item)
    if is_remote(item):
        return resolve_remote_item(item, beside, split)
    return _resolve_local_item(item, beside, split)


def _file_url_path(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlparse(url).path)


def _name_in_url(url: str) -> str:
    """The shard file name inside a URL or pipe command: the last token ending in .tar, else the whole URL."""
    tokens = [token for token in re.split(r"[\s/]+", url) if token.endswith(".tar")]
    return tokens[-1] if tokens else url


def _resolve_local_item(item: str, beside: IndexCache, split: str | None) -> list[ShardInfo]:
    path = Path(item).expanduser()
    if path.is_dir():
        return _shards_of_local_index(_local_folder_index(path, split), beside)
    if path.suffix == ".json":
        return _shards_of_local_index(_local_index(path, split, required=True), beside)
    if split is not None:
        raise DataSpecError(
            f"{item}#{split}: '#SPLIT' names a split of a folder's {INFO_NAME}, not of shards"
        )
    shard_paths = [Path(expanded).expanduser() for expanded in braceexpand(item)]
    missing = [path for path in shard_paths if not path.is_file()]
    if missing:
        more = (
            f" (and {len(missing) - 1} more of the {len(shard_paths)} it names)" if len(missing) > 1 else ""
        )
        raise DataSpecError(f"shard {missing[0]}{more}, from data spec {item!r}, does not exist; {SPEC_HELP}")
    return [_local_shard(path, beside) for path in shard_paths]


def _local_folder_index(folder: Path, split: str | None) -> ShardIndex:
    """A folder's manifest.json, else its `_info.json` (only that when a split is named)."""
    names = (INFO_NAME,) if split is not None else (MANIFEST_NAME, INFO_NAME)
    for name in names:
        index = _local_index(folder / name, split, required=False)
        if index is not None:
            return index
    return _no_local_index(folder, split)


def _no_local_index(folder: Path, split: str | None) -> ShardIndex:
    if split is not None:
        raise DataSpecError(
            f"{folder}#{split}: {folder} holds no {INFO_NAME}, whose split '#{split}' would name"
        )
    raise DataSpecError(
        f"{folder} holds no {MANIFEST_NAME} (nor timm's {INFO_NAME}); write the shards with python -m shards.write, "
        f"or name the shards with a brace pattern ({folder}/imagenet-val-{{000000..000009}}.tar) to read them "
        "without counts"
    )


def _local_index(path: Path, split: str | None, required: bool) -> ShardIndex | None:
    """The index file at `path` (manifest or `_info.json`, by name); None when absent and not required."""
    if not path.is_file():
        if required:
            raise DataSpecError(f"{path} does not exist; {SPEC_HELP}")
        return None
    if path.name == INFO_NAME:
        return parse_info(path.read_text(encoding="utf-8"), str(path), split)
    if split is not None:
        raise DataSpecError(f"{path}#{split}: '#SPLIT' names a split of an {INFO_NAME}, not of a manifest")
    try:
        return index_of_manifest(read_manifest(path), str(path))
    except ManifestError as error:
        raise DataSpecError(str(error)) from error


def _shards_of_local_index(index: ShardIndex, beside: IndexCache) -> list[ShardInfo]:
    folder = Path(index.where).parent
    beside.use(index)
    shards = []
    for entry in index.listed:
        shard_path = folder / entry.name
        if not shard_path.is_file():
            fix = (
                "rewrite the shards with python -m shards.write --force"
                if index.kind == MANIFEST_NAME
                else ("the copy is incomplete: copy it again")
            )
            raise DataSpecError(
                f"{'manifest' if index.kind == MANIFEST_NAME else index.kind} {index.where} lists {entry.name}, "
                f"which is missing from {folder}; copy the shard there or {fix}"
            )
        shards.append(index.shard(str(shard_path), entry))
    return shards


def _local_shard(shard_path: Path, beside: IndexCache) -> ShardInfo:
    """A local shard, counted by the manifest.json (else `_info.json`) in its folder when there is one."""
    folder = shard_path.parent
    index = beside.get(folder, lambda: _local_folder_index_or_none(folder))
    if index is None:
        return ShardInfo(url=str(shard_path), name=shard_path.name, n_samples=None, sha256=None)
    beside.use(index)
    return index.shard(str(shard_path), index.entry_for(shard_path.name, shard=str(shard_path)))


def _local_folder_index_or_none(folder: Path) -> ShardIndex | None:
    for name in (MANIFEST_NAME, INFO_NAME):
        index = _local_index(folder / name, None, required=False)
        if index is not None:
            return index
    return None


def _check_unique(shards: list[ShardInfo]) -> None:
    seen: set[str] = set()
    for shard in shards:
        if shard.url in seen:
            raise DataSpecError(
                f"shard {shard.url} is named twice in the data spec; each shard must be read once"
            )
        seen.add(shard.url)


def _shard_set(shards: tuple[ShardInfo, ...], indexes: list[ShardIndex], spec_text: str) -> ShardSet:
    counts = [shard.n_samples for shard in shards]
    total = sum(counts) if all(count is not None for count in counts) else None
    n_classes_seen = {index.n_classes for index in indexes}
    n_classes = n_classes_seen.pop() if total is not None and len(n_classes_seen) == 1 else None
    titles = {index.title for index in indexes}
    title = titles.pop() if total is not None and len(titles) == 1 else ""
    description = _describe(shards, total, indexes, spec_text)
    return ShardSet(
        shards=shards,
        total=total,
        n_classes=n_classes,
        fingerprint=fingerprint_of(shards),
        description=f"{title}: {description}" if title else description,
        title=title,
    )


def _describe(
    shards: tuple[ShardInfo, ...], total: int | None, indexes: list[ShardIndex], spec_text: str
) -> str:
    """`50000 images in 64 shards from hf://datasets/timm/imagenet-1k-wds (_info.json split validation; Hub at …)`."""
    amount = (
        f"{total} images in {len(shards)} shards"
        if total is not None
        else f"{len(shards)} shards (uncounted)"
    )
    notes = sorted({index.about for index in indexes if index.about})
    origin = describe_origin(spec_text)
    notes += [origin] if origin else []
    return f"{amount} from {spec_text}" + (f" ({'; '.join(notes)})" if notes else "")
