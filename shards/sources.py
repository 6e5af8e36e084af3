"""Where ImageNet images come from: an ImageFolder tree, a flat folder plus labels, the val tar plus labels,
Hugging Face parquet files (listed by `shards.hf_parquet`), or a folder or tar.gz of class-index folders
(ImageNetV2's layout, listed by `shards.class_index`).

Every form is reduced to the same thing: a list of `SourceImage`s sorted by key (the file stem), each knowing
its class and how to read its original bytes. The val set in any of its forms therefore gives the same list.
`open_source` is the one entry for every form (what `shards.write` calls). The types and key rules every form
shares live in `shards.listing`; this module imports `shards.hf_parquet` and `shards.class_index`, which never
import it back.
"""

from __future__ import annotations

import csv
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .class_index import class_index_images, is_class_index_name, is_gzip_file
from .hf_parquet import spooled_parquet_images
from .listing import (
    PARQUET_SUFFIX,
    ImageFile,
    SourceError,
    SourceForm,
    SourceImage,
    SourceListing,
    check_keys,
    is_hidden,
    is_image_name,
    parquet_folder_files,
    stem_of,
)
from .synsets import synset_at, synset_index

TAR_BLOCK = 512  # tar headers and data are laid out in 512-byte blocks; a zero block marks the archive's end
SYNSET_PATTERN = re.compile(r"^n\d{8}$")
MAX_NAMED_IN_ERROR = 5
PASS_A_SOURCE = (
    "pass an ImageFolder tree, a folder of JPEGs, the val tar, Hugging Face parquet files, or a folder or tar.gz "
    "of class-index folders (ImageNetV2)"
)


def detect_form(src: Path) -> SourceForm:
    """Which shape `src` has; an error says what was expected when it has none of them."""
    if src.is_file():
        if src.suffix.lower() == PARQUET_SUFFIX:
            return SourceForm.PARQUET
        if is_gzip_file(src):
            return SourceForm.CLASS_INDEX  # the one compressed form: ImageNetV2's tar.gz
        if tarfile.is_tarfile(src):
            return SourceForm.VAL_TAR
        raise SourceError(f"{src} is a file but not a tar or parquet file; {PASS_A_SOURCE}")
    if not src.is_dir():
        raise SourceError(f"{src} does not exist; {PASS_A_SOURCE}")
    if parquet_folder_files(src):
        return SourceForm.PARQUET
    entries = [entry for entry in os.scandir(src) if not is_hidden(entry.name)]
    has_dirs = any(entry.is_dir() for entry in entries)
    has_images = any(entry.is_file() and is_image_name(entry.name) for entry in entries)
    if has_dirs and has_images:
        raise SourceError(
            f"{src} holds both sub-folders and JPEG files; an ImageFolder tree holds only <synset>/ folders, "
            "a flat folder only JPEGs"
        )
    if has_dirs and all(is_class_index_name(entry.name) for entry in entries if entry.is_dir()):
        return SourceForm.CLASS_INDEX
    if has_dirs:
        return SourceForm.IMAGEFOLDER
    if has_images:
        return SourceForm.FLAT
    raise SourceError(f"{src} holds no JPEG files, no <synset>/ folders and no parquet files")


@contextmanager
def open_source(
    src_paths: Sequence[Path], labels: Path | None, split: str | None, out: Path, progress: bool = False
) -> Iterator[SourceListing]:
    """The labelled images of any source form; parquet images and those of a class-index tar.gz are spooled into
    `out` while the block runs (`progress`: a bar while a tar.gz is read)."""
    form = detect_form(src_paths[0]) if len(src_paths) == 1 else SourceForm.PARQUET
    if form is not SourceForm.PARQUET and split is not None:
        raise SourceError(f"`split={split}` chooses among parquet files; {src_paths[0]} holds none: drop it")
    if form is SourceForm.CLASS_INDEX:
        if labels is not None:
            raise SourceError(
                f"{src_paths[0]} holds class-index folders, whose names are the labels; drop `labels={labels}`"
            )
        with class_index_images(src_paths[0], out, progress) as listing:
            yield listing
        return
    if form is not SourceForm.PARQUET:
        yield list_source_images(src_paths[0], labels)
        return
    if labels is not None:
        raise SourceError(f"parquet rows carry their labels; drop `labels={labels}`")
    with spooled_parquet_images(src_paths, split, out) as listing:
        yield listing


