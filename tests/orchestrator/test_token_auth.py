"""Joining a Ray cluster that uses Ray's token authentication (``RAY_AUTH_MODE=token``): with the token where
Ray looks for it the sweep runs; without it, or with a wrong one, every way of joining (``--address ADDR``,
``--address auto`` with ``RAY_ADDRESS``) stops within seconds with one line that says how to fix it.

The head runs as a cluster's head does (``ray start --head --block``, its own session, ended by its
process-group id); each driver is a real ``python -m orchestrator.sweep`` with an environment of its own."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from ray_head_testing import REPO, free_port, ray_head, sweep_subprocess

pytestmark = [pytest.mark.slow, pytest.mark.ray]

AUTH_VARIABLES = ["RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"]
FIX = (
    "run the sweep with RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token, or in RAY_AUTH_TOKEN "
    "(or a file named by RAY_AUTH_TOKEN_PATH); `ray get-auth-token` on the head node prints it"
)


@pytest.fixture(scope="module")
def token_cluster():
    """A head with one CPU, token authentication on, and its token."""
    token = secrets.token_hex(16)
    with ray_head({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, "--num-cpus=1") as head:
        yield head, token


def sweep_argv(data: Path, out: Path, address: str) -> list:
    return [
        *("--models", "deit_tiny", "--r", "0", "--data", str(data / "shards"), "--out", str(out)),
        *("--checkpoint-dir", str(data / "ckpt"), "--device", "cpu", "--num-actors", "1"),
        *("--cpus-per-actor", "1", "--batch-size", "5", "--limit", "5", "--no-bench", "--no-progress"),
        *("--address", address),
    ]


def assert_one_line_refusal(status: int, stderr: str, seconds: float, source: str) -> str:
    print(f"refused after {seconds:.1f}s:\n{stderr}")
    assert status == 1, stderr
    assert "Traceback" not in stderr
    native = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+ [DIWEF] \d+ \d+\]")  # Ray's C++ log lines
    assert not [line for line in stderr.splitlines() if native.match(line)], stderr
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and error[0] == stderr.strip().splitlines()[-1], stderr
    assert error[0].startswith(f"error: {source}: Ray's token authentication refused this driver (Ray: ")
    assert error[0].endswith(FIX)
    assert seconds < 120, f"took {seconds:.0f}s"  # imports and checks before Ray, on a loaded machine
    return error[0]


@pytest.mark.parametrize(
    "how",
    ["address-no-token", "address-wrong-token", "ray-address-no-token", "token-mode-but-none"],
)
def test_a_refused_token_is_one_line_within_seconds_saying_how_to_fix_it(token_cluster, data, tmp_path, how):
    head, token = token_cluster
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    address, source = head.address, f"--address {head.address}"
    if how == "address-wrong-token":
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
    elif how == "ray-address-no-token":
        env.update(RAY_ADDRESS=head.address)
        address, source = "auto", f"RAY_ADDRESS={head.address} (--address auto)"
    elif how == "token-mode-but-none":
        env.update(RAY_AUTH_MODE="token")
    status, stderr, _, seconds = sweep_subprocess(
        sweep_argv(data, tmp_path / "out", address), env, drop=AUTH_VARIABLES
    )
    line = assert_one_line_refusal(status, stderr, seconds, source)
    mode = "token" if "RAY_AUTH_MODE" in env else "unset"
    assert f"RAY_AUTH_MODE is {mode} here" in line
    assert not (tmp_path / "out" / "points").exists() and not (tmp_path / "out" / "_lease.json").exists()


def test_with_the_token_where_ray_looks_the_sweep_joins_and_runs(token_cluster, data, tmp_path):
    """The token in ``~/.ray/auth_token`` and ``RAY_AUTH_MODE=token``, as a driver on the head node has it."""
    head, token = token_cluster
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(token)
    status, stderr, stdout, seconds = sweep_subprocess(
        sweep_argv(data, tmp_path / "out", head.address),
        {"HOME": str(home), "RAY_AUTH_MODE": "token"},
        drop=AUTH_VARIABLES,
    )
    print(stderr, stdout)
    assert status == 0, stderr
    assert f"joined the cluster at --address {head.address}" in stderr
    points = pd.read_parquet(tmp_path / "out" / "points")
    assert len(points) == 1 and (points["n_images"] == 5).all()


def test_address_auto_with_ray_address_pointing_at_nothing_is_one_line_in_seconds(data, tmp_path):
    nothing = f"127.0.0.1:{free_port()}"
    status, stderr, _, seconds = sweep_subprocess(
        sweep_argv(data, tmp_path / "out", "auto"), {"RAY_ADDRESS": nothing}, drop=AUTH_VARIABLES
    )
    print(f"after {seconds:.1f}s: {stderr}")
    assert status == 1 and "Traceback" not in stderr
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: RAY_ADDRESS {nothing}: no Ray cluster answers there (")
    )
    assert seconds < 120


def test_the_refusal_itself_takes_seconds_not_rays_20s_of_retries(token_cluster, tmp_path):
    """``connect`` alone, timed inside a driver without the token (its imports apart)."""
    head, _ = token_cluster
    code = (
        "import time, sys; from orchestrator.cluster import connect; from orchestrator.errors import SweepError\n"
        "start = time.monotonic()\n"
        "try:\n    connect(sys.argv[1])\nexcept SweepError as err:\n"
        "    print(f'{time.monotonic() - start:.2f} {err}')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in AUTH_VARIABLES}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", code, head.address],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    seconds, _, error = proc.stdout.strip().partition(" ")
    print(f"connect refused after {seconds}s: {error}")
    assert "Ray's token authentication refused this driver" in error, proc.stdout + proc.stderr
    assert (
        float(seconds) < 10
    )  # ray.init alone retries a refused token for 20 s, then says only "failed to connect"
