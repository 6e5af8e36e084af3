"""timm's WebDataset layout (`timm/imagenet-1k-wds`: shards + _info.json), read in place: locally, and over a local
stand-in for $HF_ENDPOINT (hf:// URLs, HF_TOKEN checked by the server); the default data when HF_TOKEN is set.

Nothing leaves this machine: the stand-in serves on 127.0.0.1, and HF_ENDPOINT always points at it.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from conftest import SAMPLE_IMAGES
from shards_testing import (
    TinyImage,
    hub_offline,
    images_of_imagefolder,
    serve_hub,
    tiny_dataset,
    write_timm_wds,
    write_tiny_shards,
)

from shards.hub import HubPath, parse_hub_url
from shards.read import ReadStats, ShardCountError, ShardReadError, iter_batches
from shards.shardset import DataSpecError, fingerprint_of
from shards.spec import resolve_data

SAMPLE_PHOTOS = SAMPLE_IMAGES
REPO = "timm/imagenet-1k-wds"
TOKEN = "hf_standin_token_for_tests"


def no_decode(image) -> torch.Tensor:
    return torch.zeros(1)


def read(shards, num_workers: int = 0) -> tuple[dict[str, int], ReadStats]:
    """{key: label} of every sample read, and the read's stats (counts checked against the index)."""
    stats = ReadStats()
    labels: dict[str, int] = {}
    for batch in iter_batches(shards, no_decode, batch_size=4, num_workers=num_workers, stats=stats):
        labels.update(zip(batch.keys, batch.labels.tolist()))
    return labels, stats


def cut_last_sample(shard: Path) -> None:
    """Drop a shard's last sample (3 members) at a member boundary, as a partial copy would."""
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    shard.write_bytes(shard.read_bytes()[: members[-3].offset])


@pytest.fixture
def images() -> list[TinyImage]:
    return tiny_dataset(n_images=12, n_classes=3)


@pytest.fixture
def wds(tmp_path, images) -> Path:
    """12 images as timm's layout in shards of 5, 5, 2; _info.json also lists a train split (files absent)."""
    write_timm_wds(tmp_path / "wds", images, shard_size=5, other_splits={"train": [4, 4]})
    return tmp_path / "wds"


@pytest.fixture
def hub_env(monkeypatch):
    """Starts a stand-in Hub for the given repos with HF_ENDPOINT (and HF_TOKEN) pointing at it."""
    started = []

    def start(repos: dict[str, Path], token: str | None = TOKEN, **kwargs):
        context = serve_hub(repos, token=token, **kwargs)
        hub = context.__enter__()
        started.append(context)
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        if token is None:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        else:
            monkeypatch.setenv("HF_TOKEN", token)
        return hub

    yield start
    for context in started:
        context.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------ local


def test_local_timm_folder_reads_validation_with_its_counts(wds, images):
    shardset = resolve_data(wds)
    assert [(shard.name, shard.n_samples, shard.counted_by) for shard in shardset.shards] == [
        ("imagenet1k-validation-00.tar", 5, "_info.json"),
        ("imagenet1k-validation-01.tar", 5, "_info.json"),
        ("imagenet1k-validation-02.tar", 2, "_info.json"),
    ]
    assert shardset.total == 12 and shardset.fingerprint == fingerprint_of(shardset.shards)
    assert shardset.description == f"12 images in 3 shards from {wds} (_info.json split validation)"
    assert resolve_data(wds / "_info.json") == shardset
    labels, stats = read(shardset, num_workers=2)
    assert labels == {image.key: image.class_index for image in images}
    assert (stats.n_images, stats.n_failed) == (12, 0)


def test_the_fingerprint_comes_from_the_info_not_the_place(wds, tmp_path, images):
    before = resolve_data(wds).fingerprint
    moved = tmp_path / "elsewhere"
    wds.rename(moved)
    assert resolve_data(moved).fingerprint == before
    assert resolve_data(f"{moved}/imagenet1k-validation-{{00..02}}.tar").fingerprint == before
    write_tiny_shards(tmp_path / "ours", images, shard_size=5)  # the same images under our manifest: its own
    assert resolve_data(tmp_path / "ours" / "shards").fingerprint != before
    info = json.loads((moved / "_info.json").read_text())
    info["splits"]["validation"]["shard_lengths"] = [5, 4, 3]
    (moved / "_info.json").write_text(json.dumps(info))
    other = resolve_data(moved)  # other counts: another dataset
    assert [shard.n_samples for shard in other.shards] == [5, 4, 3] and other.fingerprint != before