def list_source_images(src: Path, labels: Path | None) -> SourceListing:
    """Every labelled image of `src` (any accepted form), sorted by key; keys checked unique and dot-free."""
    form = detect_form(src)
    if form is SourceForm.PARQUET:
        raise SourceError(f"{src} holds parquet files: list them with shards.hf_parquet.list_parquet_images")
    if form is SourceForm.CLASS_INDEX:
        raise SourceError(
            f"{src} holds class-index folders: list them with shards.class_index.class_index_images"
        )
    if form is SourceForm.IMAGEFOLDER:
        if labels is not None:
            raise SourceError(
                f"{src} is an ImageFolder tree, whose folder names are the labels; drop `labels={labels}`"
            )
        images, ignored = _imagefolder_images(src)
        unused = 0
    else:
        if labels is None:
            kind = "a tar" if form is SourceForm.VAL_TAR else "a flat folder of JPEGs"
            raise SourceError(
                f"{src} is {kind}, which carries no labels: pass `labels=FILE` "
                "(val.txt lines 'ILSVRC2012_val_00000001.JPEG 65', or Kaggle's LOC_val_solution.csv)"
            )
        synset_by_key = read_labels(labels)
        if form is SourceForm.VAL_TAR:
            files, ignored = _tar_images(src, synset_by_key, labels)
        else:
            files, ignored = _flat_images(src)
        images = _attach_labels(files, synset_by_key, labels)
        unused = len(synset_by_key) - len(images)
    ordered = tuple(sorted(images, key=lambda image: image.key))
    check_keys(ordered)
    return SourceListing(
        form=form, images=ordered, ignored_files=tuple(sorted(ignored)), unused_labels=unused
    )


def _imagefolder_images(root: Path) -> tuple[list[SourceImage], list[str]]:
    images: list[SourceImage] = []
    ignored: list[str] = []
    class_dirs = [entry for entry in os.scandir(root) if entry.is_dir() and not is_hidden(entry.name)]
    for class_dir in sorted(class_dirs, key=lambda entry: entry.name):
        if not SYNSET_PATTERN.match(class_dir.name):
            raise SourceError(
                f"{class_dir.path}: folder name {class_dir.name!r} is not a synset (nXXXXXXXX); "
                "SRC must be the folder holding the <synset>/ folders (e.g. .../val, not its parent)"
            )
        index = synset_index(class_dir.name, where=f"folder {class_dir.path}")
        for path in _walk_files(Path(class_dir.path)):
            if not is_image_name(path.name):
                ignored.append(str(path))
                continue
            image_file = ImageFile(key=stem_of(path.name), file_name=path.name, location=str(path))
            images.append(SourceImage(file=image_file, synset=class_dir.name, class_index=index))
    return images, ignored


def _walk_files(folder: Path) -> list[Path]:
    """Non-hidden files under `folder`, recursively, in sorted order."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not is_hidden(name))
        found.extend(Path(dirpath) / name for name in sorted(filenames) if not is_hidden(name))
    return found


def _flat_images(folder: Path) -> tuple[list[ImageFile], list[str]]:
    """Each JPEG directly in `folder`, plus the paths of the other (ignored) files."""
    files: list[ImageFile] = []
    ignored: list[str] = []
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if is_hidden(entry.name) or not entry.is_file():
            continue
        if is_image_name(entry.name):
            files.append(ImageFile(key=stem_of(entry.name), file_name=entry.name, location=entry.path))
        else:
            ignored.append(entry.path)
    return files, ignored


def _tar_images(
    tar_path: Path, synset_by_key: dict[str, str], labels: Path
) -> tuple[list[ImageFile], list[str]]:
    """Each JPEG member of an uncompressed tar (located by offset), plus the other (ignored) members.

    The tar must end with its end-of-archive marker: tarfile stops quietly at a cut on a member boundary or
    inside a header, which would otherwise give a silent subset.
    """
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            members = tar.getmembers()
    except tarfile.ReadError as error:
        raise SourceError(
            f"{tar_path}: cannot read it as an uncompressed tar ({error}); it is compressed (decompress it "
            "first) or truncated or damaged (re-download or re-copy it)"
        ) from error
    files: list[ImageFile] = []
    ignored: list[str] = []
    for member in members:
        if not member.isfile():
            continue
        name = os.path.basename(member.name)
        if is_hidden(name) or not is_image_name(name):
            ignored.append(f"{tar_path}:{member.name}")
            continue
        files.append(
            ImageFile(
                key=stem_of(name),
                file_name=name,
                location=str(tar_path),
                member=member.name,
                offset=member.offset_data,
                size=member.size,
            )
        )
    unused = len(set(synset_by_key) - {image_file.key for image_file in files})
    _check_tar_ends(
        tar_path, members, f"{unused} of the {len(synset_by_key)} labels in {labels} have no image in it"
    )
    return files, ignored


def _check_tar_ends(tar_path: Path, members: list[tarfile.TarInfo], labels_note: str) -> None:
    """Raise SourceError unless a full zero block (the end-of-archive marker) follows the last member's data."""
    end = _end_of_member(members[-1]) if members else 0
    with open(tar_path, "rb") as tar_file:
        tar_file.seek(end)
        block = tar_file.read(TAR_BLOCK)
    if len(block) == TAR_BLOCK and block.count(0) == TAR_BLOCK:
        return
    last = f"its last member {members[-1].name}" if members else "its start"
    if not block:
        found = f"the file ends right after {last}, with no end-of-archive marker"
    elif len(block) < TAR_BLOCK:
        found = f"the file ends inside the header after {last}"
    else:
        found = f"the block after {last} is neither a member header nor the end-of-archive marker"
    raise SourceError(
        f"{tar_path}: {found} (byte {end} of {tar_path.stat().st_size}); the tar looks truncated or damaged "
        f"({labels_note}): re-download or re-copy it"
    )


