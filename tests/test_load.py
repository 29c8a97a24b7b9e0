"""Serving under load (issue 6.5): a bounded mixed load on loopback with zero 5xx, zero lost writes and stable
memory; overload answers 429 at once rather than timing out; the query batcher's token budget.

The servers are real ``uvicorn`` processes on a free loopback port (``python -m tests.test_load``, below) serving
an index built with the tests' deterministic fake encoder, made slow on purpose (``--query-delay``,
``--passage-delay``: it sleeps like a model call releases the GIL) so that queueing and batching happen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.batching import QueryBatcher
from benchmarks.demo_bench import free_port
from benchmarks.load import Plan, Server, rss_bytes, run_levels, verify_writes
from indexer.build import BuildOptions, build_index
from models.base import ProgressFn
from tests.conftest import FakeEncoder, write_jsonl

REPO = Path(__file__).resolve().parent.parent
WORDS = ["river", "mountain", "city", "music", "science", "history", "garden", "market", "train", "ocean",
         "forest", "bridge", "library", "painting", "festival", "harbour"]


class SlowFakeEncoder(FakeEncoder):
    """The fake encoder with a fixed cost per call (``time.sleep`` releases the GIL, as a model call does)."""

    def __init__(self, query_delay: float = 0.0, passage_delay: float = 0.0) -> None:
        super().__init__()
        self.query_delay, self.passage_delay = query_delay, passage_delay

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(self.query_delay)
        return super().encode_queries(texts)

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray:
        time.sleep(self.passage_delay)
        return super().encode_passages(texts, batch_size=batch_size, progress=progress)


def serve(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.test_load --index DIR --port P``: serve with the slow fake encoder (settings: XLIR_*)."""
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    ap = argparse.ArgumentParser()
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--query-delay", type=float, default=0.0)
    ap.add_argument("--passage-delay", type=float, default=0.0)
    args = ap.parse_args(argv)
    settings = Settings(index=args.index, warmup=False, reload_interval=0)
    app = create_app(settings, encoder=SlowFakeEncoder(args.query_delay, args.passage_delay))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def build_fake_index(root: Path, n: int = 400) -> Path:
    rng = np.random.default_rng(0)
    docs = [{"id": f"d{i}", "lang": "en", "title": f"doc {i}",
             "text": " ".join(rng.choice(WORDS, size=12).tolist())} for i in range(n)]
    corpus = write_jsonl(root / "corpus.jsonl", docs)
    out = root / "index"
    build_index([corpus], out, FakeEncoder(), BuildOptions(progress=False))
    return out


