"""Helpers for tests: tiny labelled JPEG datasets in every source form, and shards made from them.

    images = tiny_dataset(n_images=12, n_classes=3)        # keys ILSVRC2012_val_00000001..12, real synsets
    src = make_imagefolder(tmp_path / "val", images)       # or make_flat_folder / make_val_tar + write_val_txt
    summary = write_tiny_shards(tmp_path, images, shard_size=5)   # tmp_path/shards: 3 shards + manifest.json

Everything is deterministic: the same arguments give the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .manifest import Manifest, ShardRecord, sha256_of_file
from .synsets import N_IMAGENET_CLASSES, imagenet_synsets
from .write import WriteConfig, WriteSummary, open_tar_writer, write_shards

TINY_SIDE = 32


@dataclass(frozen=True)
class TinyImage:
    """A generated labelled image: key (val-style stem), synset, class index and its JPEG bytes."""

    key: str
    synset: str
    class_index: int
    jpeg: bytes

    @property
    def file_name(self) -> str:
        return f"{self.key}.JPEG"


def tiny_jpeg_bytes(seed: int, side: int = TINY_SIDE) -> bytes:
    """A deterministic side x side RGB JPEG: a colour gradient plus seeded noise blocks."""
    rng = random.Random(seed)
    base = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
    image = Image.new("RGB", (side, side), base)
    pixels = image.load()
    for y in range(side):
        for x in range(side):
            noise = rng.randrange(64)
            pixels[x, y] = ((base[0] + 4 * x + noise) % 256, (base[1] + 4 * y) % 256, (base[2] + noise) % 256)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def tiny_dataset(
    n_images: int = 12, n_classes: int = 3, side: int = TINY_SIDE, first_class: int = 0
) -> list[TinyImage]:
    """n_images images `ILSVRC2012_val_{i:08d}` (i from 1), classes round-robin over real synsets."""
    synsets = imagenet_synsets()
    images = []
    for i in range(n_images):
        class_index = first_class + (i * 7) % n_classes
        images.append(
            TinyImage(
                key=f"ILSVRC2012_val_{i + 1:08d}",
                synset=synsets[class_index],
                class_index=class_index,
                jpeg=tiny_jpeg_bytes(seed=i, side=side),
            )
        )
    return images


def make_imagefolder(root: Path, images: Sequence[TinyImage]) -> Path:
    """root/<synset>/<key>.JPEG for every image; returns root."""
    for image in images:
        folder = root / image.synset
        folder.mkdir(parents=True, exist_ok=True)
        (folder / image.file_name).write_bytes(image.jpeg)
    return root


def make_flat_folder(root: Path, images: Sequence[TinyImage]) -> Path:
    """root/<key>.JPEG for every image (labels go in a separate file); returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for image in images:
        (root / image.file_name).write_bytes(image.jpeg)
    return root


def make_val_tar(path: Path, images: Sequence[TinyImage]) -> Path:
    """An uncompressed tar of `<key>.JPEG` members, like ILSVRC2012_img_val.tar; returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for image in images:
            member = tarfile.TarInfo(image.file_name)
            member.size = len(image.jpeg)
            tar.addfile(member, io.BytesIO(image.jpeg))
    return path


def write_val_txt(path: Path, images: Sequence[TinyImage]) -> Path:
    """`ILSVRC2012_val_00000001.JPEG 65` lines (the common val.txt); returns path."""
    path.write_text("".join(f"{image.file_name} {image.class_index}\n" for image in images), encoding="utf-8")
    return path


def write_loc_csv(path: Path, images: Sequence[TinyImage]) -> Path:
    """Kaggle's LOC_val_solution.csv: `ImageId,PredictionString` with boxes after the synset; returns path."""
    with open(path, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["ImageId", "PredictionString"])
        for image in images:
            writer.writerow([image.key, f"{image.synset} 1 2 30 31 {image.synset} 3 4 20 21 "])
    return path


def write_tiny_shards(
    root: Path,
    images: Sequence[TinyImage] | None = None,
    *,
    shard_size: int = 5,
    workers: int = 1,
    prefix: str = "imagenet-val",
) -> WriteSummary:
    """ImageFolder at root/src from `images` (default tiny_dataset()), shards + manifest in root/shards."""
    images = tiny_dataset() if images is None else images
    source = make_imagefolder(root / "src", images)
    config = WriteConfig(
        src=source, out=root / "shards", prefix=prefix, shard_size=shard_size, workers=workers, progress=False
    )
    return write_shards(config)


def write_raw_shard(path: Path, samples: Sequence[tuple[str, bytes, int]]) -> ShardRecord:
    """A shard of (key, image bytes, class index) as given, bad bytes included; returns its manifest record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(path, "wb") as stream,
        open_tar_writer(stream) as writer,
    ):
        for key, image_bytes, class_index in samples:
            writer.write(
                {
                    "__key__": key,
                    "jpg": image_bytes,
                    "cls": str(class_index).encode("ascii"),
                    "json": json.dumps({"file": f"{key}.JPEG"}).encode("utf-8"),
                }
            )
    return ShardRecord(name=path.name, n_samples=len(samples), sha256=sha256_of_file(path))


def write_manifest_for(folder: Path, records: Sequence[ShardRecord]) -> Path:
    """manifest.json in `folder` listing `records` (for hand-made shards); returns its path."""
    manifest = Manifest(
        shards=tuple(records),
        total=sum(record.n_samples for record in records),
        n_classes=N_IMAGENET_CLASSES,
        n_classes_present=0,
        made={"tool": "shards.testing"},
    )
    return manifest.write(folder)
