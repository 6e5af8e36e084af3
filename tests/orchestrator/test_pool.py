"""orchestrator.pool helpers without Ray: items, disjointness, and the gist of a Ray error."""

from __future__ import annotations

import pytest

import shards
from orchestrator.pool import _check_disjoint, _why, group_shards, item_key


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
