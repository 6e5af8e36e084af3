"""Step 2: the shards the decode pass reads: ``--data``, or written once into the report folder from a
folder of photos (``--photos``, default the sample beside or inside the checkout), each photo repeated so
that the data path runs long enough to time on a GPU; and the small once-over set the CPU fp32 run reads."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import List, Optional

from .config import GPU_IMAGES, SAMPLE_PLACES, SHARD_SIZE, GpuCheckConfig

COPY_SUFFIX = re.compile(r"_copy\d+$")


def photo_folder(cfg: GpuCheckConfig) -> Path:
    """``--photos``, else the first of ``SAMPLE_PLACES`` that exists; neither is an error naming them."""
    if cfg.photos:
        if not Path(cfg.photos).is_dir():
            raise FileNotFoundError(f"--photos {cfg.photos}: no such folder")
        return Path(cfg.photos)
    found = next((place for place in SAMPLE_PLACES if place.exists()), None)
    if found is None:
        places = " or ".join(str(p) for p in SAMPLE_PLACES)
        raise FileNotFoundError(
            f"no --data, no --photos, and no sample photos at {places} to write shards from"
        )
    return found


def list_photos(folder: Path, limit: Optional[int]) -> List[Path]:
    """The ``<synset>/<name>.JPEG`` files of an ImageFolder tree, sorted by path, the first ``limit``."""
    from shards.sources import is_image_name  # the names shards.write takes for ImageNet photos

    photos = sorted(p for p in folder.glob("*/*") if is_image_name(p.name) and p.is_file())
    if not photos:
        raise FileNotFoundError(
            f"no photos in {folder}: it must hold <synset>/<name>.JPEG files (ImageFolder)"
        )
    return photos[:limit] if limit else photos


def sample_shards(cfg: GpuCheckConfig) -> str:
    """``--data``, else shards written once into the report folder from the photos (the first
    ``photos_limit`` of them, ``repeat`` times over, keys ``<file stem>_copyNN``), so that the data path runs
    long enough to be timed against a GPU; 250 images a shard, so that every loader worker has one."""
    if cfg.data:
        return cfg.data
    files = list_photos(photo_folder(cfg), cfg.photos_limit)
    return write_photo_shards(files, cfg.repeat or max(1, math.ceil(GPU_IMAGES / len(files))), Path(cfg.out))


def reference_shards(cfg: GpuCheckConfig) -> str:
    """What the CPU fp32 run reads: the first ``agree_images`` photos once each (keys ``<stem>_copy00``),
    or, with ``--data``, that data itself (the run keeps its first whole shards holding that many)."""
    if cfg.data:
        return cfg.data
    files = list_photos(photo_folder(cfg), min(cfg.photos_limit, cfg.agree_images))
    return write_photo_shards(files, 1, Path(cfg.out))


def write_photo_shards(files: List[Path], repeat: int, out: Path) -> str:
    """Shards of ``files``, ``repeat`` times over, in ``out/shards-<n>x<repeat>-<hash of the names>``
    (written once: a rerun finds them)."""
    from shards.synsets import synset_index
    from shards.write import write_manifest_for, write_raw_shard

    which = hashlib.sha256("\n".join(f"{p.parent.name}/{p.name}" for p in files).encode()).hexdigest()[:8]
    target = out / f"shards-{len(files)}x{repeat}-{which}"
    if (target / "manifest.json").exists():
        return str(target)
    photos = [(p.stem, p.read_bytes(), synset_index(p.parent.name, where=str(p))) for p in files]
    width = max(2, len(str(repeat - 1)))
    samples = sorted(
        (f"{stem}_copy{k:0{width}d}", data, label) for k in range(repeat) for stem, data, label in photos
    )
    records = [
        write_raw_shard(target / f"sample-{i // SHARD_SIZE:06d}.tar", samples[i : i + SHARD_SIZE])
        for i in range(0, len(samples), SHARD_SIZE)
    ]
    write_manifest_for(target, records)
    return str(target)


def photo_key(key: str) -> str:
    """The photo a sample key shows: ``<stem>_copyNN`` -> ``<stem>``; any other key is its own photo."""
    return COPY_SUFFIX.sub("", key)
