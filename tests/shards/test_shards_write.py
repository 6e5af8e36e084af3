"""shards.write: every source form -> deterministic shards + manifest; errors that name the culprit."""

from __future__ import annotations

import json
import re
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from shards_testing import (
    make_flat_folder,
    make_imagefolder,
    make_val_tar,
    tiny_dataset,
    write_loc_csv,
    write_tiny_shards,
    write_val_txt,
)

from shards.manifest import MANIFEST_NAME, read_manifest, sha256_of_file
from shards.sources import SourceError
from shards.synsets import UnknownSynsetError, imagenet_synsets
from shards.write import BadImageError, OutputExistsError, WriteConfig, cli_wording, main, write_shards


def config(src: Path, out: Path, **overrides) -> WriteConfig:
    return WriteConfig(src=src, out=out, progress=False, **{"shard_size": 5, **overrides})


def shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.tar"))


def members_by_key(shard: Path) -> dict[str, dict[str, bytes]]:
    """{key: {suffix: bytes}} of a shard, read with the stdlib."""
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(shard) as tar:
        for member in tar.getmembers():
            key, suffix = member.name.split(".", 1)
            samples.setdefault(key, {})[suffix] = tar.extractfile(member).read()
    return samples


def all_samples(folder: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    for shard in shard_files(folder):
        samples.update(members_by_key(shard))
    return samples


def test_imagefolder_round_trip_keeps_bytes_labels_and_keys(tmp_path):
    images = tiny_dataset(n_images=12, n_classes=3)
    summary = write_tiny_shards(tmp_path, images, shard_size=5)
    out = tmp_path / "shards"

    assert [path.name for path in shard_files(out)] == [f"imagenet-val-{i:06d}.tar" for i in range(3)]
    samples = all_samples(out)
    assert sorted(samples) == sorted(image.key for image in images)
    for image in images:
        sample = samples[image.key]
        assert sample["jpg"] == image.jpeg  # original bytes, not re-encoded
        assert int(sample["cls"]) == image.class_index == imagenet_synsets().index(image.synset)
        assert json.loads(sample["json"]) == {"file": image.file_name, "synset": image.synset}

    manifest = read_manifest(out / MANIFEST_NAME)
    assert summary.manifest == manifest
    assert [(record.name, record.n_samples) for record in manifest.shards] == [
        ("imagenet-val-000000.tar", 5),
        ("imagenet-val-000001.tar", 5),
        ("imagenet-val-000002.tar", 2),
    ]
    for record in manifest.shards:
        assert record.sha256 == sha256_of_file(out / record.name)
    assert (manifest.total, manifest.n_classes, manifest.n_classes_present) == (12, 1000, 3)
    assert manifest.made["source_form"] == "imagefolder" and manifest.made["shard_size"] == 5


def test_samples_are_sorted_by_key_across_shards(tmp_path):
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12), shard_size=5)
    keys = [list(members_by_key(shard)) for shard in shard_files(tmp_path / "shards")]
    flat = [key for shard_keys in keys for key in shard_keys]
    assert flat == sorted(flat)


def test_rerun_is_byte_identical_whatever_the_worker_count(tmp_path):
    src = make_imagefolder(tmp_path / "val", tiny_dataset(n_images=14, n_classes=4))
    write_shards(config(src, tmp_path / "one", workers=1, shard_size=3))
    write_shards(config(src, tmp_path / "three", workers=3, shard_size=3))
    write_shards(config(src, tmp_path / "again", workers=1, shard_size=3))
    names = [path.name for path in sorted((tmp_path / "one").iterdir())]
    assert names == [path.name for path in sorted((tmp_path / "three").iterdir())]
    assert len(names) == 5 + 1 and MANIFEST_NAME in names  # 14 images / 3 per shard, plus the manifest
    for name in names:
        reference = (tmp_path / "one" / name).read_bytes()
        assert (tmp_path / "three" / name).read_bytes() == reference, name
        assert (tmp_path / "again" / name).read_bytes() == reference, name


