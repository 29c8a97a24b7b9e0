"""Micro-batching of query encodings across concurrent requests.

Requests put their text on a bounded queue and await a future. One worker takes the first waiting
text, gathers more until ``max_batch`` texts or ``max_wait_ms`` have passed, encodes them in a worker thread
(the event loop never blocks on the model) and resolves every future. With a token budget (``max_tokens`` and
the encoder's ``token_lengths``) a gathered batch is cut, longest first, into encoder calls whose padded size
(rows x the longest text's tokens) stays within the budget (:func:`models.encoders.token_budget_batches`); the
calls run shortest first and each resolves its own requests, so short queries do not wait behind a long one.
``max_batch=1, max_wait_ms=0`` is no batching: one encoder call per query, in arrival order. A full queue
answers :class:`Overloaded` at once instead of piling requests up.

**One bad text never fails the others.** When an encoder call fails, its texts are split in halves and each half is
encoded again, down to single texts (about 2 log2(n) extra calls for one bad text among n; the good halves keep
their batching). Every request whose text encodes gets its vector; a text that fails alone gets its own error:
:class:`TextNotEncodable` (422) when the text is to blame (it is not valid UTF-8, or other texts of its batch were
encoded), else the encoder's exception as it was (a server fault, e.g. a broken model, fails alone texts too).

**Supervision.** The worker loop runs under a supervisor task. If the loop dies (an exception outside the encoder
call: a bug, a metrics hook that raises), the cause is logged, every request it held or that waits in the queue
gets :class:`EncoderUnavailable` (503) at once, new requests get it too while the worker is down (``down`` says
why; ``/ready`` answers 503 with it), and the loop is restarted after ``restart_delay`` seconds, doubling up to
``max_restart_delay`` while it keeps dying without encoding anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from indexer.readers import first_unencodable
from models.base import token_budget_batches
from xlir.errors import EncoderUnavailable, Overloaded, TextNotEncodable, XlirError

log = logging.getLogger(__name__)

EncodeFn = Callable[[Sequence[str]], np.ndarray]
LengthsFn = Callable[[Sequence[str]], Sequence[int]]
Item = tuple[str, asyncio.Future[np.ndarray]]


def item_error(text: str, exc: BaseException, encoder_works: bool) -> BaseException:
    """The error to answer a text that failed when encoded alone: a domain error when the text is to blame (not
    valid UTF-8, a Unicode error, or ``encoder_works``: other texts of its batch were encoded), else ``exc``."""
    if isinstance(exc, XlirError):
        return exc
    pos = first_unencodable(text)
    if pos is not None:
        return TextNotEncodable(f"the text cannot be encoded as UTF-8: lone surrogate U+{ord(text[pos]):04X} at "
                                f"character {pos}")
    if encoder_works or isinstance(exc, UnicodeError):
        return TextNotEncodable(f"the encoder cannot encode this text ({type(exc).__name__}: {str(exc)[:200]})")
    return exc


@dataclass
class BatchStats:
    batches: int = 0
    texts: int = 0
    max_batch_seen: int = 0


class QueryBatcher:
    def __init__(self, encode: EncodeFn, max_batch: int = 32, max_wait_ms: float = 2.0, max_queue: int = 1024,
                 *, max_tokens: int | None = None, token_lengths: LengthsFn | None = None,
                 restart_delay: float = 0.1, max_restart_delay: float = 5.0) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0 or (max_tokens is not None and max_tokens < 1):
            raise ValueError("max_batch, max_queue and max_tokens must be >= 1, max_wait_ms >= 0")
        if restart_delay < 0 or max_restart_delay < restart_delay:
            raise ValueError("restart_delay must be >= 0 and <= max_restart_delay")
        self._encode = encode
        self._lengths = token_lengths if max_tokens is not None else None
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.max_tokens = max_tokens
        self.stats = BatchStats()
        self.on_batch: Callable[[int], None] | None = None  # called with each encoded batch's size (metrics)
        self.restart_delay = restart_delay
        self.max_restart_delay = max_restart_delay
        self.restarts = 0
        self.down: str | None = None  # why the worker is not running (it failed and restarts soon), for /ready
        self._queue: asyncio.Queue[Item] | None = None
        self._held: list[Item] = []  # the batch the worker loop has taken off the queue
        self._worker: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlir-encode")

    async def start(self) -> None:
        if self._worker is None:
            self._queue = asyncio.Queue(maxsize=self.max_queue)
            self._worker = asyncio.create_task(self._supervise(), name="xlir-query-batcher")

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
        self._fail_waiting(Overloaded("server is shutting down"))
        self._pool.shutdown(wait=False)

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def encode(self, text: str) -> np.ndarray:
        if self._queue is None:
            raise RuntimeError("QueryBatcher.start() was not awaited")
        if self.down is not None:
            raise EncoderUnavailable(self.down)
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((text, fut))
        except asyncio.QueueFull:
            raise Overloaded(f"query queue is full ({self.max_queue} waiting); retry later") from None
        return await fut

    async def _supervise(self) -> None:
        """Run the worker loop; when it dies, fail what it held and what waits, then restart it after a delay."""
        delay = self.restart_delay
        while True:
            batches = self.stats.batches
            error: Exception | None = None
            try:
                await self._run()
                cause = "the worker loop returned"
            except Exception as exc:  # CancelledError (close) is not an Exception: it ends the supervisor
                error, cause = exc, f"{type(exc).__name__}: {exc}"
            if self.stats.batches > batches:  # it had worked since the last restart: not a crash loop
                delay = self.restart_delay
            log.error("the query batcher failed (%s); restarting it in %.2f s", cause, delay, exc_info=error)
            self.down = f"the query encoder worker failed ({cause}) and restarts in {delay:.2f} s; retry shortly"
            self._fail_waiting(EncoderUnavailable(self.down))
            await asyncio.sleep(delay)
            delay = min(max(delay * 2, 0.01), self.max_restart_delay)
            self.restarts += 1
            self.down = None

    def _fail_waiting(self, exc: XlirError) -> None:
        """Every request the worker held or that waits in the queue gets ``exc`` now."""
        waiting = list(self._held)
        self._held = []
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, fut in waiting:
            if not fut.done():
                fut.set_exception(exc)

    async def _gather(self) -> list[Item]:
        assert self._queue is not None
        batch = self._held = [await self._queue.get()]  # held from here: a failure of the loop answers them
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    def _split(self, texts: Sequence[str]) -> list[list[int]]:
        """Positions of ``texts`` per encoder call, shortest call first (runs in the worker thread)."""
        if self._lengths is None or self.max_tokens is None or len(texts) < 2:
            return [list(range(len(texts)))]
        batches = token_budget_batches(list(self._lengths(texts)), self.max_tokens, self.max_batch)
        return [b.tolist() for b in reversed(batches)]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(t, f) for t, f in batch if not f.cancelled()]
            if not live:
                continue
            parts = [list(range(len(live)))]
            if self._lengths is not None and len(live) > 1:
                try:  # the tokenizer runs in the worker thread too
                    parts = await loop.run_in_executor(self._pool, self._split, [t for t, _ in live])
                except Exception as exc:  # measuring failed: one call, whose own failure (if any) is isolated
                    log.warning("measuring query lengths failed (%s: %s)", type(exc).__name__, exc)
            failed: list[tuple[Item, BaseException]] = []
            encoded = 0
            for part in parts:
                encoded += await self._encode_part([live[i] for i in part], failed)
            for (text, fut), why in failed:  # once the whole batch is done: did the encoder work for the others?
                if not fut.done():
                    fut.set_exception(item_error(text, why, encoder_works=encoded > 0))
            self._held = []

    async def _encode_part(self, live: list[Item], failed: list[tuple[Item, BaseException]]) -> int:
        """Encode ``live`` in one call and answer its requests; if the call fails, encode each half again (down
        to single texts), so only the texts that fail alone end up in ``failed``. Returns how many were encoded."""
        loop = asyncio.get_running_loop()
        try:
            vecs = await loop.run_in_executor(self._pool, self._encode, [t for t, _ in live])
        except Exception as exc:
            if len(live) == 1:
                log.warning("query encoding failed for one text: %s: %s", type(exc).__name__, exc)
                failed.append((live[0], exc))
                return 0
            log.warning("query encoding failed for a batch of %d (%s: %s): isolating the failing texts",
                        len(live), type(exc).__name__, exc)
            mid = len(live) // 2
            return await self._encode_part(live[:mid], failed) + await self._encode_part(live[mid:], failed)
        for (_, fut), vec in zip(live, vecs, strict=True):
            if not fut.done():
                fut.set_result(vec)
        self.stats.batches += 1
        self.stats.texts += len(live)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(live))
        if self.on_batch is not None:
            self.on_batch(len(live))
        return len(live)


R = TypeVar("R")


@dataclass
class _Group(Generic[R]):
    run: Callable[[np.ndarray], Sequence[R]]
    vecs: list[np.ndarray] = field(default_factory=list)
    closed: bool = False
    future: asyncio.Future[Sequence[R]] | None = None


class VectorBatcher:
    """Searches of concurrent requests in one call: vectors with the same ``key`` (e.g. index snapshot, k, centring
    mode) that arrive while the previous call runs are stacked and searched together, in one worker thread.

    No timer: a group stays open until the worker takes it, so at low load every search runs at once, alone, and
    under load the searches that queued behind a running call share the next one (at most ``max_batch``). A FAISS
    search over a batch of queries costs much less per query than one call per query (measured in
    benchmarks/RESULTS.md), and one worker avoids concurrent calls oversubscribing the cores.
    """

    def __init__(self, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.max_batch = max_batch
        self.stats = BatchStats()
        self._open: dict[Hashable, _Group[Any]] = {}
        self._lock = threading.Lock()  # the event loop adds to a group, the worker closes it
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xlir-search")

    async def search(self, key: Hashable, vec: np.ndarray, run: Callable[[np.ndarray], Sequence[R]]) -> R:
        """``run(vectors)`` (rows = stacked ``vec`` of the group) -> one result per row; returns this vector's."""
        loop = asyncio.get_running_loop()
        with self._lock:
            group = self._open.get(key)
            if group is None or group.closed or len(group.vecs) >= self.max_batch:
                group = _Group(run)
                self._open[key] = group
                group.future = loop.run_in_executor(self._pool, self._run, key, group)
            pos = len(group.vecs)
            group.vecs.append(vec)
        assert group.future is not None
        results = await asyncio.shield(group.future)  # a cancelled request must not cancel the others' results
        return results[pos]

    def _run(self, key: Hashable, group: _Group[R]) -> Sequence[R]:
        with self._lock:
            group.closed = True
            if self._open.get(key) is group:
                del self._open[key]
            vecs = list(group.vecs)
        self.stats.batches += 1
        self.stats.texts += len(vecs)
        self.stats.max_batch_seen = max(self.stats.max_batch_seen, len(vecs))
        out = group.run(np.stack(vecs))
        if len(out) != len(vecs):
            raise RuntimeError(f"a batched search returned {len(out)} results for {len(vecs)} queries")
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False)
