"""shards.write from Hugging Face parquet (ILSVRC/imagenet-1k's form): the same shards as the ImageFolder route.

Uses real JPEGs from ../shared/assets when present (a few of them; all 500 in the slow test), else generated ones.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from conftest import SAMPLE_IMAGES
from shards_testing import (
    TinyImage,
    images_of_imagefolder,
    make_hf_parquet,
    make_imagefolder,
    tiny_dataset,
)

from shards.hf_parquet import SPOOL_NAME
from shards.manifest import MANIFEST_NAME, read_manifest
from shards.sources import SourceError
from shards.write import WriteConfig, main, write_shards

SAMPLE_PHOTOS = SAMPLE_IMAGES


def labelled_images(n: int) -> list[TinyImage]:
    """n real sample photos (two per class, spread over the classes) when the assets are here, else generated."""
    if SAMPLE_PHOTOS.is_dir():
        photos = images_of_imagefolder(SAMPLE_PHOTOS)
        return sorted(photos[:: max(len(photos) // n, 1)][:n], key=lambda image: image.key)
    return tiny_dataset(n_images=n, n_classes=5)


def write(src, out: Path, **overrides) -> WriteConfig:
    config = WriteConfig(src=src, out=out, progress=False, **{"shard_size": 5, **overrides})
    write_shards(config)
    return config


def samples_of(folder: Path) -> list[tuple[str, dict[str, bytes]]]:
    """(key, {suffix: bytes}) of every sample of every shard, in shard order."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, suffix = member.name.split(".", 1)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][suffix] = tar.extractfile(member).read()
    return samples


