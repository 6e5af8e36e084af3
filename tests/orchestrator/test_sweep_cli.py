"""orchestrator.sweep's command line: argument errors before any Ray work, a whole run, and how a
point's row is assembled from its work items' outcomes (no Ray)."""

from __future__ import annotations

import datetime
import json

import numpy as np
import pandas as pd
import pytest
import ray
from shards_testing import hub_offline

from orchestrator import points, prepare, sweep
from orchestrator.work import ModelProfile, ShardOutcome

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
    hub_offline(monkeypatch, tmp_path / "hf")  # no data, no token: the default ImageNetV2, from no Hub
    assert not ray.is_initialized()
    assert sweep.main(["--models", "deit_tiny", "--r", "0", "--out", str(tmp_path)]) == 1
    assert "TOMECIS_DATA" in capsys.readouterr().err
    assert sweep.main(["--models", "deit_tiny", "--r", "0", "--data", str(tmp_path / "nowhere")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert sweep.main(["--models", "deit_tiny", "--r", "0,8,99", "--data", str(data / "shards")]) == 1
    assert (
        "--r 99 is impossible for deit_tiny_patch16_224: a block can merge at most 98"
        in capsys.readouterr().err
    )
    empty = tmp_path / "ckpt"
    empty.mkdir()
    assert (
        sweep.main(
            [
                "--models",
                "deit_small",
                "--r",
                "0",
                "--data",
                str(data / "shards"),
                "--checkpoint-dir",
                str(empty),
            ]
        )
        == 1
    )
    assert "no checkpoint for model deit_small_patch16_224" in capsys.readouterr().err
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "model, kind",
    [
        ("convnext_tiny", "ConvNeXt"),
        ("resnet50", "ResNet"),
        ("swin_tiny_patch4_window7_224", "SwinTransformer"),
    ],
)
def test_unsupported_models_fail_before_ray(model, kind, data, capsys):
    assert (
        sweep.main(["--models", model, "--r", "0", "--data", str(data / "shards"), "--random-weights"]) == 1
    )
    err = capsys.readouterr().err
    assert f"--models: {model} cannot be swept" in err and f"got {kind}" in err and "Traceback" not in err
    assert not ray.is_initialized()


@pytest.mark.ray
def test_unreachable_address_is_a_clear_error(data, tmp_path, capsys):
    argv = [
        "--models",
        "deit_tiny",
        "--r",
        "0",
        "--data",
        str(data / "shards"),
        "--out",
        str(tmp_path),
        "--random-weights",
        "--address",
        "127.0.0.1:1",
        "--no-progress",
    ]
    assert sweep.main(argv) == 1
    err = capsys.readouterr().err
    assert "--address 127.0.0.1:1: no Ray cluster answers there" in err and "--address local" in err
    assert not ray.is_initialized()
    assert sweep.main(argv[:-3] + ["--address", "nonsense", "--no-progress"]) == 1
    assert "expected HOST:PORT" in capsys.readouterr().err


@pytest.mark.ray
def test_cli_runs_a_sweep_end_to_end(data, tmp_path, capsys):
    """The real command line, starting (and stopping) its own local Ray."""
    assert not ray.is_initialized()
    argv = [
        "--models",
        "deit_tiny",
        "--r",
        "0,16",
        "--data",
        str(data / "shards"),
        "--out",
        str(tmp_path),
        "--checkpoint-dir",
        str(data / "ckpt"),
        "--batch-size",
        "8",
        "--address",
        "local",
        "--bench-runs",
        "1",
        "--no-progress",
    ]
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    assert "deit_tiny (deit_tiny_patch16_224)" in out and "2 point(s) written" in out
    assert not ray.is_initialized()
    planned = pd.read_parquet(tmp_path / "points")["planned"]  # the plan the report reads "missing" from
    assert [json.loads(text) for text in planned] == [{"tomecis": [[16, None]]}] * 2
    assert sweep.main(argv) == 0
    assert "0 point(s) written, 2 already done" in capsys.readouterr().out


def test_limit_keeps_whole_shards_and_changes_the_fingerprint(data):
    import shards

    shardset = shards.resolve_data(str(data / "shards"))  # 22 images: 5 + 5 + 5 + 5 + 2
    chosen, total, fingerprint = prepare.select_shards(shardset, limit=7)
    assert [s.n_samples for s in chosen] == [5, 5] and total == 10
    assert fingerprint != shardset.fingerprint
    everything = prepare.select_shards(shardset, limit=None)
    assert everything == (shardset.shards, 22, shardset.fingerprint)
    assert prepare.select_shards(shardset, limit=1000)[2] == shardset.fingerprint


def test_local_shard_paths_become_absolute_and_urls_stay(data, monkeypatch):
    import shards

    monkeypatch.chdir(data)
    chosen, total, fingerprint = prepare.select_shards(shards.resolve_data("shards"), limit=None)
    assert [s.url for s in chosen] == [str(data / "shards" / f"imagenet-val-{i:06d}.tar") for i in range(5)]
    assert (
        total == 22 and fingerprint == shards.resolve_data(str(data / "shards")).fingerprint
    )  # the manifest's
    for url in [
        "s3://b/x.tar",
        "gs://b/x.tar",
        "https://h/d/x.tar?sig=a/b",
        "http://h/x.tar",
        "pipe:aws s3 cp s3://b/x.tar -",
    ]:
        shard = shards.ShardInfo(url=url, name="x.tar", n_samples=1, sha256=None)
        assert prepare.absolute_shard(shard) == shard
    relative = shards.ShardInfo(
        url="shards/imagenet-val-000000.tar", name="imagenet-val-000000.tar", n_samples=5, sha256=None
    )
    assert prepare.absolute_shard(relative).url == str(data / "shards" / "imagenet-val-000000.tar")


# --------------------------------------------------------------------------- assembling a point from outcomes (no Ray)

MODEL = "deit_tiny_patch16_224"


def outcome(shard, keys, started, finished, load, forward, device="cpu (1 threads)", failures=()):
    """A made-up ShardOutcome of a one-model pass: ``forward`` maps r -> forward seconds."""
    n = len(keys)
    return ShardOutcome(
        pass_name="pass 1",
        shards=[shard],
        keys=list(keys),
        key_shards=[shard] * n,
        labels=np.zeros(n, np.int32),
        top5={(MODEL, "tomecis", r, None): np.zeros((n, 5), np.int32) for r in forward},
        n_failed=len(failures),
        failures=list(failures),
        load_seconds=load,
        forward_seconds={(MODEL, "tomecis", r, None): s for r, s in forward.items()},
        started=started,
        finished=finished,
        node_id=f"node-{shard}",
        hostname="host",
        device=device,
    )


def profile(r_values, device="cpu (1 threads)"):
    return ModelProfile(
        model=MODEL,
        param_count=5.7,
        img_size=224,
        crop_pct=0.875,
        interpolation="bicubic",
        device=device,
        schedule={("tomecis", r, None): [r] * 12 for r in r_values},
        gflops={("tomecis", r, None): 1.0 for r in r_values},
        tokens_out={("tomecis", r, None): 197 for r in r_values},
        infer_samples_per_sec={},
    )


def row_of(outcomes, r, r_values, **kw):
    point = sweep.GridPoint(MODEL, r, weights="random", dataset="fp")
    args = dict(profile=profile(r_values), expected_total=None, allow_decode_failures=False)
    args.update(kw)
    return points.point_row(point, outcomes, **args)


def test_eval_samples_per_sec_is_images_over_the_wall_time_of_the_pass():
    """Two actors side by side, one r: 10 images over the 12 s from the first start to the last end
    (not over the 21 s the actors were busy in total, which would undercount by the number of actors)."""
    outcomes = [
        outcome("a", "abcde", 100.0, 110.0, 2.0, {0: 8.0}),
        outcome("b", "fghij", 101.0, 112.0, 3.0, {0: 8.0}),
    ]
    row, _, _ = row_of(outcomes, 0, [0])
    assert row["eval_samples_per_sec"] == pytest.approx(10 / 12)


def test_eval_samples_per_sec_charges_each_r_its_share_of_the_shared_decode():
    """One decode fed r = 0 and r = 8: each r is charged the loading plus its own forward time."""
    outcomes = [
        outcome("a", "abcde", 100.0, 110.0, 2.0, {0: 5.0, 8: 3.0}),
        outcome("b", "fghij", 101.0, 112.0, 3.0, {0: 3.0, 8: 1.0}),
    ]
    load, f0, f8, wall = 5.0, 8.0, 4.0, 12.0
    rates = {r: row_of(outcomes, r, [0, 8])[0]["eval_samples_per_sec"] for r in (0, 8)}
    assert rates[0] == pytest.approx(10 / (wall * (load + f0) / (load + f0 + f8)))
    assert rates[8] == pytest.approx(10 / (wall * (load + f8) / (load + f0 + f8)))
    assert rates[8] > rates[0] > 10 / wall  # each r alone would have been quicker than the shared pass
    assert 10 / rates[0] + 10 / rates[8] == pytest.approx(wall * (2 * load + f0 + f8) / (load + f0 + f8))


def test_a_repeated_key_is_an_error_naming_the_key_and_its_shards():
    outcomes = [
        outcome("/d/a.tar", ["k1", "k2"], 0.0, 1.0, 0.1, {0: 0.1}),
        outcome("/d/b.tar", ["k3", "k2"], 0.0, 1.0, 0.1, {0: 0.1}),
    ]
    with pytest.raises(
        sweep.SweepError,
        match=r"image key 'k2' occurs 2 times, in shard\(s\) /d/a.tar, /d/b.tar; every key must be unique",
    ):
        row_of(outcomes, 0, [0])


def test_decode_failures_are_recorded_with_the_point_and_described():
    from shards import DecodeFailure

    failures = [DecodeFailure("/d/a.tar", f"bad{i}", "cannot identify image file") for i in range(7)]
    outcomes = [outcome("/d/a.tar", ["k1", "k2"], 0.0, 1.0, 0.1, {0: 0.1, 8: 0.1}, failures=failures)]
    with pytest.raises(sweep.SweepError, match="7 images could not be decoded .*key bad0"):
        row_of(outcomes, 8, [0, 8])
    row, _, table = row_of(outcomes, 8, [0, 8], allow_decode_failures=True)
    assert row["n_failed"] == 7 and row["n_images"] == 2
    frame = table.to_pandas()
    assert frame["key"].tolist() == [f"bad{i}" for i in range(7)] and set(frame["shard"]) == {"/d/a.tar"}
    assert (
        set(frame["r"]) == {8} and set(frame["model"]) == {MODEL} and set(frame["device"]) == {row["device"]}
    )
    text = points.describe_decode_failures({MODEL: failures}, "s3://b/run/", first=3)
    assert f"{MODEL}: 7 image(s) could not be decoded" in text
    assert "shard /d/a.tar, key bad2: cannot identify image file" in text and "bad3" not in text
    assert "... and 4 more" in text and "s3://b/run/failures/" in text
    assert points.describe_decode_failures({MODEL: []}, "out") == ""


def test_started_and_finished_span_the_points_items_and_every_device_is_named():
    """started: the first item's start, finished: the last item's end (any actor); two GPU types: both named."""
    outcomes = [
        outcome("a", "abcde", 100.0, 110.0, 2.0, {0: 8.0}, device="NVIDIA A10G"),
        outcome("b", "fghij", 101.5, 112.25, 3.0, {0: 8.0}, device="NVIDIA L4"),
    ]
    row, predictions, _ = row_of(outcomes, 0, [0], profile=profile([0], device="NVIDIA L4"))
    utc = datetime.timezone.utc
    assert row["started"] == datetime.datetime.fromtimestamp(100.0, utc)
    assert row["finished"] == datetime.datetime.fromtimestamp(112.25, utc)
    assert row["device"] == "NVIDIA A10G + NVIDIA L4"
    assert set(predictions.column("device").to_pylist()) == {
        "NVIDIA A10G + NVIDIA L4"
    }  # the run's columns agree
    same = [outcome("a", "abcde", 0.0, 1.0, 0.1, {0: 0.1}, device="NVIDIA A10G")]
    assert row_of(same, 0, [0], profile=profile([0], device="NVIDIA A10G"))[0]["device"] == "NVIDIA A10G"


def test_models_with_the_same_eval_transform_share_a_decode_pass():
    """DeiT-Ti/S share one transform; a 384-pixel ViT gets a pass of its own. Tasks keep the amounts still to do."""
    from orchestrator.grid import GridPoint
    from orchestrator.work import Weights

    big = "vit_tiny_patch16_384"
    todo = [
        GridPoint(MODEL, 0, method="none", dataset="fp"),
        GridPoint(MODEL, 8, dataset="fp"),
        GridPoint(MODEL, 8, method="tome", dataset="fp"),
        GridPoint(MODEL, None, method="evit", keep=0.7, dataset="fp"),
        GridPoint(MODEL, None, method="tome", keep=0.9, dataset="fp"),
        GridPoint(big, 0, method="none", dataset="fp"),
        GridPoint("deit_small_patch16_224", 16, dataset="fp"),
    ]
    weights = {m: Weights("random") for m in (MODEL, big, "deit_small_patch16_224")}
    first, second = prepare.plan_passes(todo, weights)
    assert first.name == "pass 1 (deit_tiny+deit_small)" and set(first.weights) == {
        MODEL,
        "deit_small_patch16_224",
    }
    assert [(t.model, t.method, t.amounts) for t in first.tasks] == [
        (MODEL, "none", ((0, None),)),
        (MODEL, "tomecis", ((8, None),)),
        (MODEL, "tome", ((8, None), (None, 0.9))),
        (MODEL, "evit", ((None, 0.7),)),
        ("deit_small_patch16_224", "tomecis", ((16, None),)),
    ]
    assert first.point_keys == [
        (MODEL, "none", 0, None),
        (MODEL, "tomecis", 8, None),
        (MODEL, "tome", 8, None),
        (MODEL, "tome", None, 0.9),
        (MODEL, "evit", None, 0.7),
        ("deit_small_patch16_224", "tomecis", 16, None),
    ]
    assert first.reductions(MODEL)[::4] == [("none", 0, None), ("evit", None, 0.7)]
    assert second.name == "pass 2 (vit_tiny_patch16_384)" and [t.amounts for t in second.tasks] == [
        ((0, None),)
    ]


def test_method_list_is_parsed_and_mode_is_its_alias(capsys):
    cfg = sweep.config_from_args(
        ["--models", "deit_tiny", "--r", "8", "--method", "tomecis,evit", "--keep", "0.7"]
    )
    assert (cfg.methods, cfg.r_values, cfg.keep_values) == (["tomecis", "evit"], [8], [0.7])
    assert sweep.config_from_args(
        ["--models", "deit_tiny", "--r", "0", "--mode", "tomecis,tome"]
    ).methods == [
        "tomecis",
        "tome",
    ]
    assert sweep.config_from_args(["--models", "deit_tiny", "--r", "0"]).methods == ["tomecis"]
    with pytest.raises(SystemExit):
        sweep.config_from_args(["--models", "deit_tiny", "--r", "0", "--method", "tomecis,tomy"])
    assert "--method: unknown method 'tomy'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.config_from_args(["--models", "deit_tiny", "--keep", "0.7,1.5"])
    assert "--keep: keep ratio '1.5' must lie in (0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--method", "tomecis,evit", "--r", "8-16"],
            "error: --method evit takes --keep, and none was given",
        ),
        (["--method", "tome"], "error: --method tome takes --r or --keep, and none was given"),
        (["--method", "pitome", "--keep", "0.7", "--r", "99"], "error: --r 99 is impossible for deit_tiny"),
        (
            ["--models", "deit_tiny_distilled", "--method", "tome,evit", "--keep", "0.7"],
            "error: --models deit_tiny_distilled_patch16_224 with --method evit: method 'evit' supports models",
        ),
    ],
)
def test_a_method_given_no_amount_it_takes_stops_before_data_and_ray(flags, message, tmp_path, capsys):
    """Exit 1 with ``error: ...`` naming the method and its flags; no data is read (there is none here),
    Ray does not start, nothing is written."""
    argv = [
        "--models",
        "deit_tiny",
        *flags,
        "--data",
        str(tmp_path / "no-data"),
        "--out",
        str(tmp_path / "out"),
    ]
    assert sweep.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_dry_run_prints_the_issues_grid_in_one_decode_pass(capsys):
    """The Done-when command of #25, planned: per model one baseline, four methods x (9 r + 2 keep),
    evit x 2 keep, in one decode pass; one line says evit skips --r."""
    argv = ["--models", "deit_tiny,deit_small", "--method", "tomecis,tome,pitome,tofu,evit"]
    assert sweep.main([*argv, "--r", "8-16", "--keep", "0.7,0.9", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "evit: --r skipped (evit takes --keep only)",
        "grid: 94 point(s) in 1 decode pass(es), each image decoded once per pass",
        "  pass 1 (deit_tiny+deit_small): 94 point(s)",
    ]
    assert [line.split(":")[0] for line in out[3:]] == ["  deit_tiny", "  deit_small"]
    assert all(
        "47 point(s): none r0 (baseline); tomecis r8-r16, keep0.7, keep0.9 (11);" in line for line in out[3:]
    )
    assert all(line.endswith("evit keep0.7, keep0.9 (2)") for line in out[3:])
    assert not ray.is_initialized()


def test_retries_are_counted_and_a_resumed_pass_has_no_eval_rate():
    """``retries`` is what the sweep counted; a pass resumed across two driver runs has started and
    finished spanning both, and no eval_samples_per_sec (its wall time would count the pause)."""
    outcomes = [
        outcome("a", "abcde", 100.0, 110.0, 2.0, {0: 8.0}),
        outcome("b", "fghij", 5000.0, 5012.0, 3.0, {0: 8.0}),  # evaluated by a later run
    ]
    row, _, _ = row_of(outcomes, 0, [0], retries=2, resumed=True)
    assert row["retries"] == 2 and row["eval_samples_per_sec"] is None and row["n_images"] == 10
    utc = datetime.timezone.utc
    assert (row["started"], row["finished"]) == tuple(
        datetime.datetime.fromtimestamp(t, utc) for t in (100.0, 5012.0)
    )
    row, _, _ = row_of(outcomes[:1], 0, [0])
    assert row["retries"] == 0 and row["eval_samples_per_sec"] == pytest.approx(5 / 10)


def test_the_resume_command_is_the_same_command_quoted_for_a_shell():
    argv = ["--models", "deit_tiny", "--r", "0,8-16", "--out", "my results/"]
    assert (
        sweep.resume_command(argv)
        == "python -m orchestrator.sweep --models deit_tiny --r 0,8-16 --out 'my results/'"
    )