@contextmanager
def fake_server(index: Path, env: dict[str, str] | None = None, query_delay: float = 0.0,
                passage_delay: float = 0.0) -> Iterator[Server]:
    port = free_port()
    cmd = [sys.executable, "-m", "tests.test_load", "--index", str(index), "--port", str(port),
           "--query-delay", str(query_delay), "--passage-delay", str(passage_delay)]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **(env or {})})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"the test server exited with {proc.returncode}"
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the test server was not ready within 60 s"
            time.sleep(0.2)
        yield Server(base=base, pid=proc.pid, proc=proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def fake_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_index(tmp_path_factory.mktemp("load"))


QUERIES = [" ".join(WORDS[i : i + 3]) for i in range(len(WORDS) - 3)]
PASSAGES = [("t", " ".join(WORDS[i:] + WORDS[:i]), "en") for i in range(len(WORDS))]


@pytest.mark.slow  # about 30 s (the full 60 s run with e5-small: `make bench-load`)
def test_mixed_load_has_no_5xx_no_lost_writes_and_stable_memory(fake_index: Path, tmp_path: Path) -> None:
    import shutil

    index = Path(shutil.copytree(fake_index, tmp_path / "index"))  # the server writes into it
    plan = Plan(queries=QUERIES, mix={"search": 0.8, "upsert": 0.2}, mode="hybrid", k=10, passages=PASSAGES,
                run_id="t1", timeout=20.0)
    acked: dict[str, str] = {}
    with fake_server(index, query_delay=0.002, passage_delay=0.004) as server:
        res = run_levels(server, [16], duration=6.0, warmup=3.0, plan=plan, acked_out=acked)
        level = res["levels"][0]
        assert level["status"]["5xx"] == 0 and level["status"]["error"] == 0
        assert level["status"]["2xx"] == level["requests"] > 100
        assert level["search"]["ok"] > 0 and level["upsert"]["ok"] > 0
        assert len(acked) > 20 and res["writes"]["acknowledged"] == len(acked)
        assert res["writes"]["lost"] == 0 and res["writes"]["found"] == len(acked)
        rss = res["rss_bytes"]
        assert rss["ready"] and rss["after_warmup"] and rss["end"]
        assert res["rss_growth"] < 0.10, rss
        assert level["mean_batch_size"] > 1.0  # 16 clients: the query batcher merges their encodings
    with fake_server(index) as server:  # what was acknowledged survives a restart (the log is replayed)
        again = asyncio.run(verify_writes(server.base, acked))
        assert again["found"] == len(acked) and again["lost"] == 0
        # and the check does find a lost or changed write
        bad = asyncio.run(verify_writes(server.base, {"never-written": "x", next(iter(acked)): "other text"}))
        assert bad["lost"] == 2 and bad["missing"] == ["never-written"] and len(bad["different"]) == 1


def test_overload_answers_429_at_once_instead_of_timing_out(fake_index: Path) -> None:
    env = {"XLIR_QUEUE_MAX": "2", "XLIR_BATCH_MAX_SIZE": "1", "XLIR_BATCH_MAX_WAIT_MS": "0"}
    with fake_server(fake_index, env, query_delay=0.5) as server:

        async def burst() -> list[tuple[int, float]]:
            limits = httpx.Limits(max_connections=64)
            async with httpx.AsyncClient(base_url=server.base, timeout=30, limits=limits) as client:
                async def one(i: int) -> tuple[int, float]:
                    t0 = time.perf_counter()
                    r = await client.post("/search", json={"query": QUERIES[i % len(QUERIES)], "mode": "dense"})
                    if r.status_code == 429:
                        assert r.json()["error"] == "overloaded"
                    return r.status_code, time.perf_counter() - t0
                return await asyncio.gather(*(one(i) for i in range(40)))

        results = asyncio.run(burst())
        codes = [c for c, _ in results]
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) >= 30  # one encoding at a time, two waiting: the rest is turned away
        assert codes.count(200) >= 3
        slowest_429 = max(t for c, t in results if c == 429)
        slowest_200 = max(t for c, t in results if c == 200)
        # refused at once, not after waiting for the encoder: the admitted ones wait for up to three 0.5 s calls
        assert slowest_429 < 1.0 < slowest_200 and slowest_429 < slowest_200
        metrics = httpx.get(f"{server.base}/metrics").text
        assert f"xlir_overloaded_total {float(codes.count(429))}" in metrics
        assert rss_bytes(server.pid or 0)


# ------------------------------------------------------------------------------- the query batcher's token budget


class Recorder:
    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.asarray([[float(len(t))] for t in texts], dtype=np.float32)


def _lengths(texts: Sequence[str]) -> list[int]:
    return [len(t.split()) for t in texts]  # one token per word


def test_token_budget_splits_a_gathered_batch_and_each_request_gets_its_own_vector() -> None:
    rec = Recorder()
    texts = ["w " * 50, "a", "b c", "w " * 40, "d e f", "g"]

    async def main() -> list[np.ndarray]:
        b = QueryBatcher(rec, max_batch=32, max_wait_ms=200, max_tokens=60, token_lengths=_lengths)
        await b.start()
        try:
            return await asyncio.gather(*(b.encode(t) for t in texts))
        finally:
            await b.close()

    vecs = run(main())
    assert [v[0] for v in vecs] == [float(len(t)) for t in texts]  # every request got its own text's vector
    assert sorted(t for call in rec.calls for t in call) == sorted(texts)
    for call in rec.calls:  # rows x longest <= budget, unless a lone long query
        assert len(call) == 1 or len(call) * max(_lengths(call)) <= 60
    # longest first into calls within the budget: [50], [40], the four short ones; run shortest call first
    assert rec.calls == [["d e f", "b c", "a", "g"], ["w " * 40], ["w " * 50]]