def _end_of_member(member: tarfile.TarInfo) -> int:
    """Byte offset just past a member's data, padded to whole blocks: where the next header starts."""
    return member.offset_data + member.size + _padding(member.size)


def _padding(size: int) -> int:
    return -size % TAR_BLOCK


def _attach_labels(files: list[ImageFile], synset_by_key: dict[str, str], labels: Path) -> list[SourceImage]:
    missing = [image_file.describe() for image_file in files if image_file.key not in synset_by_key]
    if missing:
        named = ", ".join(missing[:MAX_NAMED_IN_ERROR])
        more = f" and {len(missing) - MAX_NAMED_IN_ERROR} more" if len(missing) > MAX_NAMED_IN_ERROR else ""
        raise SourceError(
            f"labels file {labels} has no label for {named}{more}; use the labels file that belongs to these images"
        )
    return [
        SourceImage(
            file=image_file,
            synset=synset_by_key[image_file.key],
            class_index=synset_index(synset_by_key[image_file.key], where=f"label of {image_file.file_name}"),
        )
        for image_file in files
    ]


def read_labels(path: Path) -> dict[str, str]:
    """Labels file -> {file stem: synset}.

    Accepts `name index` lines (the common val.txt; index in sorted-synset order), `name synset` lines, or
    Kaggle's LOC_val_solution.csv (header `ImageId,PredictionString`, synset = first token of column two).
    """
    if not path.is_file():
        raise SourceError(f"labels file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    first_line = next((line for line in text.splitlines() if line.strip()), "")
    if first_line.startswith("ImageId") or path.suffix.lower() == ".csv":
        return _read_loc_csv(path, text)
    return _read_name_label_lines(path, text)


def _read_loc_csv(path: Path, text: str) -> dict[str, str]:
    synset_by_key: dict[str, str] = {}
    for line_number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or (line_number == 1 and row[0] == "ImageId"):
            continue
        if len(row) < 2 or not row[1].split():
            raise SourceError(f"{path}:{line_number}: expected 'ImageId,PredictionString', found {row!r}")
        synset = row[1].split()[0]
        synset_index(synset, where=f"{path}:{line_number}")
        _add_label(synset_by_key, stem_of(row[0].strip()), synset, f"{path}:{line_number}")
    return synset_by_key


def _read_name_label_lines(path: Path, text: str) -> dict[str, str]:
    synset_by_key: dict[str, str] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{line_number}"
        if len(fields) != 2:
            raise SourceError(
                f"{where}: expected 'filename class-index' (or 'filename synset'), found {line!r}"
            )
        name, label = fields
        if label.isdigit():
            synset = synset_at(int(label), where=where)
        else:
            synset_index(label, where=where)
            synset = label
        _add_label(synset_by_key, stem_of(name), synset, where)
    return synset_by_key


def _add_label(synset_by_key: dict[str, str], key: str, synset: str, where: str) -> None:
    known = synset_by_key.get(key)
    if known is not None and known != synset:
        raise SourceError(
            f"{where}: {key} is labelled {synset} here but {known} earlier; fix the labels file"
        )
    synset_by_key[key] = synset
