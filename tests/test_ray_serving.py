"""``xlir serve --ray``: dense shards in Ray actors, the query encoder in replica actors, the app's exact fan-out.

The first tests need no Ray (the fan-out's failure path, the 503 with Retry-After); the others run on the real
local cluster of tests/ray_support.py (fixture ``ray_cluster``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.state import AppState
from indexer.build import BuildOptions, build_index
from indexer.dense import DenseShard, ShardHits, search_shards
from indexer.store import open_index
from tests.conftest import FakeEncoder, serve_app, write_jsonl
from xlir.errors import ShardUnavailable

TOPICS = {"fruit": "apples pears plums cherries", "money": "stock market bank shares", "sport": "football match goal"}
DOCS = [
    {"id": f"d{i}", "title": f"title {i}", "text": f"{TOPICS[topic].split()[i % 3]} and {TOPICS[topic]} note {i}",
     "lang": ("en", "de", "fr")[i % 3], "metadata": {"topic": topic, "year": 2000 + i}}
    for i, topic in enumerate(t for _ in range(4) for t in TOPICS)
]  # 12 documents, shard_size 4: 3 shards
QUERIES: list[dict[str, Any]] = [
    {"query": "apples pears", "mode": "dense", "k": 10},
    {"query": "stock market", "mode": "bm25", "k": 5},
    {"query": "football goal", "mode": "hybrid", "k": 8},
    {"query": "bank shares", "mode": "dense", "k": 6, "filter": {"topic": "money"}},
    {"query": "plums", "mode": "hybrid", "k": 3, "offset": 4, "filter": {"year": {"gte": 2003}}},
    {"query": "cherries match", "mode": "dense", "k": 12, "langs": ["de", "fr"]},
]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ray-serving")
    out = tmp / "idx"
    build_index([write_jsonl(tmp / "c.jsonl", DOCS)], out, FakeEncoder(), BuildOptions(progress=False, shard_size=4))
    return out


def settings(index_dir: Path, **kw: Any) -> Settings:
    return Settings(index=index_dir, reload_interval=0, warmup=False, verify="size", **kw)


def hits(body: dict[str, Any]) -> list[tuple[str, float]]:
    return [(h["id"], h["score"]) for h in body["results"]]


# ------------------------------------------------------------------------------------------------ without Ray


class _Failing:
    """A shard whose answer cannot be gathered (a remote shard whose actor died)."""

    def __init__(self, shard: DenseShard) -> None:
        self.offset, self.size, self.submitted = shard.offset, shard.size, 0

    def submit(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> Callable[[], ShardHits]:
        self.submitted += 1

        def gather() -> ShardHits:
            raise ShardUnavailable("shard 1 did not answer")

        return gather


def test_a_failed_shard_fails_the_query_never_a_partial_merge(index_dir: Path) -> None:
    index = open_index(index_dir)
    shards = list(index.shards)
    failing = _Failing(shards[1])  # type: ignore[arg-type]
    index.serve_shards([shards[0], failing, shards[2]])
    with pytest.raises(ShardUnavailable):
        search_shards(index.shards, np.ones((1, 16), np.float32), 5)
    assert failing.submitted == 1
    with TestClient(create_app(settings(index_dir), encoder=FakeEncoder())) as client:
        state: AppState = client.app_state["xlir"]
        main = state.live.main  # type: ignore[union-attr]
        main.serve_shards([main.shards[0], _Failing(main.shards[1]), main.shards[2]])  # type: ignore[arg-type]
        r = client.post("/search", json={"query": "apples", "mode": "dense"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json() == {"error": "shard_unavailable", "detail": "shard 1 did not answer"}
        assert client.post("/search", json={"query": "apples", "mode": "bm25"}).status_code == 200  # no dense run


def test_serve_shards_must_match_the_index(index_dir: Path) -> None:
    from xlir.errors import IndexInvalid

    index = open_index(index_dir)
    with pytest.raises(IndexInvalid, match="offsets and sizes"):
        index.serve_shards(index.shards[:2])


# ---------------------------------------------------------------------------------------------------- on Ray


def capture_state(app: FastAPI) -> dict[str, Any]:
    """The app's lifespan state (``{"xlir": AppState}``) once it has started, for a server run by uvicorn."""
    captured: dict[str, Any] = {}
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as st:
            captured.update(st or {})
            yield st

    app.router.lifespan_context = lifespan
    return captured


@pytest.fixture(scope="module")
def expected(index_dir: Path) -> list[list[tuple[str, float]]]:
    """Every query's hits from the single-process server."""
    with TestClient(create_app(settings(index_dir), encoder=FakeEncoder())) as client:
        out = []
        for q in QUERIES:
            r = client.post("/search", json=q)
            assert r.status_code == 200, r.text
            out.append(hits(r.json()))
    assert all(out) and len(out[0]) == 10
    return out


@pytest.fixture(scope="module")
def ray_server(ray_cluster: str, index_dir: Path) -> Iterator[tuple[str, AppState]]:
    """A uvicorn server on Ray (3 shard actors, 2 encoder replicas): its URL and state."""
    app = create_app(settings(index_dir, ray=ray_cluster, ray_encoder_replicas=2), encoder=FakeEncoder())
    captured = capture_state(app)
    with serve_app(app, timeout=120) as url:
        yield url, captured["xlir"]