@pytest.mark.parametrize("labels_format", ["val.txt", "LOC_val_solution.csv"])
@pytest.mark.parametrize("form", ["flat", "tar"])
def test_every_source_form_gives_the_same_shards(tmp_path, form, labels_format):
    images = tiny_dataset(n_images=11, n_classes=4)
    from_imagefolder = write_shards(
        config(make_imagefolder(tmp_path / "val", images), tmp_path / "from-imagefolder")
    )
    if form == "flat":
        src = make_flat_folder(tmp_path / "flat", images)
    else:
        src = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images)
    labels_path = tmp_path / labels_format
    (write_val_txt if labels_format == "val.txt" else write_loc_csv)(labels_path, images)

    summary = write_shards(config(src, tmp_path / "out", labels=labels_path))

    assert summary.manifest.made["source_form"] == {"flat": "flat", "tar": "val-tar"}[form]
    reference = shard_files(tmp_path / "from-imagefolder")
    produced = shard_files(tmp_path / "out")
    assert [path.name for path in produced] == [path.name for path in reference]
    for ours, theirs in zip(produced, reference):
        assert ours.read_bytes() == theirs.read_bytes(), ours.name
    # the manifests differ only in `made` (source path and form, labels file): same records, same fingerprint
    assert summary.manifest.fingerprint() == from_imagefolder.manifest.fingerprint()
    assert replace(summary.manifest, made={}) == replace(from_imagefolder.manifest, made={})
    assert summary.manifest.made != from_imagefolder.manifest.made


def test_labels_may_name_images_by_synset_and_list_extra_images(tmp_path):
    images = tiny_dataset(n_images=6, n_classes=2)
    src = make_flat_folder(tmp_path / "flat", images[:4])
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{image.key} {image.synset}\n" for image in images))
    summary = write_shards(config(src, tmp_path / "out", labels=labels))
    assert summary.manifest.total == 4
    assert summary.manifest.made["unused_labels"] == 2


def test_unknown_synset_folder_is_named(tmp_path):
    src = make_imagefolder(tmp_path / "val", tiny_dataset(n_images=3))
    make_imagefolder(tmp_path / "val", [])
    (tmp_path / "val" / "n99999999").mkdir()
    (tmp_path / "val" / "n99999999" / "x.JPEG").write_bytes(tiny_dataset(1)[0].jpeg)
    with pytest.raises(UnknownSynsetError, match="n99999999"):
        write_shards(config(src, tmp_path / "out"))


def test_parent_folder_instead_of_imagefolder_says_what_to_pass(tmp_path):
    make_imagefolder(tmp_path / "imagenet" / "val", tiny_dataset(n_images=3))
    with pytest.raises(SourceError, match=r"'val' is not a synset.*not its parent"):
        write_shards(config(tmp_path / "imagenet", tmp_path / "out"))


def test_unknown_synset_in_labels_file_is_named_with_its_line(tmp_path):
    images = tiny_dataset(n_images=3)
    src = make_flat_folder(tmp_path / "flat", images)
    labels = write_loc_csv(tmp_path / "LOC_val_solution.csv", images)
    labels.write_text(labels.read_text().replace(images[1].synset, "n00000042"))
    with pytest.raises(UnknownSynsetError, match=r"n00000042.*LOC_val_solution.csv:3"):
        write_shards(config(src, tmp_path / "out", labels=labels))


def test_class_index_outside_the_1000_is_named(tmp_path):
    images = tiny_dataset(n_images=3)
    src = make_flat_folder(tmp_path / "flat", images)
    labels = tmp_path / "val.txt"
    labels.write_text(f"{images[0].file_name} 0\n{images[1].file_name} 1000\n{images[2].file_name} 2\n")
    with pytest.raises(UnknownSynsetError, match=r"class index 1000.*val.txt:2"):
        write_shards(config(src, tmp_path / "out", labels=labels))


@pytest.mark.parametrize("form", ["flat", "tar"])
def test_labels_file_missing_an_image_names_the_image(tmp_path, form):
    images = tiny_dataset(n_images=5)
    src = (
        make_flat_folder(tmp_path / "flat", images)
        if form == "flat"
        else make_val_tar(tmp_path / "val.tar", images)
    )
    labels = write_val_txt(
        tmp_path / "val.txt", [image for image in images if image.key != "ILSVRC2012_val_00000004"]
    )
    with pytest.raises(SourceError, match=r"val.txt has no label for .*ILSVRC2012_val_00000004\.JPEG"):
        write_shards(config(src, tmp_path / "out", labels=labels))


