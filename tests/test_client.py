"""The Python client (issue 22.1, ``app/client.py``): every method against a live uvicorn server (an index built with
the fake encoder), API keys, retries honouring ``Retry-After``, the server's error bodies, the async client, and a
light ``import xlir``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from app.client import Calls
from app.main import create_app
from app.schemas import SearchRequest, SearchResponse
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.mining_job import mine_texts
from tests.conftest import REPO, FakeEncoder, serve_app, write_jsonl
from xlir import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    ConnectionFailed,
    NotFound,
    Overloaded,
    ServerError,
    Unauthorized,
    Unavailable,
)
from xlir.errors import XlirError

E = np.eye(16, dtype=np.float32)
TABLE = {  # mining: meaning i -> direction e_i (+ a little of e_15 so nothing is exactly orthogonal)
    "Guten Morgen": E[0] + 0.1 * E[15], "good morning": E[0] + 0.12 * E[15],
    "Danke": E[1] + 0.1 * E[15], "thank you": E[1] + 0.12 * E[15],
    "Hallo Welt": E[2] + 0.1 * E[15], "hello world": E[2] + 0.12 * E[15],
    "Nur hier": E[3] + 0.1 * E[15], "only in English": E[4] + 0.1 * E[15],
}  # fmt: skip
SRC = ["Danke", "Nur hier", "Guten Morgen", "Hallo Welt"]
TGT = ["hello world", "only in English", "thank you", "good morning"]
DOCS: list[dict[str, object]] = [
    {"id": "cat", "title": "Cats", "text": "the cat sits on the mat", "lang": "en"},
    {"id": "dog", "title": "Dogs", "text": "the dog runs in the park", "lang": "en"},
    {"id": "katze", "title": "Katzen", "text": "die katze sitzt auf der matte", "lang": "de"},
    {"id": "hund", "title": "Hunde", "text": "der hund rennt im park", "lang": "de"},
]
EXTRA_DOCS: list[dict[str, object]] = [
    {"id": "zebra", "title": "Zebras", "text": "zebras graze on the savanna", "lang": "en"}]
KEYS = "r1:read,w1:write"
MAX_QUERY_CHARS = 100


def encoder() -> FakeEncoder:
    return FakeEncoder(dim=16, table=TABLE)


@dataclass
class Flaky:
    """ASGI wrapper: answers the queued ``(status, Retry-After, body)`` before passing requests to the app, and
    counts the HTTP requests (with their paths) that reached the server."""

    app: Any
    queue: list[tuple[int, str | None, dict[str, Any]]] = field(default_factory=list)
    seen: list[str] = field(default_factory=list)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.seen.append(scope["path"])
        if not self.queue:
            await self.app(scope, receive, send)
            return
        status, retry_after, body = self.queue.pop(0)
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", retry_after.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@dataclass
class Server:
    url: str
    flaky: Flaky


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client")
    main, extra = tmp / "main", tmp / "extra"
    build_index([write_jsonl(tmp / "main.jsonl", DOCS)], main, encoder(), BuildOptions(progress=False))
    build_index([write_jsonl(tmp / "extra.jsonl", EXTRA_DOCS)], extra, encoder(), BuildOptions(progress=False))
    settings = Settings(collections={"main": main, "extra": extra}, api_keys=KEYS, warmup=False,
                        reload_interval=0, max_query_chars=MAX_QUERY_CHARS)
    flaky = Flaky(create_app(settings, encoder=encoder()))
    with serve_app(flaky, timeout=120) as url:  # two cores shared with other jobs: starting may be slow
        yield Server(url, flaky)


@pytest.fixture
def flaky(server: Server) -> Iterator[Flaky]:
    server.flaky.seen.clear()
    yield server.flaky
    server.flaky.queue.clear()


@pytest.fixture
def xl(server: Server) -> Iterator[Client]:
    with Client(server.url, api_key="w1", backoff=0.01) as client:
        yield client


def raw(server: Server, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(server.url + path, json=body, headers={"X-API-Key": "r1"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def ids(response: SearchResponse) -> list[str]:
    return [hit.id for hit in response.results]


# -- the package --------------------------------------------------------------------------------------------------


def test_import_xlir_is_light_and_the_client_loads_on_first_use() -> None:
    code = ("import sys, xlir\n"
            "heavy = [m for m in ('app', 'app.client', 'fastapi', 'httpx', 'pydantic', 'numpy') if m in sys.modules]\n"
            "assert heavy == [], heavy\n"
            "from xlir import Client, AsyncClient, ApiError\n"
            "import app.client\n"
            "assert Client is app.client.Client and AsyncClient is app.client.AsyncClient\n"
            "assert 'fastapi' not in sys.modules, 'the client must not need the server'\n"
            "assert 'Client' in dir(xlir)\n"
            "try:\n    xlir.Nope\nexcept AttributeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "module 'xlir' has no attribute 'Nope'"


def test_the_errors_are_xlir_errors() -> None:
    for cls in (BadRequest, Unauthorized, NotFound, Overloaded, Unavailable, ConnectionFailed):
        assert issubclass(cls, ApiError) and issubclass(cls, XlirError)


# -- every method, live -------------------------------------------------------------------------------------------


def test_search_is_the_server_answer_typed(server: Server, xl: Client) -> None:
    got = xl.search("cat sits", k=3, mode="dense")
    want = raw(server, "/search", {"query": "cat sits", "k": 3, "mode": "dense"})
    assert isinstance(got, SearchResponse)
    assert ids(got) == [h["id"] for h in want["results"]] and ids(got)[0] == "cat" and len(got.results) == 3
    assert [h.score for h in got.results] == pytest.approx([h["score"] for h in want["results"]])
    assert got.mode == "dense"
    assert ids(xl.search("cat sits", k=4, mode="dense", langs=["de"])) == ["katze", "hund"]
    # a whole request, and fields that override it
    req = SearchRequest(query="park", k=1, mode="bm25")
    assert len(xl.search(req).results) == 1
    assert ids(xl.search(req, k=4)) == [h["id"] for h in raw(server, "/search", {"query": "park", "k": 4,
                                                                                  "mode": "bm25"})["results"]]


def test_only_the_given_fields_are_sent(server: Server) -> None:
    body = Calls(server.url).search("cat", k=2).body
    assert body == {"query": "cat", "k": 2}  # the server applies its own defaults to the rest


def test_search_batch(server: Server, xl: Client) -> None:
    got = xl.search_batch(["cat sits", SearchRequest(query="der hund", k=2), {"query": "park", "mode": "bm25"}],
                          mode="dense")
    assert [ids(r) for r in got] == [ids(xl.search("cat sits", mode="dense")), ids(xl.search("der hund", k=2,
                                     mode="dense")), ids(xl.search("park", mode="dense"))]
    assert ids(got[0])[0] == "cat" and len(got[1].results) == 2
    with pytest.raises(TypeError, match="for one, call search"):
        xl.search_batch("cat")


ODD_ID = "a/b c%2F?#é"


def test_upsert_get_delete_any_id(xl: Client) -> None:
    up = xl.upsert([{"id": ODD_ID, "title": "Zebra", "text": "zebras graze on the savanna", "lang": "en"}])
    assert up.upserted == 1 and up.replaced == 0
    doc = xl.get(ODD_ID)
    assert (doc.id, doc.text, doc.title, doc.lang) == (ODD_ID, "zebras graze on the savanna", "Zebra", "en")
    assert ids(xl.search("zebras graze", k=5, mode="bm25")) == [ODD_ID]  # searchable at once
    assert xl.delete(ODD_ID).deleted is True
    with pytest.raises(NotFound) as err:
        xl.get(ODD_ID)
    assert err.value.status == 404 and err.value.code == "document_not_found"
    assert err.value.body == {"error": "document_not_found", "detail": err.value.detail}
    assert ODD_ID in err.value.detail
    with pytest.raises(NotFound):
        xl.delete(ODD_ID)


def test_metadata_and_filter_pass_through(xl: Client) -> None:
    xl.upsert([{"id": "meta/1", "text": "the cat naps", "lang": "en", "metadata": {"source": "wiki", "year": 2020}},
               {"id": "meta/2", "text": "the cat naps too", "lang": "en", "metadata": {"source": "news"}}])
    try:
        assert xl.get("meta/1").metadata == {"source": "wiki", "year": 2020}
        got = xl.search("cat naps", k=10, mode="bm25", filter={"source": "wiki", "year": {"gte": 2019}})
        assert ids(got) == ["meta/1"] and got.results[0].metadata == {"source": "wiki", "year": 2020}
    finally:
        xl.delete("meta/1")
        xl.delete("meta/2")


def test_embed(xl: Client) -> None:
    got = xl.embed(["Danke", "hello world"])
    assert got.dim == 16 and len(got.embeddings) == 2
    assert np.allclose(got.embeddings, encoder().encode_queries(["Danke", "hello world"]), atol=1e-6)
    assert np.allclose(xl.embed("Danke", kind="passage").embeddings[0], encoder().vec("Danke"), atol=1e-6)


def test_mine(xl: Client) -> None:
    got = xl.mine(SRC, TGT, k=2, centering="off", threshold=0.9)
    want = mine_texts(encoder(), SRC, TGT, k=2, centering="off", threshold=0.9, margin="absolute")
    assert [(p.src, p.tgt) for p in got.pairs] == [(p.src, p.tgt) for p in want]
    assert {(p.src_text, p.tgt_text) for p in got.pairs} == {
        ("Danke", "thank you"), ("Guten Morgen", "good morning"), ("Hallo Welt", "hello world")}


def test_health_ready_collections(server: Server) -> None:
    with Client(server.url) as anonymous:  # /health and /ready need no key
        assert anonymous.health().status == "ok"
        ready = anonymous.ready()
        assert ready.ready is True
    with Client(server.url, api_key="r1") as xl:
        listing = xl.collections()
        assert listing.default == "main" and [c.name for c in listing.collections] == ["main", "extra"]


def test_collection_prefix(server: Server, flaky: Flaky) -> None:
    with Client(server.url, api_key="w1", collection="extra") as extra:
        assert ids(extra.search("zebras", k=3, mode="dense")) == ["zebra"]
        assert extra.get("zebra").title == "Zebras"
        assert extra.ready().docs == 1
    assert flaky.seen == ["/collections/extra/search", "/collections/extra/documents/zebra",
                          "/collections/extra/ready"]
    with Client(server.url, api_key="w1", collection="nope") as nope, pytest.raises(NotFound) as err:
        nope.search("x")
    assert "nope" in err.value.detail


# -- keys and errors ----------------------------------------------------------------------------------------------


def test_api_key_accepted_and_refused(server: Server) -> None:
    with Client(server.url) as nokey, pytest.raises(Unauthorized) as err:
        nokey.search("cat")
    assert err.value.status == 401 and err.value.code == "unauthorized" and "API key" in err.value.detail
    with Client(server.url, api_key="wrong") as bad, pytest.raises(Unauthorized) as err:
        bad.search("cat")
    assert err.value.status == 401 and "unknown API key" in err.value.detail
    with Client(server.url, api_key="r1") as reader:
        assert ids(reader.search("cat sits", k=1, mode="dense")) == ["cat"]
        with pytest.raises(Unauthorized) as err:
            reader.upsert([{"id": "x", "text": "y"}])
        assert err.value.status == 403 and err.value.code == "forbidden" and "'write'" in err.value.detail


def test_server_error_bodies(server: Server, xl: Client) -> None:
    with pytest.raises(BadRequest) as err:
        xl.search("x" * (MAX_QUERY_CHARS + 1))
    e = err.value
    assert e.status == 422 and e.code == "query_too_long" and e.body == {"error": e.code, "detail": e.detail}
    assert str(e).startswith(f"POST {server.url}/search answered 422 query_too_long: ") and e.attempts == 1
    with pytest.raises(BadRequest) as err:
        xl.search("cat", langs=["fr"])  # valid, but not a language of the index: the server says so
    assert err.value.status == 422 and "fr" in err.value.detail


def test_invalid_requests_fail_before_sending(xl: Client, flaky: Flaky) -> None:
    with pytest.raises(ValidationError, match="k"):
        xl.search("cat", k=0)
    with pytest.raises(ValidationError, match="query is empty"):
        xl.search("   ")
    with pytest.raises(ValidationError, match="nope"):
        xl.search("cat", nope=1)
    with pytest.raises(ValueError, match="non-empty"):
        xl.get("")
    assert flaky.seen == []


# -- retries ------------------------------------------------------------------------------------------------------

BUSY = {"error": "overloaded", "detail": "the query queue is full"}
NOT_READY = {"error": "index_not_ready", "detail": "loading"}


def test_retry_honours_retry_after(xl: Client, flaky: Flaky) -> None:
    flaky.queue[:] = [(503, "1", NOT_READY), (429, "1", BUSY)]
    start = time.monotonic()
    assert ids(xl.search("cat sits", k=1, mode="dense")) == ["cat"]
    elapsed = time.monotonic() - start
    assert flaky.seen == ["/search"] * 3
    assert 2.0 <= elapsed < 10.0  # two waits of Retry-After: 1 s (the backoff alone would be ~0.01 s)


def test_retry_backs_off_without_retry_after_and_gives_up(server: Server, flaky: Flaky) -> None:
    flaky.queue[:] = [(503, None, NOT_READY)] * 3
    with Client(server.url, api_key="r1", max_retries=2, backoff=0.01) as xl, pytest.raises(Unavailable) as err:
        xl.search("cat")
    assert flaky.seen == ["/search"] * 3
    e = err.value
    assert e.status == 503 and e.attempts == 3 and e.body == NOT_READY and str(e).endswith("(after 3 attempts)")
    flaky.seen.clear()
    flaky.queue[:] = [(429, "0", BUSY)] * 2
    with Client(server.url, api_key="r1", max_retries=0) as xl, pytest.raises(Overloaded) as over:
        xl.search("cat")
    assert flaky.seen == ["/search"] and over.value.attempts == 1 and over.value.code == "overloaded"


def test_other_errors_and_ready_are_not_retried(xl: Client, flaky: Flaky) -> None:
    flaky.queue[:] = [(500, None, {"error": "internal_error", "detail": "boom"}),
                      (503, "1", {"ready": False, "detail": "loading"})]
    with pytest.raises(ApiError) as err:
        xl.search("cat")
    assert isinstance(err.value, ServerError) and err.value.status == 500 and err.value.detail == "boom"
    ready = xl.ready()
    assert ready.ready is False and ready.detail == "loading"
    assert flaky.seen == ["/search", "/ready"]  # one request each: no retry


class Counting(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


def test_connection_errors_are_retried_and_name_the_url() -> None:
    from benchmarks.demo_bench import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    transport = Counting()
    with Client(url, max_retries=2, backoff=0.01, transport=transport) as xl, pytest.raises(ConnectionFailed) as err:
        xl.upsert([{"id": "a", "text": "b"}])  # a POST: safe to repeat, it never reached a server
    assert transport.calls == 3
    msg = str(err.value)
    assert msg.startswith(f"cannot connect to {url} (POST {url}/documents): ") and msg.endswith("(after 3 attempts)")
    assert err.value.status is None and err.value.attempts == 3


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="http://"):
        Client("127.0.0.1:8765")
    with pytest.raises(ValueError, match="max_retries"):
        Client(max_retries=-1)
    with pytest.raises(ValueError, match="collection"):
        Client(collection="")


# -- async ----------------------------------------------------------------------------------------------------------


def test_async_client(server: Server, flaky: Flaky) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, api_key="w1", backoff=0.01) as xl:
            assert (await xl.health()).status == "ok"
            hits = await asyncio.gather(xl.search("cat sits", k=1, mode="dense"),
                                        xl.search("hund park", k=1, mode="dense", langs=["de"]))
            assert [ids(h) for h in hits] == [["cat"], ["hund"]]
            assert [ids(r)[0] for r in await xl.search_batch(["cat sits", "dog runs"], mode="dense")] == ["cat", "dog"]
            up = await xl.upsert([{"id": "async/1", "text": "zebras graze", "lang": "en"}])
            assert up.upserted == 1
            assert (await xl.get("async/1")).text == "zebras graze"
            assert (await xl.delete("async/1")).deleted
            with pytest.raises(NotFound):
                await xl.get("async/1")
            assert (await xl.embed(["Danke"])).dim == 16
            assert len((await xl.mine(SRC, TGT, k=2, centering="off", threshold=0.9)).pairs) == 3
            assert (await xl.ready()).ready
            flaky.queue[:] = [(503, "1", NOT_READY)]
            start = time.monotonic()
            assert ids(await xl.search("cat sits", k=1, mode="dense")) == ["cat"]
            assert time.monotonic() - start >= 1.0
        async with AsyncClient(server.url) as anonymous:
            with pytest.raises(Unauthorized):
                await anonymous.search("cat")

    asyncio.run(run())
    assert flaky.seen == ["/health", "/search", "/search", "/search/batch", "/documents"] + [
        "/documents/async/1"] * 3 + ["/embed", "/mine", "/ready", "/search", "/search", "/search"]
