"""ImageNetV2's layout as a source of labelled images for `shards.write`: a folder, or a gzip-compressed tar
(`imagenetv2-matched-frequency.tar.gz` as the Hub holds it), whose sub-folders are named by class index.

    imagenetv2-matched-frequency-format-val/0/7e5ea1a6….jpeg    class 0 (tench), one of 10 images
    …/999/…                                                     class 999

A folder is that tree's class-index level (SRC/0/, SRC/1/, …). In a tar every image's parent folder is its
class index, under any common top folder. An image's key is `<file stem>_<class index>` (unique even if two
classes shared a file name), so the sorted keys mix the classes as the file hashes do. A compressed tar cannot
be read by offset: its images are appended to a spool file in the output folder while the shards are written
(as `shards.hf_parquet` does for parquet rows), so a tar and its extracted folder give the same shards byte for
byte. The spool is removed when the shards are written (or the run fails).
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .listing import (
    ImageFile,
    SourceError,
    SourceForm,
    SourceImage,
    SourceListing,
    check_keys,
    is_hidden,
    is_image_name,
    spool_in,
    stem_of,
)
from .synsets import N_IMAGENET_CLASSES, synset_at

SPOOL_NAME = ".class-index-images.partial"
GZIP_MAGIC = b"\x1f\x8b"


def is_class_index_name(name: str) -> bool:
    """True for a folder name that is a class index: digits only (`0`, `17`, `999`)."""
    return name.isdigit() and name.isascii()


def is_gzip_file(path: Path) -> bool:
    with open(path, "rb") as stream:
        return stream.read(len(GZIP_MAGIC)) == GZIP_MAGIC


@contextmanager
def class_index_images(src: Path, out: Path, progress: bool = False) -> Iterator[SourceListing]:
    """The images of a class-index folder, or of a compressed tar of one (its bytes spooled into `out` while the
    block runs; `progress`: a bar over the tar's bytes while it is read)."""
    if src.is_dir():
        yield list_class_index_folder(src)
        return
    with spool_in(out, SPOOL_NAME) as spool:
        yield list_class_index_tar(src, spool, progress)


def list_class_index_folder(root: Path) -> SourceListing:
    """Every image under root/<class index>/, sorted by key; other files are listed as ignored."""
    images: list[SourceImage] = []
    ignored: list[str] = []
    class_dirs = [entry for entry in os.scandir(root) if entry.is_dir() and not is_hidden(entry.name)]
    for class_dir in sorted(class_dirs, key=lambda entry: int(entry.name) if entry.name.isdigit() else -1):
        class_index = _class_index(class_dir.name, class_dir.path)
        for dirpath, dirnames, filenames in os.walk(class_dir.path):
            dirnames[:] = sorted(name for name in dirnames if not is_hidden(name))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if is_hidden(name):
                    continue
                if not is_image_name(name):
                    ignored.append(str(path))
                    continue
                image_file = ImageFile(key=_key(name, class_index), file_name=name, location=str(path))
                images.append(_labelled(image_file, class_index, str(path)))
    return _listing(images, ignored, {"class_index_source": "folder"})


def list_class_index_tar(tar_path: Path, spool: Path, progress: bool = False) -> SourceListing:
    """Every image member of a (compressed) tar whose parent folder is a class index, its bytes appended to
    `spool`; read as a stream, in one pass (with a bar over its bytes when `progress`). An image outside a
    class-index folder is an error naming it."""
    images: list[SourceImage] = []
    ignored: list[str] = []
    bar = tqdm(
        total=tar_path.stat().st_size,
        unit="B",
        unit_scale=True,
        desc=f"reading {tar_path.name}",
        disable=not progress,
    )
    try:
        with (
            bar,
            open(tar_path, "rb") as raw,
            tarfile.open(fileobj=_CountedReads(raw, bar), mode="r|*") as tar,
            open(spool, "wb") as spool_file,
        ):
            for member in tar:
                if member.isfile():
                    _take_member(tar, member, tar_path, spool, spool_file, images, ignored)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise SourceError(
            f"{tar_path}: cannot read it to its end as a tar ({error}); it is truncated or damaged: "
            "re-download it"
        ) from error
    return _listing(images, ignored, {"class_index_source": "tar"})


def _take_member(tar, member, tar_path: Path, spool: Path, spool_file, images: list, ignored: list) -> None:
    """One regular member: an image is spooled and listed with its class; anything else is ignored."""
    parts = member.name.strip("/").split("/")
    name, origin = parts[-1], f"{tar_path}:{member.name}"
    if is_hidden(name) or not is_image_name(name):
        ignored.append(origin)
        return
    if len(parts) < 2 or not is_class_index_name(parts[-2]):
        raise SourceError(
            f"{origin} is an image outside a class-index folder; a class-index tar holds <class index>/<image> "
            "(ImageNetV2's layout), under one top folder at most"
        )
    class_index = _class_index(parts[-2], origin)
    data = tar.extractfile(member).read()
    offset = spool_file.tell()
    spool_file.write(data)
    image_file = ImageFile(
        key=_key(name, class_index),
        file_name=name,
        location=str(spool),
        member=member.name,
        offset=offset,
        size=len(data),
        origin=origin,
    )
    images.append(_labelled(image_file, class_index, origin))


class _CountedReads:
    """A binary file whose reads advance a progress bar by the bytes they return (tarfile's stream mode reads
    only)."""

    def __init__(self, stream, bar: tqdm) -> None:
        self._stream, self._bar = stream, bar

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._bar.update(len(data))
        return data


def _key(name: str, class_index: int) -> str:
    return f"{stem_of(name)}_{class_index}"


def _class_index(name: str, where: str) -> int:
    if not is_class_index_name(name) or int(name) >= N_IMAGENET_CLASSES:
        raise SourceError(
            f"{where}: folder name {name!r} is not a class index 0..{N_IMAGENET_CLASSES - 1}; a class-index "
            "source holds one folder per class named by its index (ImageNetV2's layout)"
        )
    return int(name)


def _labelled(image_file: ImageFile, class_index: int, where: str) -> SourceImage:
    return SourceImage(file=image_file, synset=synset_at(class_index, where=where), class_index=class_index)


def _listing(images: list[SourceImage], ignored: list[str], made: dict) -> SourceListing:
    ordered = tuple(sorted(images, key=lambda image: image.key))
    check_keys(ordered)
    return SourceListing(
        SourceForm.CLASS_INDEX,
        ordered,
        ignored_files=tuple(sorted(ignored)),
        unused_labels=0,
        made={**made, "key": "<file stem>_<class index>"},
    )
