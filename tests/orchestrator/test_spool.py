"""orchestrator.spool without Ray: what keys a pass's spool, an outcome's round trip (arrays, tuple-keyed
dicts, failures, the CUDA-graph fields), files an older or newer ShardOutcome wrote, unreadable files,
choosing disjoint records, and the spool on a local disk and on a non-local pyarrow filesystem."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pyarrow.fs as pafs
import pytest

from orchestrator import spool
from orchestrator.grid import GridPoint, build_grid
from orchestrator.results import ResultsDir
from orchestrator.work import ShardOutcome
from shards import DecodeFailure

MODEL = "deit_tiny_patch16_224"
POINTS = [(MODEL, "none", 0, None), (MODEL, "tomecis", 8, None), (MODEL, "evit", None, 0.7)]


def outcome(urls=("/d/a.tar",), n=3, seed=0) -> ShardOutcome:
    """A made-up outcome of ``n`` images with every field set (top-5 ``[n, 5]`` per point)."""
    rng = np.random.default_rng(seed)
    return ShardOutcome(
        pass_name="pass 1 (deit_tiny)",
        shards=list(urls),
        keys=[f"k{seed}_{i}" for i in range(n)],
        key_shards=[urls[i % len(urls)] for i in range(n)],
        labels=rng.integers(0, 1000, n).astype(np.int32),
        top5={p: rng.integers(0, 1000, (n, 5)).astype(np.int32) for p in POINTS},
        n_failed=1,
        failures=[DecodeFailure(urls[0], "bad", "cannot identify image file")],
        load_seconds=0.1 + seed,
        forward_seconds={p: 1 / 3 + i for i, p in enumerate(POINTS)},
        started=1700000000.123456,
        finished=1700000001.654321,
        node_id="4f2a9c01" * 7,
        hostname="host",
        device="cpu (1 threads)",
        model_errors={"other_model": "could not be built: KeyError: 'x'"},
        cuda_graphs={POINTS[0]: True, POINTS[1]: False},
        graph_errors={POINTS[2]: "capture failed: CUDA error"},
    )


def assert_same(a: ShardOutcome, b: ShardOutcome) -> None:
    for f in dataclasses.fields(ShardOutcome):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and np.array_equal(x, y), f.name
        elif f.name == "top5":
            assert x.keys() == y.keys() and all(
                np.array_equal(x[k], y[k]) and y[k].dtype == np.int32 for k in x
            )
        else:
            assert x == y and type(x) is type(y), f.name


def test_an_outcome_comes_back_field_for_field():
    original = outcome(("/d/a.tar", "/d/b.tar"), n=4)
    record = spool.SpoolRecord(("/d/a.tar", "/d/b.tar"), original, "session-1", retries=2)
    back = spool.decode(spool.encode(record, "k" * 16), "k" * 16, POINTS)
    assert back.urls == record.urls and back.session == "session-1" and back.retries == 2
    assert_same(original, back.outcome)
    assert all(isinstance(k, tuple) for k in back.outcome.top5)  # (model, method, r, keep) keys stay tuples
    assert back.outcome.forward_seconds[POINTS[0]] == 1 / 3  # floats exactly


def test_the_pass_key_names_every_setting_and_no_order():
    grid = build_grid([MODEL], [8], ["tomecis"], "none", 128, {MODEL: "random"}, "cpu", dataset="fp")
    key = spool.pass_key(grid)
    assert spool.pass_key(list(reversed(grid))) == key and len(key) == 16
    with_keep = build_grid([MODEL], [8], ["tomecis", "evit"], dataset="fp", keep_values=[0.7])
    assert spool.pass_key(with_keep) == spool.pass_key(with_keep[::-1])  # r and keep points sort together
    changed = [
        spool.pass_key([dataclasses.replace(p, dataset="fp2") for p in grid]),
        spool.pass_key(grid[:1]),
        *(
            spool.pass_key([dataclasses.replace(grid[0], **{name: value}), grid[1]])
            for name, value in [
                ("amp", "fp16"),
                ("batch_size", 64),
                ("weights", "ckpt_3f2a9c01b7de"),
                ("device", "cuda"),
                ("method", "tome"),
                ("r", 4),
                ("keep", 0.9),
            ]
        ),
    ]
    assert len(set(changed)) == len(changed) and key not in changed
    with pytest.raises(ValueError, match="share one dataset"):
        spool.pass_key([grid[0], dataclasses.replace(grid[1], dataset="fp2")])
    assert spool.item_key(["/d/a.tar", "/d/b.tar"]) != spool.item_key(["/d/b.tar", "/d/a.tar"])


def rewrite_meta(data: bytes, change) -> bytes:
    """The same .npz with its JSON meta passed through ``change``."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(str(arrays.pop("meta")))
    change(meta)
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def test_fields_an_older_or_newer_outcome_wrote_are_tolerated_and_a_missing_required_one_is_not():
    data = spool.encode(spool.SpoolRecord(("/d/a.tar",), outcome(), "s"), "key")

    def older(meta):  # written before cuda_graphs and graph_errors existed
        del meta["outcome"]["cuda_graphs"], meta["outcome"]["graph_errors"]

    back = spool.decode(rewrite_meta(data, older), "key", POINTS).outcome
    assert back.cuda_graphs == {} and back.graph_errors == {} and back.keys == outcome().keys

    def newer(meta):
        meta["outcome"]["a_field_added_later"] = {"dict": [[{"tuple": ["m", "tome", 8]}, 1.5]]}

    assert spool.decode(rewrite_meta(data, newer), "key", POINTS).outcome.keys == outcome().keys

    def no_labels(meta):
        del meta["outcome"]["labels"]

    with pytest.raises(spool.SpoolUnreadable, match="labels"):
        spool.decode(rewrite_meta(data, no_labels), "key", POINTS)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda data: data[: len(data) // 2], "BadZipFile|ValueError|EOFError|OSError"),
        (lambda data: b"", "ValueError|EOFError|BadZipFile"),
        (lambda data: b"not an npz at all", "ValueError|BadZipFile|UnpicklingError"),
    ],
)
def test_a_damaged_file_is_unreadable_never_an_exception_of_another_kind(damage, message):
    data = spool.encode(spool.SpoolRecord(("/d/a.tar",), outcome(), "s"), "key")
    with pytest.raises(spool.SpoolUnreadable, match=message):
        spool.decode(damage(data), "key", POINTS)