@pytest.mark.ray
def test_ray_fan_out_is_exact(ray_server: tuple[str, AppState], expected: list[list[tuple[str, float]]]) -> None:
    url, state = ray_server
    live = state.live
    assert live is not None and live.shard_host is not None
    assert len(live.shard_host.actors(live.main)) == 3
    assert type(live.main.shards[0]).__name__ == "RemoteShard"
    with httpx.Client(base_url=url, timeout=30) as client:
        for q, want in zip(QUERIES, expected, strict=True):
            r = client.post("/search", json=q)
            assert r.status_code == 200, r.text
            assert hits(r.json()) == want, q
        ready = client.get("/ready").json()
    assert ready["ray"] == {"address": state.settings.ray, "shard_actors": 3, "encoder_replicas": 2}


def hammer(url: str, query: dict[str, Any], want: list[tuple[str, float]], stop: threading.Event,
           seen: list[tuple[int, str | None]]) -> None:
    """Ask ``query`` until ``stop``; record (status, Retry-After) and fail on any 200 with other hits."""
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            r = client.post("/search", json=query)
            seen.append((r.status_code, r.headers.get("retry-after")))
            if r.status_code == 200:
                assert hits(r.json()) == want


def kill_mid_stream(url: str, query: dict[str, Any], want: list[tuple[str, float]], kill: Callable[[], None]
                    ) -> list[tuple[int, str | None]]:
    """Queries run continuously while ``kill()`` happens; returns what they got, once queries succeed again."""
    stop, seen = threading.Event(), []  # type: ignore[var-annotated]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            hammer(url, query, want, stop, seen)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        before = len(seen)
        kill()
        deadline = time.monotonic() + 30  # replaced by Ray: queries succeed again
        while time.monotonic() < deadline and not errors:
            time.sleep(0.2)
            if len(seen) > before + 3 and all(s == 200 for s, _ in seen[-3:]):
                break
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    assert seen and all(s == 200 for s, _ in seen[-3:]), seen[-10:]
    assert all(s == 200 or (s == 503 and retry == "1") for s, retry in seen), sorted(set(seen))
    print(f"{len(seen)} queries: {seen.count((200, None))} answered, {len(seen) - seen.count((200, None))} 503")
    return seen


@pytest.mark.ray
def test_killed_shard_actor_is_replaced(ray_server: tuple[str, AppState],
                                        expected: list[list[tuple[str, float]]]) -> None:
    import ray

    url, state = ray_server
    live = state.live
    assert live is not None and live.shard_host is not None
    actor = live.shard_host.actors(live.main)[1]
    pid = ray.get(actor.__ray_call__.remote(lambda self: __import__("os").getpid()))
    kill_mid_stream(url, QUERIES[0], expected[0], lambda: ray.kill(actor, no_restart=False))
    assert ray.get(actor.__ray_call__.remote(lambda self: __import__("os").getpid())) != pid  # a new process


@pytest.mark.ray
def test_killed_encoder_replica_is_replaced(ray_server: tuple[str, AppState],
                                            expected: list[list[tuple[str, float]]]) -> None:
    import ray

    url, state = ray_server
    assert state.service is not None
    encoder: Any = state.service.encoder
    assert type(encoder).__name__ == "RemoteEncoder" and encoder.replica_count == 2
    replica = encoder.replicas[0]
    seen = kill_mid_stream(url, QUERIES[2], expected[2], lambda: ray.kill(replica, no_restart=False))
    assert seen.count((200, None)) >= 3
    assert ray.get(replica.info.remote())["checksum"] == "fake-checksum"  # restarted from its factory


@pytest.mark.ray
@pytest.mark.slow  # 7 actors started: ~12 s on 2 busy cores
def test_new_generation_gets_actors_and_the_retired_ones_die(ray_cluster: str, index_dir: Path,
                                                             tmp_path: Path) -> None:
    import shutil

    import ray

    from indexer.compact import compact
    from indexer.live import LiveStore
    from indexer.ray_shards import RayShardHost

    root = tmp_path / "live"
    shutil.copytree(index_dir, root)
    host = RayShardHost(ray_cluster, retire_after=0)
    live = LiveStore(root, shard_host=host)
    try:
        old_main, old_actors = live.main, host.actors(live.main)
        assert len(old_actors) == 3
        vec = FakeEncoder().encode_passages(["kiwi mango"])
        live.upsert([{"id": "new", "title": "", "text": "kiwi mango", "lang": "en"}], vec)
        compact(root)
        assert live.refresh()
        assert live.main is not old_main and len(host.actors(live.main)) == len(live.main.manifest.shards) == 4
        assert host.actors(old_main) == []
        deadline = time.monotonic() + 20  # ray.kill is asynchronous: a call sent at once may still be answered
        with pytest.raises(ray.exceptions.RayActorError):
            while time.monotonic() < deadline:
                ray.get(old_actors[0].size.remote(), timeout=30)
                time.sleep(0.1)
        got = live.snapshot.dense(FakeEncoder().encode_queries(["kiwi mango"]), 1)[0]
        assert live.snapshot.doc(int(got.rows[0]))["id"] == "new"
    finally:
        live.close()
    assert host.actors(live.main) == []
