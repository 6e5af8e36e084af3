"""Which Ray cluster a sweep runs on: join or start one, and say so on the first line.

``local`` always starts a new cluster here; ``auto`` joins ``RAY_ADDRESS`` or a cluster running on this
machine, else starts a new one; anything else is an address to join, checked with a quick TCP connect
first so that a wrong address fails in seconds instead of minutes.
"""

from __future__ import annotations

import os
import socket
import sys

import ray

from .errors import SweepError
from .placement import alive_nodes


def connect(address: str) -> bool:
    """Join or start Ray, and say on stderr which cluster this is; True when this call initialised Ray
    (so the sweep shuts it down).

    ``local`` always starts a new cluster here (``ray.init(address="local")``: a bare ``ray.init()`` would
    join ``RAY_ADDRESS`` or the latest cluster started on this machine, perhaps someone else's). ``auto``
    joins ``RAY_ADDRESS`` or a running cluster, and else starts a new one here. Anything else is the
    address of a cluster to join."""
    if ray.is_initialized():
        print(f"ray: {describe_cluster()}; already joined by this process", file=sys.stderr)
        return False
    if address == "local":
        ray.init(address="local", include_dashboard=False)
        how = "started a new local cluster here (--address local)"
    elif address == "auto":
        how = _join_or_start()
    else:
        _check_reachable(address, "--address")
        try:
            ray.init(address=address)
        except ConnectionError as err:
            raise SweepError(
                f"--address {address}: cannot join the Ray cluster there ({err}); {_ADDRESS_HINT}"
            ) from err
        how = f"joined the cluster at --address {address}"
    print(f"ray: {describe_cluster()}; {how}", file=sys.stderr)
    return True


def _join_or_start() -> str:
    """``--address auto``: ``RAY_ADDRESS``, else a running cluster on this machine, else a new local one."""
    if os.environ.get("RAY_ADDRESS"):
        _check_reachable(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        ray.init()
        return f"joined the cluster at RAY_ADDRESS={os.environ['RAY_ADDRESS']} (--address auto)"
    try:
        ray.init(address="auto")
        return "joined the Ray cluster already running on this machine (--address auto; --address local starts a new one)"
    except ConnectionError:  # no running cluster: a new one, never someone else's
        ray.init(address="local", include_dashboard=False)
        return "started a new local cluster here (--address auto found none running)"


def describe_cluster() -> str:
    """``cluster at HOST:PORT: 3 node(s), 10 CPU, 2 GPU``, from the alive nodes."""
    nodes = alive_nodes()
    cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    address = ray.get_runtime_context().gcs_address
    return f"cluster at {address}: {len(nodes)} node(s), {cpus:g} CPU, {gpus:g} GPU"


_ADDRESS_HINT = (
    "check the address (`ray status` on the head node prints it), or use --address local to start Ray here"
)


def _check_reachable(address: str, source: str, timeout: float = 5.0) -> None:
    """A quick TCP connect to ``host:port`` (``ray://`` too) before ``ray.init``, which would otherwise
    wait minutes on an address where nothing answers; raises ``SweepError`` naming the address."""
    if address in ("auto", "local") or "://" in address and not address.startswith("ray://"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise SweepError(
            f"{source} {address}: expected HOST:PORT (e.g. 10.0.0.1:6379 or ray://10.0.0.1:10001); {_ADDRESS_HINT}"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SweepError(
            f"{source} {address}: no Ray cluster answers there ({err}); {_ADDRESS_HINT}"
        ) from err