def test_conflicting_labels_are_an_error(tmp_path):
    images = tiny_dataset(n_images=2)
    src = make_flat_folder(tmp_path / "flat", images)
    labels = tmp_path / "val.txt"
    labels.write_text(f"{images[0].file_name} 1\n{images[1].file_name} 2\n{images[0].file_name} 3\n")
    with pytest.raises(SourceError, match=r"val.txt:3.*ILSVRC2012_val_00000001"):
        write_shards(config(src, tmp_path / "out", labels=labels))


@pytest.mark.parametrize("form", ["flat", "tar"])
def test_missing_labels_says_pass_labels(tmp_path, form):
    images = tiny_dataset(n_images=2)
    src = (
        make_flat_folder(tmp_path / "flat", images)
        if form == "flat"
        else make_val_tar(tmp_path / "val.tar", images)
    )
    with pytest.raises(SourceError, match="pass `labels=FILE`"):
        write_shards(config(src, tmp_path / "out"))


def test_labels_with_an_imagefolder_is_refused(tmp_path):
    images = tiny_dataset(n_images=2)
    src = make_imagefolder(tmp_path / "val", images)
    with pytest.raises(SourceError, match="drop `labels="):
        write_shards(config(src, tmp_path / "out", labels=write_val_txt(tmp_path / "val.txt", images)))


def test_duplicate_stems_are_named(tmp_path):
    images = tiny_dataset(n_images=4, n_classes=2)
    src = make_imagefolder(tmp_path / "val", images)
    (src / images[1].synset / images[0].file_name).write_bytes(images[0].jpeg)
    with pytest.raises(SourceError, match=r"share the key 'ILSVRC2012_val_00000001'"):
        write_shards(config(src, tmp_path / "out"))


def test_corrupt_jpeg_is_named_and_nothing_is_left_behind(tmp_path):
    images = tiny_dataset(n_images=12)
    src = make_imagefolder(tmp_path / "val", images)
    bad = src / images[7].synset / images[7].file_name
    bad.write_bytes(b"this is not a JPEG")
    with pytest.raises(BadImageError, match=rf"{bad}.*not a decodable image.*`skip_bad=True`"):
        write_shards(config(src, tmp_path / "out", workers=2))
    assert list((tmp_path / "out").iterdir()) == []


def test_skip_bad_lists_undecodable_files_in_the_manifest(tmp_path):
    images = tiny_dataset(n_images=12)
    src = make_imagefolder(tmp_path / "val", images)
    garbage = src / images[2].synset / images[2].file_name
    truncated = src / images[9].synset / images[9].file_name
    garbage.write_bytes(b"\xff\xd8 not really")
    truncated.write_bytes(images[9].jpeg[: len(images[9].jpeg) // 2])

    summary = write_shards(config(src, tmp_path / "out", skip_bad=True))

    manifest = summary.manifest
    assert manifest.total == 10
    assert [record.n_samples for record in manifest.shards] == [4, 4, 2]  # boundaries stay where they were
    assert [skipped.file for skipped in manifest.skipped] == [str(garbage), str(truncated)]
    assert "truncated" in manifest.skipped[1].error.lower()
    assert images[2].key not in all_samples(tmp_path / "out")
    assert read_manifest(tmp_path / "out" / MANIFEST_NAME).skipped == manifest.skipped


def test_truncated_val_tar_is_an_error(tmp_path):
    images = tiny_dataset(n_images=4)
    tar_path = make_val_tar(tmp_path / "val.tar", images)
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[: 512 * 3 + 100])  # ends inside the second member
    labels = write_val_txt(tmp_path / "val.txt", images)
    with pytest.raises(SourceError, match=r"val\.tar: cannot read it .*unexpected end of data.*truncated"):
        write_shards(config(tar_path, tmp_path / "out", labels=labels))


def third_member_offset(tar_path: Path) -> int:
    with tarfile.open(tar_path) as tar:
        return tar.getmembers()[2].offset


@pytest.mark.parametrize("cut", ["at a member boundary", "inside a header"])
def test_val_tar_without_its_end_marker_is_an_error_naming_it(tmp_path, cut):
    """tarfile stops quietly at such cuts; the missing end-of-archive marker gives them away."""
    images = tiny_dataset(n_images=4)
    tar_path = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images)
    end = third_member_offset(tar_path) + (0 if cut == "at a member boundary" else 100)
    tar_path.write_bytes(tar_path.read_bytes()[:end])
    labels = write_val_txt(tmp_path / "val.txt", images)
    expected = (
        rf"{re.escape(str(tar_path))}: the file ends .*looks truncated.*2 of the 4 labels in .*val\.txt"
    )
    with pytest.raises(SourceError, match=expected):
        write_shards(config(tar_path, tmp_path / "out", labels=labels))
    assert not (tmp_path / "out").exists()


