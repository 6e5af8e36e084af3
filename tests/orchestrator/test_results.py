"""orchestrator.results: the schema, atomic writes, what is done, and reading a directory back."""

from __future__ import annotations

import pyarrow as pa
import pytest

from orchestrator.grid import GridPoint
from orchestrator.results import POINT_SCHEMA, ResultsDir, accuracy, failures_table, predictions_table
from shards import DecodeFailure


def row_for(point: GridPoint, top1: float) -> dict:
    row = {name: None for name in POINT_SCHEMA.names}
    row.update(
        model=point.model,
        short_name=point.short_name,
        mode=point.mode,
        r=point.r,
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
    point = GridPoint("deit_tiny_patch16_224", 8, mode="tome", weights="random", dataset="fp")
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
