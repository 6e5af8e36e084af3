"""The results directory: Parquet schemas, atomic writes, and what is already done.

Layout of ``--out`` (a local path or any URI pyarrow's filesystem layer opens, e.g. ``s3://bucket/run``)::

    points/<point>.parquet        one row per grid point (accuracy, throughput, provenance)
    predictions/<point>.parquet   one row per image of that point (key, label, pred, top5, correct, the point's identity)
    failures/<point>.parquet      one row per image that could not be decoded (shard, key, error, the point's identity);
                                  written for every point, empty when nothing failed
    spool/<pass>/<item>.npz       finished work items of a pass whose points are not written yet (``spool``)

A point's failures and predictions are written before its ``points`` row, so a
``points`` file exists only for a finished point: that file is what a rerun skips.

Files written before methods and keep ratios existed hold ``mode`` where they now hold ``method``, and no
``keep``: every read here (points, predictions, failures) gives them as ``method`` with a null ``keep``
(``normalise``), so nothing that reads through ``ResultsDir`` sees the old layout. Files written before a
method could come from outside the project have no ``method_source``: they read as ``builtin``.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from tomecis.names import BUILTIN_ORIGIN

from .grid import IDENTITY_FIELDS, GridPoint

POINTS_DIR = "points"
PREDICTIONS_DIR = "predictions"
FAILURES_DIR = "failures"

# The identity columns (``grid.IDENTITY``), typed by their GridPoint field: str -> string, int -> int32,
# float -> float64 (Optional: null where unused, r of a keep point, keep of an r point).
_ARROW = {
    "str": pa.string(),
    "int": pa.int32(),
    "Optional[int]": pa.int32(),
    "Optional[float]": pa.float64(),
}
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(GridPoint)}
IDENTITY_SCHEMA = pa.schema(
    [(column, _ARROW[_FIELD_TYPES[name]]) for column, name in IDENTITY_FIELDS.items()]
)


def _identity_and(*columns) -> pa.Schema:
    """A schema of the measured ``(name, type)`` columns and every identity column: a bare name places
    one where the files have always held it; the others follow the measured columns, in IDENTITY order."""
    placed = {c for c in columns if isinstance(c, str)}
    fields = [IDENTITY_SCHEMA.field(c) if isinstance(c, str) else pa.field(*c) for c in columns]
    return pa.schema(fields + [f for f in IDENTITY_SCHEMA if f.name not in placed])


POINT_SCHEMA = _identity_and(
    "model",
    ("short_name", pa.string()),
    "method",
    "r",
    "keep",
    ("schedule", pa.list_(pa.int32())),
    ("top1", pa.float64()),
    ("top5", pa.float64()),
    ("n_images", pa.int64()),
    ("n_failed", pa.int64()),
    ("infer_samples_per_sec", pa.float64()),
    ("speedup", pa.float64()),  # over the model's unreduced point: median of the paired per-round ratios
    ("speedup_low", pa.float64()),  # its 95% order-statistics interval (tomecis.speedup)
    ("speedup_high", pa.float64()),
    ("bench_seconds", pa.list_(pa.float64())),  # seconds of each timed round, in round order
    "infer_batch_size",
    ("eval_samples_per_sec", pa.float64()),
    ("gflops", pa.float64()),
    ("tokens_out", pa.int32()),
    ("matched_to", pa.string()),  # "tomecis:r13 by speed": the point was found by --match (null otherwise)
    ("matched_reference_value", pa.float64()),  # the reference's img/s or GFLOPs at calibration
    ("matched_value", pa.float64()),  # the point's, measured with it
    ("planned", pa.string()),  # JSON {method: [[r, keep], ...]}: the model's amounts the sweep planned
    ("param_count", pa.float64()),
    ("img_size", pa.int32()),
    ("crop_pct", pa.float64()),
    ("interpolation", pa.string()),
    "amp",
    "weights",
    "device",
    "dataset",
    ("dataset_title", pa.string()),  # a public set's name (ImageNetV2 matched-frequency), else null
    ("n_shards", pa.int32()),
    ("retries", pa.int32()),
    ("cuda_graphs", pa.bool_()),
    ("graph_error", pa.string()),
    ("started", pa.timestamp("us", tz="UTC")),
    ("finished", pa.timestamp("us", tz="UTC")),
    ("nodes", pa.list_(pa.string())),
    ("hostnames", pa.list_(pa.string())),
    ("torch_version", pa.string()),
    ("timm_version", pa.string()),
    ("ray_version", pa.string()),
    ("tomecis_version", pa.string()),
)

PREDICTION_SCHEMA = _identity_and(
    ("key", pa.string()),
    ("label", pa.int32()),
    ("pred", pa.int32()),
    ("top5", pa.list_(pa.int32())),
    ("correct", pa.bool_()),
    ("shard", pa.string()),
)

FAILURE_SCHEMA = _identity_and(("shard", pa.string()), ("key", pa.string()), ("error", pa.string()))


class ResultsDir:
    """A results directory on any pyarrow filesystem (local disk, S3, GCS)."""

    def __init__(self, uri: str):
        self.uri = str(uri)
        self.fs, self.root = _filesystem(self.uri)

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def point_path(self, point: GridPoint) -> str:
        return self.path(POINTS_DIR, point.file_stem() + ".parquet")

    def predictions_path(self, point: GridPoint) -> str:
        return self.path(PREDICTIONS_DIR, point.file_stem() + ".parquet")

    def failures_path(self, point: GridPoint) -> str:
        return self.path(FAILURES_DIR, point.file_stem() + ".parquet")

    def is_done(self, point: GridPoint) -> bool:
        """True when the point's ``points`` row exists (for its dataset, weights, device kind, ...)."""
        return self.fs.get_file_info(self.point_path(point)).type == pafs.FileType.File

    def write_point(
        self,
        point: GridPoint,
        row: Dict,
        predictions: pa.Table,
        failures: Optional[pa.Table] = None,
    ) -> str:
        """Write failures (an empty table when ``None``: a rewritten point never keeps stale ones), then
        predictions, then the point row, each atomically; returns the point file's path."""
        _check_row(row)
        failures = FAILURE_SCHEMA.empty_table() if failures is None else failures.cast(FAILURE_SCHEMA)
        self._write_atomic(failures, self.failures_path(point))
        self._write_atomic(predictions.cast(PREDICTION_SCHEMA), self.predictions_path(point))
        table = pa.Table.from_pylist([row], schema=POINT_SCHEMA)
        path = self.point_path(point)
        self._write_atomic(table, path)
        return path

    def update_point_row(self, point: GridPoint, columns: Dict[str, object]) -> str:
        """Set ``columns`` of a finished point's row (a point found again by ``--match``: its row says so),
        the file rewritten atomically; the predictions stay as they are. Returns the file's path."""
        path = self.point_path(point)
        row = _cast_points(_read_normalised(self.fs, path, None)).to_pylist()[0]
        row.update(columns)
        self._write_atomic(pa.Table.from_pylist([row], schema=POINT_SCHEMA), path)
        return path

    def _write_atomic(self, table: pa.Table, path: str) -> None:
        """``table`` as Parquet at ``path``, atomically (``_atomically``)."""
        self._atomically(path, lambda target: pq.write_table(table, target, filesystem=self.fs))

    def write_bytes(self, path: str, data: bytes) -> None:
        """``data`` at ``path``, atomically (``_atomically``): readers see the whole file or none."""

        def put(target: str) -> None:
            with self.fs.open_output_stream(target) as stream:
                stream.write(data)

        self._atomically(path, put)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def _atomically(self, path: str, write: Callable[[str], None]) -> None:
        """Local disks: ``write`` a temporary file beside ``path``, then rename over it.
        Object stores: ``write`` ``path`` itself, one PUT, which is atomic there (readers see all or nothing)."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{parent}/.{uuid.uuid4().hex}.tmp"
            write(tmp)
            os.replace(tmp, path)
        else:
            write(path)

    def read_points_of(self, points: Iterable[GridPoint]) -> pa.Table:
        """The rows of these grid points that exist (an empty table with the schema when none)."""
        return self.read_point_files([self.point_path(p) for p in points if self.is_done(p)])

    def read_points(self) -> pa.Table:
        """Every points row written so far, cast to POINT_SCHEMA (an empty table with the schema when none)."""
        return self.read_point_files(self.parquet_files(POINTS_DIR))

    def read_point_rows(self) -> pd.DataFrame:
        """Every points row as its file holds it, plus ``point_file``: the file stem its predictions file shares.

        Columns: those of POINT_SCHEMA each file has (not cast: rows of a file written before a column
        existed show it as missing) + ``point_file``, one row per finished grid point; an empty frame
        without columns when ``points/`` holds no file."""
        return _with_point_file(self._tables(POINTS_DIR), None)

    def read_predictions(
        self, point_files: Iterable[str], columns: Sequence[str] = ("key", "label", "pred", "correct")
    ) -> pd.DataFrame:
        """``columns`` of PREDICTION_SCHEMA + ``point_file``, one row per image, for every named point
        (a ``point_file`` of ``read_point_rows``) that has a predictions file; an empty frame with those
        columns when none has.

        They are tied to their points row through the shared file name (which is the whole key),
        never through (model, method, r, keep) alone."""
        return _with_point_file(self._tables(PREDICTIONS_DIR, set(point_files), list(columns)), list(columns))

    def read_failures(self, point_files: Optional[Iterable[str]] = None) -> pd.DataFrame:
        """Every column of FAILURE_SCHEMA + ``point_file``, one row per image that could not be decoded,
        of the named points (every point when ``point_files`` is None); an empty frame with those columns
        when there are none."""
        stems = None if point_files is None else set(point_files)
        return _with_point_file(self._tables(FAILURES_DIR, stems), list(FAILURE_SCHEMA.names))

    def parquet_files(self, name: str) -> List[str]:
        """The paths of ``name/*.parquet``, sorted (hidden files, such as a write's temporary file, left out)."""
        selector = pafs.FileSelector(self.path(name), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted(
            i.path
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".parquet")
            and not i.base_name.startswith(".")
        )

    def read_point_files(self, files: Sequence[str]) -> pa.Table:
        """The rows of these points files (paths in this directory, as ``write_point`` returns them) cast
        to POINT_SCHEMA, in order (an empty table with the schema when none)."""
        if not files:
            return POINT_SCHEMA.empty_table()
        return pa.concat_tables([_cast_points(_read_normalised(self.fs, f, None)) for f in files])

    def _tables(
        self, name: str, stems: Optional[Set[str]] = None, columns: Optional[List[str]] = None
    ) -> Iterator[Tuple[str, pa.Table]]:
        """(file stem, its table as written, ``normalise``d) per file of ``name``, only those whose stem is
        in ``stems`` when given; ``columns`` in the current layout (a file written with ``mode`` gives it
        as ``method``, one without ``keep`` a null ``keep``)."""
        for path in self.parquet_files(name):
            stem = path.rsplit("/", 1)[-1][: -len(".parquet")]
            if stems is None or stem in stems:
                yield stem, _read_normalised(self.fs, path, columns)


def _with_point_file(tables: Iterable[Tuple[str, pa.Table]], columns: Optional[List[str]]) -> pd.DataFrame:
    """The tables as one pandas frame, each row with its file's stem as ``point_file`` (empty: ``columns`` + point_file)."""
    frames = []
    for stem, table in tables:
        frame = table.to_pandas()
        frame["point_file"] = stem
        frames.append(frame)
    if not frames:
        return pd.DataFrame() if columns is None else pd.DataFrame(columns=columns + ["point_file"])
    return pd.concat(frames, ignore_index=True)


OLD_COLUMNS = {"method": "mode"}  # a column's name in files written before it was renamed
ADDED_COLUMNS = ("keep", "method_source")  # columns older files lack; a read fills them in


def normalise(table: pa.Table) -> pa.Table:
    """A results table in the current layout: a file written before methods holds ``mode`` (renamed to
    ``method``, in its place) and no ``keep`` (a null float64 column after ``r``, or at the end)."""
    names = [next((new for new, old in OLD_COLUMNS.items() if old == n), n) for n in table.column_names]
    if names != table.column_names and not set(OLD_COLUMNS) & set(table.column_names):
        table = table.rename_columns(names)
    if "method" in table.column_names and "keep" not in table.column_names:
        at = table.column_names.index("r") + 1 if "r" in table.column_names else table.num_columns
        table = table.add_column(at, pa.field("keep", pa.float64()), pa.nulls(table.num_rows, pa.float64()))
    if "method" in table.column_names and "method_source" not in table.column_names:
        table = _with_builtin_source(table)
    return table


def _with_builtin_source(table: pa.Table) -> pa.Table:
    """A file written before methods could come from outside (``method_source``) held built-in ones."""
    return table.append_column(
        pa.field("method_source", pa.string()), pa.array([BUILTIN_ORIGIN] * table.num_rows)
    )


def _read_normalised(fs: pafs.FileSystem, path: str, columns: Optional[List[str]]) -> pa.Table:
    """``columns`` (all when None) of the Parquet file at ``path``, ``normalise``d: asked-for columns a
    file names the old way are read under their old name, and a ``keep`` it lacks is null."""
    if columns is None:
        return normalise(pq.read_table(path, filesystem=fs))
    present = set(pq.read_schema(path, filesystem=fs).names)
    old = {c: OLD_COLUMNS[c] for c in columns if c not in present and OLD_COLUMNS.get(c) in present}
    table = normalise(
        pq.read_table(
            path,
            columns=[old.get(c, c) for c in columns if c in present or c not in ADDED_COLUMNS],
            filesystem=fs,
        )
    )
    if "keep" in columns and "keep" not in table.column_names:
        table = table.append_column(pa.field("keep", pa.float64()), pa.nulls(table.num_rows, pa.float64()))
    if "method_source" in columns and "method_source" not in table.column_names:
        table = _with_builtin_source(table)
    return table.select(columns)


def _cast_points(table: pa.Table) -> pa.Table:
    """A points file's rows cast to POINT_SCHEMA; a column the file predates (``retries``, say) is null."""
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in POINT_SCHEMA
    ]
    return pa.Table.from_arrays(columns, names=POINT_SCHEMA.names).cast(POINT_SCHEMA)


def _filesystem(uri: str) -> Tuple[pafs.FileSystem, str]:
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _check_row(row: Dict) -> None:
    missing = [f.name for f in POINT_SCHEMA if f.name not in row]
    extra = [k for k in row if k not in POINT_SCHEMA.names]
    if missing or extra:
        raise ValueError(f"points row does not fit the schema: missing {missing}, unknown {extra}")


def predictions_table(
    point: GridPoint,
    keys: List[str],
    labels: Iterable[int],
    top5: Iterable[Iterable[int]],
    shards: List[str],
    device: str,
) -> pa.Table:
    """One row per image: key, label, pred (top-1), top5, correct, shard, and the point's identity
    (``GridPoint.identity``, ``device`` the exact device name) so that runs can be told apart."""
    labels = [int(v) for v in labels]
    top5 = [[int(c) for c in row] for row in top5]
    preds = [row[0] for row in top5]
    measured = {
        "key": keys,
        "label": labels,
        "pred": preds,
        "top5": top5,
        "correct": [p == t for p, t in zip(preds, labels)],
        "shard": shards,
    }
    return _with_identity(measured, point, device, len(keys), PREDICTION_SCHEMA)


def failures_table(point: GridPoint, failures: Sequence, device: str) -> pa.Table:
    """One row per image that could not be decoded (``shards.DecodeFailure``: shard, key, error), with
    the point's identity columns, as in ``predictions``."""
    measured = {
        "shard": [f.shard for f in failures],
        "key": [f.key for f in failures],
        "error": [f.error for f in failures],
    }
    return _with_identity(measured, point, device, len(failures), FAILURE_SCHEMA)


def _with_identity(
    measured: Dict[str, list], point: GridPoint, device: str, n: int, schema: pa.Schema
) -> pa.Table:
    """``n`` rows: the ``measured`` columns and the point's identity (``device``: the exact device name)."""
    identity = {column: [value] * n for column, value in point.identity(device).items()}
    return pa.Table.from_pydict({**measured, **identity}, schema=schema)


def accuracy(labels: List[int], top5: List[List[int]]) -> Tuple[float, float]:
    """Top-1 and top-5 in percent."""
    if not labels:
        return float("nan"), float("nan")
    n = len(labels)
    top1 = sum(row[0] == t for row, t in zip(top5, labels))
    top5_hits = sum(t in row for row, t in zip(top5, labels))
    return 100.0 * top1 / n, 100.0 * top5_hits / n
