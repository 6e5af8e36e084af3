"""Sweeps against Ray's autoscaler: a cluster that starts with no worker node gets the nodes its
``--num-actors`` demand asks for, gives them back when idle, and replaces a node taken away mid-pass.

The head runs Ray's fake multi-node provider (``RAY_FAKE_CLUSTER=1 ray start --head --block
--autoscaling-config=...``, in a process session of its own, ended by its process-group id; never ``ray
stop``): its node types are shaped like ``cluster.yaml``'s (a head with no CPUs, one worker type, none
kept idle), and each node it starts is a set of real Ray processes on this machine. The sweep runs in
this process, as a driver on a head node does."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Dict, List

import pandas as pd
import pytest
import ray
import yaml
from ray_head_testing import free_port, ray_head

from orchestrator import pool, sweep

pytestmark = [pytest.mark.slow, pytest.mark.ray]

MODEL = "deit_tiny_patch16_224"
N_IMAGES = 22  # the ``data`` fixture: 22 images in 5 shards
HEAD_ENV = {"RAY_FAKE_CLUSTER": "1", "RAY_AUTH_MODE": "disabled"}  # Ray's own timings: none shortened


def autoscaling_config(port: int) -> dict:
    """``cluster.yaml``'s shape on the fake provider: a head without CPUs, workers of {CPU: 1}, none idle."""
    return {
        "cluster_name": "tomecis-autoscaling-test",
        "max_workers": 3,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # idle nodes go after 6 s (cluster.yaml: 10 minutes)
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",  # the nodes it starts join this head
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "max_workers": 0, "node_config": {}},
            "cpu_worker": {"resources": {"CPU": 1}, "min_workers": 0, "max_workers": 3, "node_config": {}},
        },
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("initialization_commands", "setup_commands", "head_setup_commands")},
        **{
            key: []
            for key in ("worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
        },
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "docker": {},
    }


@pytest.fixture(scope="module")
def autoscaling_head(tmp_path_factory):
    port = free_port()
    config = tmp_path_factory.mktemp("autoscaler") / "autoscaling.yaml"
    config.write_text(yaml.safe_dump(autoscaling_config(port)))
    with ray_head(HEAD_ENV, "--num-cpus=0", f"--autoscaling-config={config}", port=port) as head:
        yield head


def worker_nodes(address: str) -> List[Dict]:
    """Every worker node the cluster has had (alive or not): ``ray.nodes()`` less the head."""
    assert not ray.is_initialized()
    ray.init(address=address, logging_level="ERROR")
    try:
        return [n for n in ray.nodes() if n["Resources"].get("CPU", 0) > 0 or not n["Alive"]]
    finally:
        ray.shutdown()


def wait_for(condition, what: str, timeout: float = 180.0, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f}s"
        time.sleep(every)


def config(data: Path, out: Path, address: str, num_actors: int) -> sweep.SweepConfig:
    return sweep.SweepConfig(
        models=[MODEL],
        r_values=[0, 8],
        data=str(data / "shards"),
        out=str(out),
        batch_size=5,
        checkpoint_dir=str(data / "ckpt"),
        address=address,
        bench=False,
        progress=False,
        device="cpu",
        num_actors=num_actors,
        cpus_per_actor=1,
        actor_start_timeout=240,
    )


def predictions(out: Path) -> pd.DataFrame:
    """Per-image predictions, less where they ran (shard grouping, device name: runs differ there)."""
    frame = pd.read_parquet(out / "predictions").drop(columns=["shard", "device"])
    return frame.sort_values(["r", "key"]).reset_index(drop=True)


def assert_exact_counts(out: Path) -> pd.DataFrame:
    points = pd.read_parquet(out / "points")
    assert len(points) == 2 and (points["n_images"] == N_IMAGES).all() and (points["n_failed"] == 0).all()
    preds = pd.read_parquet(out / "predictions")
    assert preds.groupby("r")["key"].apply(lambda k: k.is_unique and len(k) == N_IMAGES).all()
    return points


