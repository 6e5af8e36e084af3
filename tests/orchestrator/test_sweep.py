"""orchestrator.sweep end to end on a local Ray (2 CPUs), tiny shards and a random-weight DeiT-Tiny."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from shards_testing import tiny_dataset

import shards
import tomecis
from orchestrator import prepare, sweep
from orchestrator.calibrate import MatchTarget
from orchestrator.errors import SweepError
from orchestrator.placement import NodeResources
from shards.write import write_manifest_for, write_raw_shard

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "deit_tiny_patch16_224"
R_VALUES = [0, 8, 16]


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module; the sweep joins it and leaves it running."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def config(data: Path, out: Path, **kw) -> sweep.SweepConfig:
    base = dict(
        models=[MODEL],
        r_values=R_VALUES,
        data=str(data / "shards"),
        out=str(out),
        batch_size=4,
        checkpoint_dir=str(data / "ckpt"),
        num_actors=2,
        cpus_per_actor=1,
        bench_runs=1,
        bench_warmup=0,
        progress=False,
    )
    base.update(kw)
    return sweep.SweepConfig(**base)


def direct_predictions(data: Path) -> pd.DataFrame:
    """A plain single-process evaluation of the same model and data, every r."""
    model = tomecis.patch(tomecis.create_model(MODEL, checkpoint=data / "ckpt" / f"{MODEL}.pth"), r=0)
    shardset = shards.resolve_data(str(data / "shards"))
    rows = []
    with torch.inference_mode():
        for images, labels, keys in shards.iter_batches(
            shardset.shards, shards.eval_transform(model), batch_size=7
        ):
            for r in R_VALUES:
                model.r = r
                top5 = model(images).topk(5, dim=-1).indices
                for key, label, t5 in zip(keys, labels.tolist(), top5.tolist()):
                    rows.append({"key": key, "r": r, "label": label, "pred": t5[0], "top5": t5})
    return pd.DataFrame(rows)


def test_sweep_matches_a_plain_evaluation_for_every_r(ray_local, data, tmp_path):
    summary = sweep.run_sweep(config(data, tmp_path / "out"))
    assert len(summary.written) == len(R_VALUES) and not summary.skipped
    points = pd.read_parquet(tmp_path / "out" / "points")
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert sorted(points["r"]) == R_VALUES
    assert (points["n_images"] == 22).all() and (points["n_failed"] == 0).all()
    assert points["tokens_out"].tolist() == [197, 197 - 8 * 12, 11] or sorted(points["tokens_out"]) == [
        11,
        101,
        197,
    ]
    expected = direct_predictions(data)
    for r in R_VALUES:
        mine = predictions[predictions["r"] == r].set_index("key").sort_index()
        theirs = expected[expected["r"] == r].set_index("key").sort_index()
        assert list(mine.index) == list(theirs.index)  # every image exactly once
        assert (mine["pred"] == theirs["pred"]).all()
        assert [list(v) for v in mine["top5"]] == list(theirs["top5"])
        row = points[points["r"] == r].iloc[0]
        assert row["top1"] == pytest.approx(100 * (theirs["pred"] == theirs["label"]).mean())
        assert row["top5"] == pytest.approx(
            100 * pd.Series([label in t for label, t in zip(theirs["label"], theirs["top5"])]).mean()
        )
        assert row["top1"] == pytest.approx(100 * mine["correct"].mean())
    assert set(points.columns) >= {
        "model",
        "top1",
        "top5",
        "param_count",
        "img_size",
        "crop_pct",
        "interpolation",
        "infer_samples_per_sec",
        "infer_batch_size",
        "eval_samples_per_sec",
        "gflops",
        "nodes",
        "hostnames",
        "dataset",
        "schedule",
    }
    assert (points["infer_samples_per_sec"] > 0).all() and (points["eval_samples_per_sec"] > 0).all()
    run = [
        "dataset",
        "method",
        "amp",
        "infer_batch_size",
        "weights",
        "device",
    ]  # predictions say which run they belong to
    assert predictions[run].drop_duplicates().values.tolist() == points[run].drop_duplicates().values.tolist()
    assert "| method | r | keep | top-1 |" in summary.table and "| none | 0 | — |" in summary.table
    assert "| tomecis | 16 | — |" in summary.table and "| tomecis | 8 | — |" in summary.table
    assert len(list((tmp_path / "out" / "failures").iterdir())) == len(
        R_VALUES
    )  # one per point, empty: none failed
    assert len(pd.read_parquet(tmp_path / "out" / "failures")) == 0 and not summary.decode_failures


def test_killed_actor_still_gives_an_exact_result_and_reruns_skip(
    ray_local, data, tmp_path, actor_dies_on_item
):
    clean = tmp_path / "clean"
    sweep.run_sweep(config(data, clean, bench=False))
    crashed = tmp_path / "crashed"
    actor_dies_on_item(2)
    summary = sweep.run_sweep(config(data, crashed, bench=False))
    assert summary.actors_replaced >= 1
    a = pd.read_parquet(clean / "predictions").sort_values(["r", "key"]).reset_index(drop=True)
    b = pd.read_parquet(crashed / "predictions").sort_values(["r", "key"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="shard"), b.drop(columns="shard"))
    assert (pd.read_parquet(crashed / "points")["n_images"] == 22).all()

    mtimes = {p: p.stat().st_mtime_ns for p in (crashed / "points").iterdir()}
    again = sweep.run_sweep(config(data, crashed, bench=False))
    assert not again.written and len(again.skipped) == len(R_VALUES)
    assert {p: p.stat().st_mtime_ns for p in (crashed / "points").iterdir()} == mtimes
    before = pd.read_parquet(crashed / "points").set_index("r")
    forced = sweep.run_sweep(config(data, crashed, bench=False, force=True, r_values=[8]))
    assert len(forced.written) == 2  # r = 8 and the baseline, in every grid
    after = pd.read_parquet(crashed / "points").set_index("r")
    assert len(after) == len(R_VALUES)
    assert (
        after.loc[8, "started"] > before.loc[8, "finished"]
    )  # r = 8 really evaluated again, and its file rewritten
    assert all(Path(p).stat().st_mtime_ns > mtimes[Path(p)] for p in forced.written)
    unforced = after.drop([0, 8])[["started", "finished"]]
    assert len(unforced) == 1 and (unforced == before.drop([0, 8])[["started", "finished"]]).all().all()


def test_multi_shard_items_with_loader_workers_are_exact(ray_local, data, tmp_path, actor_dies_on_item):
    """Items of two shards, each decoded by its own DataLoader worker, one of them on an actor that
    dies: every image once, the plain evaluation's predictions, and each key's true shard."""
    from orchestrator.pool import group_shards

    shardset = shards.resolve_data(str(data / "shards"))
    cfg = config(data, tmp_path, bench=False, num_actors=1, loader_workers=2)
    actor_dies_on_item(2)
    plan = sweep.plan_actors([NodeResources("n1", "127.0.0.1", 2, 0)], "cpu", 1, 1, 2)
    assert prepare.shards_per_item(plan, len(shardset)) == 2
    assert [len(g) for g in group_shards(shardset.shards, 2)] == [2, 2, 1]
    summary = sweep.run_sweep(cfg)
    assert summary.actors_replaced == 1
    predictions = pd.read_parquet(tmp_path / "predictions")
    points = pd.read_parquet(tmp_path / "points")
    assert (points["n_images"] == 22).all() and (points["n_shards"] == 5).all()
    expected = direct_predictions(data).set_index(["r", "key"]).sort_index()
    mine = predictions.set_index(["r", "key"]).sort_index()
    assert list(mine.index) == list(expected.index)
    assert (mine["pred"] == expected["pred"]).all()
    true_shard = {
        key: shard.url
        for shard in shardset.shards
        for _, _, keys in shards.iter_batches([shard], lambda im: torch.zeros(1), 8)
        for key in keys
    }
    assert (predictions["shard"] == predictions["key"].map(true_shard)).all()


def test_a_result_lost_in_transit_is_retried_and_counted_once(ray_local, data, tmp_path, monkeypatch):
    """A node that dies after its actor finished a shard, before the driver fetched it: ObjectLostError
    and its kin. The item is re-run (a retry), and no image is counted twice."""
    from ray.exceptions import ObjectReconstructionFailedError, OwnerDiedError

    from orchestrator import pool

    real_fetch, calls = pool.fetch, []

    def lossy_fetch(ref):
        calls.append(ref)
        if len(calls) == 2:
            raise OwnerDiedError(ref.hex(), None, "test")
        if len(calls) == 4:
            raise ObjectReconstructionFailedError(ref.hex(), None, "test")
        return real_fetch(ref)

    monkeypatch.setattr(pool, "fetch", lossy_fetch)
    sweep.run_sweep(config(data, tmp_path / "out", bench=False))
    assert len(calls) == 5 + 2  # 5 shards, two of them fetched twice
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert predictions.groupby("r")["key"].apply(lambda k: k.is_unique and len(k) == 22).all()
    expected = direct_predictions(data).set_index(["r", "key"]).sort_index()
    assert (predictions.set_index(["r", "key"]).sort_index()["pred"] == expected["pred"]).all()

    calls.clear()
    with pytest.raises(
        SweepError, match="lost in transit"
    ):  # a loss is a failed attempt: it counts toward retries
        sweep.run_sweep(config(data, tmp_path / "strict", bench=False, max_retries=0))


def test_finished_models_are_written_before_a_later_model_fails(ray_local, data, tmp_path, capsys):
    """Two models; the second one's checkpoint cannot be loaded, so its every item fails. The first
    model's points are on disk, the command exits non-zero, and a rerun computes only the second."""
    second = "deit_tiny_distilled_patch16_224"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / f"{MODEL}.pth").write_bytes((data / "ckpt" / f"{MODEL}.pth").read_bytes())
    (ckpt / f"{second}.pth").write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    argv = [
        "--models",
        f"deit_tiny,{second}",
        "--r",
        "0,8",
        "--data",
        str(data / "shards"),
        "--out",
        str(out),
        "--checkpoint-dir",
        str(ckpt),
        "--batch-size",
        "4",
        "--num-actors",
        "2",
        "--cpus-per-actor",
        "1",
        "--max-retries",
        "0",
        "--no-bench",
        "--no-progress",
    ]
    assert sweep.main(argv) == 1
    err = capsys.readouterr().err
    assert "2 grid point(s) not written" in err and second in err
    points = pd.read_parquet(out / "points")
    assert set(points["model"]) == {MODEL} and sorted(points["r"]) == [0, 8]
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir()}

    torch.manual_seed(2)
    torch.save({"model": tomecis.create_model(second).state_dict()}, ckpt / f"{second}.pth")
    assert sweep.main(argv) == 0
    assert "2 point(s) written, 2 already done" in capsys.readouterr().out
    points = pd.read_parquet(out / "points")
    assert sorted(points["model"]) == sorted([MODEL, MODEL, second, second])
    assert {p.name: p.stat().st_mtime_ns for p in (out / "points").iterdir() if p.name in mtimes} == mtimes


