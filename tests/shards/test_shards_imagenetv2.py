"""ImageNetV2 with nothing prepared: the class-index source form (a folder or the Hub's tar.gz) written as shards,
and the named set `imagenetv2` (the default with no data and no token) downloaded once through `huggingface_hub`
from a stand-in Hub on 127.0.0.1, cached as shards, reused without a request; offline, one quick error.
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from shards_testing import (
    IMAGENETV2_TOP,
    hub_offline,
    imagenetv2_name,
    make_class_index_folder,
    make_imagenetv2_tar,
    serve_hub,
    tiny_dataset,
)

from shards.listing import SourceError
from shards.manifest import MANIFEST_NAME, read_manifest
from shards.named import NAMED_SETS, shards_cache_dir
from shards.read import ReadStats, iter_batches
from shards.shardset import DataSpecError
from shards.spec import resolve_data
from shards.write import WriteConfig, write_shards

REPO = "vaishaal/ImageNetV2"
TARBALL = "imagenetv2-matched-frequency.tar.gz"
TOKEN = "hf_standin_token_for_tests"


@pytest.fixture
def images():
    """30 tiny images over 7 classes, among them 999 (the last class index); the 6 of class 999 repeat the bytes,
    hence the file names, of 6 others: keys stay unique (`<stem>_<class index>`)."""
    return tiny_dataset(n_images=24, n_classes=6) + tiny_dataset(n_images=6, n_classes=1, first_class=999)


@pytest.fixture
def hub_repo(tmp_path, images) -> Path:
    """The stand-in's copy of vaishaal/ImageNetV2: the matched-frequency tar.gz and a smaller top-images one."""
    repo = tmp_path / "repo"
    make_imagenetv2_tar(repo / TARBALL, images)
    make_imagenetv2_tar(
        repo / "imagenetv2-top-images.tar.gz", images[:9], top="imagenetv2-top-images-format-val"
    )
    return repo


@pytest.fixture
def fresh_machine(monkeypatch, tmp_path):
    """No --data, no $TOMECIS_DATA, no $HF_TOKEN, an empty $HF_HOME; `fresh_machine(hub)` points $HF_ENDPOINT at a
    running stand-in (before that, at a port where nothing listens)."""
    hub_offline(monkeypatch, tmp_path / "hf")

    def point_at(hub) -> None:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)

    return point_at


def labels_read(shardset) -> dict[str, int]:
    labels: dict[str, int] = {}
    stats = ReadStats()
    for batch in iter_batches(shardset, lambda image: torch.zeros(1), batch_size=8, stats=stats):
        labels.update(zip(batch.keys, batch.labels.tolist()))
    assert stats.n_failed == 0 and stats.n_images == len(labels)
    return labels


def expected_labels(images) -> dict[str, int]:
    return {
        f"{imagenetv2_name(image)[: -len('.jpeg')]}_{image.class_index}": image.class_index
        for image in images
    }


