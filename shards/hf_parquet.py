"""Hugging Face parquet files of ImageNet-1k (`ILSVRC/imagenet-1k`: data/validation-00000-of-00014.parquet, …) as
a source of labelled images for `shards.write`.

Each row holds `image` = {`bytes`: the original JPEG, `path`: its file name, e.g. ILSVRC2012_val_00000001.JPEG}
and `label` (0..999, timm's sorted-synset order). Files are read with pyarrow in row batches (a 6 GB split is
never loaded at once); each image's bytes are appended to a spool file in the output folder, from which the
shard writers read them by offset like members of the val tar, so the shards equal those of the other forms
byte for byte. A row without a path is keyed `<parquet file stem>_row<row number in its file, 8 digits>`, and
the manifest says so. The spool is removed when the shards are written (or the run fails).
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .listing import (
    PARQUET_SUFFIX,
    ImageFile,
    SourceError,
    SourceForm,
    SourceImage,
    SourceListing,
    check_keys,
    parquet_folder_files,
    spool_in,
    stem_of,
)
from .synsets import N_IMAGENET_CLASSES, synset_at

SPOOL_NAME = ".parquet-images.partial"
ROWS_PER_BATCH = 256
HF_FILE_NAME = re.compile(r"^(?P<split>[A-Za-z0-9_]+)-\d+-of-\d+\.parquet$", re.IGNORECASE)
DEFAULT_SPLIT = "validation"
MAX_KEYS_LISTED = 100
ROW_KEY_PATTERN = "<parquet file stem>_row<row number in the file, from 0, 8 digits>"
EXPECTED_COLUMNS = (
    "columns image (struct of bytes and path) and label (class index), as in ILSVRC/imagenet-1k"
)


@contextmanager
def spooled_parquet_images(
    src_paths: Sequence[Path], split: str | None, out: Path
) -> Iterator[SourceListing]:
    """The rows of the parquet files (or folder) `src_paths`, of `split`, as a listing whose bytes are spooled
    into `out` while the block runs (`shards.sources.open_source`, which imports this module, dispatches here for the parquet form)."""
    files, chosen_split = parquet_files(src_paths, split)
    with spool_in(out, SPOOL_NAME) as spool:
        yield list_parquet_images(files, chosen_split, spool)


def parquet_files(src_paths: Sequence[Path], split: str | None) -> tuple[list[Path], str | None]:
    """The parquet files to read and their split: a folder's (or its data/'s) files of one split, or files as given."""
    if len(src_paths) == 1 and src_paths[0].is_dir():
        return _choose_split(parquet_folder_files(src_paths[0]), split, src_paths[0])
    for path in src_paths:
        if path.suffix.lower() != PARQUET_SUFFIX or not path.is_file():
            raise SourceError(
                f"{path} is not a parquet file; several sources must all be parquet files "
                "(data/validation-*.parquet), other forms come one at a time"
            )
    if split is not None:
        raise SourceError(
            f"`split={split}` chooses among a folder's parquet files; name that split's files instead"
        )
    return sorted(set(src_paths)), None


def _choose_split(files: list[Path], split: str | None, folder: Path) -> tuple[list[Path], str | None]:
    """The files of `split`; None: the only split there, else validation (Hugging Face names: SPLIT-00000-of-N)."""
    by_split: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        match = HF_FILE_NAME.match(path.name)
        by_split[match["split"] if match else ""].append(path)
    names = ", ".join(sorted(name or "(unnamed)" for name in by_split))
    if split is None:
        split = next(iter(by_split)) if len(by_split) == 1 else DEFAULT_SPLIT
    if split not in by_split:
        raise SourceError(
            f"{folder} holds parquet files of the splits {names}, not {split!r}: choose with `split`"
        )
    return by_split[split], split or None


def list_parquet_images(files: Sequence[Path], split: str | None, spool: Path) -> SourceListing:
    """Every row of `files` as a SourceImage (bytes spooled to `spool`), sorted by key; keys checked unique."""
    images: list[SourceImage] = []
    without_path: list[str] = []
    with open(spool, "wb") as spool_file:
        for file in files:
            for row, image_bytes, path, label in _rows_of(file):
                offset = spool_file.tell()
                spool_file.write(image_bytes)
                image = _source_image(file, row, path, label, (spool, offset, len(image_bytes)))
                images.append(image)
                if not path:
                    without_path.append(image.key)
    ordered = tuple(sorted(images, key=lambda image: image.key))
    check_keys(ordered)
    made: dict[str, Any] = {"parquet_files": [str(file) for file in files], "split": split}
    made["rows_without_path"] = len(without_path)
    if without_path:
        made["key_of_row_without_path"] = ROW_KEY_PATTERN
        made["rows_without_path_keys"] = sorted(without_path)[:MAX_KEYS_LISTED]
    return SourceListing(SourceForm.PARQUET, ordered, ignored_files=(), unused_labels=0, made=made)


def _rows_of(file: Path) -> Iterator[tuple[int, bytes, str | None, Any]]:
    """(row number, image bytes, path or None, label) for every row, read ROWS_PER_BATCH rows at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        has_path = _image_has_path(parquet.schema_arrow, file)
        row = 0
        for batch in parquet.iter_batches(batch_size=ROWS_PER_BATCH, columns=["image", "label"]):
            data, paths = _bytes_and_paths(batch.column("image"), has_path)
            for index, label in enumerate(batch.column("label").to_pylist()):
                yield row, _image_bytes(data[index], file, row), paths[index] if paths else None, label
                row += 1
    except (pa.ArrowException, OSError) as error:
        raise SourceError(f"{file}: cannot read it as parquet ({error}); re-download it") from error