def test_weights_and_device_kind_are_part_of_the_resume_key(ray_local, data, tmp_path):
    """A --random-weights smoke run must not satisfy the real run that follows it in the same --out."""
    smoke = sweep.run_sweep(
        config(data, tmp_path, r_values=[0], bench=False, checkpoint_dir=None, random_weights=True)
    )
    real = sweep.run_sweep(config(data, tmp_path, r_values=[0], bench=False))
    assert len(smoke.written) == 1 and len(real.written) == 1 and not real.skipped
    digest = hashlib.sha256((data / "ckpt" / f"{MODEL}.pth").read_bytes()).hexdigest()[:12]
    points = pd.read_parquet(tmp_path / "points")
    assert sorted(points["weights"]) == sorted(["random", f"ckpt_{digest}"])
    names = sorted(p.name for p in (tmp_path / "points").iterdir())
    assert [n.split("-")[5:7] for n in names] == [[f"ckpt_{digest}", "cpu"], ["random", "cpu"]]
    cuda = sweep.GridPoint(MODEL, 0, weights="random", device="cuda", dataset=points["dataset"].iloc[0])
    assert not sweep.ResultsDir(str(tmp_path)).is_done(cuda)  # CPU img/s never stands in for a GPU run


def test_a_new_r_only_computes_the_missing_point(ray_local, data, tmp_path):
    sweep.run_sweep(config(data, tmp_path, r_values=[0], bench=False))
    summary = sweep.run_sweep(config(data, tmp_path, r_values=[0, 4], bench=False))
    assert [Path(p).name.split("-")[2] for p in summary.written] == ["r4"]
    assert len(summary.skipped) == 1


