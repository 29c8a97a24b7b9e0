"""The query batcher's worker loop is supervised (issue 17, point 8): when it dies, the requests it held or that
wait get a 503-type error at once (not a timeout), ``/ready`` says why while it is down, and it comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.batching import QueryBatcher
from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index
from xlir.errors import EncoderUnavailable

if TYPE_CHECKING:
    from app.batching import Item


def fail_once(batcher: QueryBatcher, always: bool = False) -> dict[str, int]:
    """Make a step of the worker loop (outside the encoder call) raise, once or every time."""
    original = batcher._encode_part
    seen = {"raised": 0}

    async def step(live: list[Item], failed: list[tuple[Item, BaseException]]) -> int:
        if always or not seen["raised"]:
            seen["raised"] += 1
            raise RuntimeError("injected failure of the worker loop")
        return await original(live, failed)

    batcher._encode_part = step  # type: ignore[method-assign]
    return seen


def test_a_dead_worker_fails_held_and_queued_requests_at_once_and_restarts() -> None:
    enc = FakeEncoder()

    async def main() -> None:
        b = QueryBatcher(enc.encode_queries, max_batch=2, max_wait_ms=100, restart_delay=0.5)
        await b.start()
        fail_once(b)
        t0 = time.monotonic()
        # 2 are held by the loop when it dies, 3 wait in the queue: all 5 are answered, none waits for a timeout
        res = await asyncio.wait_for(
            asyncio.gather(*(b.encode(f"q{i}") for i in range(5)), return_exceptions=True), 5)
        assert time.monotonic() - t0 < 2  # the batching window is 0.1 s; a hung request would wait 5 s
        assert all(isinstance(r, EncoderUnavailable) for r in res), res
        assert b.down is not None and "injected failure" in b.down
        with pytest.raises(EncoderUnavailable):  # while down, new requests are refused at once
            await b.encode("during")
        for _ in range(100):
            if b.down is None:
                break
            await asyncio.sleep(0.05)
        assert b.down is None and b.restarts == 1
        got = await asyncio.wait_for(asyncio.gather(b.encode("apples"), b.encode("pears")), 5)
        np.testing.assert_array_equal(got[0], enc.vec("apples"))
        np.testing.assert_array_equal(got[1], enc.vec("pears"))
        await b.close()

    asyncio.run(main())


def test_a_crash_loop_backs_off_exponentially_up_to_the_cap() -> None:
    async def main() -> list[str]:
        b = QueryBatcher(FakeEncoder().encode_queries, max_batch=1, max_wait_ms=0, restart_delay=0.05,
                         max_restart_delay=0.2)
        await b.start()
        fail_once(b, always=True)
        downs = []
        for i in range(4):
            with pytest.raises(EncoderUnavailable):
                await asyncio.wait_for(b.encode(f"q{i}"), 5)
            assert b.down is not None
            downs.append(b.down)
            while b.down is not None:
                await asyncio.sleep(0.01)
        await b.close()
        return downs

    downs = asyncio.run(main())
    assert [d.split("restarts in ")[1].split(" s")[0] for d in downs] == ["0.05", "0.10", "0.20", "0.20"]


# ------------------------------------------------------------------------------------------------
# Through the HTTP app
# ------------------------------------------------------------------------------------------------

DOCS = [{"id": f"d{i}", "title": "", "text": f"apples and pears number {i}", "lang": "en"} for i in range(4)]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("supervision"), DOCS)


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())) as c:
        yield c


def test_ready_is_503_with_the_cause_while_the_batcher_is_down_and_searches_work_after(client: TestClient) -> None:
    state: Any = client.app_state["xlir"]
    batcher = state.service.batcher
    batcher.restart_delay = 2.0  # long enough to look at /ready while it is down
    fail_once(batcher)
    body = {"query": "apples", "mode": "dense", "k": 2}

    t0 = time.monotonic()
    r = client.post("/search", json=body)
    assert time.monotonic() - t0 < 1.5  # answered at once, not after a timeout
    assert r.status_code == 503 and r.json()["error"] == "encoder_unavailable", r.text
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert "injected failure of the worker loop" in ready.json()["detail"]
    assert "xlir_ready 0.0" in client.get("/metrics").text  # the gauge agrees with /ready
    assert client.post("/search", json=body).status_code == 503  # refused at once while down
    assert client.post("/search", json={**body, "mode": "bm25"}).status_code == 200  # BM25 does not need it

    deadline = time.monotonic() + 10
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, "the batcher did not come back"
        time.sleep(0.1)
    r = client.post("/search", json=body)
    assert r.status_code == 200 and r.json()["results"][0]["id"].startswith("d")
    assert "xlir_ready 1.0" in client.get("/metrics").text
    assert batcher.restarts == 1
