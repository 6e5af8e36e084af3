"""orchestrator.lease: one writer per results folder (no Ray), and the sweep refusing a folder another
sweep holds, before Ray starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from orchestrator import lease as lease_module
from orchestrator import sweep
from orchestrator.lease import LEASE_FILE, LeaseHeld, LeaseRecord, ResultsLease

REPO = Path(__file__).resolve().parents[2]


class Lines(list):
    """The lines a lease says (takeovers, a lost lease), kept for the test to read."""

    def __call__(self, line: str) -> None:
        self.append(line)


def write_record(out: Path, **fields) -> LeaseRecord:
    """A lease record another sweep left at ``out`` (``fields`` override a live one of this process)."""
    record = LeaseRecord(
        **{
            **dict(
                host=socket.gethostname(),
                pid=os.getpid(),
                started="2026-01-01T00:00:00Z",
                command="python -m orchestrator.sweep --models deit_tiny --out elsewhere",
                lease_seconds=60.0,
                renewed=time.time(),
                token="theirs",
            ),
            **fields,
        }
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / LEASE_FILE).write_bytes(record.to_bytes())
    return record


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_record_names_the_holder_and_goes_at_the_end(tmp_path):
    with ResultsLease(tmp_path / "out", command="python -m orchestrator.sweep --out out") as held:
        record = json.loads((tmp_path / "out" / LEASE_FILE).read_text())
        assert record["host"] == socket.gethostname() and record["pid"] == os.getpid()
        assert record["command"] == "python -m orchestrator.sweep --out out"
        assert record["lease_seconds"] == lease_module.LEASE_SECONDS and record["started"].endswith("Z")
        assert record["token"] == held.record.token
    assert not (tmp_path / "out" / LEASE_FILE).exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no temporary file left behind


def test_only_one_of_many_simultaneous_takers_gets_it(tmp_path):
    leases = [ResultsLease(tmp_path, command=f"sweep {i}") for i in range(8)]
    won, refused, start = [], [], threading.Barrier(len(leases))

    def take(held: ResultsLease) -> None:
        start.wait()
        try:
            held.acquire()
            won.append(held)
        except LeaseHeld as err:
            refused.append(str(err))

    threads = [threading.Thread(target=take, args=(held,)) for held in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == won[0].record.token
    won[0].release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_live_holder_is_refused_by_name_with_how_to_wait_or_override(tmp_path):
    holder = write_record(tmp_path, host="gpu-node-7", pid=4242)
    with pytest.raises(LeaseHeld) as refused:
        ResultsLease(tmp_path).acquire()
    message = str(refused.value)
    print(message)
    assert message.startswith(
        f"--out {tmp_path}: another sweep is writing there (pid 4242 on host gpu-node-7, "
    )
    assert holder.command in message and "started 2026-01-01T00:00:00Z" in message
    assert "wait for it to end" in message and "rerun with --force-unlock" in message
    assert "60s after its last renewal" in message
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == "theirs"  # untouched


def test_a_dead_pid_on_this_host_is_taken_over_with_one_line(tmp_path):
    pid = dead_pid()
    write_record(tmp_path, pid=pid)
    said = Lines()
    with ResultsLease(tmp_path, say=said) as held:
        assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == held.record.token
    print(said)
    assert len(said) == 1
    assert said[0].startswith(f"lease: took over {tmp_path}/{LEASE_FILE} from pid {pid} on host ")
    assert said[0].endswith(f": its process {pid} is no longer running on this host")


def test_a_lease_not_renewed_in_time_is_taken_over_even_from_another_host(tmp_path):
    now = 1_800_000_000.0
    write_record(tmp_path, host="gpu-node-7", pid=4242, lease_seconds=60, renewed=now - 95)
    said = Lines()
    ResultsLease(tmp_path, say=said, clock=lambda: now).acquire()
    print(said)
    assert said == [
        f"lease: took over {tmp_path}/{LEASE_FILE} from pid 4242 on host gpu-node-7, started "
        "2026-01-01T00:00:00Z, renewed 95s ago (python -m orchestrator.sweep --models deit_tiny --out "
        "elsewhere): not renewed for 95s, longer than its 60s lease"
    ]
    write_record(tmp_path / "fresh", host="gpu-node-7", pid=4242, lease_seconds=60, renewed=now - 30)
    with pytest.raises(LeaseHeld):  # within its lease: alive
        ResultsLease(tmp_path / "fresh", clock=lambda: now).acquire()


def test_a_damaged_record_is_taken_over(tmp_path):
    (tmp_path / LEASE_FILE).write_text('{"host": "gpu-no')
    said = Lines()
    ResultsLease(tmp_path, say=said).acquire()
    assert len(said) == 1 and "unreadable lease record" in said[0] and "never renewed" in said[0]
    assert said[0].endswith(": its record is unreadable")


def test_the_lease_is_renewed_while_held(tmp_path):
    clock = [1_800_000_000.0]
    held = ResultsLease(tmp_path, clock=lambda: clock[0])
    held.acquire()
    clock[0] += 40
    assert held.renew()
    assert json.loads((tmp_path / LEASE_FILE).read_text())["renewed"] == clock[0]
    clock[0] += 40  # 80 s after it was taken, 40 s after its renewal: still alive to a rival
    with pytest.raises(LeaseHeld):
        ResultsLease(tmp_path, clock=lambda: clock[0]).acquire()


def test_the_daemon_thread_renews_on_its_own(tmp_path):
    with ResultsLease(tmp_path, lease_seconds=0.2) as held:
        first = held.record.renewed
        deadline = time.monotonic() + 30
        while json.loads((tmp_path / LEASE_FILE).read_text())["renewed"] == first:
            assert time.monotonic() < deadline, "the lease was never renewed"
            time.sleep(0.02)
        assert held._renewer.daemon
    assert not (tmp_path / LEASE_FILE).exists()


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_the_lease_is_released_on_an_error_and_on_ctrl_c(tmp_path, error):
    with pytest.raises(type(error)):
        with ResultsLease(tmp_path):
            assert (tmp_path / LEASE_FILE).exists()
            raise error
    assert not (tmp_path / LEASE_FILE).exists()


def test_force_unlock_takes_a_live_lease_and_the_old_holder_lets_go(tmp_path):
    first = ResultsLease(tmp_path, say=Lines())
    first.acquire()
    said = Lines()
    second = ResultsLease(tmp_path, force=True, say=said)
    second.acquire()
    assert len(said) == 1 and said[0].endswith(": --force-unlock") and f"pid {os.getpid()}" in said[0]
    assert not first.renew()  # the old holder notices, says so once, and no longer renews
    assert first.say == [
        f"lease: {tmp_path}/{LEASE_FILE} was taken over by " + first.say[0].split(" by ", 1)[1]
    ]
    assert "this sweep no longer holds it" in first.say[0]
    first.release()  # leaves the new holder's record alone
    assert json.loads((tmp_path / LEASE_FILE).read_text())["token"] == second.record.token
    second.release()
    assert not (tmp_path / LEASE_FILE).exists()


def test_an_object_store_lease_is_written_and_read_back(tmp_path, monkeypatch):
    """No exclusive create on object stores: the lease object is written where none is, and read back."""
    monkeypatch.setattr(lease_module, "READ_BACK_DELAY", 0.01)
    store = pafs.SubTreeFileSystem(
        str(tmp_path), pafs.LocalFileSystem()
    )  # not a LocalFileSystem: the store path
    held = ResultsLease("bucket/run1", fs=store)
    assert not held.local
    held.acquire()
    assert json.loads((tmp_path / "bucket" / "run1" / LEASE_FILE).read_text())["token"] == held.record.token
    with pytest.raises(LeaseHeld, match="another sweep is writing there"):
        ResultsLease("bucket/run1", fs=store).acquire()
    held.release()
    assert not (tmp_path / "bucket" / "run1" / LEASE_FILE).exists()


def test_run_sweep_holds_the_lease_and_releases_it_on_ctrl_c(tmp_path, monkeypatch):
    seen = []

    def interrupted(cfg, selection):
        seen.append(json.loads((tmp_path / LEASE_FILE).read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "_run_sweep", interrupted)
    cfg = sweep.SweepConfig(models=["deit_tiny"], r_values=[0], out=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(cfg, command="python -m orchestrator.sweep --out x")
    assert seen and seen[0]["command"] == "python -m orchestrator.sweep --out x"
    assert not (tmp_path / LEASE_FILE).exists()


@pytest.mark.ray
def test_a_second_sweep_into_the_same_folder_stops_in_seconds_before_ray(data, tmp_path):
    """A real ``python -m orchestrator.sweep`` into a folder whose lease another sweep holds: exit 1, one
    line naming the holder, no Ray started; with --force-unlock it would go on (not run here)."""
    out = tmp_path / "out"
    with ResultsLease(out, command="python -m orchestrator.sweep --models deit_tiny --out out"):
        argv = [
            *("--models", "deit_tiny", "--r", "0", "--data", str(data / "shards"), "--out", str(out)),
            *("--checkpoint-dir", str(data / "ckpt"), "--no-progress", "--address", "local"),
        ]
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator.sweep", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        elapsed = time.monotonic() - start
    print(f"refused after {elapsed:.1f}s: {proc.stderr.strip()}")
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(
        f"error: --out {out}: another sweep is writing there (pid {os.getpid()} on host "
    )
    assert "rerun with --force-unlock" in lines[-1] and "Traceback" not in proc.stderr
    assert not any(line.startswith("ray: ") for line in lines)  # refused before Ray started
    assert not (out / "points").exists()
    assert elapsed < 120, f"took {elapsed:.0f}s"  # imports and the checks before Ray, on a loaded machine