def split_into_parquet(folder: Path, images: list[TinyImage], n_files: int, **kwargs) -> list[Path]:
    """images over n_files Hugging Face-named parquet files (rows not in key order: reversed)."""
    images = list(reversed(images))
    size = -(-len(images) // n_files)
    return [
        make_hf_parquet(
            folder / f"validation-{i:05d}-of-{n_files:05d}.parquet",
            images[i * size : (i + 1) * size],
            **kwargs,
        )
        for i in range(n_files)
    ]


def test_parquet_gives_the_same_shards_as_the_imagefolder_sample_by_sample(tmp_path):
    images = labelled_images(13)
    write(make_imagefolder(tmp_path / "val", images), tmp_path / "from-folder")
    split_into_parquet(tmp_path / "hf" / "data", images, n_files=3, rows_per_group=2)
    write(tmp_path / "hf", tmp_path / "from-parquet")  # the repo root: its data/ folder is found

    from_parquet, from_folder = samples_of(tmp_path / "from-parquet"), samples_of(tmp_path / "from-folder")
    assert [key for key, _ in from_parquet] == sorted(image.key for image in images)
    for (key, sample), image in zip(from_parquet, sorted(images, key=lambda image: image.key)):
        assert (key, sample["jpg"], int(sample["cls"])) == (image.key, image.jpeg, image.class_index)
    assert from_parquet == from_folder
    parquet_manifest = read_manifest(tmp_path / "from-parquet" / MANIFEST_NAME)
    folder_manifest = read_manifest(tmp_path / "from-folder" / MANIFEST_NAME)
    assert parquet_manifest.shards == folder_manifest.shards  # byte-identical shards: same sha256s
    assert parquet_manifest.fingerprint() == folder_manifest.fingerprint()
    made = parquet_manifest.made
    assert (made["source_form"], made["split"], made["rows_without_path"]) == ("parquet", "validation", 0)
    assert [Path(name).name for name in made["parquet_files"]] == [
        f"validation-{i:05d}-of-00003.parquet" for i in range(3)
    ]
    assert not (tmp_path / "from-parquet" / SPOOL_NAME).exists()


def test_cli_takes_several_parquet_files_and_prints_the_summary(tmp_path, capsys):
    images = labelled_images(8)
    files = split_into_parquet(tmp_path / "data", images, n_files=2)
    write(make_imagefolder(tmp_path / "val", images), tmp_path / "from-folder")
    argv = [*map(str, reversed(files)), "--out", str(tmp_path / "out"), "--shard-size", "5", "--no-progress"]
    assert main(argv) == 0
    assert "wrote 8 images" in capsys.readouterr().out
    assert samples_of(tmp_path / "out") == samples_of(tmp_path / "from-folder")
    assert read_manifest(tmp_path / "out" / MANIFEST_NAME).made["source"] == [
        str(path) for path in reversed(files)
    ]


def test_rows_are_read_in_batches_never_the_whole_file(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    import shards.hf_parquet

    def refuse(*args, **kwargs):
        raise AssertionError("a whole parquet file was read at once")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)
    monkeypatch.setattr(shards.hf_parquet, "ROWS_PER_BATCH", 3)
    batch_sizes = []
    real_iter_batches = pq.ParquetFile.iter_batches

    def counting_iter_batches(self, *args, **kwargs):
        for batch in real_iter_batches(self, *args, **kwargs):
            batch_sizes.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", counting_iter_batches)
    images = tiny_dataset(n_images=10)
    make_hf_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", images, rows_per_group=4)
    write(tmp_path / "data", tmp_path / "out")
    assert max(batch_sizes) <= 3 and sum(batch_sizes) == 10
    samples = samples_of(tmp_path / "out")  # batches cut across row groups keep every row's own bytes
    assert [(key, sample["jpg"], int(sample["cls"])) for key, sample in samples] == [
        (image.key, image.jpeg, image.class_index) for image in images
    ]


def test_a_row_without_path_is_keyed_by_its_file_and_row_and_the_manifest_says_so(tmp_path, capsys):
    images = tiny_dataset(n_images=6)
    make_hf_parquet(
        tmp_path / "data" / "validation-00000-of-00001.parquet", images, without_path=[images[4].key]
    )
    assert main([str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert (
        "1 parquet row has no image path, keyed <parquet file stem>_row<row number" in capsys.readouterr().out
    )
    keyed = "validation-00000-of-00001_row00000004"
    samples = dict(samples_of(tmp_path / "out"))
    assert sorted(samples) == sorted([image.key for image in images if image is not images[4]] + [keyed])
    assert samples[keyed]["jpg"] == images[4].jpeg and int(samples[keyed]["cls"]) == images[4].class_index
    assert json.loads(samples[keyed]["json"])["file"] == "validation-00000-of-00001.parquet:row4"
    made = read_manifest(tmp_path / "out" / MANIFEST_NAME).made
    assert (made["rows_without_path"], made["rows_without_path_keys"]) == (1, [keyed])
    assert made["key_of_row_without_path"].startswith("<parquet file stem>_row<row number in the file")


def test_a_folder_of_several_splits_reads_validation_unless_told(tmp_path):
    images = tiny_dataset(n_images=6)
    make_hf_parquet(
        tmp_path / "data" / "train-00000-of-00001.parquet", tiny_dataset(n_images=3, first_class=7)
    )
    make_hf_parquet(tmp_path / "data" / "validation-00000-of-00001.parquet", images)
    test_rows = [
        TinyImage(f"ILSVRC2012_test_{i:08d}", "", -1, image.jpeg) for i, image in enumerate(images[:2], 1)
    ]
    test_file = make_hf_parquet(tmp_path / "data" / "test-00000-of-00001.parquet", test_rows)
    write(tmp_path / "data", tmp_path / "val")
    assert [key for key, _ in samples_of(tmp_path / "val")] == [image.key for image in images]
    write(tmp_path / "data", tmp_path / "train", split="train")
    assert len(samples_of(tmp_path / "train")) == 3
    with pytest.raises(
        SourceError, match=rf"{test_file} row 0: label -1 is not a class index 0..999 .*validation"
    ):
        write(tmp_path / "data", tmp_path / "test", split="test")
    assert not (tmp_path / "test").exists()  # nothing left behind, not even the spool
    with pytest.raises(SourceError, match=r"splits test, train, validation, not 'extra'"):
        write(tmp_path / "data", tmp_path / "x", split="extra")


def test_parquet_mistakes_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = tiny_dataset(n_images=4)
    good = make_hf_parquet(tmp_path / "a" / "validation-00000-of-00002.parquet", images)
    twin = make_hf_parquet(tmp_path / "a" / "validation-00001-of-00002.parquet", images[:1])
    with pytest.raises(SourceError, match=rf"{good} row 0 .*and {twin} row 0 .*share the key"):
        write(tmp_path / "a", tmp_path / "out")
    other = tmp_path / "b" / "validation-00000-of-00001.parquet"
    other.parent.mkdir()
    pq.write_table(pa.table({"img": [b"x"], "label": [1]}), other)
    with pytest.raises(SourceError, match=r"has the columns \['img', 'label'\]; expected columns image"):
        write(other, tmp_path / "out")
    with pytest.raises(SourceError, match="parquet rows carry their labels; drop `labels="):
        write(good, tmp_path / "out", labels=tmp_path / "val.txt")
    with pytest.raises(SourceError, match="is not a parquet file"):
        write((good, make_imagefolder(tmp_path / "val", images)), tmp_path / "out")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"junk.parquet: cannot read it as parquet"):
        write(tmp_path / "junk.parquet", tmp_path / "out")


@pytest.mark.slow
@pytest.mark.assets
def test_the_500_sample_photos_through_parquet_equal_the_imagefolder_shards(tmp_path):
    if not SAMPLE_PHOTOS.is_dir():
        pytest.skip(
            f"needs {SAMPLE_PHOTOS} (the real data in ../shared/assets), which is absent on this machine"
        )
    photos = images_of_imagefolder(SAMPLE_PHOTOS)
    split_into_parquet(tmp_path / "data", photos, n_files=4, rows_per_group=64)
    write(tmp_path / "data", tmp_path / "from-parquet", shard_size=100, workers=2)
    write(SAMPLE_PHOTOS, tmp_path / "from-folder", shard_size=100, workers=2)
    parquet_manifest = read_manifest(tmp_path / "from-parquet" / MANIFEST_NAME)
    assert parquet_manifest.total == 500
    assert parquet_manifest.shards == read_manifest(tmp_path / "from-folder" / MANIFEST_NAME).shards
