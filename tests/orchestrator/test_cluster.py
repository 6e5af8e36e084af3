"""cluster.yaml against Ray's own schema, and sweeps over a multi-node Ray cluster simulated on this machine."""

from __future__ import annotations

import copy
import re
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import ray
import torch
import yaml
from conftest import REPO
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.cluster_utils import Cluster
from shards_testing import tiny_dataset, write_tiny_shards

import tomecis
from orchestrator import sweep

CLUSTER_YAML = REPO / "cluster.yaml"
MODEL = "deit_tiny_patch16_224"


# --------------------------------------------------------------------------- cluster.yaml


def load_cluster_yaml() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_passes_rays_validation():
    config = load_cluster_yaml()
    validate_config(prepare_config(copy.deepcopy(config)))
    assert config["provider"]["type"] == "aws"
    gpu_types = [t for t, spec in config["available_node_types"].items() if spec["resources"].get("GPU")]
    assert (
        gpu_types and config["available_node_types"][config["head_node_type"]]["resources"].get("GPU") is None
    )
    settings = yaml.safe_dump(config).lower()  # the settings, not the comments that explain credentials
    assert "access_key" not in settings and "secret" not in settings


def test_cluster_yaml_pins_the_drivers_ray():
    """Ray refuses to join nodes of another version: the setup commands pin the one this driver runs."""
    setup = " ".join(load_cluster_yaml()["setup_commands"])
    assert f'"ray[default]=={ray.__version__}"' in setup, (
        f"cluster.yaml's setup_commands must pin ray[default]=={ray.__version__} (the driver's Ray); update the pin"
    )


@pytest.mark.parametrize(
    "typo",
    [
        lambda c: c.__setitem__("max_worker", c.pop("max_workers")),
        lambda c: c["available_node_types"]["gpu_1x_a10g"].__setitem__("min_worker", 1),
        lambda c: c["auth"].__setitem__("ssh_usr", "ubuntu"),
        lambda c: c["available_node_types"]["head"].pop("node_config"),
    ],
    ids=["top-level", "node-type", "auth", "missing-node-config"],
)
def test_a_typo_in_cluster_yaml_is_caught(typo):
    config = load_cluster_yaml()
    typo(config)
    with pytest.raises((jsonschema.ValidationError, ValueError, KeyError)):
        validate_config(prepare_config(config))