def test_a_shard_missing_a_sample_is_an_error_naming_it(wds):
    cut_last_sample(wds / "imagenet1k-validation-01.tar")
    with pytest.raises(
        ShardCountError,
        match=r"imagenet1k-validation-01.tar: its _info.json says 5 samples, the stream gave 4",
    ):
        read(resolve_data(wds))


def test_shards_by_pattern_take_their_counts_from_the_info_beside_them(wds):
    shardset = resolve_data(f"{wds}/imagenet1k-validation-{{01..02}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [5, 2] and shardset.total == 7
    (wds / "imagenet1k-validation-07.tar").write_bytes(b"")
    with pytest.raises(
        DataSpecError, match=r"imagenet1k-validation-07.tar is not listed in .*_info.json beside it"
    ):
        resolve_data(wds / "imagenet1k-validation-07.tar")


def test_a_split_is_chosen_with_a_hash(wds, tmp_path):
    with pytest.raises(DataSpecError, match=r"_info.json lists imagenet1k-train-0000.tar, which is missing"):
        resolve_data(f"{wds}#train")
    train = tiny_dataset(n_images=8, first_class=10)
    train_info = write_timm_wds(tmp_path / "train", train, shard_size=4, split="train")
    for shard in (tmp_path / "train").glob("*.tar"):
        shard.rename(wds / shard.name.replace("-00.tar", "-0000.tar").replace("-01.tar", "-0001.tar"))
    shardset = resolve_data(f"{wds}#train")
    assert shardset.total == train_info["splits"]["train"]["num_samples"] == 8
    assert shardset.description.endswith("(_info.json split train)")
    with pytest.raises(DataSpecError, match=r"has no split 'test' \(it has train, validation\)"):
        resolve_data(f"{wds}#test")


def test_a_broken_info_is_named(wds):
    info = json.loads((wds / "_info.json").read_text())
    info["splits"]["validation"]["num_samples"] = 13
    (wds / "_info.json").write_text(json.dumps(info))
    with pytest.raises(
        DataSpecError, match=r"_info.json, split 'validation': num_samples is 13 but .* add up to 12"
    ):
        resolve_data(wds)
    (wds / "_info.json").write_text("{not json")
    with pytest.raises(DataSpecError, match=r"_info.json is not valid JSON"):
        resolve_data(wds)


# ------------------------------------------------------------------------------------------------ hf:// URLs


def test_hub_urls_resolve_to_the_endpoint(monkeypatch):
    assert parse_hub_url("hf://datasets/timm/imagenet-1k-wds") == HubPath(REPO, "main", "")
    path = parse_hub_url("hf://datasets/timm/imagenet-1k-wds@refs%2Fpr%2F3/sub/x-00.tar")
    assert path == HubPath(REPO, "refs%2Fpr%2F3", "sub/x-00.tar")
    assert path.resolve_url("https://hub.example") == (
        "https://hub.example/datasets/timm/imagenet-1k-wds/resolve/refs%2Fpr%2F3/sub/x-00.tar"
    )
    for bad in ["hf://timm/imagenet-1k-wds", "hf://datasets/imagenet-1k-wds"]:
        with pytest.raises(DataSpecError, match="not a Hub dataset URL; write hf://datasets/OWNER/NAME"):
            resolve_data(bad)


def test_hub_folder_is_read_in_place_with_the_token(wds, images, hub_env):
    hub = hub_env({REPO: wds}, cdn=True)
    shardset = resolve_data(f"hf://datasets/{REPO}")
    assert shardset.urls == [f"hf://datasets/{REPO}/imagenet1k-validation-{i:02d}.tar" for i in range(3)]
    assert [shard.n_samples for shard in shardset.shards] == [5, 5, 2]
    assert (
        shardset.fingerprint == resolve_data(wds).fingerprint
    )  # same data, same fingerprint, wherever it lies
    assert shardset.description.endswith(f"(_info.json split validation; Hub at {hub.endpoint})")
    labels, stats = read(shardset, num_workers=2)
    assert labels == {image.key: image.class_index for image in images} and stats.n_images == 12
    hub_requests = [request for request in hub.requests if request.server == "hub"]
    assert {request.authorization for request in hub_requests} == {f"Bearer {TOKEN}"}
    cdn_requests = [request for request in hub.requests if request.server == "cdn"]
    assert len(cdn_requests) == 3 and all(request.authorization is None for request in cdn_requests)
    assert TOKEN not in repr(shardset)


def test_hub_revision_and_patterns(wds, hub_env):
    hub = hub_env({REPO: wds})
    shardset = resolve_data(f"hf://datasets/{REPO}@v1.0/imagenet1k-validation-{{00..01}}.tar")
    assert [shard.n_samples for shard in shardset.shards] == [5, 5]
    assert f"/datasets/{REPO}/resolve/v1.0/_info.json" in [request.path for request in hub.requests]
    labels, _ = read(shardset)
    assert len(labels) == 10


def test_a_hub_shard_missing_a_sample_is_caught(wds, hub_env):
    hub_env({REPO: wds}, cdn=True)
    cut_last_sample(wds / "imagenet1k-validation-02.tar")
    with pytest.raises(
        ShardCountError, match=rf"hf://datasets/{REPO}/imagenet1k-validation-02.tar: its _info.json says 2"
    ):
        read(resolve_data(f"hf://datasets/{REPO}"), num_workers=2)


def test_the_hub_refuses_without_the_right_token_and_errors_never_show_it(wds, hub_env, monkeypatch):
    hub_env({REPO: wds}, token=TOKEN)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(
        DataSpecError, match=r"refused .*HTTP 401; \$HF_TOKEN is not set\): the dataset is gated"
    ) as no_token:
        resolve_data(f"hf://datasets/{REPO}")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(DataSpecError, match=r"HTTP 401; \$HF_TOKEN is set but was refused") as wrong:
        resolve_data(f"hf://datasets/{REPO}")
    assert "hf_wrong" not in str(wrong.value) and TOKEN not in str(no_token.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    shardset = resolve_data(f"hf://datasets/{REPO}")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")  # the token is read when a shard is opened
    with pytest.raises(ShardReadError, match=r"cannot open shard hf://.*-00.tar: .*HTTP 401") as refused:
        read(shardset)
    assert "hf_wrong" not in str(refused.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(
        DataSpecError, match=r"cannot fetch manifest: there is no hf://.*/nothing/manifest.json nor"
    ):
        resolve_data(f"hf://datasets/{REPO}/nothing")


# ------------------------------------------------------------------------------------------------ default data


def test_no_data_with_a_token_streams_timm_imagenet_from_the_hub_and_says_so(
    wds, hub_env, monkeypatch, capsys
):
    hub = hub_env({REPO: wds})
    monkeypatch.delenv("TOMECIS_DATA", raising=False)
    shardset = resolve_data()
    assert shardset == resolve_data(f"hf://datasets/{REPO}")
    line = capsys.readouterr().err
    assert line == (
        "data: no --data and no $TOMECIS_DATA, $HF_TOKEN is set: streaming 12 images in 3 shards from "
        f"hf://datasets/{REPO} (_info.json split validation; Hub at {hub.endpoint})\n"
    )
    said: list[str] = []
    resolve_data(announce=said.append)
    assert said == [line.rstrip("\n")] and capsys.readouterr().err == ""
    monkeypatch.setenv("TOMECIS_DATA", str(wds))  # $TOMECIS_DATA still wins, silently
    assert resolve_data().urls == resolve_data(wds).urls and capsys.readouterr().err == ""


def test_no_data_and_no_token_offline_lists_the_hub_among_the_ways(monkeypatch, tmp_path):
    hub_offline(monkeypatch, tmp_path / "hf")
    with pytest.raises(
        DataSpecError,
        match=r"Tried: ImageNetV2.*TOMECIS_DATA.*manifest.json.*brace pattern.*set \$HF_TOKEN .*imagenet-1k-wds",
    ):
        resolve_data()


@pytest.mark.slow
@pytest.mark.assets
def test_the_500_sample_photos_in_timm_layout_read_in_place_locally_and_over_the_hub(tmp_path, hub_env):
    if not SAMPLE_PHOTOS.is_dir():
        pytest.skip(
            f"needs {SAMPLE_PHOTOS} (the real data in ../shared/assets), which is absent on this machine"
        )
    photos = images_of_imagefolder(SAMPLE_PHOTOS)
    write_timm_wds(tmp_path / "wds", photos, shard_size=8)  # 63 shards: 62 of 8, one of 4
    local = resolve_data(tmp_path / "wds")
    assert (local.total, len(local.shards)) == (500, 63)
    hub_env({REPO: tmp_path / "wds"})
    remote = resolve_data(f"hf://datasets/{REPO}")
    assert remote.fingerprint == local.fingerprint
    expected = {photo.key: photo.class_index for photo in photos}
    for shardset in (local, remote):
        labels, stats = read(shardset, num_workers=2)
        assert labels == expected and (stats.n_images, stats.n_failed) == (500, 0)
