"""API keys and scopes, body size limit, request limits, CORS, path confinement, no stack traces."""

import asyncio
import hmac
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import Depends
from fastapi.testclient import TestClient
from pydantic import ValidationError

from app.deps import get_service
from app.main import create_app
from app.security import ApiKeys, BodyLimit, confine_path, require_scope
from app.settings import Settings, parse_api_keys
from tests.conftest import FakeEncoder, fake_index
from tests.test_api import DOCS, ReverseReranker
from xlir.errors import PathNotAllowed

READ, WRITE = "reader-7f3a9c2e51", "writer-0b8d44e6a9"
KEYS = f"{READ}:read,{WRITE}:write"
OPEN_PATHS = {"/health", "/ready", "/metrics", "/collections/{name}/ready"}  # readiness of each collection too


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("security"), DOCS)


def make_app(index_dir: Path, **settings: object):  # type: ignore[no-untyped-def]
    app = create_app(Settings(index=index_dir, warmup=False, **settings), encoder=FakeEncoder())  # type: ignore[arg-type]

    async def write_probe() -> dict[str, bool]:
        return {"written": True}

    # what a future write route (/documents, /reload) declares
    app.add_api_route("/write-probe", write_probe, methods=["POST"], dependencies=[Depends(require_scope("write"))])
    return app