def test_without_a_budget_or_with_batching_off() -> None:
    rec = Recorder()

    async def main(**kw: object) -> None:
        b = QueryBatcher(rec, max_wait_ms=100, **kw)  # type: ignore[arg-type]
        await b.start()
        await asyncio.gather(*(b.encode("w " * n) for n in (50, 1, 2)))
        await b.close()

    run(main(max_batch=32))
    assert [len(c) for c in rec.calls] == [3]  # no budget: one call
    rec.calls.clear()
    run(main(max_batch=1, max_tokens=60, token_lengths=_lengths))
    assert [len(c) for c in rec.calls] == [1, 1, 1]  # max batch 1: one call per query, in arrival order
    assert [_lengths(c)[0] for c in rec.calls] == [50, 1, 2]


def test_batching_setting_makes_the_server_encode_one_query_per_call(fake_index: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    for batching, expect_max in ((False, 1), (True, 8)):
        enc = SlowFakeEncoder(query_delay=0.05)
        settings = Settings(index=fake_index, warmup=False, reload_interval=0, batching=batching,
                            batch_max_wait_ms=100, batch_max_size=8)
        with TestClient(create_app(settings, encoder=enc)) as client:
            state = client.app_state["xlir"]
            assert state.service.batcher.max_batch == (8 if batching else 1)
            import concurrent.futures as cf

            with cf.ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda q: client.post("/search", json={"query": q, "mode": "dense"})
                                      .status_code, QUERIES[:8]))
            assert codes == [200] * 8
            assert max(len(c) for c in enc.query_calls) <= expect_max
            if batching:
                assert max(len(c) for c in enc.query_calls) > 1


# ------------------------------------------------------------------------------- batched dense search