# --------------------------------------------------------------------------- many nodes, one machine


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 tiny images in 8 shards and a random-weight DeiT-Tiny checkpoint."""
    root = tmp_path_factory.mktemp("cluster")
    write_tiny_shards(root, tiny_dataset(n_images=40, n_classes=5), shard_size=5)
    (root / "ckpt").mkdir()
    torch.manual_seed(1)
    torch.save({"model": tomecis.create_model(MODEL).state_dict()}, root / "ckpt" / f"{MODEL}.pth")
    return root


def sweep_config(data: Path, out: Path, address: str, **kw) -> sweep.SweepConfig:
    base = dict(
        models=[MODEL],
        r_values=[0, 8],
        data=str(data / "shards"),
        out=str(out),
        batch_size=5,
        checkpoint_dir=str(data / "ckpt"),
        address=address,
        bench=False,
        progress=False,
        cpus_per_actor=1,
    )
    base.update(kw)
    return sweep.SweepConfig(**base)


@pytest.fixture
def cluster():
    """A head (no CPUs: the driver only) and two worker nodes with one fake GPU each."""
    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 4},
        },
    )
    workers = [c.add_node(num_cpus=1, num_gpus=1, resources={f"worker{i}": 1}) for i in range(2)]
    c.wait_for_nodes()
    yield c, workers
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def predictions(out: Path) -> pd.DataFrame:
    """Per-image predictions, less where they ran (shard grouping, device name: the runs differ there)."""
    frame = pd.read_parquet(out / "predictions").drop(columns=["shard", "device"])
    return frame.sort_values(["r", "key"]).reset_index(drop=True)


@pytest.mark.ray
@pytest.mark.slow
def test_sweep_spreads_over_nodes_and_equals_a_single_node_run(data, tmp_path, cluster):
    c, _ = cluster
    sweep.run_sweep(sweep_config(data, tmp_path / "multi", c.address))
    assert not ray.is_initialized()  # the sweep joined the cluster and left it; the cluster still runs
    points = pd.read_parquet(tmp_path / "multi" / "points")
    assert (points["n_images"] == 40).all()
    assert all(len(nodes) == 2 for nodes in points["nodes"])  # both GPU nodes evaluated every point
    assert all(
        "-cuda-" in p.name for p in (tmp_path / "multi" / "points").iterdir()
    )  # GPU actors: keyed as a cuda run
    c.shutdown()

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        sweep.run_sweep(
            sweep_config(data, tmp_path / "single", "local", device="cpu", num_actors=1, cpus_per_actor=2)
        )
    finally:
        ray.shutdown()
    assert all("-cpu-" in p.name for p in (tmp_path / "single" / "points").iterdir())
    pd.testing.assert_frame_equal(predictions(tmp_path / "multi"), predictions(tmp_path / "single"))
    single = pd.read_parquet(tmp_path / "single" / "points").set_index("r")
    assert (points.set_index("r")["top1"] == single["top1"]).all()


@pytest.mark.ray
@pytest.mark.slow
def test_worker_node_removed_mid_sweep(data, tmp_path, cluster, monkeypatch):
    c, workers = cluster
    out = tmp_path / "out"
    removed = []
    original = sweep.EvaluatorPool.evaluate

    def evaluate_and_pull_a_node(self, items, r_values, on_result):
        def on_result_then_remove(outcome):
            on_result(outcome)
            if not removed:  # first shard back: pull one GPU node out from under its busy actor
                c.remove_node(workers[1])
                removed.append(outcome.shards)

        return original(self, items, r_values, on_result_then_remove)

    monkeypatch.setattr(sweep.EvaluatorPool, "evaluate", evaluate_and_pull_a_node)
    summary = sweep.run_sweep(sweep_config(data, out, c.address, r_values=[0, 8, 16], actor_start_timeout=60))
    assert removed
    assert summary.actors_replaced >= 1, "the removed node's actor was never noticed"
    points = pd.read_parquet(out / "points")
    assert (points["n_images"] == 40).all() and len(points) == 3
    preds = predictions(out)
    assert preds.groupby("r")["key"].apply(lambda k: k.is_unique and len(k) == 40).all()


# --------------------------------------------------------------------------- placement on the nodes that exist


def start_cluster(head_cpus: float, *workers: dict) -> Cluster:
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": head_cpus})
    for spec in workers:
        c.add_node(**spec)
    c.wait_for_nodes()
    return c


@pytest.fixture
def make_cluster():
    """Start a simulated cluster on demand; stopped (and left by the driver) at the end of the test."""
    started = []

    def make(head_cpus: float, *workers: dict) -> Cluster:
        started.append(start_cluster(head_cpus, *workers))
        return started[-1]

    yield make
    if ray.is_initialized():
        ray.shutdown()
    for c in started:
        c.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(
    "head_cpus, workers, expected_actors",
    [(1, [{"num_cpus": 1}], {1: 2}), (1, [{"num_cpus": 3}], {1: 1, 3: 1}), (0, [{"num_cpus": 2}], {2: 1})],
    ids=["two-1-cpu-nodes", "1-cpu-and-3-cpu", "head-without-cpus"],
)
@pytest.mark.ray
def test_cpu_actors_fit_the_nodes_that_exist(
    data, tmp_path, make_cluster, capsys, head_cpus, workers, expected_actors
):
    """The cluster's total CPUs are no actor's size: each node gets the actors it can hold, every image
    is counted once, and the points name every node that evaluated them."""
    c = make_cluster(head_cpus, *workers)
    cfg = sweep_config(
        data, tmp_path / "out", c.address, device="cpu", cpus_per_actor=None, actor_start_timeout=60
    )
    sweep.run_sweep(cfg)
    err = capsys.readouterr().err
    counted = {}  # CPUs an actor -> actors of that size, from the printed plan
    for line in err.splitlines():
        if line.strip().startswith("node ") and "actor(s) x (" in line:
            count = int(line.split(": ", 1)[1].split(" actor")[0])
            cpus = int(line.split("x (")[1].split(" CPU")[0])
            counted[cpus] = counted.get(cpus, 0) + count
    assert counted == expected_actors, err
    print(err)
    print("nodes column:", [list(n) for n in pd.read_parquet(tmp_path / "out" / "points")["nodes"]])
    points = pd.read_parquet(tmp_path / "out" / "points")
    assert (points["n_images"] == 40).all()
    nodes_with_cpus = 1 + len(workers) - (head_cpus == 0)
    assert all(len(nodes) == nodes_with_cpus for nodes in points["nodes"]), points["nodes"].tolist()
    preds = pd.read_parquet(tmp_path / "out" / "predictions")
    assert preds.groupby("r")["key"].apply(lambda k: k.is_unique and len(k) == 40).all()


@pytest.mark.ray
@pytest.mark.slow
def test_an_impossible_request_fails_in_seconds_naming_the_biggest_node(data, tmp_path, make_cluster, capsys):
    c = make_cluster(1, {"num_cpus": 2})
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
        c.address,
        "--device",
        "cpu",
        "--cpus-per-actor",
        "8",
        "--no-progress",
    ]
    start = time.monotonic()
    assert sweep.main(argv) == 1
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert "--cpus-per-actor 8: no node has 8 CPUs; the biggest has 2" in err
    assert elapsed < 30, f"took {elapsed:.1f}s"
    print(f"impossible request failed after {elapsed:.1f}s: {err.strip().splitlines()[-1]}")


@pytest.mark.ray
@pytest.mark.slow
def test_plan_for_two_gpu_nodes_with_different_cpu_counts(make_cluster, capsys):
    """The plan printed before a sweep: each GPU actor takes its own node's CPUs / GPUs as loader workers."""
    c = make_cluster(2, {"num_cpus": 4, "num_gpus": 1}, {"num_cpus": 6, "num_gpus": 2})
    ray.init(address=c.address)
    plan = sweep.make_plan(sweep.SweepConfig(models=[MODEL], r_values=[0]))
    ray.shutdown()
    text = plan.describe()
    print(text)
    assert plan.device == "cuda" and plan.num_actors == 3
    assert sorted((s.num_cpus, s.loader_workers) for s in plan.slots) == [(3, 2), (3, 2), (4, 3)]
    assert "plan: 3 CUDA actor(s) on 2 node(s)" in text


