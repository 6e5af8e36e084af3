"""orchestrator.placement: actors sized from each node's own resources (pure, no Ray)."""

from __future__ import annotations

import pytest

from orchestrator.placement import NodeResources, PlacementError, plan_actors


def node(name: str, cpus: float, gpus: float = 0) -> NodeResources:
    return NodeResources(node_id=f"id-{name}", address=name, cpus=cpus, gpus=gpus)


def per_node(plan) -> dict:
    counts: dict = {}
    for slot in plan.slots:
        counts[slot.address] = counts.get(slot.address, 0) + 1
    return counts


def test_two_one_cpu_nodes_get_one_one_cpu_actor_each():
    """The cluster has 2 CPUs in total, but no node has 2: two 1-CPU actors, one per node."""
    plan = plan_actors([node("head", 1), node("worker", 1)], "cpu")
    assert plan.device == "cpu" and per_node(plan) == {"head": 1, "worker": 1}
    assert all(
        s.num_cpus == 1 and s.num_gpus == 0 and s.threads == 1 and s.loader_workers == 0 for s in plan.slots
    )
    assert {s.node_id for s in plan.slots} == {
        "id-head",
        "id-worker",
    }  # pinned to the node they were sized for


def test_heterogeneous_cpu_nodes_each_get_what_they_hold():
    plan = plan_actors([node("small", 1), node("big", 3)], "cpu")
    assert sorted((s.address, s.num_cpus) for s in plan.slots) == [("big", 3), ("small", 1)]
    plan = plan_actors([node("small", 2), node("big", 12)], "cpu")  # up to 4 CPUs an actor, as many as fit
    assert sorted((s.address, s.num_cpus) for s in plan.slots) == [("big", 4)] * 3 + [("small", 2)]
    plan = plan_actors([node("small", 1), node("big", 3)], "cpu", cpus_per_actor=1)
    assert per_node(plan) == {"small": 1, "big": 3}


def test_a_head_without_cpus_gets_no_actor():
    plan = plan_actors([node("head", 0), node("worker", 2)], "cpu")
    assert per_node(plan) == {"worker": 1} and plan.slots[0].num_cpus == 2


def test_num_actors_spreads_over_nodes_and_asks_the_autoscaler_for_the_rest():
    plan = plan_actors([node("a", 4), node("b", 4)], "cpu", num_actors=2, cpus_per_actor=1)
    assert per_node(plan) == {"a": 1, "b": 1}  # interleaved, not both on the first node
    beyond = plan_actors([node("a", 4), node("b", 4)], "cpu", num_actors=9, cpus_per_actor=1)
    assert per_node(beyond) == {"a": 4, "b": 4, "": 1} and beyond.slots[-1].node_id is None
    assert "pending (no node yet: the autoscaler must start one): 1 actor(s) x (1 CPU" in beyond.describe()
    unsized = plan_actors([node("a", 2)], "cpu", num_actors=3)  # pending ones as big as the planned ones
    assert [(s.node_id, s.num_cpus) for s in unsized.slots] == [("id-a", 2), (None, 2), (None, 2)]


def test_cpu_with_num_actors_on_a_cluster_without_workers_asks_the_autoscaler():
    """A ``ray up`` cluster with no idle worker: a head with no CPUs, and demand for two 1-CPU actors."""
    plan = plan_actors([node("head", 0)], "cpu", num_actors=2, cpus_per_actor=1)
    assert plan.device == "cpu"
    assert [(s.node_id, s.num_cpus, s.num_gpus, s.threads) for s in plan.slots] == [(None, 1, 0, 1)] * 2
    assert plan.describe().splitlines() == [
        "plan: 2 CPU actor(s) on 0 node(s)",
        "  pending (no node yet: the autoscaler must start one): 2 actor(s) x (1 CPU, 0 loader worker(s), 1 torch thread(s))",
    ]
    big = plan_actors([node("a", 2)], "cpu", num_actors=1, cpus_per_actor=8)  # no node fits: one may come
    assert [(s.node_id, s.num_cpus) for s in big.slots] == [(None, 8)]
    with pytest.raises(PlacementError, match="or pass --num-actors N to have the autoscaler start nodes"):
        plan_actors([node("head", 0)], "cpu", cpus_per_actor=1)  # without --num-actors: the nodes decide


def test_an_impossible_cpu_request_names_the_biggest_node():
    with pytest.raises(
        PlacementError, match=r"--cpus-per-actor 8: no node has 8 CPUs; the biggest has 2 \(node b\)"
    ):
        plan_actors([node("a", 1), node("b", 2)], "cpu", cpus_per_actor=8)
    with pytest.raises(PlacementError, match="no node of the Ray cluster has a CPU"):
        plan_actors([node("head", 0)], "cpu")


def test_gpu_actors_take_their_nodes_cpu_share_as_loader_workers():
    """Two GPU nodes with different CPU counts: one actor per GPU, each with CPUs / GPUs of its own node,
    and a loader worker per CPU but the one that feeds the GPU."""
    nodes = [node("head", 8), node("g5.12xlarge", 48, 4), node("g5.xlarge", 4, 1)]
    plan = plan_actors(nodes, "auto")
    assert plan.device == "cuda" and per_node(plan) == {"g5.12xlarge": 4, "g5.xlarge": 1}
    shapes = {(s.address, s.num_cpus, s.num_gpus, s.loader_workers, s.threads) for s in plan.slots}
    assert shapes == {("g5.12xlarge", 12, 1, 11, 12), ("g5.xlarge", 4, 1, 3, 4)}
    text = plan.describe()
    assert "plan: 5 CUDA actor(s) on 2 node(s)" in text
    assert (
        "node g5.12xlarge (id-g5.12): 4 actor(s) x (1 GPU, 12 CPU, 11 loader worker(s), 12 torch thread(s))"
        in text
    )
    assert (
        "node g5.xlarge (id-g5.xl): 1 actor(s) x (1 GPU, 4 CPU, 3 loader worker(s), 4 torch thread(s))"
        in text
    )


def test_gpu_flags_override_the_share():
    nodes = [node("a", 16, 2)]
    plan = plan_actors(nodes, "cuda", cpus_per_actor=2, loader_workers=6)
    assert [(s.num_cpus, s.loader_workers) for s in plan.slots] == [(2, 6), (2, 6)]
    with pytest.raises(
        PlacementError, match=r"--cpus-per-actor 32: no GPU node has 32 CPUs; the biggest has 16"
    ):
        plan_actors(nodes, "cuda", cpus_per_actor=32)


def test_cuda_with_num_actors_asks_the_autoscaler_for_missing_nodes():
    """``ray up`` clusters start with no GPU node: the pending actors' demand is what starts them."""
    plan = plan_actors([node("head", 2)], "cuda", num_actors=2, cpus_per_actor=4)
    assert [(s.node_id, s.num_gpus, s.num_cpus) for s in plan.slots] == [(None, 1, 4), (None, 1, 4)]
    assert "pending (no node yet: the autoscaler must start one): 2 actor(s)" in plan.describe()
    mixed = plan_actors([node("head", 2), node("gpu", 8, 1)], "cuda", num_actors=3)
    assert [s.address for s in mixed.slots] == ["gpu", "", ""]
    with pytest.raises(PlacementError, match="no node of the Ray cluster has a GPU yet; pass --num-actors N"):
        plan_actors([node("head", 2)], "cuda")


def test_auto_without_gpus_plans_cpu_actors():
    assert plan_actors([node("a", 2)], "auto").device == "cpu"