def test_every_reduced_point_has_a_speedup_inside_its_interval_even_when_its_baseline_was_done_before(
    ray_local, data, tmp_path
):
    """Six paired timing rounds: every reduced point's speed-up (median per-round ratio over the baseline)
    lies in its 95% interval and keeps its six rounds' seconds; the baseline is 1 against itself; a rerun
    that adds r = 4 to a finished baseline times the baseline again beside it, so r = 4 is paired too; the
    report prints the intervals."""
    from orchestrator.report import ReportConfig, build_report

    sweep.run_sweep(config(data, tmp_path / "out", r_values=[0, 8, 16], bench_runs=6, num_actors=1))
    sweep.run_sweep(config(data, tmp_path / "out", r_values=[0, 4], bench_runs=6, num_actors=1))
    points = pd.read_parquet(tmp_path / "out" / "points").set_index("r").sort_index()
    assert list(points.index) == [0, 4, 8, 16]
    reduced = points.loc[[4, 8, 16]]
    assert (reduced["speedup_low"] <= reduced["speedup"]).all(), reduced[["speedup_low", "speedup"]]
    assert (reduced["speedup"] <= reduced["speedup_high"]).all(), reduced[["speedup", "speedup_high"]]
    assert (reduced["speedup_low"] > 0).all() and points["bench_seconds"].map(len).eq(6).all()
    assert points.loc[0, ["speedup", "speedup_low", "speedup_high"]].tolist() == [1.0, 1.0, 1.0]
    report = build_report(ReportConfig(str(tmp_path / "out"), out=None))
    r16 = reduced.loc[16]
    assert f"{r16['speedup']:.2f}x [{r16['speedup_low']:.2f}, {r16['speedup_high']:.2f}]" in report.markdown


