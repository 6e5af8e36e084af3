"""Which Ray cluster a sweep runs on: join or start one, and say so on the first line.

``local`` always starts a new cluster here; ``auto`` joins ``RAY_ADDRESS`` or a cluster running on this
machine, else starts a new one; anything else is an address to join, checked with a quick TCP connect
first so that a wrong address fails in seconds instead of minutes.

Clusters with Ray's token authentication (``ray start`` turns it on where a token exists): a driver
joins with ``RAY_AUTH_MODE=token`` and the cluster's token in ``~/.ray/auth_token`` (or ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH``). Before ``ray.init`` (which retries a refused token for 20 s) the GCS is asked
once whether it takes this driver's token, so a refusal is one line within seconds that says how to fix
it. Every way of joining ends in one line (``SweepError``), never a traceback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from typing import Optional

import ray
from ray.exceptions import AuthenticationError, RpcError

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
        _check_token(address, f"--address {address}", auto=False)
        _join(address, f"--address {address}")
        how = f"joined the cluster at --address {address}"
    print(f"ray: {describe_cluster()}; {how}", file=sys.stderr)
    return True


def _join_or_start() -> str:
    """``--address auto``: ``RAY_ADDRESS``, else a running cluster on this machine, else a new local one."""
    if os.environ.get("RAY_ADDRESS"):
        source = f"RAY_ADDRESS={os.environ['RAY_ADDRESS']} (--address auto)"
        _check_reachable(os.environ["RAY_ADDRESS"], "RAY_ADDRESS")
        _check_token(os.environ["RAY_ADDRESS"], source, auto=False)  # ray.init: RAY_ADDRESS never turns it on
        _join(None, source)
        return f"joined the cluster at {source}"
    running = _running_cluster()
    if running is None:  # no running cluster: a new one, never someone else's
        ray.init(address="local", include_dashboard=False)
        return "started a new local cluster here (--address auto found none running)"
    source = f"--address auto (the cluster running on this machine, at {running})"
    _check_token(running, source, auto=True)
    _join("auto", source)
    return "joined the Ray cluster already running on this machine (--address auto; --address local starts a new one)"


def _running_cluster() -> Optional[str]:
    """The address of the Ray cluster last started on this machine (``ray start``) whose GCS still runs,
    as ``ray.init(address="auto")`` finds it; None when there is none."""
    from ray._private.services import canonicalize_bootstrap_address_or_die

    try:
        address = canonicalize_bootstrap_address_or_die("auto")
    except ConnectionError:
        return None
    try:  # the file naming the last cluster outlives it
        _check_reachable(address, "--address auto")
    except SweepError:
        return None
    return address


def _join(address: Optional[str], source: str) -> None:
    """``ray.init(address=address)``; a refused token or an unreachable cluster is a one-line ``SweepError``
    naming ``source`` (the flag or variable the address came from)."""
    try:
        ray.init(address=address)
    except (AuthenticationError, ConnectionError, RuntimeError) as err:
        if _refused_token(err):
            raise SweepError(_token_refused(source, err)) from None
        raise SweepError(
            f"{source}: cannot join the Ray cluster there ({_first_line(err)}); {_ADDRESS_HINT}"
        ) from None


def _check_token(address: str, source: str, auto: bool) -> None:
    """Ask the cluster's GCS once whether it takes this driver's token (``ray.init`` would retry a refusal
    for 20 s, then say only that it failed to connect); ``SweepError`` saying how to fix it when it does not.
    ``auto``: as ``ray.init`` does for a cluster it finds running on this machine (never for an address
    given, as an argument or in ``RAY_ADDRESS``), a token in ``~/.ray/auth_token`` turns token mode on when
    ``RAY_AUTH_MODE`` is unset (for this process and its children: turned on for an address given, it
    left a cluster without token authentication unable to start this driver's actors). Only the refusal is decided here: anything else is
    left to ``ray.init``."""
    if address.startswith("ray://"):  # Ray Client: its own server and errors
        return
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
        maybe_enable_token_auth_if_token_available,
    )
    from ray._raylet import GcsClient

    if auto:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)  # token mode without a token
        with _native_stderr_silenced():
            GcsClient(address=address.split("://", 1)[-1])
    except AuthenticationError as err:
        raise SweepError(_token_refused(source, err)) from None
    except RpcError as err:  # something answers there, but not a Ray GCS
        raise SweepError(
            f"{source}: no Ray cluster answers there ({_first_line(err)}); {_ADDRESS_HINT}"
        ) from None


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 pointed at /dev/null meanwhile: Ray's C++ client logs a refused handshake there
    (``[...] gcs_client.cc:210: Failed to get cluster ID from GCS server: Unauthenticated: ...``) before its
    Python exception says the same, which the sweep's one-line error then words."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _refused_token(err: BaseException) -> bool:
    """Whether Ray's error (or one it was raised from) says the cluster refused this driver's token."""
    while err is not None:
        if isinstance(err, AuthenticationError) or any(word in str(err) for word in _AUTH_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


_AUTH_WORDS = ("InvalidAuthToken", "Unauthenticated", "authentication token")


def _token_refused(source: str, err: BaseException) -> str:
    """The one line for a refused (or missing) token: Ray's reason, this driver's mode, and the fix."""
    mode = os.environ.get("RAY_AUTH_MODE", "")
    reason = getattr(err, "message", None) or _first_line(err)
    return (
        f"{source}: Ray's token authentication refused this driver (Ray: {reason}; "
        f"RAY_AUTH_MODE is {mode or 'unset'} here): run the sweep with RAY_AUTH_MODE=token and the cluster's token "
        "in ~/.ray/auth_token, or in RAY_AUTH_TOKEN (or a file named by RAY_AUTH_TOKEN_PATH); "
        "`ray get-auth-token` on the head node prints it"
    )


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


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