@pytest.mark.ray
@pytest.mark.slow
def test_waiting_actors_show_one_line_and_no_ray_noise(data, tmp_path, make_cluster, capfd):
    """One of the two planned actors cannot start (another job holds its node's CPU): the sweep finishes on
    the other, and says how many actors wait and for how long, without Ray's scheduling noise."""
    c = make_cluster(1, {"num_cpus": 1, "resources": {"held": 1}})
    ray.init(address=c.address)

    @ray.remote(num_cpus=1, resources={"held": 1})
    class Holder:
        def ping(self):
            return True

    holder = Holder.remote()
    ray.get(holder.ping.remote())  # the worker node's only CPU is taken
    out = tmp_path / "out"
    sweep.run_sweep(
        sweep_config(
            data,
            out,
            c.address,
            device="cpu",
            cpus_per_actor=None,
            actor_start_timeout=60,
            r_values=[0, 4, 8, 12, 16],
            progress=False,
        )
    )  # long enough for a wait to be news
    ray.kill(holder)
    captured = capfd.readouterr()
    assert "plan: 2 CPU actor(s) on 2 node(s)" in captured.err
    # the line comes 5 s into the wait: on a loaded machine the free actor may still be starting then
    waits = re.findall(r"^actors: (\d) started, (\d) waiting for resources for \d+s$", captured.err, re.M)
    assert waits and all(int(started) + int(waiting) == 2 and waiting != "0" for started, waiting in waits), (
        captured.err
    )
    assert (
        "SchedulingCancelled" not in captured.err + captured.out
        and "Failed to register actor" not in captured.err
    )
    points = pd.read_parquet(out / "points")
    assert (points["n_images"] == 40).all() and all(len(nodes) == 1 for nodes in points["nodes"])