def test_eval_rate_of_a_single_r_on_one_actor_is_images_over_the_pass(ray_local, data, tmp_path):
    """One actor, one point (r = 0: the baseline alone): eval_samples_per_sec is n_images over the wall time
    from the first item's start (started) to the last item's end (finished); with several points (the
    baseline and r = 8), each one's share of that time is less."""
    sweep.run_sweep(config(data, tmp_path / "one", r_values=[0], bench=False, num_actors=1))
    row = pd.read_parquet(tmp_path / "one" / "points").iloc[0]
    wall = (row["finished"] - row["started"]).total_seconds()
    assert row["eval_samples_per_sec"] > 0 and row["eval_samples_per_sec"] == pytest.approx(
        22 / wall, rel=1e-4
    )
    sweep.run_sweep(config(data, tmp_path / "two", r_values=[0, 8], bench=False, num_actors=1))
    rows = pd.read_parquet(tmp_path / "two" / "points")
    wall = (rows["finished"] - rows["started"]).dt.total_seconds()
    assert rows["started"].nunique() == 1 and rows["finished"].nunique() == 1  # one pass fed both r
    assert ((22 / rows["eval_samples_per_sec"]) < wall).all()
    assert (22 / rows["eval_samples_per_sec"]).sum() > wall.iloc[0]  # the shared decode is charged to each r


def test_relative_data_reaches_the_actors_as_absolute_paths(ray_local, data, tmp_path, monkeypatch):
    """Actors run in their own working directory (here: the one Ray started in), so a relative --data
    given from elsewhere must reach them as absolute paths."""
    monkeypatch.chdir(data)
    cfg = config(data, tmp_path / "out", r_values=[0], bench=False, num_actors=1, max_retries=0)
    cfg.data = "shards"
    sweep.run_sweep(cfg)
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert len(predictions) == 22
    assert set(predictions["shard"]) == {str(data / "shards" / f"imagenet-val-{i:06d}.tar") for i in range(5)}


