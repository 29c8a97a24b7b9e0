from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from tests.conftest import FakeEncoder, write_jsonl

DOCS = [
    {"id": f"d{i}", "title": f"title {i}", "text": text, "lang": lang}
    for i, (text, lang) in enumerate([
        ("apples and pears grow on trees", "en"),
        ("Äpfel und Birnen wachsen an Bäumen", "de"),
        ("苹果和梨长在树上", "zh"),
        ("the stock market fell today", "en"),
        ("la bourse a chuté aujourd'hui", "fr"),
        ("सेब और नाशपाती पेड़ों पर उगते हैं", "hi"),
    ])
]


class ReverseReranker:
    """Scores passages by their position from the end: reranking must reverse the fused order."""

    name = "reverse"

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        self.calls.append((query, list(passages)))
        return np.arange(len(passages), dtype=np.float32)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("api")
    corpus = write_jsonl(tmp / "c.jsonl", DOCS)
    build_index([corpus], tmp / "idx", FakeEncoder(), BuildOptions(progress=False, shard_size=4))
    return tmp / "idx"


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    app = create_app(Settings(index=index_dir, max_query_chars=100), encoder=FakeEncoder())
    with TestClient(app) as c:
        yield c


def test_health_ready_and_openapi(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["ready"] is True and ready["docs"] == 6 and ready["encoder"] == "fake"
    assert ready["languages"] == {"de": 1, "en": 2, "fr": 1, "hi": 1, "zh": 1}
    spec = client.get("/openapi.json").json()
    assert {"/search", "/embed", "/health", "/ready"} <= set(spec["paths"])
    assert spec["components"]["schemas"]["SearchRequest"]["examples"]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_search_modes_return_documents_with_provenance(client: TestClient, mode: str) -> None:
    r = client.post("/search", json={"query": "apples and pears", "k": 3, "mode": mode})
    assert r.status_code == 200, r.text
    body = r.json()
    top = body["results"][0]
    assert top["id"] == "d0" and top["lang"] == "en" and top["title"] == "title 0"
    assert top["snippet"] == "apples and pears grow on trees"
    expected_runs = {"dense": {"dense"}, "bm25": {"bm25"}, "hybrid": {"dense", "bm25"}}[mode]
    assert set(top["ranks"]) == expected_runs and top["ranks"][mode if mode != "hybrid" else "dense"] == 1
    assert body["fusion"] == ("weighted" if mode == "hybrid" else None)
    assert len(body["results"]) <= 3


def test_auto_mode_is_dense_on_a_multilingual_index_and_hybrid_on_one_language(client: TestClient,
                                                                              tmp_path: Path) -> None:
    body = client.post("/search", json={"query": "apples"}).json()
    assert body["mode"] == "dense" and body["fusion"] is None
    corpus = write_jsonl(tmp_path / "en.jsonl", [d for d in DOCS if d["lang"] == "en"])
    build_index([corpus], tmp_path / "en-idx", FakeEncoder(), BuildOptions(progress=False))
    with TestClient(create_app(Settings(index=tmp_path / "en-idx", warmup=False), encoder=FakeEncoder())) as c:
        body = c.post("/search", json={"query": "apples"}).json()
    assert body["mode"] == "hybrid" and body["fusion"] == "weighted"
    assert set(body["results"][0]["ranks"]) == {"dense", "bm25"}


def test_weighted_fusion_and_alpha_extremes_follow_one_retriever(client: TestClient) -> None:
    q = {"query": "market apples", "k": 6, "mode": "hybrid", "fusion": "weighted"}
    only_dense = client.post("/search", json={**q, "alpha": 1.0}).json()["results"]
    dense = client.post("/search", json={"query": "market apples", "k": 6, "mode": "dense"}).json()["results"]
    assert [h["id"] for h in only_dense] == [h["id"] for h in dense]
    only_bm25 = client.post("/search", json={**q, "alpha": 0.0}).json()["results"]
    bm25 = client.post("/search", json={"query": "market apples", "k": 6, "mode": "bm25"}).json()["results"]
    assert [h["id"] for h in only_bm25][: len(bm25)] == [h["id"] for h in bm25]


def test_language_filter(client: TestClient) -> None:
    r = client.post("/search", json={"query": "apples", "k": 10, "mode": "dense", "langs": ["ZH", "hin"]})
    assert r.status_code == 200
    assert {h["lang"] for h in r.json()["results"]} == {"zh", "hi"}


def test_embed(client: TestClient) -> None:
    r = client.post("/embed", json={"texts": ["a b", "c"], "kind": "passage"})
    body = r.json()
    assert body["dim"] == 16 and len(body["embeddings"]) == 2
    assert np.allclose(np.linalg.norm(body["embeddings"], axis=1), 1.0, atol=1e-5)
    assert np.allclose(body["embeddings"][0], FakeEncoder().vec("a b"), atol=1e-6)


@pytest.mark.parametrize("payload,status,code,fragment", [
    ({"query": "   "}, 422, "validation_error", "query: query is empty"),
    ({"query": ""}, 422, "validation_error", "query is empty"),
    ({"query": "x" * 101}, 422, "query_too_long", "101 characters; the limit is 100"),
    ({"query": "ok", "k": 0}, 422, "validation_error", "k: Input should be greater than or equal to 1"),
    ({"query": "ok", "k": 1001}, 422, "validation_error", "k: Input should be less than or equal to 1000"),
    ({"query": "ok", "mode": "sparse"}, 422, "validation_error",
     "mode: Input should be 'auto', 'dense', 'bm25' or 'hybrid'"),
    ({"query": "ok", "fusion": "max"}, 422, "validation_error", "fusion: Input should be 'rrf' or 'weighted'"),
    ({"query": "ok", "langs": ["12"]}, 422, "validation_error", "langs"),
    ({"query": "ok", "rerank": True}, 400, "reranker_not_configured", "no reranker is configured: build xlir's own"),
    ({"query": "ok", "extra": 1}, 422, "validation_error", "extra"),
])
def test_bad_requests_get_clear_json_errors(client: TestClient, payload: dict, status: int, code: str,
                                            fragment: str) -> None:
    r = client.post("/search", json=payload)
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code
    assert fragment in body["detail"]
    assert client.post("/search", json={"query": "still serving"}).status_code == 200


def test_bad_json_and_embed_limits(client: TestClient) -> None:
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    assert client.post("/embed", json={"texts": []}).status_code == 422
    r = client.post("/embed", json={"texts": ["ok", " "]})
    assert r.status_code == 422 and r.json() == {"error": "bad_query", "detail": "texts[1] is empty"}
    assert client.get("/nope").json()["error"] == "not_found"


def test_rerank_reorders_the_fused_candidates(index_dir: Path) -> None:
    rr = ReverseReranker()
    app = create_app(Settings(index=index_dir), encoder=FakeEncoder(), reranker=rr)
    with TestClient(app) as c:
        plain = c.post("/search", json={"query": "apples pears", "k": 4, "mode": "hybrid"}).json()["results"]
        r = c.post("/search", json={"query": "apples pears", "k": 4, "mode": "hybrid", "rerank": True,
                                    "rerank_depth": 4})
    body = r.json()
    assert body["reranked"] is True
    assert [h["id"] for h in body["results"]] == [h["id"] for h in plain][::-1]
    assert [h["ranks"]["rerank"] for h in body["results"]] == [1, 2, 3, 4]
    assert [h["ranks"]["fused"] for h in body["results"]] == [4, 3, 2, 1]
    query, passages = rr.calls[0]
    assert query == "apples pears" and passages[0] == "title 0\napples and pears grow on trees"


def test_missing_index_keeps_serving_and_says_why(tmp_path: Path) -> None:
    app = create_app(Settings(index=tmp_path / "missing"), encoder=FakeEncoder())
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and "does not exist" in r.json()["detail"]
        r = c.post("/search", json={"query": "x"})
        assert r.status_code == 503 and r.json()["error"] == "index_not_ready"
        assert "xlir index" in r.json()["detail"]


def test_index_built_with_another_encoder_is_refused(index_dir: Path) -> None:
    other = FakeEncoder(name="other", checksum="other-checksum")
    with TestClient(create_app(Settings(index=index_dir), encoder=other)) as c:
        r = c.post("/search", json={"query": "x"})
    assert r.status_code == 503
    assert "built with encoder 'fake'" in r.json()["detail"] and "'other'" in r.json()["detail"]


def test_concurrent_requests_are_encoded_in_shared_batches(index_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    enc = FakeEncoder()
    app = create_app(Settings(index=index_dir, batch_max_wait_ms=200, warmup=False), encoder=enc)
    with TestClient(app) as c, ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: c.post("/search", json={"query": f"apples {i}", "mode": "dense"}), range(8)))
    assert [r.status_code for r in rs] == [200] * 8
    assert sum(len(call) for call in enc.query_calls) == 8
    assert len(enc.query_calls) < 8  # at least two requests shared one encoder call