@pytest.fixture(scope="module")
def from_zero(autoscaling_head, data, tmp_path_factory):
    """A sweep with ``--num-actors 2`` on the cluster while it has no worker node; what happened."""
    head = autoscaling_head
    assert worker_nodes(head.address) == [], "the cluster should start with no worker node"
    out = tmp_path_factory.mktemp("from-zero")
    first_ready: List[float] = []
    original = pool.ActorSet.ready

    def ready(self):
        actors = original(self)
        if actors and not first_ready:
            first_ready.append(time.monotonic())
        return actors

    pool.ActorSet.ready = ready
    try:
        start = time.monotonic()
        summary = sweep.run_sweep(config(data, out, head.address, num_actors=2))
        ended = time.monotonic()
    finally:
        pool.ActorSet.ready = original
    started = worker_nodes(head.address)
    gone = wait_for(
        lambda: (lambda nodes: nodes if not any(n["Alive"] for n in nodes) else None)(
            worker_nodes(head.address)
        ),
        "the idle worker nodes removed by the autoscaler",
    )
    return dict(
        out=out,
        summary=summary,
        to_first_ready=first_ready[0] - start,
        started=started,
        removed=[n for n in gone if not n["Alive"]],
        removed_after=time.monotonic() - ended,
    )


def test_num_actors_on_a_cluster_without_workers_starts_nodes_finishes_and_they_go_when_idle(
    from_zero, capsys
):
    run = from_zero
    points = assert_exact_counts(run["out"])
    used = {node for nodes in points["nodes"] for node in nodes}
    started = {n["NodeID"] for n in run["started"]}
    # two nodes started for the two actors; which of them evaluated items is timing (under load the actor that
    # starts first may take every item before the other is up), so only: the work ran on nodes started for it
    assert len(started) >= 2 and used and used <= started
    assert {n["NodeID"] for n in run["removed"]} >= started  # every node started is gone again
    assert run["summary"].retries == 0
    print(
        f"autoscaling from zero: first actor ready {run['to_first_ready']:.1f}s after the sweep started; "
        f"{len(started)} worker node(s) started, {len(run['removed'])} removed by the autoscaler within "
        f"{run['removed_after']:.0f}s of the sweep's end"
    )


def test_a_worker_node_taken_away_mid_pass_is_replaced_and_its_items_retried_there(
    autoscaling_head, from_zero, data, tmp_path, capsys, monkeypatch
):
    """One actor, on a node the autoscaler starts; as the first item comes back, the node's processes are
    killed (a spot reclaim): its items go back to the queue and run on the node started in its place."""
    head = autoscaling_head
    before = {n["NodeID"] for n in worker_nodes(head.address)}
    taken: List[Dict] = []
    original = sweep.EvaluatorPool.evaluate

    def evaluate_and_reclaim_its_node(self, items, decode_pass, on_result):
        def on_result_then_reclaim(outcome):
            on_result(outcome)
            if not taken:
                pids = head.node_pids(outcome.node_id)
                assert pids, f"no process of node {outcome.node_id} found"
                for pid in pids:
                    os.kill(pid, signal.SIGKILL)
                taken.append(dict(node=outcome.node_id, pids=pids, at=time.monotonic()))
            elif len(taken) == 1 and outcome.node_id != taken[0]["node"]:
                taken.append(dict(first_after=time.monotonic()))

        return original(self, items, decode_pass, on_result_then_reclaim)

    monkeypatch.setattr(sweep.EvaluatorPool, "evaluate", evaluate_and_reclaim_its_node)
    summary = sweep.run_sweep(config(data, tmp_path / "out", head.address, num_actors=1))
    err = capsys.readouterr().err
    retried = [line for line in err.splitlines() if line.startswith("retry: ")]
    assert taken and summary.retries == len(retried) >= 1 and summary.actors_replaced >= 1, err
    # how Ray reports the reclaim depends on what the node was doing at the kill: an item it was running
    # comes back as the actor's death; one it had finished, whose result the driver had not fetched yet,
    # as a result lost in transit (and may go back to the dead actor once more before its death is seen)
    assert all("died (" in line or "lost in transit" in line for line in retried), retried
    points = assert_exact_counts(tmp_path / "out")
    items = {re.search(r"shard\(s\) ([^:]+):", line).group(1) for line in retried}
    assert (points["retries"] == len(items)).all(), (points["retries"].tolist(), retried)
    nodes = {node for row in points["nodes"] for node in row}
    replacement = nodes - {taken[0]["node"]}
    assert taken[0]["node"] in nodes and len(replacement) == 1, nodes  # the rest ran on the new node
    assert replacement <= {n["NodeID"] for n in worker_nodes(head.address)} - before
    pd.testing.assert_frame_equal(predictions(tmp_path / "out"), predictions(from_zero["out"]))
    with capsys.disabled():
        print(
            f"\nnode {taken[0]['node'][-5:]} taken away ({len(taken[0]['pids'])} processes killed) after the first "
            f"item; {len(retried)} item(s) retried on node {next(iter(replacement))[-5:]}, started in its place "
            f"(its first result {taken[1]['first_after'] - taken[0]['at']:.0f}s after the reclaim):\n"
            + "\n".join(retried)
        )
