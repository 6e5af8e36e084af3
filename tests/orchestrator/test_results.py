"""orchestrator.results: the schema, atomic writes, what is done, and reading a directory back."""

from __future__ import annotations

import pyarrow as pa
import pytest

from orchestrator.grid import GridPoint
from orchestrator.results import (
    POINT_SCHEMA,
    PREDICTION_SCHEMA,
    ResultsDir,
    accuracy,
    failures_table,
    predictions_table,
)
from shards import DecodeFailure


def row_for(point: GridPoint, top1: float) -> dict:
    row = {name: None for name in POINT_SCHEMA.names}
    row.update(
        model=point.model,
        short_name=point.short_name,
        method=point.method,
        r=point.r,
        keep=point.keep,
        top1=top1,
        n_images=2,
        amp=point.amp,
        weights=point.weights,
        device="cpu",
        dataset="fp",
    )
    return row


def test_a_point_is_done_once_its_row_is_written_and_files_are_written_atomically(tmp_path):
    results = ResultsDir(str(tmp_path))
    point = GridPoint("deit_tiny_patch16_224", 8, method="tome", weights="random", dataset="fp")
    assert not results.is_done(point) and results.read_points().num_rows == 0
    predictions = predictions_table(
        point, ["k1", "k2"], [3, 4], [[3, 1, 2, 0, 5], [1, 4, 2, 0, 5]], ["s.tar"] * 2, "cpu"
    )
    failures = failures_table(point, [DecodeFailure("s.tar", "k3", "truncated")], "cpu")
    path = results.write_point(point, row_for(point, 50.0), predictions, failures)
    assert results.is_done(point) and path.endswith("deit_tiny-tome-r8-none-bs128-random-cpu-fp.parquet")
    assert not any(p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporary file left behind
    assert results.read_points_of([point, GridPoint("deit_tiny_patch16_224", 0, dataset="fp")]).column(
        "top1"
    ).to_pylist() == [50.0]
    rows = results.read_point_rows()
    assert rows["point_file"].tolist() == [point.file_stem()]
    frame = results.read_predictions(rows["point_file"])  # tied to the row by the shared file name
    assert frame["correct"].tolist() == [True, False] and set(frame["point_file"]) == {point.file_stem()}
    assert len(results.parquet_files("failures")) == 1


def test_a_row_that_does_not_fit_the_schema_is_refused(tmp_path):
    point = GridPoint("deit_tiny_patch16_224", 0, dataset="fp")
    row = row_for(point, 1.0)
    row["top_one"] = row.pop("top1")
    with pytest.raises(ValueError, match=r"missing \['top1'\], unknown \['top_one'\]"):
        ResultsDir(str(tmp_path)).write_point(point, row, predictions_table(point, [], [], [], [], "cpu"))


def test_accuracy_in_percent():
    assert accuracy([1, 2], [[1, 0, 0, 0, 0], [0, 2, 0, 0, 0]]) == (50.0, 100.0)
    assert all(v != v for v in accuracy([], []))  # nan without images
    assert isinstance(POINT_SCHEMA, pa.Schema)


def test_a_points_file_written_before_the_retries_column_reads_with_it_null(tmp_path):
    import pyarrow.parquet as pq

    results = ResultsDir(str(tmp_path))
    point = GridPoint("deit_tiny_patch16_224", 0, dataset="fp")
    old = pa.Table.from_pylist([row_for(point, 70.0)], schema=POINT_SCHEMA).drop_columns(["retries"])
    (tmp_path / "points").mkdir()
    pq.write_table(old, results.point_path(point))
    table = results.read_points_of([point])
    assert table.schema == POINT_SCHEMA and table.column("retries").to_pylist() == [None]
    assert table.column("top1").to_pylist() == [70.0]
    assert "retries" not in results.read_point_rows().columns  # as the file holds it


def write_old_layout(tmp_path, point_stem: str, top1: float, r: int, mode: str = "tomecis") -> None:
    """A points, predictions and failures file as the sweep wrote them before methods: ``mode``, no ``keep``."""
    import pyarrow.parquet as pq

    identity = dict(
        model="deit_tiny_patch16_224", mode=mode, r=r, amp="none", infer_batch_size=128, weights="random",
        device="cpu", dataset="fp",
    )  # fmt: skip
    old_types = {"r": pa.int32(), "infer_batch_size": pa.int32()}

    def table(measured: dict, n: int) -> pa.Table:
        columns = {**measured, **{k: [v] * n for k, v in identity.items()}}
        return pa.table({k: pa.array(v, old_types.get(k)) for k, v in columns.items()})

    point = {k: [v] for k, v in row_for(GridPoint("x", 0, dataset="fp"), top1).items() if k not in identity}
    point.pop("method"), point.pop("keep")
    for name in ("points", "predictions", "failures"):
        (tmp_path / name).mkdir(exist_ok=True)
    pq.write_table(
        table({**point, "short_name": ["deit_tiny"]}, 1), tmp_path / "points" / f"{point_stem}.parquet"
    )
    predictions = dict(key=["k1", "k2"], label=[3, 4], pred=[3, 1], top5=[[3] * 5, [1] * 5], correct=[True, False], shard=["s"] * 2)  # fmt: skip
    pq.write_table(table(predictions, 2), tmp_path / "predictions" / f"{point_stem}.parquet")
    pq.write_table(table(dict(shard=["s"], key=["k3"], error=["truncated"]), 1), tmp_path / "failures" / f"{point_stem}.parquet")  # fmt: skip


def test_results_written_before_methods_read_as_method_with_a_null_keep(tmp_path):
    """An old directory (``mode``, no ``keep``) reads through every reader as ``method`` + ``keep`` null;
    its r = 8 point is the same file a new r point names (a rerun skips it), while its r = 0 row of a
    method is not the new baseline (method ``none``), which a rerun computes."""
    stem = "deit_tiny-tomecis-r8-none-bs128-random-cpu-fp"
    write_old_layout(tmp_path, stem, 71.0, 8)
    write_old_layout(tmp_path, "deit_tiny-tomecis-r0-none-bs128-random-cpu-fp", 72.0, 0)
    results = ResultsDir(str(tmp_path))
    new_r8 = GridPoint("deit_tiny_patch16_224", 8, method="tomecis", weights="random", dataset="fp")
    baseline = GridPoint("deit_tiny_patch16_224", 0, method="none", weights="random", dataset="fp")
    assert new_r8.file_stem() == stem and results.is_done(new_r8) and not results.is_done(baseline)

    table = results.read_points_of([new_r8, baseline])
    assert table.schema == POINT_SCHEMA and table.num_rows == 1
    assert table.select(["method", "r", "keep", "top1"]).to_pylist() == [
        {"method": "tomecis", "r": 8, "keep": None, "top1": 71.0}
    ]
    assert sorted(results.read_points().column("r").to_pylist()) == [0, 8]

    rows = results.read_point_rows()
    assert "mode" not in rows.columns and rows["method"].tolist() == ["tomecis", "tomecis"]
    assert rows["keep"].isna().all() and list(rows.columns).index("keep") == list(rows.columns).index("r") + 1

    preds = results.read_predictions([stem], columns=("key", "method", "r", "keep", "correct"))
    assert preds["method"].tolist() == ["tomecis"] * 2 and preds["keep"].isna().all()
    assert preds["correct"].tolist() == [True, False] and set(preds["point_file"]) == {stem}
    everything = results.read_predictions([stem], columns=tuple(PREDICTION_SCHEMA.names))
    assert list(everything.columns) == [*PREDICTION_SCHEMA.names, "point_file"]

    failures = results.read_failures([stem])
    assert failures[["key", "method", "r"]].values.tolist() == [["k3", "tomecis", 8]]
    assert failures["keep"].isna().all() and len(results.read_failures()) == 2


def test_keep_points_and_the_baseline_round_trip_with_r_or_keep_null(tmp_path):
    results = ResultsDir(str(tmp_path))
    keep = GridPoint("deit_tiny_patch16_224", None, method="evit", keep=0.7, weights="random", dataset="fp")
    base = GridPoint("deit_tiny_patch16_224", 0, method="none", weights="random", dataset="fp")
    for point, top1 in ((keep, 60.0), (base, 72.0)):
        predictions = predictions_table(point, ["k1"], [3], [[3, 1, 2, 0, 5]], ["s.tar"], "cpu")
        results.write_point(point, row_for(point, top1), predictions)
    rows = results.read_points().to_pandas().sort_values("top1")
    assert rows["method"].tolist() == ["evit", "none"] and rows["keep"].tolist()[0] == 0.7
    assert rows["r"].isna().tolist() == [True, False] and rows["keep"].isna().tolist() == [False, True]
    preds = results.read_predictions([keep.file_stem()], columns=("method", "r", "keep"))
    assert preds[["method", "keep"]].values.tolist() == [["evit", 0.7]] and preds["r"].isna().all()
