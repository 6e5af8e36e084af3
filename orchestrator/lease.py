"""One writer per results folder: a sweep holds a lease on ``--out`` while it runs.

The lease is a small JSON record at ``<out>/_lease.json`` (host, pid, start time, command, lease
seconds, when it was last renewed, and a token that is this sweep's alone). ``_`` makes Parquet readers
(pandas, pyarrow datasets, ``report``) pass it by: reading results never needs the lease.

- Taking it: on a local disk or NFS the record is written to a temporary file and hard-linked to its
  name, which fails when the name exists (atomic there, NFS included), so readers never see half a record.
  On an object store (no exclusive create) the record is written only where none exists and read back
  after a moment: the sweep holds the lease when the record read back is its own.
- Held: a daemon thread rewrites the record (``renewed``) every quarter of the lease time.
- Released: the record is removed at the end, on an error and on Ctrl-C too (``with ResultsLease(...)``).
- Refused: another live holder's lease raises ``LeaseHeld`` naming it and saying how to wait or override.
- Taken over, with one line saying so: a record whose pid is dead on this host, or not renewed for longer
  than the lease time it states; ``force`` (``--force-unlock``) takes any record.

No Ray, no torch: the sweep takes the lease before Ray starts.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, Optional

import pyarrow.fs as pafs

from .errors import SweepError

LEASE_FILE = "_lease.json"
LEASE_SECONDS = 60.0  # a holder not heard from for this long is gone
READ_BACK_DELAY = 1.0  # object stores: seconds between writing the lease object and reading it back

Say = Callable[[str], None]


class LeaseHeld(SweepError):
    """Another sweep holds the results folder's lease; the message names it and says what to do."""


