"""Named public data sets: a data spec such as `imagenetv2` needs nothing prepared.

    folder = named_shards("imagenetv2", announce=print)   # $HF_HOME/tomecis-shards/imagenetv2, with manifest.json

ImageNetV2 (Recht et al. 2019) is 10,000 new test photos of ImageNet's 1,000 classes, 10 per class, public and
ungated on the Hub as dataset `vaishaal/ImageNetV2`: three tar.gz files (matched-frequency, threshold0.7,
top-images), each holding one folder per class named by its class index. On first use the tar.gz is downloaded
once through `huggingface_hub` into its cache ($HF_HUB_CACHE, else $HF_HOME/hub) with a progress bar, and written
by `shards.write` (the class-index form) into a folder beside that cache, $HF_HOME/tomecis-shards/<name>; later
uses find the manifest there and ask the Hub nothing. Its manifest's `made.dataset_title` names the set, which
data descriptions (and so the sweep's first line and the report's heading) carry: ImageNetV2's top-1 runs about
10 points below ImageNet-1k val, so its figures must never be read as ImageNet-val figures.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .hub import HUB_SCHEME, download_hub_file, hf_home, hub_cache_dir
from .manifest import DATASET_TITLE_KEY, MANIFEST_NAME

SHARDS_CACHE_NAME = "tomecis-shards"  # beside $HF_HOME/hub
IMAGENETV2_REPO = "vaishaal/ImageNetV2"
IMAGENETV2_CAVEAT = (
    "ImageNetV2 top-1 runs about 10 points below ImageNet-1k val: compare it only with ImageNetV2"
)


@dataclass(frozen=True)
class NamedSet:
    """A public data set by name: the spec that names it, what it is called, and its file on the Hub."""

    name: str
    title: str
    repo_id: str
    filename: str
    size: str
    prefix: str  # its shards' name prefix (no dots)
    caveat: str

    @property
    def hub_url(self) -> str:
        return f"{HUB_SCHEME}datasets/{self.repo_id}/{self.filename}"


NAMED_SETS = {
    named.name: named
    for named in (
        NamedSet(
            "imagenetv2",
            "ImageNetV2 matched-frequency",
            IMAGENETV2_REPO,
            "imagenetv2-matched-frequency.tar.gz",
            "1.26 GB",
            "imagenetv2-matched-frequency",
            IMAGENETV2_CAVEAT,
        ),
        NamedSet(
            "imagenetv2-threshold0.7",
            "ImageNetV2 threshold0.7",
            IMAGENETV2_REPO,
            "imagenetv2-threshold0.7.tar.gz",
            "about 1.2 GB",
            "imagenetv2-threshold07",
            IMAGENETV2_CAVEAT,
        ),
        NamedSet(
            "imagenetv2-top-images",
            "ImageNetV2 top-images",
            IMAGENETV2_REPO,
            "imagenetv2-top-images.tar.gz",
            "about 1.2 GB",
            "imagenetv2-top-images",
            IMAGENETV2_CAVEAT,
        ),
    )
}
DEFAULT_NAMED_SET = "imagenetv2"


def named_set(spec: str) -> NamedSet | None:
    """The named set a spec item names (`imagenetv2`, any case), else None."""
    return NAMED_SETS.get(spec.strip().lower())


def caveat_of(title: str) -> str:
    """What a reader must know about the data a title names (`IMAGENETV2_CAVEAT`), else ''."""
    return next((named.caveat for named in NAMED_SETS.values() if named.title == title), "")


def shards_cache_dir() -> Path:
    """$HF_HOME/tomecis-shards: the shards of named sets, beside `huggingface_hub`'s cache."""
    return hf_home() / SHARDS_CACHE_NAME


def named_folder(named: NamedSet) -> Path:
    return shards_cache_dir() / named.name


def is_cached(named: NamedSet) -> bool:
    return (named_folder(named) / MANIFEST_NAME).is_file()


def named_shards(name: str, announce: Callable[[str], None], workers: int | None = None) -> Path:
    """The folder of a named set's shards and manifest: as cached, or downloaded and written now (said first, in
    one line through `announce`). HubError (an OSError) when the Hub cannot be reached or refuses."""
    named = NAMED_SETS[name]
    folder = named_folder(named)
    if is_cached(named):
        return folder
    announce(
        f"data: {named.title} is not cached yet: downloading {named.hub_url} ({named.size}) once into "
        f"{hub_cache_dir()}, then writing it as shards into {folder}"
    )
    tarball = download_hub_file(named.repo_id, named.filename)
    write_named_shards(named, tarball, folder, workers or os.cpu_count() or 1)
    return folder


def write_named_shards(named: NamedSet, tarball: Path, folder: Path, workers: int) -> None:
    """`tarball`'s shards into `folder`, whole or not at all: written beside it, titled, then renamed into place
    (a run that stops midway, or another one writing at the same time, leaves no half set behind)."""
    from .write import WriteConfig, write_shards  # decoding and tar writing: loaded only to write a set

    partial = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        summary = write_shards(WriteConfig(src=tarball, out=partial, prefix=named.prefix, workers=workers))
        titled = {**summary.manifest.made, DATASET_TITLE_KEY: named.title, "hub": named.hub_url}
        dataclasses.replace(summary.manifest, made=titled).write(partial)
        if is_cached(named):  # another run finished first: its shards are the same bytes
            return
        if folder.exists():  # without a manifest: what is left of a cache someone emptied
            shutil.rmtree(folder)
        try:
            os.replace(partial, folder)
        except OSError:
            if not is_cached(named):  # not another run that finished in between
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
