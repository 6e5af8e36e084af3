"""A method of one's own through the sweep (#30): installed (an entry point) on local Ray with two actors,
by import path on a two-node cluster whose nodes do not have it, malformed ones failing only their points,
and an actor that cannot import a method stopping the sweep in seconds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from conftest import DEIT_TINY_WEIGHTS, SAMPLE_IMAGES
from plugin_testing import malformed_module, readme_example, write_package
from ray.cluster_utils import Cluster

import shards
import tomecis
from orchestrator import sweep
from orchestrator.errors import SweepError
from orchestrator.prepare import select_shards

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "deit_tiny_patch16_224"
DIST = "mypkg-l2prune 0.1"


@pytest.fixture(scope="module")
def photos(tmp_path_factory, request):
    """``(shards dir, checkpoint dir, limit)``: 100 of the real photos with the real DeiT-Tiny weights
    where ../shared/assets has them, else the tiny images and random weights of the sweep tests."""
    if SAMPLE_IMAGES.exists() and DEIT_TINY_WEIGHTS.exists():
        out = tmp_path_factory.mktemp("photos") / "shards"
        shards.write_shards(
            shards.WriteConfig(src=SAMPLE_IMAGES, out=out, shard_size=50, workers=2, progress=False)
        )
        return out, DEIT_TINY_WEIGHTS.parent, 100
    data = request.getfixturevalue("data")
    return data / "shards", data / "ckpt", None


@pytest.fixture
def installed(tmp_path_factory):
    """A package made outside the repository, installed as pip leaves one (a ``*.dist-info`` declaring
    its methods), on the driver's path and on every worker's (``PYTHONPATH``, as a cluster's setup does);
    a local Ray started with that path, shut down after the test."""
    root = write_package(
        tmp_path_factory.mktemp("site"),
        "mypkg",
        {
            "l2prune": readme_example(),
            "broken": malformed_module("broken", "nan"),
            "misshapen": malformed_module("misshapen", "shape"),
        },
        dist="mypkg-l2prune-0.1",
        entry_points={
            "l2prune": "mypkg.l2prune:METHOD",
            "broken": "mypkg.broken:METHOD",
            "misshapen": "mypkg.misshapen:METHOD",
        },
    )
    patch = pytest.MonkeyPatch()
    patch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
    patch.syspath_prepend(str(root))
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield root
    ray.shutdown()
    patch.undo()


def by_hand(shards_dir: Path, ckpt: Path, limit, method: str, r_values) -> pd.DataFrame:
    """``method`` at each r, applied in this process to the photos the sweep selects: key, r, pred, top5."""
    model = tomecis.patch(tomecis.create_model(MODEL, checkpoint=ckpt / f"{MODEL}.pth"))
    chosen = select_shards(shards.resolve_data(str(shards_dir)), limit)[0]
    rows = []
    with torch.inference_mode():
        for images, _, keys in shards.iter_batches(chosen, shards.eval_transform(model), batch_size=25):
            for r in r_values:
                tomecis.set_reduction(model, method, r=r)
                top5 = model(images).topk(5, dim=-1).indices.tolist()
                rows += [{"key": k, "r": r, "pred": t[0], "top5": t} for k, t in zip(keys, top5)]
    return pd.DataFrame(rows).sort_values(["r", "key"]).reset_index(drop=True)


def test_an_installed_method_is_listed_swept_on_two_actors_and_matches_by_hand(
    installed, photos, tmp_path, capsys
):
    assert sweep.main(["--list-methods"]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert DIST in listed["l2prune"] and "builtin" in listed["tomecis"]

    shards_dir, ckpt, limit = photos
    cfg = sweep.config_from_args(
        ["--models", "deit_tiny", "--method", "l2prune,broken,misshapen", "--r", "4,8"]
        + ["--data", str(shards_dir), "--out", str(tmp_path), "--checkpoint-dir", str(ckpt)]
        + ["--batch-size", "25", "--num-actors", "2", "--cpus-per-actor", "1", "--no-bench", "--no-progress"]
        + (["--limit", str(limit)] if limit else [])
        + ["--address", "auto"]
    )
    with pytest.raises(SweepError) as failed:
        sweep.run_sweep(cfg)
    message = str(failed.value)
    assert "4 grid point(s) not written" in message  # broken and misshapen at r 4 and 8, nothing else
    assert f"method 'broken' ({DIST}), block 2: reduce returned NaN or inf from finite input" in message
    assert f"method 'misshapen' ({DIST}), block 2: reduce returned shape" in message

    points = pd.read_parquet(tmp_path / "points")
    assert sorted(zip(points["method"], points["r"])) == [("l2prune", 4), ("l2prune", 8), ("none", 0)]
    sources = dict(zip(points["method"], points["method_source"]))
    assert sources == {"none": "builtin", "l2prune": DIST}
    assert all(len(nodes) == 1 for nodes in points["nodes"]) and (points["n_images"] > 0).all()
    assert sorted(p.name.split("-src")[0] != p.name for p in (tmp_path / "points").iterdir()) == [
        False,
        True,
        True,
    ]

    swept = pd.read_parquet(tmp_path / "predictions")
    swept = swept[swept["method"] == "l2prune"].sort_values(["r", "key"]).reset_index(drop=True)
    expected = by_hand(shards_dir, ckpt, limit, "l2prune", [4, 8])
    assert swept["key"].tolist() == expected["key"].tolist()
    assert swept["pred"].tolist() == expected["pred"].tolist()
    assert [list(t) for t in swept["top5"]] == expected["top5"].tolist()
    assert (swept["method_source"] == DIST).all()


# --------------------------------------------------------------------------- two nodes, one machine


@pytest.fixture
def two_nodes():
    """A head without CPUs (the driver only) and two one-CPU nodes, joined by this process."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@ray.remote(num_cpus=1)
def can_import(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_an_import_path_method_is_shipped_to_nodes_that_do_not_have_it(
    data, tmp_path, monkeypatch, two_nodes
):
    # its own name: this process (the test session) has loaded the installed l2prune already
    lab = readme_example().replace('name="l2prune"', 'name="l2lab"')
    root = write_package(tmp_path / "only_here", "labpkg", {"l2prune": lab})
    monkeypatch.syspath_prepend(str(root))  # the driver's path only: no node's workers have it
    assert ray.get([can_import.remote("labpkg") for _ in range(2)]) == [False, False]
    cfg = sweep.config_from_args(
        ["--models", "deit_tiny", "--method", "labpkg.l2prune:METHOD", "--r", "4,8"]
        + [
            "--data",
            str(data / "shards"),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint-dir",
            str(data / "ckpt"),
        ]
        + ["--batch-size", "4", "--num-actors", "2", "--cpus-per-actor", "1", "--device", "cpu"]
        + ["--no-bench", "--no-progress"]
    )
    assert cfg.methods == ["l2lab"]
    sweep.run_sweep(cfg)
    points = pd.read_parquet(tmp_path / "out" / "points")
    assert sorted(zip(points["method"], points["r"])) == [("l2lab", 4), ("l2lab", 8), ("none", 0)]
    assert {len(nodes) for nodes in points["nodes"]} == {2}  # both nodes evaluated every point
    source = points.loc[points["method"] == "l2lab", "method_source"].iloc[0]
    assert source.startswith(str((root / "labpkg" / "l2prune.py").resolve()) + " sha256:")
    swept = pd.read_parquet(tmp_path / "out" / "predictions")
    swept = swept[swept["method"] == "l2lab"].sort_values(["r", "key"]).reset_index(drop=True)
    expected = by_hand(data / "shards", data / "ckpt", None, "l2lab", [4, 8])
    assert (
        swept["pred"].tolist() == expected["pred"].tolist()
        and swept["key"].tolist() == expected["key"].tolist()
    )


def test_an_actor_that_cannot_import_a_method_stops_the_sweep_naming_module_and_node(
    data, tmp_path, monkeypatch, two_nodes
):
    root = write_package(
        tmp_path / "driver_only",
        "notthere",
        {"l2": readme_example().replace('name="l2prune"', 'name="l2driver"')},
        dist="notthere-1.0",
        entry_points={"l2driver": "notthere.l2:METHOD"},
    )
    monkeypatch.syspath_prepend(str(root))  # installed for the driver, not on the nodes
    cfg = sweep.config_from_args(
        ["--models", "deit_tiny", "--method", "l2driver", "--r", "4"]
        + [
            "--data",
            str(data / "shards"),
            "--out",
            str(tmp_path / "out"),
            "--checkpoint-dir",
            str(data / "ckpt"),
        ]
        + [
            "--batch-size",
            "4",
            "--num-actors",
            "2",
            "--cpus-per-actor",
            "1",
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    started = time.monotonic()
    with pytest.raises(SweepError, match=r"on node \S+ \(\w+\): method 'l2driver' .*module 'notthere.l2'"):
        sweep.run_sweep(cfg)
    assert time.monotonic() - started < 120  # actors start, report, and the sweep stops: no retries
    assert not (tmp_path / "out" / "points").exists() or not list((tmp_path / "out" / "points").iterdir())
