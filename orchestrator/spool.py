"""Finished work items on disk, so that a pass outlives its driver: one file per accepted item.

Layout under the results directory (any pyarrow filesystem, as ``results.ResultsDir``)::

    spool/<models>-<pass key>/<item key>.npz    one accepted work item's ``ShardOutcome``

The pass key hashes everything that makes its points' identity (``pass_key``: each point's
``GridPoint.identity``, the device as its kind), so changed settings never find an old spool; the item key hashes the item's shard URLs. A file is an ``.npz`` (numpy, no pickle):
the arrays of the outcome, plus a JSON ``meta`` entry holding its other fields (tagged: dicts keyed by
tuples, failures), the item's shards, the driver session that evaluated it and the item's retries.
Reading takes the fields ``ShardOutcome`` knows and leaves defaults for those the file predates; a file
that cannot be read, or that holds another pass or item, is ``SpoolUnreadable`` (the sweep redoes it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import pyarrow.fs as pafs

import shards

from .grid import GridPoint
from .results import ResultsDir
from .work import PointKey, ShardOutcome

SPOOL_DIR = "spool"
FORMAT = 1


class SpoolUnreadable(ValueError):
    """A spool file that cannot serve as its item's outcome; the message says why."""


@dataclass
class SpoolRecord:
    """One accepted work item as spooled: its outcome, the driver session that evaluated it (a uuid hex)
    and how many times the item was retried before it was accepted."""

    urls: Tuple[str, ...]
    outcome: ShardOutcome
    session: str
    retries: int = 0


# --------------------------------------------------------------------------- keys


