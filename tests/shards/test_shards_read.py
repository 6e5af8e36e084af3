"""shards.read: spec resolution, the exactly-once split, the batch stream and its failure accounting.

The last tests use ../shared/assets (500 real photos, DeiT-Tiny weights) and skip when it is absent.
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import REPO, SHARED_ASSETS
from PIL import Image
from shards_testing import hub_offline, tiny_dataset, write_tiny_shards
from torchvision.transforms.functional import pil_to_tensor

import shards.read as shards_read
import shards.remote as shards_remote
from shards.manifest import MANIFEST_NAME, read_manifest
from shards.read import (
    Batch,
    ReadStats,
    ShardBatch,
    ShardCountError,
    ShardReadError,
    check_complete,
    iter_batches,
    read_shard,
    split_shards,
    verify_checksums,
)
from shards.shardset import DataSpecError, ShardInfo, ShardSet, fingerprint_of
from shards.spec import resolve_data
from shards.synsets import imagenet_synsets
from shards.transforms import data_config, eval_transform
from shards.write import WriteConfig, write_manifest_for, write_raw_shard, write_shards

ASSETS = SHARED_ASSETS
SAMPLE_PHOTOS = ASSETS / "imagenet-sample"
DEIT_TINY_WEIGHTS = ASSETS / "weights" / "deit_tiny_patch16_224.pth"


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A cheap transform for tiny images: [3, 32, 32] float32 in [0, 1]."""
    return pil_to_tensor(image).float() / 255


@pytest.fixture
def tiny_shards(tmp_path):
    """12 images in shards of 5, 5, 2 at tmp_path/shards; returns (folder, images)."""
    images = tiny_dataset(n_images=12, n_classes=3)
    write_tiny_shards(tmp_path, images, shard_size=5)
    return tmp_path / "shards", images


def read_all(shards, num_workers=0, batch_size=4, **kwargs) -> tuple[list[Batch], ReadStats]:
    stats = ReadStats()
    batches = list(
        iter_batches(shards, to_tensor, batch_size, num_workers=num_workers, stats=stats, **kwargs)
    )
    return batches, stats


def keys_of(batches: list[Batch]) -> list[str]:
    return [key for batch in batches for key in batch.keys]


# ------------------------------------------------------------------------------------------------ resolve


def test_package_re_exports_the_reading_api():
    import shards

    assert sorted(shards.__all__) == sorted(shards._MODULE_OF)
    for name in shards.__all__:
        assert getattr(shards, name) is not None
    assert shards.resolve_data is resolve_data and shards.ShardInfo is ShardInfo


def test_submodules_are_reachable_from_a_bare_import():
    code = "import shards; print(shards.spec.TOMECIS_DATA_ENV, shards.write.DEFAULT_PREFIX)"
    repo = REPO
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert done.stdout.split() == ["TOMECIS_DATA", "imagenet-val"]


def test_reading_a_stream_imports_neither_resolution_nor_the_hub_client():
    """shards.read imports each name from the module that defines it: no re-export chain through shards.spec
    (which imports shards.remote and shards.hub), no timm (the transforms are the caller's)."""
    heavy = ("shards.spec", "shards.remote", "shards.hub", "shards.transforms", "huggingface_hub", "timm")
    code = f"import sys, shards.read; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_folder_with_manifest_resolves_to_its_shards(tiny_shards):
    folder, _ = tiny_shards
    shardset = resolve_data(str(folder))
    manifest = read_manifest(folder / MANIFEST_NAME)
    assert [shard.name for shard in shardset.shards] == [record.name for record in manifest.shards]
    assert [shard.n_samples for shard in shardset.shards] == [5, 5, 2]
    assert all(Path(shard.url).is_file() for shard in shardset.shards)
    assert (shardset.total, shardset.n_classes) == (12, 1000)
    assert shardset.fingerprint == manifest.fingerprint() and len(shardset.fingerprint) == 16


