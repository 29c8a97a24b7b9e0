"""POST /documents, DELETE /documents/{id}, POST /reload and /ready through the app (TestClient, fake encoder)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.state import AppState
from indexer.build import BuildOptions, build_index
from indexer.compact import compact
from indexer.live import current_name
from tests.conftest import FakeEncoder, write_jsonl

DOCS = [
    {"id": f"d{i}", "title": f"title {i}", "text": text, "lang": lang}
    for i, (text, lang) in enumerate([
        ("apples and pears grow on trees", "en"),
        ("Äpfel und Birnen wachsen an Bäumen", "de"),
        ("the stock market fell today", "en"),
        ("la bourse a chuté aujourd'hui", "fr"),
    ])
]


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    corpus = write_jsonl(tmp_path / "c.jsonl", DOCS)
    build_index([corpus], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False, shard_size=3))
    return tmp_path / "idx"


def _client(index_dir: Path, **kw: object) -> TestClient:
    settings = Settings(index=index_dir, reload_interval=0, warmup=False, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, encoder=FakeEncoder()))


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    with _client(index_dir) as c:
        yield c


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app_state["xlir"]
    return state


def _ids(client: TestClient, query: str, mode: str = "dense", k: int = 10) -> list[str]:
    r = client.post("/search", json={"query": query, "mode": mode, "k": k})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_upsert_is_searchable_at_once_and_replaces_by_id(client: TestClient) -> None:
    r = client.post("/documents", json={"documents": [
        {"id": "n1", "text": "zebras graze on the savanna", "lang": "en"},
        {"id": "d2", "title": "Börse", "text": "der Aktienmarkt fiel heute", "lang": "de-DE"},
    ]})
    assert r.status_code == 200, r.text
    assert r.json() == {"upserted": 2, "replaced": 1, "generation": "g000000", "delta_docs": 2}
    assert _ids(client, "zebras savanna", "bm25") == ["n1"]
    assert _ids(client, "zebras graze on the savanna", "dense", 1) == ["n1"]
    assert "d2" not in _ids(client, "stock market fell", "bm25")  # the old text of d2 is gone
    hit = client.post("/search", json={"query": "Aktienmarkt", "mode": "bm25"}).json()["results"][0]
    assert (hit["id"], hit["lang"], hit["title"]) == ("d2", "de", "Börse")
    ready = client.get("/ready").json()
    assert ready["docs"] == 5 and ready["delta_docs"] == 2 and ready["tombstones"] == 1
    assert ready["languages"] == {"de": 2, "en": 2, "fr": 1} and ready["generation"] == "g000000"


def test_delete_and_unknown_ids(client: TestClient) -> None:
    r = client.delete("/documents/d0")
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert "d0" not in _ids(client, "apples and pears", "hybrid")
    r = client.delete("/documents/d0")
    assert r.status_code == 404 and r.json()["error"] == "document_not_found"
    assert client.get("/ready").json()["docs"] == 3


def test_validation_and_limits(index_dir: Path) -> None:
    with _client(index_dir, max_upsert_docs=2) as c:
        too_many = {"documents": [{"id": f"x{i}", "text": "t", "lang": "en"} for i in range(3)]}
        r = c.post("/documents", json=too_many)
        assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
        r = c.post("/documents", json={"documents": [{"id": "x", "text": "  ", "lang": "en"}]})
        assert r.status_code == 422 and "empty" in r.json()["detail"]
        r = c.post("/documents", json={"documents": [{"id": "x", "text": "t", "lang": "klingon"}]})
        assert r.status_code == 422
        r = c.post("/documents", json={"documents": []})
        assert r.status_code == 422 and r.json()["error"] == "validation_error"
        r = c.post("/documents", json={"documents": [{"id": "x", "text": "Der Hund schläft im Garten."}]})
        assert r.status_code == 200  # language detected
        assert c.get("/ready").json()["docs"] == 5


def test_write_routes_need_the_write_scope(index_dir: Path) -> None:
    with _client(index_dir, api_keys="r1:read,w1:write") as c:
        body = {"documents": [{"id": "n", "text": "hello", "lang": "en"}]}
        assert c.post("/documents", json=body).status_code == 401
        assert c.post("/documents", json=body, headers={"X-API-Key": "r1"}).status_code == 403
        assert c.delete("/documents/d1", headers={"X-API-Key": "r1"}).status_code == 403
        assert c.post("/reload", headers={"X-API-Key": "r1"}).status_code == 403
        assert c.post("/documents", json=body, headers={"X-API-Key": "w1"}).status_code == 200
        assert c.delete("/documents/d1", headers={"Authorization": "Bearer w1"}).status_code == 200


def test_writes_survive_a_restart_and_reload_follows_a_compaction(index_dir: Path) -> None:
    with _client(index_dir) as c:
        r = c.post("/documents", json={"documents": [{"id": "n", "text": "zebras", "lang": "en"}]})
        assert r.status_code == 200
        assert c.delete("/documents/d3").status_code == 200
    with _client(index_dir) as c:  # a new process: the log is replayed
        assert _ids(c, "zebras", "bm25") == ["n"] and c.get("/ready").json()["docs"] == 4
        compact(index_dir)  # e.g. `xlir compact` from another process
        assert c.get("/ready").json()["generation"] == "g000000"
        r = c.post("/reload")
        assert r.status_code == 200 and r.json() == {"reloaded": True, "generation": "g000001", "delta_docs": 0,
                                                      "tombstones": 0}
        assert _ids(c, "zebras", "bm25") == ["n"] and c.get("/ready").json()["docs"] == 4
        assert c.post("/reload").json()["reloaded"] is False


def test_a_bad_new_generation_keeps_the_old_one_serving(index_dir: Path) -> None:
    with _client(index_dir) as c:
        c.post("/documents", json={"documents": [{"id": "n", "text": "zebras", "lang": "en"}]})
        compact(index_dir)
        gen = index_dir / "generations" / "g000001"
        shard = next(gen.glob("shards/*/docs.jsonl"))
        shard.write_bytes(shard.read_bytes() + b"x")  # damaged after publishing: sizes differ from the manifest
        r = c.post("/reload")
        assert r.status_code == 503 and "damaged" in r.json()["detail"]
        live = state_of(c).live
        assert live is not None and live.refresh() is False  # the poller does not retry the same broken generation
        ready = c.get("/ready").json()
        assert ready["generation"] == "g000000" and "damaged" in ready["reload_error"]
        assert _ids(c, "zebras", "bm25") == ["n"]  # still served from the old generation and its log
    assert current_name(index_dir) == "generations/g000001"
    shutil.rmtree(gen)


def test_background_compaction_above_the_threshold(index_dir: Path) -> None:
    with _client(index_dir, compact_threshold=3) as c:
        for i in range(3):
            assert c.post("/documents", json={"documents": [{"id": f"n{i}", "text": f"zebra {i}", "lang": "en"}]}
                          ).status_code == 200
        for _ in range(200):
            if c.get("/ready").json()["generation"] == "g000001":
                break
            time.sleep(0.05)
        ready = c.get("/ready").json()
        assert ready["generation"] == "g000001" and ready["delta_docs"] == 0 and ready["docs"] == 7
        assert sorted(_ids(c, "zebra", "bm25")) == ["n0", "n1", "n2"]