def test_undecodable_image_is_reported_not_dropped(ray_local, tmp_path, capsys):
    good = tiny_dataset(n_images=4, n_classes=2)
    samples = [(im.key, im.jpeg, im.class_index) for im in good] + [("broken_key", b"not a jpeg at all", 0)]
    record = write_raw_shard(tmp_path / "bad" / "imagenet-val-000000.tar", samples)
    write_manifest_for(tmp_path / "bad", [record])
    record_url = str(tmp_path / "bad" / "imagenet-val-000000.tar")
    cfg = dict(
        models=[MODEL],
        r_values=[0],
        data=str(tmp_path / "bad"),
        batch_size=4,
        random_weights=True,
        num_actors=1,
        cpus_per_actor=1,
        bench=False,
        progress=False,
    )
    with pytest.raises(SweepError, match="broken_key"):
        sweep.run_sweep(sweep.SweepConfig(out=str(tmp_path / "strict"), **cfg))
    assert not (tmp_path / "strict" / "points").exists()
    argv = [
        "--models",
        "deit_tiny",
        "--r",
        "0,8",
        "--data",
        str(tmp_path / "bad"),
        "--out",
        str(tmp_path / "lenient"),
        "--batch-size",
        "4",
        "--random-weights",
        "--num-actors",
        "1",
        "--cpus-per-actor",
        "1",
        "--no-bench",
        "--no-progress",
        "--allow-decode-failures",
    ]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert (
        f"{MODEL}: 1 image(s) could not be decoded" in printed
        and f"shard {record_url}, key broken_key:" in printed
    )
    points = pd.read_parquet(tmp_path / "lenient" / "points")
    assert (points["n_images"] == 4).all() and (points["n_failed"] == 1).all()
    failures = pd.read_parquet(tmp_path / "lenient" / "failures")
    assert sorted(failures["r"]) == [0, 8] and set(failures["key"]) == {"broken_key"}
    assert set(failures["shard"]) == {record_url} and failures["error"].str.len().min() > 0


def test_shard_shorter_than_its_manifest_fails_the_point(ray_local, tmp_path):
    images = tiny_dataset(n_images=3, n_classes=1)
    record = write_raw_shard(
        tmp_path / "d" / "imagenet-val-000000.tar", [(im.key, im.jpeg, 0) for im in images]
    )
    write_manifest_for(
        tmp_path / "d", [record.__class__(name=record.name, n_samples=5, sha256=record.sha256)]
    )
    with pytest.raises(SweepError, match="manifest says 5"):
        sweep.run_sweep(
            sweep.SweepConfig(
                models=[MODEL],
                r_values=[0],
                data=str(tmp_path / "d"),
                out=str(tmp_path / "o"),
                random_weights=True,
                num_actors=1,
                cpus_per_actor=1,
                bench=False,
                progress=False,
                max_retries=0,
            )
        )


@pytest.mark.assets
def test_real_weights_on_the_sample_photos(ray_local, tmp_path, sample_photos):
    """Shards of the 500 real photos, the real DeiT-Tiny checkpoint: r = 0 equals the direct evaluation."""
    from conftest import DEIT_TINY_WEIGHTS, SAMPLE_IMAGES, require_assets

    require_assets(DEIT_TINY_WEIGHTS)
    shards.write_shards(
        shards.WriteConfig(
            src=SAMPLE_IMAGES, out=tmp_path / "shards", shard_size=100, workers=2, progress=False
        )
    )
    summary = sweep.run_sweep(
        sweep.SweepConfig(
            models=[MODEL],
            r_values=[0, 8, 16],
            data=str(tmp_path / "shards"),
            out=str(tmp_path / "out"),
            batch_size=50,
            checkpoint_dir=str(DEIT_TINY_WEIGHTS.parent),
            num_actors=1,
            cpus_per_actor=2,
            bench=False,
            progress=False,
        )
    )
    points = pd.read_parquet(tmp_path / "out" / "points").set_index("r")
    images, labels = sample_photos
    model = tomecis.create_model(MODEL, checkpoint=DEIT_TINY_WEIGHTS)
    with torch.inference_mode():
        direct = (
            sum(
                (model(images[i : i + 100]).argmax(-1) == labels[i : i + 100]).sum().item()
                for i in range(0, 500, 100)
            )
            / 5
        )
    assert points.loc[0, "n_images"] == 500
    assert points.loc[0, "top1"] == pytest.approx(direct)
    assert points.loc[0, "top1"] >= 75.0
    assert points.loc[16, "top1"] < points.loc[0, "top1"] + 1
    print(summary.table)