def test_every_local_spec_form_gives_the_same_shards(tiny_shards, monkeypatch):
    folder, _ = tiny_shards
    reference = resolve_data(folder)
    pattern = f"{folder}/imagenet-val-{{000000..000002}}.tar"
    listed = ",".join(shard.url for shard in reference.shards)
    monkeypatch.setenv("TOMECIS_DATA", pattern)
    for spec in [str(folder / MANIFEST_NAME), pattern, listed, reference.urls, f"file://{folder}", None]:
        assert resolve_data(spec) == reference, spec


def test_part_of_a_folder_by_pattern_keeps_manifest_counts(tiny_shards):
    folder, _ = tiny_shards
    shardset = resolve_data(f"{folder}/imagenet-val-{{000001..000002}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [5, 2]
    assert shardset.total == 7
    assert shardset.fingerprint != resolve_data(folder).fingerprint


def test_shards_without_manifest_have_no_counts(tiny_shards):
    folder, _ = tiny_shards
    (folder / MANIFEST_NAME).unlink()
    shardset = resolve_data(f"{folder}/imagenet-val-{{000000..000002}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [None, None, None]
    assert (shardset.total, shardset.n_classes) == (None, None)
    assert shardset.fingerprint == fingerprint_of(shardset.shards)
    with pytest.raises(DataSpecError, match=r"holds no manifest.json.*brace pattern"):
        resolve_data(folder)


def test_remote_urls_become_readable_urls(monkeypatch):
    asked: list[str] = []

    def no_manifest(url, missing_ok=False):
        asked.append(url)
        return None

    monkeypatch.setattr(shards_remote, "fetch_remote_text", no_manifest)
    shardset = resolve_data(
        "s3://bucket/val/imagenet-val-{000000..000001}.tar,gs://b/v/x-000000.tar,https://h/d/y.tar,pipe:cat /d/z.tar"
    )
    assert shardset.urls == [
        "pipe:aws s3 cp s3://bucket/val/imagenet-val-000000.tar -",
        "pipe:aws s3 cp s3://bucket/val/imagenet-val-000001.tar -",
        "pipe:gsutil cat gs://b/v/x-000000.tar",
        "https://h/d/y.tar",
        "pipe:cat /d/z.tar",
    ]
    assert [shard.name for shard in shardset.shards] == [
        "imagenet-val-000000.tar",
        "imagenet-val-000001.tar",
        "x-000000.tar",
        "y.tar",
        "z.tar",
    ]
    assert shardset.total is None
    assert (
        asked
        == [  # each remote folder is asked once for the manifest beside its shards, then for _info.json
            "s3://bucket/val/manifest.json",
            "s3://bucket/val/_info.json",
            "gs://b/v/manifest.json",
            "gs://b/v/_info.json",
            "https://h/d/manifest.json",
            "https://h/d/_info.json",
        ]
    )


def test_missing_spec_with_the_hub_offline_says_what_to_pass(monkeypatch, tmp_path):
    hub_offline(
        monkeypatch, tmp_path / "hf"
    )  # no spec, no token: ImageNetV2 from the Hub, which is not there
    with pytest.raises(
        DataSpecError, match=r"Tried: ImageNetV2.*Other ways.*TOMECIS_DATA.*manifest.json.*brace pattern"
    ):
        resolve_data()
    assert issubclass(DataSpecError, ValueError)


def test_bad_specs_name_the_culprit(tiny_shards):
    folder, _ = tiny_shards
    with pytest.raises(
        DataSpecError, match=r"imagenet-val-000003.tar \(and 6 more of the 10 it names\).*does not exist"
    ):
        resolve_data(f"{folder}/imagenet-val-{{000000..000009}}.tar")
    with pytest.raises(DataSpecError, match="named twice"):
        resolve_data([f"{folder}/imagenet-val-000000.tar", f"{folder}/imagenet-val-000000.tar"])
    (folder / "imagenet-val-000007.tar").write_bytes(b"")
    with pytest.raises(DataSpecError, match="imagenet-val-000007.tar is not listed"):
        resolve_data(f"{folder}/imagenet-val-000007.tar")


def test_manifest_listing_a_missing_shard_is_an_error(tiny_shards):
    folder, _ = tiny_shards
    (folder / "imagenet-val-000001.tar").unlink()
    with pytest.raises(DataSpecError, match=r"lists imagenet-val-000001.tar, which is missing"):
        resolve_data(folder)


def test_checksum_mismatch_is_found(tiny_shards):
    folder, _ = tiny_shards
    shardset = resolve_data(folder)
    verify_checksums(shardset.shards)
    path = Path(shardset.shards[1].url)
    data = bytearray(path.read_bytes())
    data[700] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardReadError, match="imagenet-val-000001.tar has sha256"):
        verify_checksums(shardset.shards)


# ------------------------------------------------------------------------------------------------ split


def fake_shards(counts: list[int | None]) -> ShardSet:
    shards = tuple(
        ShardInfo(f"/d/s-{i:06d}.tar", f"s-{i:06d}.tar", count, None) for i, count in enumerate(counts)
    )
    return ShardSet(shards=shards, total=None, n_classes=None, fingerprint=fingerprint_of(shards))


@pytest.mark.parametrize("n", range(1, 8))
def test_split_puts_every_shard_in_exactly_one_part(n):
    shardset = fake_shards([1000, 1000, 1000, 500, 1000, 250])
    parts = split_shards(shardset, n)
    assert len(parts) == n
    assert Counter(shard for part in parts for shard in part) == Counter(shardset.shards)
    assert split_shards(shardset, n) == parts  # deterministic
    for part in parts:
        assert list(part) == sorted(part, key=shardset.shards.index)  # original order within a part
    if n > len(shardset.shards):
        assert sum(1 for part in parts if not part) == n - len(shardset.shards)


def test_split_balances_by_sample_count():
    parts = split_shards(fake_shards([1000, 1000, 1000, 1000, 500, 500]), 2)
    assert [sum(shard.n_samples for shard in part) for part in parts] == [2500, 2500]
    parts = split_shards(fake_shards([10, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]), 2)
    assert [sum(shard.n_samples for shard in part) for part in parts] == [10, 10]


def test_split_without_counts_is_round_robin_like():
    parts = split_shards(fake_shards([None] * 5), 2)
    assert [len(part) for part in parts] == [3, 2]


def test_split_refuses_zero_workers():
    with pytest.raises(ValueError, match="at least 1"):
        split_shards(fake_shards([1]), 0)


@pytest.mark.parametrize("n", range(1, 8))
def test_split_parts_read_every_sample_exactly_once(tiny_shards, n):
    folder, images = tiny_shards
    shardset = resolve_data(folder)
    seen: Counter[str] = Counter()
    total = ReadStats()
    for part in split_shards(shardset, n):
        batches, stats = read_all(part)
        seen.update(keys_of(batches))
        total.merge(stats)
    assert seen == Counter(image.key for image in images)
    check_complete(total, shardset.shards)
    assert total.n_images == shardset.total == 12


# ------------------------------------------------------------------------------------------------ read


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_carry_images_labels_and_keys(tiny_shards, num_workers):
    folder, images = tiny_shards
    batches, stats = read_all(resolve_data(folder).shards, num_workers=num_workers, batch_size=4)
    label_of = {image.key: image.class_index for image in images}
    jpeg_of = {image.key: image.jpeg for image in images}
    assert sorted(keys_of(batches)) == sorted(label_of)
    for batch in batches:
        assert 1 <= len(batch.keys) <= 4
        assert batch.images.shape == (len(batch.keys), 3, 32, 32) and batch.images.dtype == torch.float32
        assert batch.labels.dtype == torch.int64
        assert batch.labels.tolist() == [label_of[key] for key in batch.keys]
        for key, image in zip(batch.keys, batch.images):
            from shards.decode import decode_rgb

            assert torch.equal(image, to_tensor(decode_rgb(jpeg_of[key])))
    assert (stats.n_images, stats.n_failed, stats.failures) == (12, 0, [])
    assert stats.per_shard == {shard.url: shard.n_samples for shard in resolve_data(folder).shards}


def test_one_process_reads_shards_in_order(tiny_shards):
    folder, images = tiny_shards
    batches, _ = read_all(resolve_data(folder).shards, batch_size=5)
    assert keys_of(batches) == [image.key for image in images]
    assert [len(batch.keys) for batch in batches] == [5, 5, 2]


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_loader_workers_split_shards_between_them(tiny_shards):
    folder, images = tiny_shards
    shards = resolve_data(folder).shards
    for num_workers in [1, 2, 3, 5]:
        batches, stats = read_all(shards, num_workers=num_workers, batch_size=3)
        assert Counter(keys_of(batches)) == Counter(image.key for image in images), num_workers
        assert stats.n_images == 12


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("num_workers", [0, 2])
def test_with_shards_names_the_true_shard_of_every_key(tiny_shards, num_workers):
    folder, images = tiny_shards
    shards = resolve_data(folder).shards
    true_shard = {}
    for shard in shards:
        for sample in shards_read.samples_of_shard(shard):
            true_shard[sample["__key__"]] = shard.url
    batches, stats = read_all(shards, num_workers=num_workers, batch_size=3, with_shards=True)
    assert all(isinstance(batch, ShardBatch) and len(batch.shards) == len(batch.keys) for batch in batches)
    assert any(len(set(batch.shards)) > 1 for batch in batches) or num_workers  # a batch spanning two shards
    pairs = [(key, url) for batch in batches for key, url in zip(batch.keys, batch.shards)]
    assert sorted(pairs) == sorted(true_shard.items())
    assert len(true_shard) == len(images) == stats.n_images
    plain, _ = read_all(shards, num_workers=num_workers, batch_size=3)
    assert all(type(batch) is Batch for batch in plain)
    for images_, labels, keys in plain:  # the 3-way unpacking keeps working
        assert len(keys) == len(labels) == images_.shape[0]


@pytest.mark.parametrize("num_workers", [0, 3])
def test_an_empty_part_reads_nothing(num_workers):
    stats = ReadStats()
    assert list(iter_batches((), to_tensor, 4, num_workers=num_workers, stats=stats)) == []
    assert stats == ReadStats()


@pytest.fixture
def shards_with_bad_jpeg(tmp_path):
    """One shard of 4: two good images, one that is not a JPEG, one truncated JPEG; manifest beside it."""
    good = tiny_dataset(n_images=4)
    samples = [
        (good[0].key, good[0].jpeg, good[0].class_index),
        (good[1].key, b"definitely not a jpeg", good[1].class_index),
        (good[2].key, good[2].jpeg[: len(good[2].jpeg) // 2], good[2].class_index),
        (good[3].key, good[3].jpeg, good[3].class_index),
    ]
    record = write_raw_shard(tmp_path / "bad-000000.tar", samples)
    write_manifest_for(tmp_path, [record])
    return resolve_data(tmp_path)


@pytest.mark.parametrize("num_workers", [0, 1, 2])
def test_decode_failures_are_counted_and_named(shards_with_bad_jpeg, num_workers):
    shards = shards_with_bad_jpeg.shards
    batches, stats = read_all(shards, num_workers=num_workers)
    assert keys_of(batches) == ["ILSVRC2012_val_00000001", "ILSVRC2012_val_00000004"]
    assert (stats.n_images, stats.n_failed) == (2, 2)
    assert stats.per_shard == {shards[0].url: 4}  # failures count as seen: the manifest check passes
    assert [(failure.shard, failure.key) for failure in stats.failures] == [
        (shards[0].url, "ILSVRC2012_val_00000002"),
        (shards[0].url, "ILSVRC2012_val_00000003"),
    ]
    assert "UnidentifiedImageError" in stats.failures[0].error
    assert "truncated" in stats.failures[1].error.lower()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_truncated_tar_raises_naming_the_shard(tiny_shards, num_workers):
    folder, _ = tiny_shards
    shards = resolve_data(folder).shards
    victim = Path(shards[1].url)
    victim.write_bytes(victim.read_bytes()[:2000])  # ends inside a member's data
    with pytest.raises(ShardReadError, match="imagenet-val-000001.tar"):
        read_all(shards, num_workers=num_workers)


def test_tar_cut_between_members_is_a_count_error(tiny_shards):
    folder, _ = tiny_shards
    shards = resolve_data(folder).shards
    victim = Path(shards[0].url)
    import tarfile

    with tarfile.open(victim) as tar:
        fourth_sample_start = [member for member in tar.getmembers()][9].offset  # 3 members per sample
    victim.write_bytes(victim.read_bytes()[:fourth_sample_start])
    with pytest.raises(
        ShardCountError, match=r"imagenet-val-000000.tar: the manifest says 5 samples, the stream gave 3"
    ):
        read_all(shards)


def test_missing_shard_file_raises_naming_it(tmp_path):
    missing = ShardInfo(str(tmp_path / "gone-000000.tar"), "gone-000000.tar", 5, None)
    with pytest.raises(ShardReadError, match="gone-000000.tar"):
        read_all([missing])


def test_manifest_count_mismatch_is_an_error(tiny_shards):
    folder, _ = tiny_shards
    manifest_path = folder / MANIFEST_NAME
    document = json.loads(manifest_path.read_text())
    document["shards"][2]["n_samples"] = 3
    document["total"] = 13
    manifest_path.write_text(json.dumps(document))
    shards = resolve_data(folder).shards
    with pytest.raises(
        ShardCountError, match=r"imagenet-val-000002.tar: the manifest says 3 samples, the stream gave 2"
    ):
        read_all(shards)
    batches, stats = read_all(shards, check_counts=False)
    assert stats.n_images == 12
    with pytest.raises(ShardCountError, match="imagenet-val-000002.tar"):
        check_complete(stats, shards)


def test_inconsistent_manifest_is_refused(tiny_shards):
    folder, _ = tiny_shards
    manifest_path = folder / MANIFEST_NAME
    document = json.loads(manifest_path.read_text())
    document["total"] = 99
    manifest_path.write_text(json.dumps(document))
    with pytest.raises(DataSpecError, match="total is 99 but its shards hold 12"):
        resolve_data(folder)


def test_check_complete_names_a_shard_never_read(tiny_shards):
    folder, _ = tiny_shards
    shards = resolve_data(folder).shards
    _, stats = read_all(shards[:2])
    with pytest.raises(ShardCountError, match="imagenet-val-000002.tar was never read"):
        check_complete(stats, shards)


def test_pipe_urls_are_read_and_failing_pipes_raise(tiny_shards):
    folder, images = tiny_shards
    shards = resolve_data([f"pipe:cat {shard.url}" for shard in resolve_data(folder).shards]).shards
    batches, stats = read_all(shards)
    assert keys_of(batches) == [image.key for image in images]
    failing = resolve_data(f"pipe:cat {folder}/no-such-shard.tar").shards
    with pytest.raises(ShardReadError, match="no-such-shard.tar"):
        read_all(failing)


@pytest.fixture
def http_server(tiny_shards):
    """The tiny shards folder served over http on localhost; yields its base URL."""
    folder, _ = tiny_shards
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="webdataset reads http(s) shards with curl, which is absent"
)
def test_http_folder_resolves_through_its_manifest_and_reads(tiny_shards, http_server):
    folder, images = tiny_shards
    local = resolve_data(folder)
    remote = resolve_data(http_server + "/")
    assert remote.urls == [f"{http_server}/{shard.name}" for shard in local.shards]
    assert (remote.total, remote.n_classes, remote.fingerprint) == (
        local.total,
        local.n_classes,
        local.fingerprint,
    )
    assert resolve_data(f"{http_server}/{MANIFEST_NAME}") == remote
    batches, stats = read_all(remote.shards, num_workers=2)
    assert Counter(keys_of(batches)) == Counter(image.key for image in images)
    with pytest.raises(DataSpecError, match="cannot fetch manifest"):
        resolve_data(f"{http_server}/elsewhere/")


def cut_before_sample(shard: Path, sample_index: int) -> None:
    """Cut a shard exactly where its sample_index-th sample (3 members each) begins: a member boundary."""
    import tarfile

    with tarfile.open(shard) as tar:
        start = tar.getmembers()[3 * sample_index].offset
    shard.write_bytes(shard.read_bytes()[:start])


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="webdataset reads http(s) shards with curl, which is absent"
)
def test_http_brace_pattern_uses_the_manifest_beside_it(tiny_shards, http_server):
    folder, _ = tiny_shards
    shardset = resolve_data(f"{http_server}/imagenet-val-{{000000..000002}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [5, 5, 2]
    assert (shardset.total, shardset.n_classes) == (12, 1000)
    assert shardset.fingerprint == resolve_data(folder).fingerprint
    cut_before_sample(folder / "imagenet-val-000001.tar", 3)
    with pytest.raises(
        ShardCountError, match=r"imagenet-val-000001.tar: the manifest says 5 samples, the stream gave 3"
    ):
        read_all(shardset)


def test_http_shard_not_in_the_manifest_beside_it_is_an_error(tiny_shards, http_server):
    folder, _ = tiny_shards
    shutil.copy(folder / "imagenet-val-000000.tar", folder / "imagenet-val-000009.tar")
    with pytest.raises(
        DataSpecError, match=r"imagenet-val-000009.tar is not listed in http://.*/manifest.json"
    ):
        resolve_data(f"{http_server}/imagenet-val-000009.tar")


def test_http_shards_without_a_manifest_beside_them_have_no_counts(tiny_shards, http_server):
    folder, _ = tiny_shards
    (folder / MANIFEST_NAME).unlink()
    shardset = resolve_data(f"{http_server}/imagenet-val-{{000000..000002}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [None, None, None]
    assert shardset.total is None


def test_unreachable_manifest_beside_remote_shards_is_an_error(tiny_shards, http_server, monkeypatch):
    def server_error(url, missing_ok=False):
        raise DataSpecError(f"cannot fetch manifest {url} (HTTP Error 500)")

    monkeypatch.setattr(shards_remote, "_fetch_http_text", server_error)
    with pytest.raises(
        DataSpecError, match=r"cannot fetch manifest http://.*/manifest.json \(HTTP Error 500\)"
    ):
        resolve_data(f"{http_server}/imagenet-val-000000.tar")


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="webdataset reads http(s) shards with curl, which is absent"
)
def test_signed_http_shard_urls_are_shards_not_folders(tiny_shards, http_server):
    folder, images = tiny_shards
    signed = f"{http_server}/imagenet-val-000000.tar?sig=a%2Fb&expires=1"
    shardset = resolve_data([signed])
    (shard,) = shardset.shards
    assert (shard.url, shard.name, shard.n_samples) == (signed, "imagenet-val-000000.tar", 5)
    batches, stats = read_all(shardset)
    assert keys_of(batches) == [image.key for image in images[:5]]
    folder_signed = resolve_data(f"{http_server}/?sig=x")  # a folder URL keeps its query for each shard
    assert folder_signed.urls == [f"{http_server}/imagenet-val-{i:06d}.tar?sig=x" for i in range(3)]
    assert resolve_data(f"{http_server}/{MANIFEST_NAME}?sig=x") == folder_signed


def test_signed_shard_url_whose_manifest_is_forbidden_reads_without_counts_and_warns(monkeypatch):
    import urllib.error

    def forbidden(url, timeout):
        raise urllib.error.HTTPError(url, 403, "Forbidden", {}, None)

    monkeypatch.setattr(shards_remote.urllib.request, "urlopen", forbidden)
    with pytest.warns(UserWarning, match=r"manifest.json\?X-Amz-Signature=s .*403.*without manifest counts"):
        shardset = resolve_data(["https://bucket.s3.example/val/imagenet-val-000000.tar?X-Amz-Signature=s"])
    assert [(shard.name, shard.n_samples) for shard in shardset.shards] == [("imagenet-val-000000.tar", None)]
    with pytest.raises(DataSpecError, match="403"):  # unsigned: a refused manifest is not taken as absent
        resolve_data("https://bucket.s3.example/val/imagenet-val-000000.tar")


def test_stopping_early_does_not_hang_on_a_pipe(tiny_shards):
    folder, _ = tiny_shards
    shards = resolve_data([f"pipe:cat {shard.url}" for shard in resolve_data(folder).shards]).shards
    stream = iter_batches(shards, to_tensor, batch_size=2)
    first = next(stream)
    stream.close()
    assert len(first.keys) == 2


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iter_batches_and_check_complete_accept_a_shardset(tiny_shards, num_workers):
    folder, images = tiny_shards
    shardset = resolve_data(folder)
    batches, stats = read_all(shardset, num_workers=num_workers)
    assert Counter(keys_of(batches)) == Counter(image.key for image in images)
    check_complete(stats, shardset)
    _, partial = read_all(shardset.shards[:2])
    with pytest.raises(ShardCountError, match="imagenet-val-000002.tar was never read"):
        check_complete(partial, shardset)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_class_index_outside_0_to_999_or_not_an_integer_is_a_named_failure(tmp_path, num_workers):
    good = tiny_dataset(n_images=5)
    labels = [good[0].class_index, 1000, -1, "seven", 999]
    record = write_raw_shard(
        tmp_path / "cls-000000.tar", [(image.key, image.jpeg, label) for image, label in zip(good, labels)]
    )
    write_manifest_for(tmp_path, [record])
    shardset = resolve_data(tmp_path)
    batches, stats = read_all(shardset, num_workers=num_workers)
    assert keys_of(batches) == [good[0].key, good[4].key]
    assert [batch.labels.tolist() for batch in batches] == [[good[0].class_index, 999]]
    url = shardset.shards[0].url
    assert [(failure.shard, failure.key) for failure in stats.failures] == [
        (url, image.key) for image in good[1:4]
    ]
    assert "class index 1000 is outside 0..999" in stats.failures[0].error
    assert "class index -1 is outside 0..999" in stats.failures[1].error
    assert "bad class index b'seven'" in stats.failures[2].error
    assert (stats.n_images, stats.n_failed, stats.per_shard) == (2, 3, {url: 5})


def refuse_small_images(image: Image.Image) -> torch.Tensor:
    """A transform that raises on images under 32 px (module level: DataLoader workers pickle it)."""
    if image.size != (32, 32):
        raise ValueError(f"expected 32x32, got {image.size}")
    return to_tensor(image)


def transform_returning_a_list(image: Image.Image) -> list:
    return [image]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_transform_errors_are_named_failures_of_their_sample(tmp_path, num_workers):
    from shards_testing import tiny_jpeg_bytes

    good = tiny_dataset(n_images=3)
    samples = [(image.key, image.jpeg, image.class_index) for image in good]
    samples[1] = (good[1].key, tiny_jpeg_bytes(seed=1, side=16), good[1].class_index)
    write_manifest_for(tmp_path, [write_raw_shard(tmp_path / "tf-000000.tar", samples)])
    shardset = resolve_data(tmp_path)
    stats = ReadStats()
    batches = list(iter_batches(shardset, refuse_small_images, 4, num_workers=num_workers, stats=stats))
    assert keys_of(batches) == [good[0].key, good[2].key]
    (failure,) = stats.failures
    assert (failure.shard, failure.key) == (shardset.shards[0].url, good[1].key)
    assert failure.error == "the transform failed: ValueError: expected 32x32, got (16, 16)"
    assert (stats.n_images, stats.n_failed) == (2, 1)
    stats = ReadStats()
    assert list(iter_batches(shardset, transform_returning_a_list, 4, stats=stats)) == []
    assert [failure.error for failure in stats.failures] == ["the transform returned list, not a tensor"] * 3


def test_read_shard_returns_batches_and_checked_stats(tiny_shards):
    folder, images = tiny_shards
    shard = resolve_data(folder).shards[0]
    batches, stats = read_shard(shard, to_tensor, batch_size=2)
    assert keys_of(batches) == [image.key for image in images[:5]]
    assert stats.per_shard == {shard.url: 5}


def test_deit_eval_transform_is_resize_248_bicubic_crop_224():
    config = data_config("deit_tiny_patch16_224")
    assert config["input_size"] == (3, 224, 224)
    assert (config["interpolation"], config["crop_pct"]) == ("bicubic", 0.9)
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406)) and config["std"] == pytest.approx(
        (0.229, 0.224, 0.225)
    )
    text = repr(eval_transform("deit_tiny_patch16_224"))
    assert "Resize(size=248, interpolation=bicubic" in text and "CenterCrop(size=(224, 224))" in text
    image = Image.new("RGB", (500, 375), (120, 30, 200))
    assert eval_transform(config)(image).shape == (3, 224, 224)