def test_val_tar_followed_by_garbage_is_an_error(tmp_path):
    images = tiny_dataset(n_images=4)
    tar_path = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images)
    data = bytearray(tar_path.read_bytes())
    start = third_member_offset(tar_path)
    data[start : start + 512] = b"\x01" * 512  # not a valid header: tarfile would stop here without a word
    tar_path.write_bytes(bytes(data))
    labels = write_val_txt(tmp_path / "val.txt", images)
    with pytest.raises(
        SourceError, match=r"ILSVRC2012_img_val\.tar: the block after .* neither a member header"
    ):
        write_shards(config(tar_path, tmp_path / "out", labels=labels))


@pytest.mark.parametrize("zero_blocks", ["padded to a 10 KiB record", "one zero block"])
def test_complete_val_tar_ending_in_zero_blocks_reads(tmp_path, zero_blocks):
    """Only the first zero block after the last member matters: past it, no member can be missing."""
    images = tiny_dataset(n_images=3)
    tar_path = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images)
    assert tar_path.stat().st_size == 10240  # tarfile writes two zero blocks, then pads to a whole record
    if zero_blocks == "one zero block":
        with tarfile.open(tar_path) as tar:
            last = tar.getmembers()[-1]
        tar_path.write_bytes(tar_path.read_bytes()[: last.offset_data + -(-last.size // 512) * 512 + 512])
    summary = write_shards(
        config(tar_path, tmp_path / "out", labels=write_val_txt(tmp_path / "val.txt", images))
    )
    assert summary.manifest.total == 3


def test_skip_bad_with_no_decodable_image_is_an_error_naming_the_source(tmp_path):
    images = tiny_dataset(n_images=3)
    src = make_imagefolder(tmp_path / "val", images)
    for image in images:
        (src / image.synset / image.file_name).write_bytes(b"not a JPEG")
    with pytest.raises(
        BadImageError, match=rf"{re.escape(str(src))}: none of its 3 images decodes.*ILSVRC2012_val_"
    ):
        write_shards(config(src, tmp_path / "out", skip_bad=True, workers=2, shard_size=2))
    assert list((tmp_path / "out").iterdir()) == []


def test_existing_shards_are_not_overwritten_without_force(tmp_path):
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12), shard_size=2)
    out = tmp_path / "shards"
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(OutputExistsError, match="pass `force=True` to replace them, or choose another `out`"):
        write_shards(config(tmp_path / "src", out, shard_size=5))
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_force_replaces_shards_and_removes_stale_ones(tmp_path):
    write_tiny_shards(tmp_path, tiny_dataset(n_images=12), shard_size=2)
    out = tmp_path / "shards"
    assert len(shard_files(out)) == 6
    summary = write_shards(config(tmp_path / "src", out, shard_size=5, force=True))
    assert [path.name for path in shard_files(out)] == [record.name for record in summary.manifest.shards]
    assert len(shard_files(out)) == 3
    assert sorted(path.name for path in out.iterdir()) == sorted(
        [MANIFEST_NAME] + [p.name for p in shard_files(out)]
    )


def test_long_and_non_ascii_file_names_round_trip(tmp_path):
    image = tiny_dataset(n_images=1)[0]
    src = tmp_path / "val"
    long_stem = "n01440764_" + "very_long_description_" * 6 + "caf\u00e9"
    (src / image.synset).mkdir(parents=True)
    (src / image.synset / f"{long_stem}.JPEG").write_bytes(image.jpeg)
    write_shards(config(src, tmp_path / "out"))
    assert all_samples(tmp_path / "out")[long_stem]["jpg"] == image.jpeg


def test_prefix_names_the_shards(tmp_path):
    summary = write_tiny_shards(tmp_path, tiny_dataset(n_images=3), prefix="tiny")
    assert [record.name for record in summary.manifest.shards] == ["tiny-000000.tar"]


@pytest.mark.parametrize("bad", [{"shard_size": 0}, {"workers": 0}, {"prefix": "a.b"}, {"prefix": "a/b"}])
def test_bad_config_is_refused(tmp_path, bad):
    with pytest.raises(ValueError):
        WriteConfig(src=tmp_path, out=tmp_path / "out", **bad)


def test_the_cli_names_flags_where_the_library_names_arguments(tmp_path, capsys):
    assert cli_wording("pass `force=True`, or another `out`; `labels=a b.txt`, `shard_size`, `src`") == (
        "pass --force, or another --out; --labels a b.txt, --shard-size, `src`"
    )
    images = tiny_dataset(n_images=2)
    src = make_flat_folder(tmp_path / "flat", images)
    assert main([str(src), "--out", str(tmp_path / "out"), "--no-progress"]) == 1
    assert "which carries no labels: pass --labels FILE (val.txt" in capsys.readouterr().err
    folder = make_imagefolder(tmp_path / "val", images)
    labels = write_val_txt(tmp_path / "val.txt", images)
    assert main([str(folder), "--out", str(tmp_path / "out"), "--labels", str(labels), "--no-progress"]) == 1
    assert f"whose folder names are the labels; drop --labels {labels}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folder), "--out", str(tmp_path / "out"), "--shard-size", "0"])
    assert "--shard-size must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(folder), "--out", str(tmp_path / "out"), "--prefix", "a.b"])
    assert "--prefix 'a.b' must be letters" in capsys.readouterr().err


def test_cli_writes_and_prints_a_summary(tmp_path, capsys):
    images = tiny_dataset(n_images=7)
    src = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images)
    labels = write_val_txt(tmp_path / "val.txt", images)
    out = tmp_path / "out"
    argv = [
        str(src),
        "--out",
        str(out),
        "--labels",
        str(labels),
        "--shard-size",
        "3",
        "--workers",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 7 images" in printed and "in 3 shards" in printed and "img/s" in printed
    assert main(argv) == 1  # refuses to overwrite
    assert "--force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0


def test_cli_summary_mentions_labels_without_an_image(tmp_path, capsys):
    images = tiny_dataset(n_images=6)
    src = make_val_tar(tmp_path / "ILSVRC2012_img_val.tar", images[:4])
    labels = write_val_txt(tmp_path / "val.txt", images)
    assert main([str(src), "--out", str(tmp_path / "out"), "--labels", str(labels), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 4 images" in printed
    assert re.search(rf"2 labels in {re.escape(str(labels))} have no image in the source", printed)
    assert read_manifest(tmp_path / "out" / MANIFEST_NAME).made["unused_labels"] == 2


def test_cli_summary_is_quiet_about_labels_when_all_are_used(tmp_path, capsys):
    images = tiny_dataset(n_images=3)
    src = make_flat_folder(tmp_path / "flat", images)
    labels = write_val_txt(tmp_path / "val.txt", images)
    assert main([str(src), "--out", str(tmp_path / "out"), "--labels", str(labels), "--no-progress"]) == 0
    assert "labels" not in capsys.readouterr().out


def test_skip_bad_cli_with_no_decodable_image_fails(tmp_path, capsys):
    images = tiny_dataset(n_images=2)
    src = make_flat_folder(tmp_path / "flat", images)
    for image in images:
        (src / image.file_name).write_bytes(b"junk")
    labels = write_val_txt(tmp_path / "val.txt", images)
    argv = [str(src), "--out", str(tmp_path / "out"), "--labels", str(labels), "--skip-bad", "--no-progress"]
    assert main(argv) == 1
    assert f"{src}: none of its 2 images decodes" in capsys.readouterr().err
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
