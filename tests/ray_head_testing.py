"""A Ray head started as a cluster's head runs (``ray start --head --block``), in a process session of its
own that the test ends by its process-group id: never ``ray stop``, which ends every Ray on the machine.

Every port it opens is one the OS found free, and its session files live in a short temporary folder of
its own (``--temp-dir``), so it meets no other Ray on the machine and ``--address auto`` elsewhere never
finds it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

RAY = str(Path(sys.executable).with_name("ray"))
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayHead:
    """A running head: its address (``127.0.0.1:PORT``), process, folder and log."""

    def __init__(self, address: str, proc: subprocess.Popen, folder: Path):
        self.address, self.proc, self.folder = address, proc, folder

    @property
    def log(self) -> str:
        return (self.folder / "head.log").read_text(errors="replace")

    def node_pids(self, node_id: str) -> List[int]:
        """The processes of one node the autoscaler started (its raylet, agents and workers: each carries
        the node's id, which Ray's fake provider hands it in ``RAY_OVERRIDE_NODE_ID_FOR_TESTING``)."""
        marker = f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}".encode()
        pids = []
        for pid in self.session_pids():
            try:
                if marker in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    pids.append(pid)
            except OSError:  # ended meanwhile
                continue
        return pids

    def session_pids(self) -> List[int]:
        """Every process of the head's session (its own, the GCS, raylets of every node it started, workers)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if os.getsid(int(entry.name)) == self.proc.pid:
                        pids.append(int(entry.name))
                except (ProcessLookupError, PermissionError):
                    continue
        return pids


@contextmanager
def ray_head(
    env: Dict[str, str], *args: str, port: Optional[int] = None, timeout: float = 180.0
) -> Iterator[RayHead]:
    """``ray start --head --block ARGS`` with ``env`` (over this process's, HOME set to a folder of its own
    unless ``env`` names one) and its GCS at ``port`` (default: a free one); yields once it has started,
    and ends the whole session on the way out."""
    folder = Path(tempfile.mkdtemp(prefix="rayhead", dir="/tmp"))  # short: Ray's socket paths have a limit
    port = port or free_port()
    command = [
        RAY,
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--dashboard-port={free_port()}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={folder / 'ray'}",
        *args,
    ]
    full_env = {**os.environ, "HOME": str(folder / "home"), "PYTHONPATH": str(REPO), **env}
    (folder / "home").mkdir()
    with open(folder / "head.log", "w") as log:
        proc = subprocess.Popen(
            command, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    head = RayHead(f"127.0.0.1:{port}", proc, folder)
    try:
        _wait_until_started(head, timeout)
        yield head
    finally:
        _end_session(head)
        shutil.rmtree(folder, ignore_errors=True)


def _wait_until_started(head: RayHead, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while "Ray runtime started" not in head.log:
        if head.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"ray start --head did not start (exit {head.proc.poll()}):\n{head.log[-3000:]}"
            )
        time.sleep(0.2)


def _end_session(head: RayHead, grace: float = 10.0) -> None:
    """SIGTERM to the head's process group, SIGKILL after ``grace`` s to what is left of its session."""
    try:
        os.killpg(head.proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        head.proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    for pid in head.session_pids():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    head.proc.wait(timeout=30)


def sweep_subprocess(
    argv: List[str], env: Dict[str, str], timeout: float = 600.0, drop: Optional[List[str]] = None
):
    """``python -m orchestrator.sweep ARGV`` with ``env`` over this process's (less the names in ``drop``):
    (exit status, stderr, stdout, seconds)."""
    full_env = {k: v for k, v in os.environ.items() if k not in (drop or [])}
    full_env.update({"PYTHONPATH": str(REPO), **env})
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.sweep", *argv],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stderr, proc.stdout, time.monotonic() - start