def test_another_pass_or_other_points_or_a_short_array_are_unreadable():
    record = spool.SpoolRecord(("/d/a.tar",), outcome(), "s")
    data = spool.encode(record, "key")
    with pytest.raises(spool.SpoolUnreadable, match="of pass key, not other"):
        spool.decode(data, "other", POINTS)
    with pytest.raises(spool.SpoolUnreadable, match="are not the pass's"):
        spool.decode(data, "key", POINTS[:2])
    short = outcome()
    short.top5[POINTS[1]] = short.top5[POINTS[1]][:2]
    with pytest.raises(spool.SpoolUnreadable, match=r"top-5 of .*'tomecis', 8, None\) has 2 rows for 3 keys"):
        spool.decode(spool.encode(spool.SpoolRecord(("/d/a.tar",), short, "s"), "key"), "key", POINTS)
    with pytest.raises(TypeError, match="cannot spool a set"):
        spool._pack({1, 2}, {})


def test_disjoint_records_in_shard_order_from_two_groupings():
    urls = [f"/d/{i}.tar" for i in range(6)]

    def rec(*names):
        return spool.SpoolRecord(tuple(f"/d/{n}.tar" for n in names), outcome(), "s")

    records = [rec(4, 5), rec(2), rec(0, 1), rec(1, 2), rec(3), rec(7)]  # (1, 2) overlaps, 7 is not ours
    kept = spool.disjoint_in_order(records, urls)
    assert [r.urls for r in kept] == [
        ("/d/0.tar", "/d/1.tar"),
        ("/d/2.tar",),
        ("/d/3.tar",),
        ("/d/4.tar", "/d/5.tar"),
    ]


@pytest.mark.parametrize("where", ["local", "mock"])
def test_a_spool_on_disk_or_object_store_puts_loads_and_deletes(where, tmp_path):
    """``mock://`` is pyarrow's in-memory filesystem: not local, so every file is written in one PUT, as
    on S3."""
    results = ResultsDir(str(tmp_path / "out") if where == "local" else "mock:///bucket/out")
    assert isinstance(results.fs, pafs.LocalFileSystem) == (where == "local")
    points = [GridPoint(MODEL, 0, dataset="fp"), GridPoint(MODEL, 8, dataset="fp")]
    key = spool.pass_key(points)
    first = spool.Spool(results, "deit_tiny", key, "run-1")
    assert first.load(POINTS, print) == []  # no spool yet
    first.put(("/d/a.tar",), outcome(("/d/a.tar",), seed=1), retries=1)
    first.put(("/d/b.tar", "/d/c.tar"), outcome(("/d/b.tar", "/d/c.tar"), seed=2), retries=0)
    said = []
    again = spool.Spool(results, "deit_tiny", key, "run-2")  # the rerun finds both
    records = again.load(POINTS, said.append)
    assert not said and sorted(r.urls for r in records) == [("/d/a.tar",), ("/d/b.tar", "/d/c.tar")]
    assert {r.urls: (r.session, r.retries) for r in records}[("/d/a.tar",)] == ("run-1", 1)
    assert_same(next(r for r in records if r.urls == ("/d/a.tar",)).outcome, outcome(("/d/a.tar",), seed=1))
    assert spool.Spool(results, "deit_tiny", spool.pass_key(points[:1]), "x").load(POINTS, print) == []

    broken = f"{again.dir}/{spool.item_key(['/d/a.tar'])}.npz"
    results.write_bytes(broken, b"half a file")
    records = again.load(POINTS, said.append)
    assert [r.urls for r in records] == [("/d/b.tar", "/d/c.tar")]
    assert len(said) == 1 and said[0].startswith(f"spool: {spool.item_key(['/d/a.tar'])}.npz in ")
    assert "is unreadable (" in said[0] and said[0].endswith("its shard(s) are evaluated again")
    assert again.uri.startswith(str(tmp_path / "out") if where == "local" else "mock:///bucket/out/spool/")

    renamed = f"{again.dir}/{'0' * 16}.npz"  # a file whose name is not its shards'
    results.write_bytes(
        renamed, results.read_bytes(f"{again.dir}/{spool.item_key(['/d/b.tar', '/d/c.tar'])}.npz")
    )
    said.clear()
    assert len(again.load(POINTS, said.append)) == 1 and len(said) == 2  # the half file, the renamed one
    assert (
        "0000000000000000.npz" in said[0] and "holds shard(s) /d/b.tar, /d/c.tar, of another name" in said[0]
    )

    again.delete()
    assert (
        again.load(POINTS, print) == []
        and not results.fs.get_file_info(again.dir).type == pafs.FileType.Directory
    )
    again.delete()  # twice is fine
    assert results.fs.get_file_info(results.path("spool")).type == pafs.FileType.NotFound
    if where == "local":
        assert not any(
            p.name.startswith(".") for p in (tmp_path / "out").rglob("*")
        )  # no temporary file left
