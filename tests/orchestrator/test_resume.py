"""A pass outlives its driver: ``python -m orchestrator.sweep`` killed (SIGKILL of its process group)
past half of a pass, or paused with Ctrl-C (SIGINT), and run again gives the undisturbed answer; an
actor that dies mid-pass is named, with Ray's reason and the item retried, and counted in ``retries``.

The drivers run as subprocesses in their own session, joining this module's local Ray (2 CPUs), so a
killed driver is one process group of its own and the cluster outlives it, as on a real cluster. One
actor evaluates the 5 items (one shard each) of 22 images at 17 r values, one after another."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List

import pandas as pd
import pytest
import ray

from orchestrator import sweep

pytestmark = [pytest.mark.slow, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
N_ITEMS, N_IMAGES, N_POINTS = 5, 22, 17
TIMING = ["eval_samples_per_sec", "started", "finished"]  # when and how fast: never the same twice


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray for the module; drivers join it by its address."""
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def sweep_args(data: Path, out: Path, address: str) -> List[str]:
    return [
        "--models",
        "deit_tiny",
        "--r",
        "0-16",
        "--data",
        str(data / "shards"),
        "--out",
        str(out),
        "--checkpoint-dir",
        str(data / "ckpt"),
        "--batch-size",
        "4",
        "--num-actors",
        "1",
        "--cpus-per-actor",
        "1",
        "--no-bench",
        "--no-progress",
        "--address",
        address,
    ]


@pytest.fixture(scope="module")
def undisturbed(ray_address, data, tmp_path_factory) -> Path:
    """The same sweep run once, nothing in its way (in this process)."""
    out = tmp_path_factory.mktemp("undisturbed")
    assert sweep.main(sweep_args(data, out, ray_address)) == 0
    return out


@contextmanager
def driver(argv: List[str], logs: Path):
    """``argv`` (a command line) started in a session of its own, stdout and stderr to ``logs``.out/.err;
    on the way out its whole process group is killed if anything of it is left."""
    with open(f"{logs}.out", "w") as out, open(f"{logs}.err", "w") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=REPO, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def sweep_command(args: List[str]) -> List[str]:
    return [sys.executable, "-m", "orchestrator.sweep", *args]


def wait_for_spool(proc: subprocess.Popen, out: Path, n: int, timeout: float = 300.0) -> List[Path]:
    """The spool's item files once there are at least ``n`` (the driver must still be running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(out.glob("spool/*/*.npz"))
        if len(files) >= n:
            return files
        assert proc.poll() is None, f"the sweep ended (exit {proc.returncode}) before {n} items were spooled"
        time.sleep(0.01)
    raise AssertionError(f"fewer than {n} items spooled in {out} after {timeout:.0f}s")


def run_to_end(argv: List[str], logs: Path) -> tuple:
    """(exit status, stdout, stderr) of ``argv`` run to its end."""
    with driver(argv, logs) as proc:
        status = proc.wait(timeout=600)
    return status, Path(f"{logs}.out").read_text(), Path(f"{logs}.err").read_text()


def assert_same_answer(out: Path, undisturbed: Path, resumed: bool, retries: int = 0) -> None:
    """Every points row (but its timing and retries) and every prediction, image by image, as the
    undisturbed run's; ``retries`` in every row."""
    rows = {
        name: pd.read_parquet(path / "points").sort_values("r").reset_index(drop=True)
        for name, path in (("mine", out), ("theirs", undisturbed))
    }
    assert len(rows["mine"]) == N_POINTS and (rows["mine"]["n_images"] == N_IMAGES).all()
    assert (rows["mine"]["retries"] == retries).all() and (rows["theirs"]["retries"] == 0).all()
    same = TIMING + ["retries"]
    pd.testing.assert_frame_equal(rows["mine"].drop(columns=same), rows["theirs"].drop(columns=same))
    assert rows["theirs"]["eval_samples_per_sec"].gt(0).all()
    assert rows["mine"]["eval_samples_per_sec"].isna().all() == resumed  # a resumed pass has no wall time
    preds = {
        name: pd.read_parquet(path / "predictions").sort_values(["r", "key"]).reset_index(drop=True)
        for name, path in (("mine", out), ("theirs", undisturbed))
    }
    assert len(preds["mine"]) == N_POINTS * N_IMAGES
    pd.testing.assert_frame_equal(preds["mine"], preds["theirs"])
    assert not (out / "spool").exists()  # gone once the points are written


