"""orchestrator.sweep's command line: argument errors before any Ray work, and a whole run."""
from __future__ import annotations

import pytest
import ray

from orchestrator import sweep
from test_sweep import data  # noqa: F401  (the module-scoped tiny shards + checkpoint fixture)

# --------------------------------------------------------------------------- CLI errors, before any Ray work


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "deit_tinny", "--r", "0"], "--models: unknown model 'deit_tinny'"),
        (["--models", "deit_tiny", "--r", "8-"], "--r: cannot read r item '8-'"),
        (["--models", "deit_tiny", "--r", "16-8"], "runs backwards"),
        (["--models", "deit_tiny,", "--r", "0"], "empty model name"),
        (["--models", "deit_tiny", "--r", "0", "--batch-size", "0"], "--batch-size must be >= 1"),
        (["--models", "deit_tiny", "--r", "0", "--checkpoint-dir", "/nonexistent/dir"], "is not a directory"),
    ],
)
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.config_from_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_data_and_checkpoint_fail_before_ray(tmp_path, data, capsys, monkeypatch):
    monkeypatch.delenv("TOMECIS_DATA", raising=False)
    assert not ray.is_initialized()
    assert sweep.main(["--models", "deit_tiny", "--r", "0", "--out", str(tmp_path)]) == 1
    assert "TOMECIS_DATA" in capsys.readouterr().err
    assert sweep.main(["--models", "deit_tiny", "--r", "0", "--data", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert sweep.main(["--models", "deit_tiny", "--r", "0,8,99", "--data", str(data / "shards")]) == 1
    assert "--r 99 is impossible for deit_tiny_patch16_224: a block can merge at most 98" in capsys.readouterr().err
    empty = tmp_path / "ckpt"
    empty.mkdir()
    assert sweep.main(["--models", "deit_small", "--r", "0", "--data", str(data / "shards"), "--checkpoint-dir", str(empty)]) == 1
    assert "no checkpoint for model deit_small_patch16_224" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "model, kind",
    [("convnext_tiny", "ConvNeXt"), ("resnet50", "ResNet"), ("swin_tiny_patch4_window7_224", "SwinTransformer")],
)
def test_unsupported_models_fail_before_ray(model, kind, data, capsys):
    assert sweep.main(["--models", model, "--r", "0", "--data", str(data / "shards"), "--random-weights"]) == 1
    err = capsys.readouterr().err
    assert f"--models: {model} cannot be swept" in err and f"got {kind}" in err and "Traceback" not in err
    assert not ray.is_initialized()


def test_unreachable_address_is_a_clear_error(data, tmp_path, capsys):
    argv = ["--models", "deit_tiny", "--r", "0", "--data", str(data / "shards"), "--out", str(tmp_path), "--random-weights",
            "--address", "127.0.0.1:1", "--no-progress"]
    assert sweep.main(argv) == 1
    err = capsys.readouterr().err
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err and "--address local" in err
    assert not ray.is_initialized()
    assert sweep.main(argv[:-3] + ["--address", "nonsense", "--no-progress"]) == 1
    assert "expected HOST:PORT" in capsys.readouterr().err


def test_cli_runs_a_sweep_end_to_end(data, tmp_path, capsys):
    """The real command line, starting (and stopping) its own local Ray."""
    assert not ray.is_initialized()
    argv = ["--models", "deit_tiny", "--r", "0,16", "--data", str(data / "shards"), "--out", str(tmp_path),
            "--checkpoint-dir", str(data / "ckpt"), "--batch-size", "8", "--address", "local", "--bench-runs", "1", "--no-progress"]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "deit_tiny (deit_tiny_patch16_224)" in out and "2 point(s) written" in out
    assert not ray.is_initialized()
    assert sweep.main(argv) == 0
    assert "0 point(s) written, 2 already done" in capsys.readouterr().out


def test_limit_keeps_whole_shards_and_changes_the_fingerprint(data):
    import shards

    shardset = shards.resolve_data(str(data / "shards"))  # 22 images: 5 + 5 + 5 + 5 + 2
    chosen, total, fingerprint = sweep.select_shards(shardset, limit=7)
    assert [s.n_samples for s in chosen] == [5, 5] and total == 10
    assert fingerprint != shardset.fingerprint
    everything = sweep.select_shards(shardset, limit=None)
    assert everything == (shardset.shards, 22, shardset.fingerprint)
    assert sweep.select_shards(shardset, limit=1000)[2] == shardset.fingerprint


def test_local_shard_paths_become_absolute_and_urls_stay(data, monkeypatch):
    import shards

    monkeypatch.chdir(data)
    chosen, total, fingerprint = sweep.select_shards(shards.resolve_data("shards"), limit=None)
    assert [s.url for s in chosen] == [str(data / "shards" / f"imagenet-val-{i:06d}.tar") for i in range(5)]
    assert total == 22 and fingerprint == shards.resolve_data(str(data / "shards")).fingerprint  # the manifest's
    for url in ["s3://b/x.tar", "gs://b/x.tar", "https://h/d/x.tar?sig=a/b", "http://h/x.tar", "pipe:aws s3 cp s3://b/x.tar -"]:
        shard = shards.ShardInfo(url=url, name="x.tar", n_samples=1, sha256=None)
        assert sweep.absolute_shard(shard) == shard
    relative = shards.ShardInfo(url="shards/imagenet-val-000000.tar", name="imagenet-val-000000.tar", n_samples=5, sha256=None)
    assert sweep.absolute_shard(relative).url == str(data / "shards" / "imagenet-val-000000.tar")