def test_one_decode_pass_for_two_models_and_two_methods_equals_separate_runs(
    ray_local, data, tmp_path, actor_dies_on_item
):
    """deit_tiny and deit_tiny_distilled share an eval transform: one pass decodes the 22 images once and
    runs them at every (model, method, r), an actor dying on the way. Each point's row and predictions are
    what a separate run of that model and method writes; a rerun after losing two points redoes only them,
    still in one pass."""
    second = "deit_tiny_distilled_patch16_224"
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / f"{MODEL}.pth").write_bytes((data / "ckpt" / f"{MODEL}.pth").read_bytes())
    torch.manual_seed(3)
    torch.save({"model": tomecis.create_model(second).state_dict()}, ckpt / f"{second}.pth")
    grid = dict(checkpoint_dir=str(ckpt), r_values=[0, 8], bench=False)
    actor_dies_on_item(2)
    together = sweep.run_sweep(
        config(data, tmp_path / "together", models=[MODEL, second], methods=["tomecis", "tome"], **grid)
    )
    assert together.actors_replaced == 1 and len(together.written) == 6  # per model: baseline, 2 methods
    assert (together.decoded_images, together.decode_passes, together.points_evaluated) == (22, 1, 6)
    assert sweep.describe_decoding(together) == "decoded 22 images once for 6 point(s)"
    for model in (MODEL, second):
        for method in ("tomecis", "tome"):
            alone = sweep.run_sweep(
                config(data, tmp_path / "alone", models=[model], methods=[method], **grid)
            )
            assert alone.decoded_images == 22 and len(alone.written) == (2 if method == "tomecis" else 1)
    timing = ["eval_samples_per_sec", "started", "finished", "nodes", "hostnames", "n_shards", "retries"]
    timing.append("planned")  # each run's own plan: both methods together, one alone
    point_key = ["model", "method", "r"]
    assert (pd.read_parquet(tmp_path / "together" / "points")["retries"] >= 1).all()  # the death shows
    assert (pd.read_parquet(tmp_path / "alone" / "points")["retries"] == 0).all()
    rows = {
        name: pd.read_parquet(tmp_path / name / "points")
        .drop(columns=timing)
        .sort_values(point_key)
        .reset_index(drop=True)
        for name in ("together", "alone")
    }
    assert len(rows["together"]) == 6 and set(rows["together"]["method"]) == {"none", "tomecis", "tome"}
    assert (rows["together"]["method"] == "none").sum() == 2  # one baseline per model
    pd.testing.assert_frame_equal(rows["together"], rows["alone"])
    preds = {
        name: pd.read_parquet(tmp_path / name / "predictions")
        .sort_values([*point_key, "key"])
        .reset_index(drop=True)
        for name in ("together", "alone")
    }
    pd.testing.assert_frame_equal(preds["together"], preds["alone"])  # point by point, image by image

    points_dir = tmp_path / "together" / "points"
    lost = [
        p
        for p in sorted(points_dir.iterdir())
        if p.name.startswith(("deit_tiny-none-r0-", "deit_tiny_distilled-tome-r8-"))
    ]
    assert len(lost) == 2
    for path in lost:
        path.unlink()
    again = sweep.run_sweep(
        config(data, tmp_path / "together", models=[MODEL, second], methods=["tomecis", "tome"], **grid)
    )
    assert sorted(Path(p).name for p in again.written) == sorted(p.name for p in lost)
    assert len(again.skipped) == 4 and (again.decoded_images, again.decode_passes) == (22, 1)