def pass_key(points: Sequence[GridPoint]) -> str:
    """16 hex digits naming a pass's spool: the points' identities (model, method, r, keep, amp, ...), in
    any order. The dataset, which the points of a pass share, is hashed once beside them. (A spool
    written before methods, whose identities held ``mode``, has another key: it is not resumed.)"""
    datasets = {p.dataset for p in points}
    if len(datasets) != 1:
        raise ValueError(f"the points of one pass must share one dataset, got {sorted(datasets)}")
    identity = sorted(
        ([v for c, v in p.identity().items() if c != "dataset"] for p in points), key=json.dumps
    )
    text = json.dumps({"format": FORMAT, "dataset": datasets.pop(), "points": identity})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def item_key(urls: Sequence[str]) -> str:
    """16 hex digits naming an item's spool file: its shard URLs, in order."""
    return hashlib.sha256("\n".join(urls).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- encoding (pure)


def encode(record: SpoolRecord, key: str) -> bytes:
    """``record`` of the pass ``key`` as the bytes of an ``.npz``: arrays as arrays, the rest as JSON."""
    arrays: Dict[str, np.ndarray] = {}
    fields = {
        f.name: _pack(getattr(record.outcome, f.name), arrays) for f in dataclasses.fields(ShardOutcome)
    }
    meta = dict(
        format=FORMAT,
        pass_key=key,
        shards=list(record.urls),
        session=record.session,
        retries=record.retries,
        outcome=fields,
    )
    buffer = io.BytesIO()
    np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
    return buffer.getvalue()


def decode(data: bytes, key: str, point_keys: Sequence[PointKey]) -> SpoolRecord:
    """The record in ``data``, checked to be of the pass ``key`` with the top-5 of every point of
    ``point_keys`` (``[n, 5]`` each, ``n`` = its keys); else ``SpoolUnreadable`` saying why."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        meta = json.loads(str(arrays.pop("meta")))
        if meta.get("format") != FORMAT or meta.get("pass_key") != key:
            raise SpoolUnreadable(f"format {meta.get('format')} of pass {meta.get('pass_key')}, not {key}")
        known = {f.name for f in dataclasses.fields(ShardOutcome)}
        fields = {name: _unpack(v, arrays) for name, v in meta["outcome"].items() if name in known}
        record = SpoolRecord(
            tuple(meta["shards"]), ShardOutcome(**fields), str(meta["session"]), int(meta.get("retries", 0))
        )
    except SpoolUnreadable:
        raise
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        KeyError,
        TypeError,
        EOFError,
    ) as err:  # zip, JSON, fields
        raise SpoolUnreadable(f"{type(err).__name__}: {err}") from err
    _check_shapes(record.outcome, point_keys)
    return record


def _check_shapes(outcome: ShardOutcome, point_keys: Sequence[PointKey]) -> None:
    """Labels ``[n]``, key shards ``[n]`` and top-5 ``[n, 5]`` of exactly ``point_keys``; else SpoolUnreadable."""
    n = len(outcome.keys)
    if set(outcome.top5) != set(point_keys):
        raise SpoolUnreadable(
            f"its points {sorted(outcome.top5, key=repr)} are not the pass's {sorted(point_keys, key=repr)}"
        )
    if len(outcome.labels) != n or len(outcome.key_shards) != n:
        raise SpoolUnreadable(f"{n} keys but {len(outcome.labels)} labels, {len(outcome.key_shards)} shards")
    bad = [k for k, v in outcome.top5.items() if v.shape[0] != n]
    if bad:
        raise SpoolUnreadable(f"top-5 of {bad[0]} has {outcome.top5[bad[0]].shape[0]} rows for {n} keys")


def _pack(value, arrays: Dict[str, np.ndarray]):
    """``value`` as JSON: arrays go to ``arrays`` (named ``a<i>``); dicts, tuples and decode failures are
    tagged one-key objects (JSON lists are lists), numpy scalars become Python numbers."""
    if isinstance(value, np.ndarray):
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {"array": name}
    if isinstance(value, shards.DecodeFailure):
        return {"failure": [value.shard, value.key, value.error]}
    if isinstance(value, dict):
        return {"dict": [[_pack(k, arrays), _pack(v, arrays)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_pack(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_pack(v, arrays) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cannot spool a {type(value).__name__} ({value!r:.80})")


def _unpack(value, arrays: Dict[str, np.ndarray]):
    """The inverse of ``_pack``."""
    if isinstance(value, list):
        return [_unpack(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    (tag, inner), *more = value.items()
    if more:
        raise ValueError(f"a tagged value has {len(value)} keys: {sorted(value)}")
    if tag == "array":
        return arrays[inner]
    if tag == "failure":
        return shards.DecodeFailure(*inner)
    if tag == "dict":
        return {_unpack(k, arrays): _unpack(v, arrays) for k, v in inner}
    if tag == "tuple":
        return tuple(_unpack(v, arrays) for v in inner)
    raise ValueError(f"unknown tag {tag!r}")


# --------------------------------------------------------------------------- choosing what to resume (pure)


def disjoint_in_order(records: Sequence[SpoolRecord], urls: Sequence[str]) -> List[SpoolRecord]:
    """Records whose shards are all among ``urls`` and overlap no earlier one, ordered by their first
    shard's place in ``urls`` (spools of a run whose items were grouped otherwise may overlap)."""
    place = {url: i for i, url in enumerate(urls)}
    kept, covered = [], set()
    for record in sorted(records, key=lambda r: min(place.get(u, len(place)) for u in r.urls)):
        if all(u in place for u in record.urls) and covered.isdisjoint(record.urls):
            kept.append(record)
            covered.update(record.urls)
    return kept


# --------------------------------------------------------------------------- the spool of one pass


class Spool:
    """The spool directory of one pass in a results directory (local or object store)."""

    def __init__(self, results: ResultsDir, name: str, key: str, session: str):
        self.results, self.key, self.session = results, key, session
        self.dir = results.path(SPOOL_DIR, f"{name}-{key}")

    @property
    def uri(self) -> str:
        """Where the spool is, as the user named the results directory (``results/spool/...``)."""
        return self.dir.replace(self.results.root.rstrip("/"), self.results.uri.rstrip("/"), 1)

    def put(self, urls: Sequence[str], outcome: ShardOutcome, retries: int) -> None:
        """Write an accepted item's outcome, atomically, before it counts."""
        record = SpoolRecord(tuple(urls), outcome, self.session, retries)
        self.results.write_bytes(self._path(urls), encode(record, self.key))

    def holds(self, urls: Sequence[str]) -> bool:
        """Whether the item of these shards is in the spool (its file was written whole)."""
        return self.results.fs.get_file_info(self._path(urls)).type == pafs.FileType.File

    def load(self, point_keys: Sequence[PointKey], say: Callable[[str], None]) -> List[SpoolRecord]:
        """Every record in the spool, each checked (``decode``) and against its file's name; a file
        that fails is left out with a line through ``say`` (its shards are then evaluated again)."""
        records = []
        for path in self._files():
            name = path.rsplit("/", 1)[-1]
            try:
                record = decode(self.results.read_bytes(path), self.key, point_keys)
                if name != f"{item_key(record.urls)}.npz":
                    raise SpoolUnreadable(f"it holds shard(s) {', '.join(record.urls)}, of another name")
            except (SpoolUnreadable, OSError) as err:
                say(f"spool: {name} in {self.uri} is unreadable ({err}); its shard(s) are evaluated again")
                continue
            records.append(record)
        return records

    def delete(self) -> None:
        """Remove the spool (its points are written), and ``spool/`` with it when no other pass's is left."""
        fs, parent = self.results.fs, self.results.path(SPOOL_DIR)
        if fs.get_file_info(self.dir).type == pafs.FileType.Directory:
            fs.delete_dir(self.dir)
        if fs.get_file_info(parent).type == pafs.FileType.Directory and not fs.get_file_info(
            pafs.FileSelector(parent)
        ):
            fs.delete_dir(parent)

    def _files(self) -> List[str]:
        selector = pafs.FileSelector(self.dir, allow_not_found=True)
        return sorted(
            i.path
            for i in self.results.fs.get_file_info(selector)
            if i.type == pafs.FileType.File
            and i.base_name.endswith(".npz")
            and not i.base_name.startswith(".")
        )

    def _path(self, urls: Sequence[str]) -> str:
        return f"{self.dir}/{item_key(urls)}.npz"
