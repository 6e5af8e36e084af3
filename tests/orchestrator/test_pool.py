"""orchestrator.pool helpers without Ray: items, disjointness, and the gist of a Ray error."""

from __future__ import annotations

import pytest

import shards
from orchestrator.placement import ActorSlot
from orchestrator.pool import (
    _Actor,
    _check_disjoint,
    _death_reason,
    _why,
    describe_actor,
    group_shards,
    item_key,
)


def shard(name: str) -> shards.ShardInfo:
    return shards.ShardInfo(url=f"/d/{name}.tar", name=f"{name}.tar", n_samples=5, sha256=None)


def test_groups_are_consecutive_disjoint_and_cover_every_shard():
    all_shards = [shard(str(i)) for i in range(5)]
    groups = group_shards(all_shards, 2)
    assert [[s.name for s in g] for g in groups] == [["0.tar", "1.tar"], ["2.tar", "3.tar"], ["4.tar"]]
    assert item_key(("pass 1", groups[0])) == ("pass 1", ("/d/0.tar", "/d/1.tar"))
    _check_disjoint([("pass 1", g) for g in groups] + [("pass 2", groups[0])])  # another pass may reuse them
    with pytest.raises(ValueError, match="shard /d/1.tar is in two work items of pass 1"):
        _check_disjoint([("pass 1", groups[0]), ("pass 1", (all_shards[1],))])


def test_why_finds_the_exception_a_creation_task_raised():
    text = (
        "The actor died because of an error raised in its creation task, \x1b[36mray::Evaluator.__init__()\x1b[39m\n"
        'Traceback (most recent call last):\n  File "x.py", line 1\n'
        "ValueError: --device cuda asked for, but torch sees no CUDA device; use --device cpu or auto\n"
    )
    assert (
        _why(RuntimeError(text))
        == "ValueError: --device cuda asked for, but torch sees no CUDA device; use --device cpu or auto"
    )
    assert _why(RuntimeError("The actor died unexpectedly.\nmore")) == "The actor died unexpectedly."


RAY_DEATH = (
    "The actor died unexpectedly before finishing this task.\n\tclass_name: Evaluator\n\tactor_id: 0a1b\n"
    "\tpid: 5635\n\tip: 192.0.2.2\nThe actor is dead because its worker process has died. Worker exit type: "
    "SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. "
    "Some common causes include: (1) the process was killed by the OOM killer due to high memory usage"
)


def test_the_reason_for_a_death_is_rays_sentence_without_its_list_of_causes():
    assert _death_reason(RuntimeError(RAY_DEATH)) == (
        "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
        "detail: Worker unexpectedly exits with a connection error code 2. End of file."
    )
    assert _death_reason(RuntimeError("The actor died unexpectedly.\nmore")) == "The actor died unexpectedly."


def test_an_actor_is_described_by_its_node_device_and_pid():
    slot = ActorSlot("5e2bce49cefeed77", "192.0.2.2", 1.0, 0.0, 1, 0)
    actor = _Actor(handle=None, ready_ref=None, index=3, slot=slot)
    assert describe_actor(actor) == "actor 3 (node 192.0.2.2 5e2bce49, CPU)"  # not started yet
    actor.info = {"node_id": "5e2bce49cefeed77", "device": "NVIDIA A10G", "pid": "812"}
    assert describe_actor(actor) == "actor 3 (node 192.0.2.2 5e2bce49, NVIDIA A10G, pid 812)"
    waiting = _Actor(None, None, 4, ActorSlot(None, "", 1.0, 1.0, 1, 3))  # for a node the autoscaler starts
    assert describe_actor(waiting) == "actor 4 (node not placed yet, GPU)"