def shard_state(folder: Path) -> dict[str, float]:
    return {path.name: path.stat().st_mtime_ns for path in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------------ the source form


def test_a_class_index_tar_and_its_extracted_folder_give_the_same_shards(tmp_path, images):
    tarball = make_imagenetv2_tar(tmp_path / TARBALL, images)
    folder = make_class_index_folder(tmp_path / "extracted", images)
    from_tar = write_shards(WriteConfig(src=tarball, out=tmp_path / "a", shard_size=8, progress=False))
    from_folder = write_shards(
        WriteConfig(src=folder, out=tmp_path / "b", shard_size=8, workers=2, progress=False)
    )
    assert from_tar.manifest.shards == from_folder.manifest.shards  # names, counts and sha256, byte for byte
    assert [record.n_samples for record in from_tar.manifest.shards] == [8, 8, 8, 6]
    made = from_tar.manifest.made
    assert made["source_form"] == "class-index" and made["class_index_source"] == "tar"
    assert made["ignored_files"] == [f"{tarball}:{IMAGENETV2_TOP}/README.txt"]
    assert from_folder.manifest.made["class_index_source"] == "folder"
    assert from_tar.manifest.n_classes_present == 7
    assert not [
        path.name for path in (tmp_path / "a").iterdir() if path.name.startswith(".")
    ]  # spool removed
    assert labels_read(resolve_data(tmp_path / "a")) == expected_labels(images)


def test_class_index_sources_that_do_not_fit_are_named(tmp_path, images):
    folder = make_class_index_folder(tmp_path / "bad", images[:4])
    (folder / "1000").mkdir()
    with pytest.raises(SourceError, match=r"bad/1000: folder name '1000' is not a class index 0..999"):
        write_shards(WriteConfig(src=folder, out=tmp_path / "out", progress=False))
    stray = tmp_path / "stray.tar.gz"
    with tarfile.open(stray, "w:gz") as tar:
        member = tarfile.TarInfo("top/photos/x.jpeg")
        member.size = 0
        tar.addfile(member)
    with pytest.raises(
        SourceError, match=r"stray.tar.gz:top/photos/x.jpeg is an image outside a class-index"
    ):
        write_shards(WriteConfig(src=stray, out=tmp_path / "out", progress=False))
    with pytest.raises(SourceError, match=r"whose names are the labels; drop `labels="):
        write_shards(
            WriteConfig(src=stray, out=tmp_path / "out", labels=tmp_path / "val.txt", progress=False)
        )
    cut = tmp_path / "cut.tar.gz"
    whole = make_imagenetv2_tar(tmp_path / "whole.tar.gz", images).read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(SourceError, match=r"cut.tar.gz: cannot read it to its end as a tar .*re-download it"):
        write_shards(WriteConfig(src=cut, out=tmp_path / "cut-out", progress=False))
    assert not (tmp_path / "out").exists() and not (tmp_path / "cut-out").exists()


# ------------------------------------------------------------------------------------------------ the named set


def test_no_data_no_token_downloads_imagenetv2_once_and_then_asks_nothing(
    hub_repo, images, fresh_machine, tmp_path
):
    said: list[str] = []
    with serve_hub({REPO: hub_repo}, cdn=True) as hub:
        fresh_machine(hub)
        shardset = resolve_data(announce=said.append)
        cache = shards_cache_dir() / "imagenetv2"
        assert said[0] == (
            f"data: ImageNetV2 matched-frequency is not cached yet: downloading hf://datasets/{REPO}/{TARBALL} "
            f"(1.26 GB) once into {tmp_path / 'hf' / 'hub'}, then writing it as shards into {cache}"
        )
        assert said[1].startswith(
            "data: no --data, no $TOMECIS_DATA and no $HF_TOKEN: reading ImageNetV2 matched-frequency: 30 images "
            f"in 1 shards from {cache} (manifest.json); ImageNetV2 top-1 runs about 10 points below ImageNet-1k val"
        )
        assert (shardset.title, shardset.total, shardset.n_classes) == (
            "ImageNetV2 matched-frequency",
            30,
            1000,
        )
        downloads = hub.downloads()
        assert [(request.server, request.path) for request in downloads] == [
            ("cdn", f"/cdn/{REPO}/{TARBALL}")
        ]
        assert all(request.authorization is None for request in hub.requests)  # no token given, none sent
        made = read_manifest(cache / MANIFEST_NAME).made
        assert made["dataset_title"] == "ImageNetV2 matched-frequency"
        assert made["hub"] == f"hf://datasets/{REPO}/{TARBALL}" and made["source_form"] == "class-index"
        assert sorted(path.name for path in cache.parent.iterdir()) == [
            "imagenetv2"
        ]  # no partial folder left
        assert labels_read(shardset) == expected_labels(images)
        before, state = len(hub.requests), shard_state(cache)
        again = resolve_data("imagenetv2", announce=said.append)
        assert len(hub.requests) == before and shard_state(cache) == state  # nothing asked, nothing written
        assert again == shardset and said[-1].startswith("data: ImageNetV2 matched-frequency: 30 images")
    assert resolve_data("IMAGENETV2", announce=said.append) == shardset  # the stand-in is gone: still cached


def test_the_other_imagenetv2_files_by_name(hub_repo, images, fresh_machine):
    with serve_hub({REPO: hub_repo}) as hub:
        fresh_machine(hub)
        shardset = resolve_data("imagenetv2-top-images", announce=lambda line: None)
    assert (shardset.title, shardset.total) == ("ImageNetV2 top-images", 9)
    assert [shard.name for shard in shardset.shards] == ["imagenetv2-top-images-000000.tar"]
    assert set(NAMED_SETS) == {"imagenetv2", "imagenetv2-threshold0.7", "imagenetv2-top-images"}


def test_a_dropped_download_resumes_where_it_broke_off(hub_repo, images, fresh_machine, monkeypatch):
    monkeypatch.setattr(
        huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 1024
    )  # so 4 kB reach the disk first
    with serve_hub({REPO: hub_repo}, cut_after=4096) as hub:
        fresh_machine(hub)
        shardset = resolve_data(announce=lambda line: None)
        gets = [request for request in hub.downloads() if request.path.endswith(TARBALL)]
    assert [request.range for request in gets] == [None, "bytes=4096-"]
    assert labels_read(shardset) == expected_labels(images)


def test_a_damaged_cache_says_what_to_do_and_the_cached_tarball_is_written_again_without_the_hub(
    hub_repo, fresh_machine
):
    with serve_hub({REPO: hub_repo}) as hub:
        fresh_machine(hub)
        first = resolve_data(announce=lambda line: None)
    cache = shards_cache_dir() / "imagenetv2"
    (cache / first.shards[0].name).unlink()
    with pytest.raises(
        DataSpecError, match=rf"missing from .*; or remove {cache} to have ImageNetV2 matched"
    ):
        resolve_data(announce=lambda line: None)
    for path in cache.iterdir():
        path.unlink()
    rewritten = resolve_data(
        announce=lambda line: None
    )  # the Hub is gone: the tar.gz in its cache, written again
    assert rewritten == first and (cache / MANIFEST_NAME).is_file()


def test_offline_with_nothing_cached_is_one_quick_error_naming_the_ways(fresh_machine, monkeypatch):
    said: list[str] = []
    started = time.perf_counter()
    with pytest.raises(DataSpecError) as error:
        resolve_data(announce=said.append)
    assert time.perf_counter() - started < 5
    message = str(error.value)
    assert message.startswith("cannot reach the Hub at http://127.0.0.1:")
    for part in (
        f"for hf://datasets/{REPO}/{TARBALL}",
        "Tried: ImageNetV2 matched-frequency (the default: no --data, no $TOMECIS_DATA and no $HF_TOKEN)",
        "its shards are not cached in",
        "--data or $TOMECIS_DATA: pass a shard folder holding manifest.json",
        "set $HF_TOKEN",
        "python -m shards.write",
    ):
        assert part in message
    assert not (shards_cache_dir() / "imagenetv2").exists()
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # with a token the default is timm's ImageNet: tried, and named so
    with pytest.raises(DataSpecError, match=r"Tried: hf://datasets/timm/imagenet-1k-wds \(the default when"):
        resolve_data()


def test_a_refusing_hub_says_what_to_do_and_never_shows_the_token(hub_repo, fresh_machine, monkeypatch):
    with serve_hub({REPO: hub_repo}, token=TOKEN) as hub:
        fresh_machine(hub)
        monkeypatch.setenv("HF_TOKEN", "hf_wrong")
        with pytest.raises(
            DataSpecError, match=r"HTTP 401; \$HF_TOKEN is set but was refused\): .*accept its terms"
        ):
            resolve_data("imagenetv2", announce=lambda line: None)
        monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(DataSpecError, match=r"HTTP 401; \$HF_TOKEN is not set\)") as refused:
            resolve_data("imagenetv2", announce=lambda line: None)
        assert "hf_wrong" not in str(refused.value)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert resolve_data("imagenetv2", announce=lambda line: None).total == 30
        assert {request.authorization for request in hub.requests if request.server == "hub"} >= {
            f"Bearer {TOKEN}"
        }
    assert TOKEN not in json.dumps(read_manifest(shards_cache_dir() / "imagenetv2" / MANIFEST_NAME).made)
