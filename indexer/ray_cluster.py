"""Ray, the one distributed engine xlir uses (``pip install 'xlir[ray]'``): connecting to a cluster.

Ray is an optional extra: it is imported only here, and only when a command asks for ``--ray``; every other code
path works without it. :func:`connect` joins the cluster at ``address`` (``ray start --head`` prints it), or the
one ``RAY_ADDRESS`` names, or starts a local one on this machine when neither is given. Workers run the same
installed xlir as the driver; on several machines the index and corpus folders must be on a shared filesystem
(every task reads and writes them by path).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable
from typing import Any

from xlir.errors import XlirError

INSTALL_HINT = "pip install 'xlir[ray]'"
LOCAL = "local"  # as an address (`--ray` alone, XLIR_RAY=local): $RAY_ADDRESS, else a new local cluster

# In a Ray worker process: what its tasks of one job share (an encoder, an IVF index), one per kind, built once
_WORKER: dict[str, Any] = {}


def require_ray() -> Any:
    """The ``ray`` module, or an :class:`XlirError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise XlirError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from exc
    return ray


def connect(address: str | None = None, *, num_cpus: int | None = None) -> Any:
    """Join the Ray cluster at ``address`` (``host:port``, ``auto``; None or ``"local"``: ``$RAY_ADDRESS`` or a new
    local cluster with ``num_cpus``) once per process; returns the ``ray`` module. A cluster that cannot be reached is
    an :class:`XlirError` naming the address."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = (None if address == LOCAL else address) or os.environ.get("RAY_ADDRESS") or None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    else:
        _probe(address)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = address or "a new local cluster"
        raise XlirError(f"cannot connect to the Ray cluster at {where}: {exc}") from exc
    return ray


def _probe(address: str, timeout: float = 5.0) -> None:
    """A ``host:port`` where nothing listens is an :class:`XlirError` at once (``ray.init`` waits minutes for it)."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or exc
        raise XlirError(f"cannot connect to the Ray cluster at {address}: nothing answers there ({why}); "
                        "start one with `ray start --head` or give the address it printed") from exc


def worker_cached(kind: str, key: str, build: Callable[[], Any]) -> Any:
    """In a Ray task: the worker's ``kind`` object for job ``key`` (e.g. the encoder of one build), built by
    ``build`` the first time a task of that job runs in this worker process, then kept for the job's next tasks;
    a new key frees the previous job's object before building its own."""
    held = _WORKER.get(kind)
    if held is None or held[0] != key:
        _WORKER[kind] = None
        _WORKER[kind] = (key, build())
    return _WORKER[kind][1]


def factory_key(ray: Any, factory: Callable[[], Any]) -> str:
    """The key of :func:`worker_cached` for what ``factory`` builds: the hash of its pickled form (the same factory
    gives the same key in every task of a job)."""
    return hashlib.sha256(ray.cloudpickle.dumps(factory)).hexdigest()