@pytest.mark.ray
@pytest.mark.slow
def test_address_local_never_joins_another_cluster_and_auto_says_which_it_joined(
    data, tmp_path, make_cluster, capsys, monkeypatch
):
    """Someone else's cluster runs on this machine (and RAY_ADDRESS points at it): --address local starts
    a fresh one here; --address auto joins it and says so on its first line."""
    other = make_cluster(1)
    monkeypatch.setenv("RAY_ADDRESS", other.address)
    argv = [
        "--models",
        "deit_tiny",
        "--r",
        "0",
        "--data",
        str(data / "shards"),
        "--random-weights",
        "--device",
        "cpu",
        "--no-bench",
        "--no-progress",
        "--limit",
        "5",
    ]
    # auto first: Ray cannot start actors on another cluster after this process shut down one it started itself
    assert sweep.main(argv + ["--out", str(tmp_path / "auto"), "--address", "auto"]) == 0
    auto_line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("ray: "))
    assert (
        f"cluster at {other.address}: 1 node(s), 1 CPU, 0 GPU; joined the cluster at RAY_ADDRESS={other.address}"
        in auto_line
    )
    print(auto_line)
    assert sweep.main(argv + ["--out", str(tmp_path / "local"), "--address", "local"]) == 0
    local_line = next(line for line in capsys.readouterr().err.splitlines() if line.startswith("ray: "))
    assert (
        "started a new local cluster here (--address local)" in local_line and other.address not in local_line
    )
    print(local_line)
    nodes_local = pd.read_parquet(tmp_path / "local" / "points")["nodes"].iloc[0]
    nodes_auto = pd.read_parquet(tmp_path / "auto" / "points")["nodes"].iloc[0]
    assert list(nodes_auto) == [other.head_node.node_id] and list(nodes_local) != list(nodes_auto)


@pytest.mark.ray
@pytest.mark.slow
def test_actors_that_die_before_starting_end_the_sweep_with_their_error(data, tmp_path, cluster, capfd):
    """--device cuda on nodes whose GPUs torch cannot see: every actor dies in its constructor. The sweep
    replaces a few, then stops with the actors' own error, instead of replacing them for ever."""
    c, _ = cluster
    with pytest.raises(
        sweep.SweepError,
        match=r"died before starting 6 times in a row; last: ValueError: --device cuda asked for, but torch sees no CUDA device",
    ):
        sweep.run_sweep(sweep_config(data, tmp_path / "out", c.address, device="cuda", max_retries=3))
    assert capfd.readouterr().err.count("SchedulingCancelled") <= 5


@pytest.mark.slow
def test_demand_no_node_ever_meets_ends_at_the_start_timeout_naming_what_never_came(
    data, tmp_path, make_cluster
):
    """--num-actors beyond the nodes is demand for the autoscaler; where none comes (this cluster has no
    autoscaler), the sweep stops after --actor-start-timeout, naming the actors and what each asked for."""
    c = make_cluster(0, {"num_cpus": 1})
    cfg = sweep_config(data, tmp_path / "out", c.address, device="cpu", num_actors=1, cpus_per_actor=2)
    cfg.actor_start_timeout = 5
    start = time.monotonic()
    with pytest.raises(sweep.SweepError) as stopped:
        sweep.run_sweep(cfg)
    elapsed = time.monotonic() - start
    print(f"after {elapsed:.0f}s: {stopped.value}")
    assert str(stopped.value).startswith(
        "--actor-start-timeout 5: 1 of 1 evaluator actor(s) never started; each asks for 2 CPU, 0 GPU on any "
        "node, and no node with that much free came"
    )
    assert elapsed < 120 and not (tmp_path / "out" / "points").exists()