def test_a_driver_killed_past_half_a_pass_resumes_and_gives_the_undisturbed_answer(
    ray_address, data, undisturbed, tmp_path
):
    out = tmp_path / "out"
    args = sweep_args(data, out, ray_address)
    with driver(sweep_command(args), tmp_path / "killed") as proc:
        wait_for_spool(proc, out, 3)  # 3 of 5 items: past half of the pass
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, as an OOM kill or a lost node would
        assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "points").exists()
    assert json.loads((out / "_lease.json").read_text())["pid"] == proc.pid  # its lease outlived it
    kept = sorted(out.glob("spool/*/*.npz"))
    assert len(kept) >= 3
    kept[0].write_bytes(kept[0].read_bytes()[:200])  # one item's file damaged: that item is redone

    status, stdout, stderr = run_to_end(sweep_command(args), tmp_path / "rerun")
    print(stderr, stdout)
    assert status == 0
    took_over = [line for line in stderr.splitlines() if line.startswith("lease: took over ")]
    assert len(took_over) == 1 and took_over[0].startswith(
        f"lease: took over {out}/_lease.json from pid {proc.pid} "
    )
    assert took_over[0].endswith(f": its process {proc.pid} is no longer running on this host")
    print(took_over[0])
    assert not (out / "_lease.json").exists()
    assert f"spool: {kept[0].name} in {kept[0].parent} is unreadable (" in stderr
    assert f"resume: pass 1 (deit_tiny): {len(kept) - 1} of {N_ITEMS} shard(s) (" in stderr
    decoded = re.search(
        rf"decoded (\d+) images once for {N_POINTS} point\(s\) \((\d+) more came from the spool of an earlier run\)",
        stdout,
    )
    assert decoded, stdout
    fresh, resumed = map(int, decoded.groups())
    assert (
        fresh + resumed == N_IMAGES and 5 <= fresh < N_IMAGES
    )  # only the missing items, the damaged one too
    assert "retries: none" in stdout
    assert_same_answer(out, undisturbed, resumed=True)


def test_ctrl_c_pauses_and_the_printed_command_resumes(ray_address, data, undisturbed, tmp_path):
    out = tmp_path / "out"
    args = sweep_args(data, out, ray_address)
    with driver(sweep_command(args), tmp_path / "paused") as proc:
        wait_for_spool(proc, out, 2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal signals the foreground process group
        assert proc.wait(timeout=120) == 130
    assert not (out / "_lease.json").exists()  # Ctrl-C let the lease go
    stderr = (tmp_path / "paused.err").read_text()
    print(stderr)
    kept = sorted(out.glob("spool/*/*.npz"))
    paused = re.search(
        r"paused \(Ctrl-C\): the actors are stopped; pass 1 \(deit_tiny\): (\d+) of 5 shard\(s\) evaluated, "
        rf"kept in {re.escape(str(out))}/spool/deit_tiny-[0-9a-f]{{16}}\n",
        stderr,
    )
    assert paused and int(paused.group(1)) == len(kept) >= 2, stderr
    command = shlex.split(stderr.split("resume with: ", 1)[1].splitlines()[0])
    assert command == ["python", "-m", "orchestrator.sweep", *args]
    assert not (out / "points").exists()
    deadline = time.monotonic() + 60  # the actor's CPU is free again: it was stopped
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2

    status, stdout, stderr = run_to_end([sys.executable, *command[1:]], tmp_path / "resumed")
    assert status == 0, stderr
    assert f"resume: pass 1 (deit_tiny): {len(kept)} of {N_ITEMS} shard(s)" in stderr
    assert_same_answer(out, undisturbed, resumed=True)


def test_an_actor_dying_mid_pass_is_named_retried_and_counted(
    ray_address, data, undisturbed, tmp_path, capsys, actor_dies_on_item
):
    """The only actor dies as it starts its second item (its third was queued behind it): one line per
    item put back, naming the actor (node, device, pid), Ray's reason and the shard; the end counts them,
    and every point's ``retries`` says 2 items of its pass were retried.

    Ray's reason is one of two, whichever reaches the driver first: the GCS's word that the worker process
    died, or the connection to it reset before that word came (a loaded machine)."""
    actor_dies_on_item(2)
    assert sweep.main(sweep_args(data, tmp_path, ray_address)) == 0
    captured = capsys.readouterr()
    print(captured.err, captured.out)
    retries = [line for line in captured.err.splitlines() if line.startswith("retry: ")]
    line = re.compile(
        r"retry: pass 1 \(deit_tiny\), shard\(s\) imagenet-val-00000(\d)\.tar: actor 0 \(node [\d.]+ [0-9a-f]{8}, "
        r"cpu \(1 threads\), pid \d+\) died \((?:The actor is dead because its worker process has died\."
        r"|The actor \w+ is unavailable: The actor is temporarily unavailable: ).*\); "
        r"back in the queue \(attempt 2 of 4\)$"
    )
    matches = [line.match(text) for text in retries]
    assert len(retries) == 2 and all(matches), retries
    assert sorted(m.group(1) for m in matches) == ["1", "2"]  # the second and third items
    assert "retries: 2 work item(s) went back to the queue, 1 actor(s) replaced" in captured.out
    assert_same_answer(tmp_path, undisturbed, resumed=False, retries=2)