@pytest.fixture
def secured(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(make_app(index_dir, api_keys=KEYS)) as c:
        yield c


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- key parsing -----------------------------------------------------------------------------------------------

def test_key_specs_in_both_formats_and_write_implies_read() -> None:
    assert parse_api_keys("a1:read, b2:write") == {"a1": {"read"}, "b2": {"read", "write"}}
    assert parse_api_keys('{"a1": "read", "b:2": ["write"]}') == {"a1": {"read"}, "b:2": {"read", "write"}}
    assert parse_api_keys("  ") == {}


@pytest.mark.parametrize("spec,fragment", [
    ("a1", "entry 1 is not KEY:SCOPE"),
    ("a1:read,b2:admin", "entry 2: unknown scope 'admin'"),
    ("a1:read,a1:write", "entry 2: the same key is listed twice"),
    (":read", "entry 1 is not KEY:SCOPE"),
    ('{"a1": 3}', "entry 1: the scope must be"),
    ('{"a1": "read"', "not valid JSON"),
])
def test_malformed_key_specs_fail_at_start_up_without_echoing_keys(spec: str, fragment: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_api_keys(spec)
    monkeypatch.setenv("XLIR_API_KEYS", spec)
    with pytest.raises(ValidationError) as err:
        Settings()
    assert "a1" not in str(err.value).replace("api_keys", "")


def test_every_configured_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = ApiKeys.from_spec("k1:read,k2:write,k3:read")
    calls: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    assert keys.scopes_of("k1") == {"read"}  # the first key matches, the other two are still compared
    assert keys.scopes_of("nope") is None
    assert len(calls) == 6 and set(calls) == {(32, 32)}  # digests: equal lengths whatever the key's length
    assert "k1" not in repr(keys)


# --- scopes over HTTP ------------------------------------------------------------------------------------------

def test_missing_or_unknown_key_is_401_with_www_authenticate(secured: TestClient) -> None:
    for headers in ({}, bearer("wrong"), {"X-API-Key": "wrong"}, {"Authorization": f"Basic {READ}"}):
        r = secured.post("/search", json={"query": "apples"}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"] == "unauthorized" and set(r.json()) == {"error", "detail"}
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Authorization: Bearer KEY" in secured.post("/embed", json={"texts": ["x"]}).json()["detail"]


def test_read_and_write_keys_in_either_header_can_search_and_embed(secured: TestClient) -> None:
    for headers in (bearer(READ), {"X-API-Key": READ}, bearer(WRITE), {"X-API-Key": WRITE}):
        assert secured.post("/search", json={"query": "apples"}, headers=headers).status_code == 200
        assert secured.post("/embed", json={"texts": ["apples"]}, headers=headers).status_code == 200


def test_write_routes_need_the_write_scope(secured: TestClient) -> None:
    assert secured.post("/write-probe").status_code == 401
    r = secured.post("/write-probe", headers=bearer(READ))
    assert r.status_code == 403 and r.json() == {
        "error": "forbidden", "detail": "this API key has the scope(s) read; this endpoint needs 'write'"}
    assert secured.post("/write-probe", headers={"X-API-Key": WRITE}).json() == {"written": True}


def test_every_api_route_but_health_ready_metrics_needs_a_key(secured: TestClient) -> None:
    """Router-wide: a route added later (e.g. /mine) is protected without declaring anything."""
    paths = secured.get("/openapi.json", headers=bearer(READ)).json()["paths"]
    assert {"/search", "/embed", "/health", "/ready", "/metrics"} <= set(paths)
    for path, operations in paths.items():
        if path == "/write-probe":
            continue
        for method in operations:
            r = secured.request(method, path.replace("{name}", "default"), json={})  # a collection it serves
            if path in OPEN_PATHS:
                assert r.status_code == 200, path
            else:
                assert r.status_code == 401, (method, path, r.text)


def test_metrics_can_require_a_read_key(index_dir: Path) -> None:
    with TestClient(make_app(index_dir, api_keys=KEYS, metrics_auth=True)) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(READ)).status_code == 200
        assert c.get("/health").status_code == 200


def test_openapi_documents_both_key_headers(secured: TestClient) -> None:
    schemes = secured.get("/openapi.json", headers=bearer(READ)).json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


def test_without_keys_everything_is_open_and_the_log_says_so(index_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.security"), TestClient(make_app(index_dir)) as c:
        assert c.post("/search", json={"query": "apples"}).status_code == 200
        assert c.post("/write-probe").status_code == 200
    assert any("no API keys configured" in r.message and r.levelno == logging.WARNING for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="app.security"), TestClient(make_app(index_dir, api_keys=KEYS)):
        pass
    assert any("1 read-only, 1 with write" in r.message for r in caplog.records)


# --- API documentation (XLIR_PUBLIC_DOCS) ----------------------------------------------------------------------

DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


def test_docs_need_a_read_key_when_keys_are_set(secured: TestClient) -> None:
    for path in DOCS_PATHS:
        for headers in ({}, bearer("wrong"), {"X-API-Key": "wrong"}, {"Authorization": f"Basic {READ}"}):
            r = secured.get(path, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert r.json()["error"] == "unauthorized" and r.headers["WWW-Authenticate"].startswith("Bearer")
        for headers in (bearer(READ), {"X-API-Key": READ}, {"Authorization": f"bearer {WRITE}"}):
            assert secured.get(path, headers=headers).status_code == 200, (path, headers)
    assert "paths" not in secured.get("/openapi.json").json()  # nothing of the API is revealed
    assert secured.get("/health").status_code == 200 and secured.get("/ready").status_code == 200


def test_public_docs_setting(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestClient(make_app(index_dir, api_keys=KEYS, public_docs=True)) as c:
        for path in DOCS_PATHS:
            assert c.get(path).status_code == 200, path
        assert c.post("/search", json={"query": "apples"}).status_code == 401  # only the docs are opened
    with TestClient(make_app(index_dir)) as c:  # no keys: the default opens them
        for path in DOCS_PATHS:
            assert c.get(path).status_code == 200, path
    with TestClient(make_app(index_dir, public_docs=False)) as c:  # no keys to ask for: open like everything else
        assert c.get("/openapi.json").status_code == 200
    with TestClient(make_app(index_dir, api_keys=KEYS, public_docs=False)) as c:
        assert c.get("/docs").status_code == 401
    monkeypatch.setenv("XLIR_PUBLIC_DOCS", "true")
    assert Settings().public_docs is True
    monkeypatch.setenv("XLIR_PUBLIC_DOCS", "false")
    assert Settings().public_docs is False
    monkeypatch.delenv("XLIR_PUBLIC_DOCS")
    assert Settings().public_docs is None


# --- body size -------------------------------------------------------------------------------------------------

def test_bodies_over_the_limit_are_413_even_without_content_length(index_dir: Path) -> None:
    with TestClient(make_app(index_dir, max_body_bytes=200)) as c:
        assert c.post("/search", json={"query": "apples " * 10}).status_code == 200
        big = {"query": "apples " * 40}
        r = c.post("/search", json=big)
        assert r.status_code == 413
        assert r.json() == {"error": "payload_too_large",
                            "detail": "the request body is over the limit of 200 bytes (XLIR_MAX_BODY_BYTES)"}

        def chunks() -> Iterator[bytes]:  # streamed: no Content-Length header at all
            yield b'{"query": "'
            for _ in range(30):
                yield b"apples apples "
            yield b'"}'

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        assert c.post("/search", json={"query": "still fine"}).status_code == 200


def test_body_limit_counts_bytes_when_content_length_lies() -> None:
    called = []

    async def inner(scope, receive, send):  # type: ignore[no-untyped-def]
        called.append(await receive())

    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": b"x" * 60, "more_body": True} for _ in range(3)]

    async def receive():  # type: ignore[no-untyped-def]
        return chunks.pop(0)

    async def send(message):  # type: ignore[no-untyped-def]
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/search", "headers": [(b"content-length", b"10")]}
    asyncio.run(BodyLimit(inner, max_bytes=100)(scope, receive, send))
    assert not called and sent[0]["status"] == 413

    small = [{"type": "http.request", "body": b"ab", "more_body": True},
             {"type": "http.request", "body": b"cd", "more_body": False}]

    async def receive_small():  # type: ignore[no-untyped-def]
        return small.pop(0)

    asyncio.run(BodyLimit(inner, max_bytes=100)({**scope, "headers": []}, receive_small, send))
    assert called == [{"type": "http.request", "body": b"abcd", "more_body": False}]  # replayed whole


# --- request limits --------------------------------------------------------------------------------------------

def test_k_texts_query_length_and_rerank_depth_follow_the_settings(index_dir: Path) -> None:
    app = create_app(Settings(index=index_dir, warmup=False, max_k=10, embed_max_texts=2, max_query_chars=20,
                              max_rerank_depth=3), encoder=FakeEncoder(), reranker=ReverseReranker())
    with TestClient(app) as c:
        assert c.post("/search", json={"query": "apples", "k": 10}).status_code == 200
        r = c.post("/search", json={"query": "apples", "k": 11})
        assert r.status_code == 422 and r.json() == {"error": "bad_query", "detail": "k=11 is over the limit 10"}
        r = c.post("/search", json={"query": "x" * 21})
        assert r.status_code == 422 and r.json()["error"] == "query_too_long"
        r = c.post("/embed", json={"texts": ["a", "b", "c"]})
        assert r.status_code == 422 and "the limit per request is 2" in r.json()["detail"]
        r = c.post("/embed", json={"texts": ["a", "y" * 21]})
        assert r.status_code == 422 and r.json()["error"] == "query_too_long"
        r = c.post("/search", json={"query": "apples", "rerank": True, "rerank_depth": 4})
        assert r.status_code == 422 and "rerank_depth 4 is over the limit 3" in r.json()["detail"]
        assert c.post("/search", json={"query": "apples", "rerank": True, "rerank_depth": 3}).status_code == 200


# --- CORS ------------------------------------------------------------------------------------------------------

def test_cors_is_off_by_default(index_dir: Path) -> None:
    with TestClient(make_app(index_dir)) as c:
        r = c.options("/search", headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/health", headers={"Origin": "https://a.example"})
        assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLIR_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("XLIR_CORS_ORIGINS", '["https://a.example"]')
    assert Settings().cors_origins == ["https://a.example"]
    with TestClient(make_app(index_dir, api_keys=KEYS)) as c:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        r = c.options("/search", headers={"Origin": "https://a.example", **pre})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://a.example"
        r = c.options("/search", headers={"Origin": "https://evil.example", **pre})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = c.post("/search", json={"query": "apples"}, headers={"Origin": "https://a.example", **bearer(READ)})
        assert r.headers["access-control-allow-origin"] == "https://a.example"


# --- paths -----------------------------------------------------------------------------------------------------

def test_confine_path_keeps_paths_inside_the_data_dir(tmp_path: Path) -> None:
    base = tmp_path / "data"
    (base / "indexes" / "a").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    assert confine_path(base, "indexes/a") == (base / "indexes" / "a").resolve()
    assert confine_path(base, "indexes/../indexes/new") == (base / "indexes" / "new").resolve()  # may not exist yet
    assert confine_path(base, str(base / "indexes" / "a")) == (base / "indexes" / "a").resolve()
    (base / "escape").symlink_to(tmp_path / "secret", target_is_directory=True)
    (base / "inner").symlink_to(base / "indexes", target_is_directory=True)
    assert confine_path(base, "inner/a") == (base / "indexes" / "a").resolve()
    for bad in ("../secret", "indexes/../../secret", str(tmp_path / "secret"), "/etc/passwd", "escape",
                "escape/x", "", "a\x00b"):
        with pytest.raises(PathNotAllowed) as err:
            confine_path(base, bad)
        assert str(base) not in err.value.detail  # the server's layout is not revealed


def test_data_dir_defaults_to_the_index_parent(tmp_path: Path) -> None:
    assert Settings(index=tmp_path / "idx").data_root == tmp_path.resolve()
    assert Settings(index=tmp_path / "idx", data_dir=tmp_path / "d").data_root == tmp_path / "d"
    os.fspath(Settings().data_root)


# --- no stack traces -------------------------------------------------------------------------------------------

class ExplodingService:
    async def search(self, req: object) -> object:
        raise RuntimeError("secret-internal-state at /srv/xlir/app.py line 42")


def test_unexpected_errors_are_500_without_trace_and_logged(index_dir: Path, caplog: pytest.LogCaptureFixture
                                                            ) -> None:
    app = make_app(index_dir)
    app.dependency_overrides[get_service] = ExplodingService
    with caplog.at_level(logging.ERROR, logger="app.errors"), \
            TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "apples"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal_error",
                        "detail": "unexpected server error; the server log has the details"}
    assert "Traceback" not in r.text and "secret-internal-state" not in r.text and "RuntimeError" not in r.text
    logged = [rec for rec in caplog.records if rec.exc_info]
    assert logged and "secret-internal-state" in str(logged[0].exc_info[1])  # type: ignore[index]