def test_eval_transform_from_a_model():
    import timm

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    assert data_config(model) == data_config("deit_tiny_patch16_224")


# ------------------------------------------------------------------------------------------------ assets

needs_assets = pytest.mark.skipif(
    not SAMPLE_PHOTOS.is_dir() or not DEIT_TINY_WEIGHTS.is_file(),
    reason=f"needs ../shared/assets (imagenet-sample and DeiT-Tiny weights) at {ASSETS}, which is absent",
)


@pytest.fixture(scope="module")
def sample_shards(tmp_path_factory):
    """The 500 sample photos written as shards of 100 (2 writer processes)."""
    out = tmp_path_factory.mktemp("sample-shards")
    write_shards(WriteConfig(src=SAMPLE_PHOTOS, out=out, shard_size=100, workers=2, progress=False))
    return resolve_data(out)


@pytest.fixture(scope="module")
def deit_tiny():
    import timm

    model = timm.create_model("deit_tiny_patch16_224", pretrained=False)
    model.load_state_dict(torch.load(DEIT_TINY_WEIGHTS, map_location="cpu")["model"])
    return model.eval()


def sample_photo_paths() -> list[Path]:
    return sorted(SAMPLE_PHOTOS.glob("*/*.JPEG"), key=lambda path: path.stem)


