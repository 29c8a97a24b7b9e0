"""The query encoder as replicated Ray actors (``xlir serve --ray``): :class:`RemoteEncoder` is an ``Encoder``
whose calls go to one of N replica actors, each holding its own copy of the encoder.

Each replica loads the encoder from a picklable factory (``functools.partial(load_encoder, name, ...)``, or
:func:`given` for an encoder object that pickles, e.g. the tests' fake). Replicas are created with
``max_restarts=-1``: Ray replaces one that dies, loading the encoder again from the factory. Calls go round robin
over the replicas; a call to a replica that died (or does not answer within ``timeout``) is tried on the next one,
and only when every replica failed it raises :class:`~xlir.errors.ReplicaUnavailable` (HTTP 503 with
``Retry-After``): a query is encoded by a live replica or refused, never answered from something else.

The app's query batcher stays in front (``app/batching.py``): concurrent queries become one remote call. Ray is
imported only inside these functions; the caller has connected (``indexer/ray_cluster.py: connect``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np

from models.base import Encoder, ProgressFn
from xlir.errors import ModelInvalid, ReplicaUnavailable

log = logging.getLogger(__name__)

REPLICA_CPUS = 0.5  # Ray CPUs reserved per replica: two replicas fit a 2-core machine beside the app
CALL_TIMEOUT = 60.0  # seconds a query encoding may take before it is tried on another replica
START_TIMEOUT = 300.0  # seconds for the replicas to load the encoder


def actor_errors() -> tuple[type[BaseException], ...]:
    """What a call to an actor raises when the actor (not the call) failed: it died or is being restarted
    (``RayActorError``: ``ActorDiedError``, ``ActorUnavailableError``), it timed out, or its answer was lost."""
    import ray.exceptions as rex

    return rex.RayActorError, rex.GetTimeoutError, rex.ObjectLostError


def start_errors() -> tuple[type[BaseException], ...]:
    """What waiting for new actors to start raises: :func:`actor_errors`, or the constructor's own error."""
    import ray.exceptions as rex

    return (*actor_errors(), rex.RayTaskError)


def unwrap(exc: BaseException) -> BaseException:
    """The exception a remote method raised (Ray wraps it in a ``RayTaskError``), as it was raised."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _same(encoder: Encoder) -> Encoder:
    return encoder


def given(encoder: Encoder) -> Callable[[], Encoder]:
    """A factory for an encoder object that pickles (each replica gets its own copy)."""
    return partial(_same, encoder)


class EncoderReplica:
    """The actor: one encoder, loaded from the factory when the actor starts (and again when Ray restarts it)."""

    def __init__(self, factory: Callable[[], Encoder]) -> None:
        self.encoder = factory()

    def info(self) -> dict[str, Any]:
        e = self.encoder
        return {"name": e.name, "dim": e.dim, "checksum": e.checksum, "token_lengths": hasattr(e, "token_lengths")}

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.encoder.encode_queries(texts)

    def encode_passages(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        return self.encoder.encode_passages(texts, batch_size=batch_size)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        return [int(n) for n in self.encoder.token_lengths(texts)]  # type: ignore[attr-defined]


class RemoteEncoder:
    """An ``Encoder`` over ``replicas`` Ray actors (see the module docstring). ``token_lengths`` is offered when
    the replicas' encoder has it (None otherwise, as ``getattr(encoder, "token_lengths", None)`` expects)."""

    token_lengths: Callable[[Sequence[str]], list[int]] | None

    def __init__(self, factory: Callable[[], Encoder], replicas: int = 2, *, num_cpus: float = REPLICA_CPUS,
                 timeout: float = CALL_TIMEOUT, start_timeout: float = START_TIMEOUT) -> None:
        import ray

        if replicas < 1:
            raise ValueError("replicas must be >= 1")
        self.timeout = timeout
        actor = ray.remote(num_cpus=num_cpus, max_restarts=-1, max_task_retries=0)(EncoderReplica)
        self.replicas: list[Any] = [actor.remote(factory) for _ in range(replicas)]
        self._next = itertools.count()
        try:
            infos = ray.get([r.info.remote() for r in self.replicas], timeout=start_timeout)
        except start_errors() as exc:
            self.close()
            raise ModelInvalid(f"the encoder replicas on Ray did not start: {type(exc).__name__}: {exc}") from exc
        first = infos[0]
        if any((i["name"], i["dim"], i["checksum"]) != (first["name"], first["dim"], first["checksum"])
               for i in infos):
            self.close()
            raise ModelInvalid("the encoder replicas on Ray loaded different encoders: "
                               + ", ".join(f"{i['name']} ({i['checksum'][:12]})" for i in infos))
        self._name, self._dim, self._checksum = str(first["name"]), int(first["dim"]), str(first["checksum"])
        self.token_lengths = self._token_lengths if first["token_lengths"] else None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def checksum(self) -> str:
        return self._checksum

    @property
    def replica_count(self) -> int:
        return len(self.replicas)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``method(*args)`` on the next replica; on an actor failure (or no answer within ``timeout`` seconds), on
        the one after it, and so on once round; every replica failed: :class:`ReplicaUnavailable` naming them."""
        import ray

        n = len(self.replicas)
        start = next(self._next) % n
        failures = []
        for j in ((start + i) % n for i in range(n)):
            try:
                return ray.get(getattr(self.replicas[j], method).remote(*args), timeout=timeout)
            except actor_errors() as exc:
                log.warning("encoder replica %d of %d failed (%s); trying the next one", j, n, type(exc).__name__)
                failures.append(f"replica {j}: {type(exc).__name__}")
            except ray.exceptions.RayTaskError as exc:  # the encoder itself raised: its own error, as a local one
                raise unwrap(exc) from None
        raise ReplicaUnavailable(f"no encoder replica answered ({'; '.join(failures)}); Ray is restarting them, "
                                 "retry shortly")

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.asarray(self.call("encode_queries", list(texts), timeout=self.timeout), dtype=np.float32)

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        # no time limit: a mining job's thousands of sentences take long; a replica that dies still raises
        out = np.asarray(self.call("encode_passages", list(texts), batch_size), dtype=np.float32)
        if progress is not None:
            progress(len(texts))
        return out

    def _token_lengths(self, texts: Sequence[str]) -> list[int]:
        return list(self.call("token_lengths", list(texts), timeout=self.timeout))

    def close(self) -> None:
        """Kill the replicas (no restart)."""
        import ray

        for r in self.replicas:
            try:
                ray.kill(r, no_restart=True)
            except Exception as exc:  # already gone: nothing to kill
                log.debug("replica already gone: %s", exc)
