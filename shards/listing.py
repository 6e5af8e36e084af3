"""What every source form is listed as, and the names the forms share: `SourceListing` (a sorted tuple of
`SourceImage`s, each an `ImageFile` and its class), `SourceError`, `SourceForm`, the key rules (`stem_of`,
`check_keys`) and the file-name tests.

`shards.sources` (ImageFolder, flat folder, val tar; `open_source`, the one entry for every form),
`shards.hf_parquet` (Hugging Face parquet files) and `shards.class_index` (ImageNetV2's class-index folders and
tar.gz) all build on this module, which imports none of them: the arrows go sources -> hf_parquet / class_index
-> listing, and sources -> listing, never back.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".jpeg", ".jpg")
PARQUET_SUFFIX = ".parquet"


class SourceError(ValueError):
    """The source tree, tar or labels file cannot be turned into labelled samples."""


class SourceForm(str, Enum):
    """The shapes of ImageNet that `shards.write` accepts."""

    IMAGEFOLDER = "imagefolder"  # SRC/<synset>/*.JPEG
    FLAT = "flat"  # SRC/ILSVRC2012_val_*.JPEG + labels file
    VAL_TAR = "val-tar"  # ILSVRC2012_img_val.tar + labels file
    PARQUET = (
        "parquet"  # Hugging Face parquet files (ILSVRC/imagenet-1k data/validation-*.parquet): image + label
    )
    CLASS_INDEX = "class-index"  # SRC/<class index>/*.jpeg, or a .tar.gz of it (ImageNetV2)


@dataclass(frozen=True)
class ImageFile:
    """Where one source image's bytes lie.

    key: the sample key (the file stem); file_name: the source file's base name; location: the file's path, or
    the path of the file holding it when `member` is set (the val tar, or the spool of parquet images);
    offset/size: where its bytes lie inside that file; origin: its name in messages when not `location[:member]`
    (a parquet file and row).
    """

    key: str
    file_name: str
    location: str
    member: str | None = None
    offset: int = 0
    size: int = 0
    origin: str | None = None

    def describe(self) -> str:
        """The image's name for error messages: its origin, its path, or `tar:member`."""
        if self.origin is not None:
            return self.origin
        return f"{self.location}:{self.member}" if self.member is not None else self.location

    def read_bytes(self) -> bytes:
        """The original file bytes, unchanged."""
        if self.member is None:
            return Path(self.location).read_bytes()
        with open(self.location, "rb") as tar_file:
            tar_file.seek(self.offset)
            data = tar_file.read(self.size)
        if len(data) != self.size:
            raise SourceError(f"{self.describe()}: the tar ends inside this member; the tar is truncated")
        return data


@dataclass(frozen=True)
class SourceImage:
    """One labelled source image: its file, its synset and class index (position in the sorted 1,000)."""

    file: ImageFile
    synset: str
    class_index: int

    @property
    def key(self) -> str:
        return self.file.key

    def describe(self) -> str:
        return self.file.describe()


@dataclass(frozen=True)
class SourceListing:
    """All images of a source, sorted by key, with what was found but not used; made: what the manifest's `made`
    section should also record about this form (parquet: files, split, rows without a path)."""

    form: SourceForm
    images: tuple[SourceImage, ...]
    ignored_files: tuple[str, ...]
    unused_labels: int
    made: Mapping[str, Any] = field(default_factory=dict)


def is_image_name(name: str) -> bool:
    """True for the JPEG file names ImageNet uses (`.JPEG`, `.jpg`, any case)."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def stem_of(name: str) -> str:
    """`ILSVRC2012_val_00000001.JPEG` -> `ILSVRC2012_val_00000001` (base name, last suffix removed)."""
    base = os.path.basename(name)
    return base.rsplit(".", 1)[0] if "." in base else base


def parquet_folder_files(folder: Path) -> list[Path]:
    """The parquet files of a folder, or of its `data/` sub-folder (a Hugging Face dataset repo), sorted."""
    for place in (folder, folder / "data"):
        if place.is_dir():
            files = sorted(path for path in place.iterdir() if path.suffix.lower() == PARQUET_SUFFIX)
            files = [path for path in files if path.is_file() and not is_hidden(path.name)]
            if files:
                return files
    return []


def check_keys(images: tuple[SourceImage, ...]) -> None:
    """Keys must be unique (one sample each) and free of dots (webdataset splits names at the first dot)."""
    for image in images:
        if "." in image.key:
            raise SourceError(
                f"{image.describe()}: its stem {image.key!r} contains '.', and webdataset splits sample names "
                "at the first dot; rename the file"
            )
    for previous, current in zip(images, images[1:]):
        if previous.key == current.key:
            raise SourceError(
                f"{previous.describe()} and {current.describe()} share the key {current.key!r}; "
                "sample keys (file stems) must be unique"
            )


@contextmanager
def spool_in(out: Path, name: str) -> Iterator[Path]:
    """The file `out/name` into which a source form copies the image bytes it reads (a parquet file's, a
    tar.gz's), removed when the block ends, and `out` with it if the block created it and it is still empty."""
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    spool = out / name
    try:
        yield spool
    finally:
        spool.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
