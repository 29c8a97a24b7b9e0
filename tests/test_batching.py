import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from app.batching import QueryBatcher
from xlir.errors import Overloaded


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.delay = delay

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.batches.append(list(texts))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        return np.array([[float(len(t)), float(i)] for i, t in enumerate(texts)], dtype=np.float32)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_concurrent_requests_share_one_batch_and_get_their_own_vector() -> None:
    rec = Recorder()

    async def main() -> list[np.ndarray]:
        b = QueryBatcher(rec, max_batch=64, max_wait_ms=200)
        await b.start()
        try:
            return await asyncio.gather(*(b.encode("x" * n) for n in range(1, 11)))
        finally:
            await b.close()

    vecs = run(main())
    assert len(rec.batches) == 1 and len(rec.batches[0]) == 10
    assert [v[0] for v in vecs] == [float(n) for n in range(1, 11)]
    assert threading.get_ident() not in rec.threads  # the model never runs on the event loop thread


def test_max_batch_splits_batches() -> None:
    rec = Recorder()

    async def main() -> None:
        b = QueryBatcher(rec, max_batch=4, max_wait_ms=100)
        await b.start()
        await asyncio.gather(*(b.encode(str(i)) for i in range(10)))
        await b.close()

    run(main())
    assert [len(x) for x in rec.batches] == [4, 4, 2]


def test_zero_wait_does_not_hold_a_lone_request() -> None:
    rec = Recorder()

    async def main() -> float:
        b = QueryBatcher(rec, max_batch=32, max_wait_ms=0)
        await b.start()
        t0 = time.perf_counter()
        await b.encode("alone")
        await b.close()
        return time.perf_counter() - t0

    assert run(main()) < 0.5
    assert rec.batches == [["alone"]]


def test_full_queue_answers_overloaded_instead_of_waiting() -> None:
    rec = Recorder(delay=0.3)

    async def main() -> list[object]:
        b = QueryBatcher(rec, max_batch=1, max_wait_ms=0, max_queue=2)
        await b.start()
        first = asyncio.ensure_future(b.encode("busy"))
        await asyncio.sleep(0.05)  # the worker is now inside the slow encode; the queue is empty
        res = await asyncio.gather(*(b.encode(str(i)) for i in range(5)), return_exceptions=True)
        await first
        await b.close()
        return res

    res = run(main())
    assert sum(isinstance(r, Overloaded) for r in res) == 3
    assert sum(isinstance(r, np.ndarray) for r in res) == 2


def test_a_transient_encoder_failure_is_retried_and_every_request_gets_its_vector() -> None:
    calls: list[list[str]] = []

    def flaky(texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return np.array([[float(len(t)), 1.0] for t in texts], np.float32)

    async def main() -> list[np.ndarray]:
        b = QueryBatcher(flaky, max_batch=8, max_wait_ms=50)
        await b.start()
        try:
            return await asyncio.gather(b.encode("a"), b.encode("bb"))
        finally:
            await b.close()

    assert [v.tolist() for v in run(main())] == [[1.0, 1.0], [2.0, 1.0]]
    assert calls == [["a", "bb"], ["a"], ["bb"]]  # the failed batch was split in halves


def test_an_encoder_failing_for_every_text_fails_each_request_with_its_error_and_worker_survives() -> None:
    broken = {"on": True}

    def encoder(texts: Sequence[str]) -> np.ndarray:
        if broken["on"]:
            raise RuntimeError("boom")
        return np.ones((len(texts), 2), np.float32)

    async def main() -> tuple[list[object], np.ndarray]:
        b = QueryBatcher(encoder, max_batch=8, max_wait_ms=50)
        await b.start()
        res = await asyncio.gather(b.encode("a"), b.encode("b"), b.encode("c"), return_exceptions=True)
        broken["on"] = False
        after = await b.encode("d")
        await b.close()
        return res, after

    res, after = run(main())
    # no text encoded: the encoder is broken, not the texts, so the error stays what it is (a server fault)
    assert all(type(r) is RuntimeError for r in res)
    assert after.tolist() == [1.0, 1.0]


def test_bad_settings_rejected() -> None:
    with pytest.raises(ValueError):
        QueryBatcher(Recorder(), max_batch=0)
