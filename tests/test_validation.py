"""Input validation of every endpoint (issue 17, points 2 and 5): text that UTF-8 cannot encode, strict numbers and
booleans, language filters checked against the index, every field checked whatever the others say, unparsable
bodies. Each bad request is a 4xx with the one error body, never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index
from tests.test_api import DOCS, ReverseReranker

LONE = "\ud800"  # valid JSON as the escape "\ud800", but no UTF-8 encoding exists


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("validation"), DOCS)


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    app = create_app(Settings(index=index_dir, warmup=False, reload_interval=0, max_rerank_depth=20),
                     encoder=FakeEncoder(), reranker=ReverseReranker())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def post_raw(client: TestClient, path: str, body: object) -> tuple[int, dict[str, str]]:
    """Send ``body`` as JSON with every non-ASCII character escaped (so a lone surrogate travels as ``\\ud800``)."""
    raw = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=True).encode("ascii")
    r = client.post(path, content=raw, headers={"content-type": "application/json"})
    return r.status_code, r.json()


DOC = {"id": "v1", "title": "t", "text": "some text", "lang": "en"}


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/search", {"query": f"abc {LONE}"}, "query"),
    ("/search", {"query": "abc", "lang": f"e{LONE}"}, "lang"),
    ("/search", {"query": "abc", "langs": ["en", LONE]}, "langs.1"),
    ("/embed", {"texts": ["ok", f"x{LONE}y"]}, "texts.1"),
    ("/embed", {"texts": ["ok"], "lang": LONE}, "lang"),
    ("/documents", {"documents": [{**DOC, "id": f"a{LONE}"}]}, "documents.0.id"),
    ("/documents", {"documents": [DOC, {**DOC, "text": f"{LONE} text"}]}, "documents.1.text"),
    ("/documents", {"documents": [{**DOC, "title": LONE}]}, "documents.0.title"),
    ("/documents", {"documents": [{**DOC, "lang": LONE}]}, "documents.0.lang"),
    ("/mine", {"src": [f"Danke{LONE}"], "tgt": ["thanks"]}, "src.0"),
    ("/mine", {"src": ["Danke"], "tgt": ["ok", "\udfff thanks"]}, "tgt.1"),
])
def test_text_utf8_cannot_encode_is_a_422_naming_the_field(client: TestClient, path: str, body: dict[str, object],
                                                           field: str) -> None:
    status, err = post_raw(client, path, body)
    assert status == 422, err
    assert err["error"] == "validation_error"
    assert err["detail"].startswith(f"{field}: not valid Unicode text"), err
    assert "lone surrogate" in err["detail"] and "cannot be encoded as UTF-8" in err["detail"]
    assert client.post("/search", json={"query": "apples"}).status_code == 200  # the server is fine


def test_a_lone_surrogate_in_a_field_name_is_a_422(client: TestClient) -> None:
    status, err = post_raw(client, "/search", {"query": "abc", f"x{LONE}": 1})
    assert status == 422 and err["error"] == "validation_error"


def test_valid_text_in_any_script_and_astral_characters_is_accepted(client: TestClient) -> None:
    status, body = post_raw(client, "/search", {"query": "苹果 🍎 सेब \U0001f600"})  # escaped as surrogate *pairs*
    assert status == 200, body


@pytest.mark.parametrize(("body", "field"), [
    ({"query": "apples", "k": True}, "k"),
    ({"query": "apples", "k": "5"}, "k"),
    ({"query": "apples", "k": 5.0}, "k"),
    ({"query": "apples", "k": 10**30}, "k"),
    ({"query": "apples", "k": -3}, "k"),
    ({"query": "apples", "rerank_depth": False}, "rerank_depth"),
    ({"query": "apples", "alpha": True}, "alpha"),
    ({"query": "apples", "alpha": "0.5"}, "alpha"),
    ({"query": "apples", "alpha": -1e308}, "alpha"),
    ({"query": "apples", "rrf_k": False}, "rrf_k"),
    ({"query": "apples", "rerank": 1}, "rerank"),
    ({"query": "apples", "rerank": "true"}, "rerank"),
])
def test_search_numbers_and_booleans_are_strict(client: TestClient, body: dict[str, object], field: str) -> None:
    status, err = post_raw(client, "/search", body)
    assert status == 422 and err["error"] == "validation_error", err
    assert err["detail"].startswith(f"{field}: "), err


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/embed", {"texts": ["a"], "centered": 1}, "centered"),
    ("/embed", {"texts": ["a"], "centered": "false"}, "centered"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "k": True}, "k"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "threshold": True}, "threshold"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "threshold": "0.5"}, "threshold"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "one_to_one": 0}, "one_to_one"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "dedup": 1}, "dedup"),
    ("/mine", {"src": ["a"], "tgt": ["b"], "texts": "yes"}, "texts"),
])
def test_embed_and_mine_numbers_and_booleans_are_strict(client: TestClient, path: str, body: dict[str, object],
                                                        field: str) -> None:
    status, err = post_raw(client, path, body)
    assert status == 422 and err["detail"].startswith(f"{field}: "), err


def test_floats_take_integers(client: TestClient) -> None:
    for body in ({"query": "apples", "alpha": 1, "mode": "hybrid"}, {"query": "apples", "rrf_k": 10}):
        status, res = post_raw(client, "/search", body)
        assert status == 200, res
    status, res = post_raw(client, "/mine", {"src": ["a"], "tgt": ["b"], "threshold": 0})
    assert status == 200, res


def test_non_finite_numbers_are_refused(client: TestClient) -> None:
    for raw in (b'{"query": "apples", "alpha": NaN}', b'{"query": "apples", "rrf_k": Infinity}'):
        status, err = post_raw(client, "/search", raw)
        assert status == 422 and "finite" in err["detail"], err


def test_a_language_filter_missing_from_the_index_lists_its_languages(client: TestClient) -> None:
    status, err = post_raw(client, "/search", {"query": "apples", "langs": ["en", "qq"]})
    assert status == 422 and err == {
        "error": "bad_query", "detail": "langs: 'qq' not in this index; its languages are de, en, fr, hi, zh"}
    status, err = post_raw(client, "/search", {"query": "apples", "langs": ["ja"]})  # a real language, not here
    assert status == 422 and "'ja' not in this index" in err["detail"]
    status, body = post_raw(client, "/search", {"query": "apples", "langs": ["eng", "de-DE"]})  # normalised codes
    assert status == 200 and {h["lang"] for h in body["results"]} <= {"en", "de"}  # type: ignore[attr-defined]


def test_the_language_filter_follows_live_writes(client: TestClient) -> None:
    assert post_raw(client, "/search", {"query": "x", "langs": ["ja"]})[0] == 422
    assert client.post("/documents", json={"documents": [{"id": "j1", "text": "りんご", "lang": "ja"}]}
                       ).status_code == 200
    status, body = post_raw(client, "/search", {"query": "りんご", "langs": ["ja"], "mode": "bm25"})
    assert status == 200 and [h["id"] for h in body["results"]] == ["j1"]  # type: ignore[index]
    assert client.delete("/documents/j1").status_code == 200
    assert post_raw(client, "/search", {"query": "x", "langs": ["ja"]})[0] == 422


def test_rerank_depth_is_checked_without_rerank(client: TestClient) -> None:
    status, err = post_raw(client, "/search", {"query": "apples", "rerank_depth": 21})  # rerank is false
    assert status == 422 and err == {"error": "bad_query", "detail": "rerank_depth 21 is over the limit 20"}
    status, err = post_raw(client, "/search", {"query": "apples", "rerank_depth": 0, "rerank": False})
    assert status == 422 and err["detail"].startswith("rerank_depth: ")
    assert post_raw(client, "/search", {"query": "apples", "rerank_depth": 20})[0] == 200


def test_a_defaulted_rerank_depth_follows_a_lower_limit(index_dir: Path) -> None:
    rr = ReverseReranker()
    app = create_app(Settings(index=index_dir, warmup=False, max_rerank_depth=3), encoder=FakeEncoder(), reranker=rr)
    with TestClient(app) as c:
        r = c.post("/search", json={"query": "apples", "rerank": True, "k": 2})
        assert r.status_code == 200, r.text
        assert len(rr.calls[-1][1]) == 3  # the default 50 lowered to the server's limit, not an error
        assert c.post("/search", json={"query": "apples"}).status_code == 200


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    (b'{"query": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"query": "\xff\xfe"}', "not UTF-8"),
    (b'{"query": "x", "k": ' + b"9" * 5000 + b"}", "cannot be parsed as JSON"),
])
def test_unparsable_bodies_are_422(client: TestClient, raw: bytes, fragment: str) -> None:
    for path in ("/search", "/embed", "/documents", "/mine"):
        status, err = post_raw(client, path, raw)
        assert status == 422 and err["error"] == "validation_error", (path, err)
        assert fragment in err["detail"], err


def test_moderately_nested_json_in_a_field_is_a_422(client: TestClient) -> None:
    nested: object = "x"
    for _ in range(500):
        nested = [nested]
    for path, body in (("/search", {"query": "a", "langs": nested}), ("/embed", {"texts": nested}),
                       ("/mine", {"src": nested, "tgt": ["b"]}), ("/documents", {"documents": nested})):
        status, err = post_raw(client, path, body)
        assert status == 422 and set(err) == {"error", "detail"}, (path, err)