@pytest.mark.assets
@pytest.mark.slow
@needs_assets
def test_sample_photos_read_back_with_their_class_indices(sample_shards):
    assert (sample_shards.total, len(sample_shards.shards)) == (500, 5)
    synsets = imagenet_synsets()
    expected = {path.stem: synsets.index(path.parent.name) for path in sample_photo_paths()}
    stats = ReadStats()
    labels: dict[str, int] = {}
    for batch in iter_batches(sample_shards.shards, to_tensor_small, 50, num_workers=2, stats=stats):
        labels.update(zip(batch.keys, batch.labels.tolist()))
    assert labels == expected
    assert sorted(set(labels.values())) == list(range(0, 1000, 2))  # the even class indices
    assert (stats.n_images, stats.n_failed) == (500, 0)


def to_tensor_small(image: Image.Image) -> torch.Tensor:
    return pil_to_tensor(image.resize((16, 16))).float()


@pytest.mark.assets
@pytest.mark.slow
@needs_assets
def test_deit_tiny_top1_is_the_same_through_shards_as_through_a_folder(sample_shards, deit_tiny):
    transform = eval_transform(deit_tiny)
    synsets = imagenet_synsets()

    shard_predictions: dict[str, tuple[int, int]] = {}
    with torch.no_grad():
        for images, labels, keys in iter_batches(sample_shards.shards, transform, 50, num_workers=2):
            predicted = deit_tiny(images).argmax(dim=1)
            shard_predictions.update(zip(keys, zip(predicted.tolist(), labels.tolist())))

    folder_predictions: dict[str, tuple[int, int]] = {}
    paths = sample_photo_paths()
    with torch.no_grad():
        for start in range(0, len(paths), 50):
            chunk = paths[start : start + 50]
            images = torch.stack([transform(Image.open(path).convert("RGB")) for path in chunk])
            predicted = deit_tiny(images).argmax(dim=1)
            labels = [synsets.index(path.parent.name) for path in chunk]
            folder_predictions.update(zip((path.stem for path in chunk), zip(predicted.tolist(), labels)))

    assert shard_predictions == folder_predictions
    correct = sum(predicted == label for predicted, label in shard_predictions.values())
    assert correct == sum(predicted == label for predicted, label in folder_predictions.values())
    assert 0.6 < correct / 500 < 0.95, f"top-1 {correct / 500:.3f}: real weights give about 0.8"