@dataclass(frozen=True)
class LeaseRecord:
    """Who holds a results folder: where and what runs, since when, and until when it counts as alive."""

    host: str
    pid: int
    started: str  # ISO 8601, UTC
    command: str
    lease_seconds: float
    renewed: float  # time.time() of the last renewal (the holder's clock)
    token: str  # this holder's alone: tells its own record from a successor's

    @classmethod
    def mine(cls, command: str, lease_seconds: float, now: float) -> "LeaseRecord":
        started = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(socket.gethostname(), os.getpid(), started, command, lease_seconds, now, uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=1).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord":
        fields = json.loads(data.decode())
        return cls(
            str(fields["host"]),
            int(fields["pid"]),
            str(fields["started"]),
            str(fields["command"]),
            float(fields["lease_seconds"]),
            float(fields["renewed"]),
            str(fields["token"]),
        )

    def describe(self, now: float) -> str:
        """``pid 812 on host gpu-1, started 2026-12-06T08:40:01Z, renewed 3s ago (python -m ...)``."""
        renewed = f"renewed {now - self.renewed:.0f}s ago" if self.renewed else "never renewed"
        return f"pid {self.pid} on host {self.host}, started {self.started}, {renewed} ({self.command})"

    def gone(self, now: float) -> str:
        """Why this holder is gone (its pid is dead on this host, or it stopped renewing), else ``""``."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"its process {self.pid} is no longer running on this host"
        if not self.renewed:
            return "its record is unreadable"
        if now - self.renewed > self.lease_seconds:
            return f"not renewed for {now - self.renewed:.0f}s, longer than its {self.lease_seconds:g}s lease"
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _say_on_stderr(line: str) -> None:
    print(line, file=sys.stderr)


class ResultsLease:
    """The lease on one results folder (a local path, NFS, or an object-store URI); ``with`` it to hold it
    for a block: taken on entry (``LeaseHeld`` when another sweep holds it), renewed meanwhile, released
    on the way out, however the block ends."""

    def __init__(
        self,
        out: str,
        command: Optional[str] = None,
        lease_seconds: float = LEASE_SECONDS,
        force: bool = False,
        say: Say = _say_on_stderr,
        fs: Optional[pafs.FileSystem] = None,
        clock: Callable[[], float] = time.time,
    ):
        self.out = str(out)
        if fs is None:
            fs, root = (
                pafs.FileSystem.from_uri(self.out)
                if "://" in self.out
                else (pafs.LocalFileSystem(), os.path.abspath(self.out))
            )
        else:
            root = self.out
        self.fs, self.root = fs, root.rstrip("/")
        self.path = f"{self.root}/{LEASE_FILE}"
        self.command = command if command is not None else shlex.join(sys.argv)
        self.lease_seconds, self.force, self.say, self.clock = lease_seconds, force, say, clock
        self.record: Optional[LeaseRecord] = None
        self.lost = False  # another sweep took the lease over (--force-unlock) while this one held it
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    # ------------------------------------------------------------------ take, renew, release

    def acquire(self) -> LeaseRecord:
        """Take the lease (see the module docstring); ``LeaseHeld`` naming the holder when it is not free."""
        self.fs.create_dir(self.root, recursive=True)
        record = LeaseRecord.mine(self.command, self.lease_seconds, self.clock())
        while not self._create(record):
            holder = self.read()
            if holder is None:  # released between our try and our read: try again
                continue
            now = self.clock()
            why = "--force-unlock" if self.force else holder.gone(now)
            if not why:
                raise LeaseHeld(self._refusal(holder, now))
            if self._remove_if(holder):
                self.say(f"lease: took over {self.path} from {holder.describe(now)}: {why}")
        self.record = record
        return record

    def renew(self) -> bool:
        """Rewrite the record with ``renewed`` now, if it is still ours; False (and one line) once another
        sweep has taken it over."""
        if self.record is None or self.lost:
            return False
        current = self.read()
        if current is None or current.token != self.record.token:
            self.lost = True
            taker = f" by {current.describe(self.clock())}" if current else ""
            self.say(f"lease: {self.path} was taken over{taker}; this sweep no longer holds it")
            return False
        self.record = LeaseRecord(**{**asdict(self.record), "renewed": self.clock()})
        self._write(self.record.to_bytes())
        return True

    def release(self) -> None:
        """Remove the record if it is still ours (a successor's is left alone)."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
            self._renewer = None
        if self.record is not None:
            self._remove_if(self.record)
            self.record = None

    def __enter__(self) -> "ResultsLease":
        self.acquire()
        self._stop.clear()
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="results-lease", daemon=True)
        self._renewer.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.lease_seconds / 4):
            try:
                if not self.renew():
                    return
            except OSError as err:  # a storage hiccup: try again next time, the lease has slack for it
                self.say(f"lease: could not renew {self.path} ({err}); trying again")

    # ------------------------------------------------------------------ the record on storage

    def read(self) -> Optional[LeaseRecord]:
        """The record at ``path``; None when there is none. A record that does not parse (written by
        hand, or damaged) counts as expired, so that it is taken over rather than blocking for ever."""
        try:
            with self.fs.open_input_stream(self.path) as stream:
                data = stream.read()
        except FileNotFoundError:
            return None
        try:
            return LeaseRecord.from_bytes(data)
        except (ValueError, KeyError, TypeError):
            return LeaseRecord("?", -1, "?", f"unreadable lease record {data[:80]!r}", 0.0, 0.0, "")

    def _create(self, record: LeaseRecord) -> bool:
        """Write ``record`` unless a record exists; True when the lease is now ours."""
        if self.local:
            tmp = f"{self.root}/.{LEASE_FILE}.{record.token}.tmp"
            with open(tmp, "wb") as f:
                f.write(record.to_bytes())
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, self.path)  # atomic, fails when the name exists (NFS too)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.read() is not None:
            return False
        self._write(record.to_bytes())
        time.sleep(READ_BACK_DELAY)  # a rival that wrote at the same moment: the last write wins
        current = self.read()
        return current is not None and current.token == record.token

    def _write(self, data: bytes) -> None:
        """The record replaced in one step: rename over it locally, one PUT on an object store."""
        if self.local:
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, self.path)
        else:
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(data)

    def _remove_if(self, record: LeaseRecord) -> bool:
        """Remove the record at ``path`` if it is ``record`` (same token); True when it was. Locally the
        record is first renamed aside (one remover wins) and checked there; a successor's is put back."""
        if not self.local:
            current = self.read()
            if current is None or current.token != record.token:
                return False
            self.fs.delete_file(self.path)
            return True
        aside = f"{self.root}/.{LEASE_FILE}.{uuid.uuid4().hex}.removed"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        try:
            with open(aside, "rb") as f:
                moved = f.read()
            try:
                ours = LeaseRecord.from_bytes(moved).token == record.token
            except (ValueError, KeyError, TypeError):
                ours = record.token == ""  # the unreadable record we meant to take over
            if not ours:
                try:
                    os.link(aside, self.path)  # not ours after all: back where it was, unless replaced
                except FileExistsError:
                    pass
            return ours
        finally:
            os.unlink(aside)

    def _refusal(self, holder: LeaseRecord, now: float) -> str:
        return (
            f"--out {self.out}: another sweep is writing there ({holder.describe(now)}); wait for it to end "
            f"(its lease, {self.path}, goes when it does, or {holder.lease_seconds:g}s after its last renewal "
            f"if it dies), or, if you are sure it is gone, rerun with --force-unlock"
        )