def test_methods_at_an_r_and_a_keep_share_one_baseline_per_model_and_match_direct_runs(
    ray_local, data, tmp_path, capsys
):
    """tomecis, evit and pitome at r = 8 and keep = 0.7 on two models of one pass: evit skips --r (one
    line), every model has one baseline row (method none, r 0, keep null), and every point has one
    prediction per image, equal to the model run directly at that method and amount."""
    second = "deit_small_patch16_224"  # pitome, tofu and evit refuse distilled models
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / f"{MODEL}.pth").write_bytes((data / "ckpt" / f"{MODEL}.pth").read_bytes())
    torch.manual_seed(4)
    torch.save({"model": tomecis.create_model(second).state_dict()}, ckpt / f"{second}.pth")
    cfg = config(
        data,
        tmp_path / "out",
        models=[MODEL, second],
        methods=["tomecis", "evit", "pitome"],
        r_values=[8],
        keep_values=[0.7],
        checkpoint_dir=str(ckpt),
        bench=False,
    )
    summary = sweep.run_sweep(cfg)
    assert capsys.readouterr().err.count("evit: --r skipped (evit takes --keep only)") == 1
    assert (summary.decode_passes, summary.decoded_images, len(summary.written)) == (1, 22, 12)
    points = pd.read_parquet(tmp_path / "out" / "points")
    base = points[points["method"] == "none"]
    assert sorted(base["model"]) == sorted([MODEL, second])
    assert (base["r"] == 0).all() and base["keep"].isna().all()
    keys = {
        (m, int(r) if r == r else None, float(k) if k == k else None)
        for m, r, k in points[["method", "r", "keep"]].values
    }
    assert keys == {
        ("none", 0, None),
        ("tomecis", 8, None),
        ("tomecis", None, 0.7),
        ("evit", None, 0.7),
        ("pitome", 8, None),
        ("pitome", None, 0.7),
    }
    assert (points.groupby("model").size() == 6).all() and (points["n_images"] == 22).all()
    for model_block in summary.table.split("\n\n"):  # the final table: per model, r and keep in their cells
        rows = [line for line in model_block.splitlines() if line.startswith("| ") and "---" not in line]
        cells = {tuple(c.strip() for c in line.strip("|").split("|")[:3]) for line in rows[1:]}
        assert cells == {
            ("none", "0", "—"),
            ("tomecis", "8", "—"),
            ("tomecis", "—", "0.7"),
            ("evit", "—", "0.7"),
            ("pitome", "8", "—"),
            ("pitome", "—", "0.7"),
        }, model_block
    assert summary.table.count("| method | r | keep | top-1 |") == 2
    base_tokens = points["model"].map(base.set_index("model")["tokens_out"])
    assert (
        points.loc[points["method"] != "none", "tokens_out"] < base_tokens[points["method"] != "none"]
    ).all()
    predictions = pd.read_parquet(tmp_path / "out" / "predictions")
    assert len(predictions) == 12 * 22
    shardset = shards.resolve_data(str(data / "shards"))
    for model_name in (MODEL, second):
        model = tomecis.patch(tomecis.create_model(model_name, checkpoint=ckpt / f"{model_name}.pth"), r=0)
        batches = list(shards.iter_batches(shardset.shards, shards.eval_transform(model), batch_size=22))
        images, _, image_keys = batches[0]
        for method, r, keep in keys:
            tomecis.set_reduction(model, method, r=r, keep=keep)
            with torch.inference_mode():
                expected = dict(zip(image_keys, model(images).argmax(-1).tolist()))
            mine = predictions[
                (predictions["model"] == model_name)
                & (predictions["method"] == method)
                & (predictions["r"].isna() if r is None else predictions["r"] == r)
                & (predictions["keep"].isna() if keep is None else predictions["keep"] == keep)
            ]
            assert len(mine) == 22 and mine["key"].is_unique, (model_name, method, r, keep)
            assert dict(zip(mine["key"], mine["pred"])) == expected, (model_name, method, r, keep)