class SlowSearch:
    """A search function over stacked query rows: each row's result is its first value; records each call."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.delay, self.fail = delay, fail

    def __call__(self, rows: np.ndarray) -> list[float]:
        self.calls.append(len(rows))
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("search failed")
        return [float(r[0]) for r in rows]


def test_vector_batcher_runs_a_lone_search_at_once_and_groups_those_that_queue() -> None:
    from app.batching import VectorBatcher

    search = SlowSearch(delay=0.2)

    async def main() -> tuple[list[float], float, float]:
        vb = VectorBatcher(max_batch=4)
        t0 = time.perf_counter()
        alone = await vb.search("k", np.array([7.0]), search)
        t_alone = time.perf_counter() - t0
        first = asyncio.ensure_future(vb.search("k", np.array([0.0]), search))
        await asyncio.sleep(0.05)  # the first search is running: these queue behind it
        rest = [asyncio.ensure_future(vb.search("k", np.array([float(i)]), search)) for i in range(1, 7)]
        other_key = asyncio.ensure_future(vb.search("other", np.array([99.0]), search))
        res = await asyncio.gather(first, *rest, other_key)
        vb.close()
        return [alone, *res], t_alone, 0.0

    res, t_alone, _ = run(main())
    assert res == [7.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 99.0]  # each caller gets its own row's result
    assert t_alone < 0.5  # no timer: a lone search does not wait for company
    assert search.calls[:2] == [1, 1]  # the lone one, then the first of the burst
    assert sorted(search.calls[2:]) == [1, 2, 4]  # six queued: groups of at most 4 per key; the other key alone


def test_vector_batcher_failure_reaches_the_group_and_the_worker_survives() -> None:
    from app.batching import VectorBatcher

    bad = SlowSearch(delay=0.1, fail=True)
    good = SlowSearch()

    async def main() -> tuple[list[object], float]:
        vb = VectorBatcher()
        blocker = asyncio.ensure_future(vb.search("k", np.array([0.0]), good))
        res = await asyncio.gather(*(vb.search("b", np.array([1.0]), bad) for _ in range(3)), return_exceptions=True)
        await blocker
        after = await vb.search("k", np.array([5.0]), good)
        vb.close()
        return res, after

    res, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in res) and after == 5.0


def test_batched_and_unbatched_servers_rank_alike(fake_index: Path) -> None:
    import concurrent.futures as cf

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    answers = {}
    for batching in (True, False):
        settings = Settings(index=fake_index, warmup=False, reload_interval=0, batching=batching)
        with TestClient(create_app(settings, encoder=SlowFakeEncoder(query_delay=0.02))) as client:
            def ask(q: str, c: TestClient = client) -> list[tuple[str, float]]:
                r = c.post("/search", json={"query": q, "mode": "hybrid", "k": 20})
                assert r.status_code == 200, r.text
                return [(h["id"], round(h["score"], 5)) for h in r.json()["results"]]

            with cf.ThreadPoolExecutor(8) as pool:
                answers[batching] = list(pool.map(ask, QUERIES))
            dense = client.app_state["xlir"].service.dense_batcher
            assert (dense is not None) == batching
            if batching:
                assert dense.stats.texts == len(QUERIES) and dense.stats.batches <= len(QUERIES)
    assert answers[True] == answers[False]


# ------------------------------------------------------------------------------- GET /documents/{id}


def test_get_document_follows_upserts_deletes_and_compaction(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings
    from indexer.compact import compact

    index = build_fake_index(tmp_path, n=20)
    settings = Settings(index=index, warmup=False, reload_interval=0, api_keys="r:read,w:write")
    read, write = {"X-API-Key": "r"}, {"X-API-Key": "w"}
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c:
        r = c.get("/documents/d3", headers=read)  # a document of the built generation
        assert r.status_code == 200 and r.json()["id"] == "d3" and r.json()["generation"] == "g000000"
        corpus = {d["id"]: d for d in map(json.loads, (tmp_path / "corpus.jsonl").read_text().splitlines())}
        assert {k: r.json()[k] for k in ("text", "title", "lang")} == \
            {k: corpus["d3"][k] for k in ("text", "title", "lang")}
        assert c.get("/documents/d3").status_code == 401
        assert c.get("/documents/nope", headers=read).json()["error"] == "document_not_found"
        docs = [{"id": "n1", "text": "first version", "lang": "en"}, {"id": "d4", "text": "d4 replaced", "lang": "en"}]
        assert c.post("/documents", json={"documents": docs}, headers=write).status_code == 200
        assert c.get("/documents/n1", headers=read).json()["text"] == "first version"
        assert c.get("/documents/d4", headers=read).json()["text"] == "d4 replaced"
        c.post("/documents", json={"documents": [{"id": "n1", "text": "second version", "lang": "en"}]}, headers=write)
        assert c.get("/documents/n1", headers=read).json()["text"] == "second version"
        assert c.delete("/documents/n1", headers=write).status_code == 200
        assert c.delete("/documents/d5", headers=write).status_code == 200
        assert c.get("/documents/n1", headers=read).status_code == 404  # deleted from the delta
        assert c.get("/documents/d5", headers=read).status_code == 404  # deleted from the generation
        compact(index)
        assert c.post("/reload", headers=write).json()["generation"] == "g000001"
        r = c.get("/documents/d4", headers=read)
        assert r.json()["text"] == "d4 replaced" and r.json()["generation"] == "g000001"
        assert c.get("/documents/d5", headers=read).status_code == 404
        assert c.get("/documents/d6", headers=read).json()["title"] == "doc 6"


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


if __name__ == "__main__":
    serve()