def _bytes_and_paths(column: Any, has_path: bool) -> tuple[list, list | None]:
    """A batch's image column -> (image bytes, paths or None); flatten() respects a sliced batch's offset."""
    import pyarrow as pa

    if not pa.types.is_struct(column.type):
        return column.to_pylist(), None
    children = dict(zip((field.name for field in column.type), column.flatten()))
    return children["bytes"].to_pylist(), children["path"].to_pylist() if has_path else None


def _image_has_path(schema: Any, file: Path) -> bool:
    """Whether the `image` column holds a path beside the bytes; a schema without image and label is an error."""
    import pyarrow as pa

    names = schema.names
    if "image" not in names or "label" not in names:
        raise SourceError(f"{file} has the columns {names}; expected {EXPECTED_COLUMNS}")
    image_type = schema.field("image").type
    if pa.types.is_struct(image_type):
        fields = [image_type.field(index).name for index in range(image_type.num_fields)]
        if "bytes" not in fields:
            raise SourceError(
                f"{file}: its image column has the fields {fields}, no bytes; expected {EXPECTED_COLUMNS}"
            )
        return "path" in fields
    if pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type):
        return False
    raise SourceError(f"{file}: its image column is {image_type}; expected {EXPECTED_COLUMNS}")


def _image_bytes(value: Any, file: Path, row: int) -> bytes:
    if not value:
        raise SourceError(f"{file} row {row} has no image bytes; re-download the file")
    return value


def _source_image(
    file: Path, row: int, path: str | None, label: Any, where: tuple[Path, int, int]
) -> SourceImage:
    """One row as a SourceImage whose bytes lie in the spool at (spool, offset, size)."""
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < N_IMAGENET_CLASSES:
        raise SourceError(
            f"{file} row {row}: label {label!r} is not a class index 0..{N_IMAGENET_CLASSES - 1} "
            "(the test split has label -1: convert the validation split)"
        )
    name = os.path.basename(path) if path else None
    key = stem_of(name) if name else f"{stem_of(file.name)}_row{row:08d}"
    spool, offset, size = where
    image_file = ImageFile(
        key=key,
        file_name=name or f"{file.name}:row{row}",
        location=str(spool),
        member=f"{file.name} row {row}",
        offset=offset,
        size=size,
        origin=f"{file} row {row}" + (f" ({name})" if name else " (no path)"),
    )
    return SourceImage(file=image_file, synset=synset_at(label), class_index=label)