def test_match_by_gflops_adds_one_matched_point_per_other_method_in_the_same_pass(
    ray_local, data, tmp_path, capsys
):
    """--match tomecis:r13 --match-by gflops with tome and evit at their own amounts: the reference joins
    the grid, tome's matched r (tome counts tokens as tomecis does: r13) and evit's matched keep are
    evaluated in the one decode pass with the planned points, their rows say so, and their GFLOPs are
    within 2% of the reference's (or a line says it cannot be reached). A point an earlier run wrote
    that the match finds again is marked, not evaluated twice."""
    out = tmp_path / "out"
    amounts = {"tome": [(13, None)], "evit": [(None, 0.5)]}
    first = sweep.run_sweep(config(data, out, methods=[], r_values=[], method_amounts=amounts, bench=False))
    assert len(first.written) == 3
    target = MatchTarget("tomecis", (13, None), "gflops")
    cfg = config(data, out, methods=[], r_values=[], method_amounts=amounts, bench=False, match=target)
    summary = sweep.run_sweep(cfg)
    err = capsys.readouterr().err
    assert (summary.decode_passes, len(summary.written), len(summary.skipped)) == (1, 2, 3)
    points = pd.read_parquet(out / "points").set_index("method")
    assert sorted(points.index) == ["evit", "evit", "none", "tome", "tomecis"]
    reference = points.loc["tomecis"]
    assert reference["r"] == 13 and pd.isna(reference["matched_to"])
    tome = points.loc["tome"]
    assert tome["r"] == 13 and tome["matched_to"] == "tomecis:r13 by gflops"  # written first, now marked
    evit = points.loc["evit"].set_index("keep")
    matched_keep = [k for k in evit.index if k != 0.5]
    assert len(matched_keep) == 1 and pd.isna(evit.loc[0.5, "matched_to"])
    matched = evit.loc[matched_keep[0]]
    assert matched["matched_to"] == "tomecis:r13 by gflops"
    for method, row in (("tome", tome), ("evit", matched)):
        assert row["matched_reference_value"] == pytest.approx(reference["gflops"], rel=1e-6)
        assert row["matched_value"] == pytest.approx(row["gflops"], rel=1e-6)
        line = next(text for text in err.splitlines() if text.startswith(f"match: {MODEL} {method}"))
        assert abs(row["gflops"] / reference["gflops"] - 1) <= 0.02 or "cannot reach" in line, line
    assert "| tomecis | 13 | — |" in summary.table  # the reference is in the sweep's table


def test_match_by_speed_times_the_candidates_on_an_actor_shaped_task(ray_local, data, tmp_path, capsys):
    """--match-by speed on CPU actors: each other method's amount is found by timing it in turns with the
    reference (in a Ray task shaped like an actor), and the row keeps both img/s of that measurement."""
    target = MatchTarget("tomecis", (13, None), "speed")
    cfg = config(
        data, tmp_path / "out", methods=["evit"], r_values=[], keep_values=[0.7], bench=False, match=target
    )
    summary = sweep.run_sweep(cfg)
    err = capsys.readouterr().err
    assert summary.decode_passes == 1
    points = pd.read_parquet(tmp_path / "out" / "points")
    matched = points[points["matched_to"].notna()]
    assert len(matched) == 1 and matched["method"].iloc[0] == "evit"
    row = matched.iloc[0]
    assert row["matched_to"] == "tomecis:r13 by speed"
    assert row["matched_value"] > 0 and row["matched_reference_value"] > 0
    assert f"match: {MODEL} evit keep{row['keep']:g} by speed" in err
    assert f"match: timing 1 method(s) of {MODEL} against tomecis:r13" in err  # said before it starts
    again = sweep.run_sweep(cfg)  # a rerun matches what this run timed, without timing again
    err = capsys.readouterr().err
    assert again.points_evaluated == 0 and "match: timing" not in err
    assert f"match: {MODEL} evit keep{row['keep']:g} by speed" in err and "timed by an earlier run" in err
    assert sorted(points["method"]) == sorted(
        ["none", "tomecis", "evit"] + (["evit"] if row["keep"] != 0.7 else [])
    )
