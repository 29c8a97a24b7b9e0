"""Dense shards served by Ray actors (``xlir serve --ray``): one actor per shard, the fan-out and the exact merge
in the app.

A :class:`ShardServer` actor loads one shard's FAISS file by path with the search parameters the manifest records
(``indexer/dense.py: load_shard_index``, as a local index does) and answers ``search(queries, k, mask)`` with
that shard's hits as global rows (``indexer/dense.py: shard_hits``). :class:`RemoteShard` is its handle in the
app: it offers ``submit`` like a local ``DenseShard``, so ``indexer/dense.py: search_shards`` submits to every
shard, then gathers and merges with the one merge (``merge_shard_hits``). Filter masks, offsets, ``k`` over a
shard's size and empty shards are handled there, the same for local and remote shards.

Actors are created with ``max_restarts=-1`` (Ray replaces one that dies; it reloads its file) and a fraction of a
CPU (``SHARD_CPUS``: 64 shard actors fit on 2 cores; FAISS runs on the threads it has). A call to an actor that
died, is restarting or does not answer within ``timeout`` raises :class:`~xlir.errors.ShardUnavailable`
(HTTP 503 with ``Retry-After``): the query is refused, never merged from the shards that answered.

:class:`RayShardHost` is the ``indexer/live.py: ShardHost`` of a server on Ray: each generation the live store
opens gets its shard actors before it is served (``Index.serve_shards``; the app releases its own FAISS indexes)
and a retired generation's actors are killed ``retire_after`` seconds later (queries still running on it finish).
The live delta stays in the app process. Ray is imported only by the ``--ray`` paths that import this module.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer.dense import ShardHits, load_shard_index
from indexer.layout import VECTOR_SET
from indexer.ray_cluster import LOCAL, connect
from indexer.store import Index
from models.ray_encoder import actor_errors, start_errors, unwrap
from xlir.errors import IndexInvalid, ShardUnavailable

log = logging.getLogger(__name__)

SHARD_CPUS = 0.01  # Ray CPUs reserved per shard actor (a scheduling share, not a thread limit)
CALL_TIMEOUT = 30.0  # seconds a shard may take to answer before the query is refused
START_TIMEOUT = 300.0  # seconds for a generation's actors to load their files
RETIRE_AFTER = 30.0  # seconds a retired generation's actors live on for the queries still running on it


class ShardServer:
    """The actor: one shard's FAISS index, read by path (memory-mapped when its type allows)."""

    def __init__(self, path: str, offset: int, search_params: dict[str, Any] | None) -> None:
        self.shard = load_shard_index(Path(path), offset, search_params)

    def size(self) -> int:
        return self.shard.size

    def search(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> ShardHits:
        return self.shard.submit(queries, k, mask)()


@dataclass
class RemoteShard:
    """A shard actor's handle, searched by ``search_shards`` like a local ``DenseShard``."""

    actor: Any
    offset: int
    size: int
    name: str  # the shard's directory, for error messages
    timeout: float = CALL_TIMEOUT
    errors: tuple[type[BaseException], ...] = field(default_factory=actor_errors, repr=False)

    def _unavailable(self, exc: BaseException) -> ShardUnavailable:
        log.warning("shard %s did not answer: %s", self.name, type(exc).__name__)
        return ShardUnavailable(f"shard {self.name} did not answer ({type(exc).__name__}); Ray is restarting its "
                                "actor, retry shortly")

    def submit(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> Callable[[], ShardHits]:
        import ray

        try:
            ref = self.actor.search.remote(queries, k, mask)
        except self.errors as exc:
            raise self._unavailable(exc) from exc

        def gather() -> ShardHits:
            try:
                hits: ShardHits = ray.get(ref, timeout=self.timeout)
            except self.errors as exc:
                raise self._unavailable(exc) from exc
            except ray.exceptions.RayTaskError as exc:
                raise unwrap(exc) from None
            return hits

        return gather


class RemoteShardSet:
    """One :class:`ShardServer` actor per shard of ``index`` (waits until every actor has loaded its file)."""

    def __init__(self, index: Index, *, num_cpus: float = SHARD_CPUS, timeout: float = CALL_TIMEOUT,
                 start_timeout: float = START_TIMEOUT) -> None:
        import ray

        actor = ray.remote(num_cpus=num_cpus, max_restarts=-1, max_task_retries=0)(ShardServer)
        infos = index.manifest.shards
        self.actors: list[Any] = [
            actor.remote(str(index.dir / info.name / f"{VECTOR_SET}.faiss"), info.offset, info.index.get(VECTOR_SET))
            for info in infos]
        try:
            sizes = ray.get([a.size.remote() for a in self.actors], timeout=start_timeout)
        except start_errors() as exc:
            self.kill()
            raise IndexInvalid(f"cannot serve the shards of {index.dir} on Ray: {type(exc).__name__}: "
                               f"{unwrap(exc)}") from exc
        self.shards = [RemoteShard(a, info.offset, int(n), str(index.dir / info.name), timeout)
                       for a, info, n in zip(self.actors, infos, sizes, strict=True)]

    def kill(self) -> None:
        """Kill the actors (no restart)."""
        import ray

        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception as exc:  # already gone
                log.debug("shard actor already gone: %s", exc)


class RayShardHost:
    """The live store's shard host on Ray (see the module docstring); one per server, shared by its collections."""

    def __init__(self, address: str, *, num_cpus: float = SHARD_CPUS, timeout: float = CALL_TIMEOUT,
                 retire_after: float = RETIRE_AFTER) -> None:
        self.address = address
        self.num_cpus, self.timeout, self.retire_after = num_cpus, timeout, retire_after
        self._sets: weakref.WeakKeyDictionary[Index, RemoteShardSet] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    @classmethod
    def connect(cls, address: str | None, **kwargs: Any) -> RayShardHost:
        """Join the cluster (``indexer.ray_cluster.connect``: None or ``"local"`` = ``$RAY_ADDRESS`` or a new local
        one)."""
        ray = connect(address)
        where = ray.get_runtime_context().gcs_address if address in (None, LOCAL) else address
        return cls(str(where), **kwargs)

    def attach(self, index: Index) -> None:
        """Serve ``index``'s shards from new actors (before the generation is served)."""
        shard_set = RemoteShardSet(index, num_cpus=self.num_cpus, timeout=self.timeout)
        index.serve_shards(shard_set.shards)
        with self._lock:
            self._sets[index] = shard_set
        log.info("serving the %d shard(s) of %s from Ray actors", len(shard_set.actors), index.dir)

    def retire(self, index: Index, grace: float | None = None) -> None:
        """``index`` is no longer served: kill its actors after ``grace`` seconds (default ``retire_after``)."""
        with self._lock:
            shard_set = self._sets.pop(index, None)
        if shard_set is None:
            return
        delay = self.retire_after if grace is None else grace
        if delay <= 0:
            shard_set.kill()
            return
        timer = threading.Timer(delay, shard_set.kill)
        timer.daemon = True
        timer.start()

    def actors(self, index: Index) -> list[Any]:
        """The actors serving ``index``'s shards (empty when it is not served here)."""
        with self._lock:
            shard_set = self._sets.get(index)
        return list(shard_set.actors) if shard_set is not None else []

    def describe(self, index: Index) -> dict[str, Any]:
        return {"address": self.address, "shard_actors": len(self.actors(index))}

    def close(self) -> None:
        """Kill every actor now (the server stops)."""
        with self._lock:
            sets = list(self._sets.values())
            self._sets.clear()
        for shard_set in sets:
            shard_set.kill()
