"""GET /metrics: Prometheus exposition parsed back, counts moving with requests, one registry per app."""

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.deps import get_service
from app.main import create_app
from app.metrics import Metrics
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index
from tests.test_api import DOCS
from xlir.errors import Overloaded


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("metrics"), DOCS)


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())) as c:
        yield c


def scrape(c: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_request_counts_and_latency_per_route_template(client: TestClient) -> None:
    before = scrape(client)
    for q in ("apples", "pears", "market"):
        assert client.post("/search", json={"query": q, "mode": "dense"}).status_code == 200
    assert client.post("/search", json={"query": "x", "k": 0}).status_code == 422
    assert client.get("/nope/12345").status_code == 404
    after = scrape(client)
    ok = {"endpoint": "/search", "method": "POST", "status": "200"}
    assert value(after, "xlir_http_requests_total", **ok) - value(before, "xlir_http_requests_total", **ok) == 3
    assert value(after, "xlir_http_requests_total", endpoint="/search", method="POST", status="422") == 1
    assert value(after, "xlir_http_requests_total", endpoint="unmatched", method="GET", status="404") == 1
    assert value(after, "xlir_http_requests_total", endpoint="/metrics", method="GET", status="200") >= 1
    assert value(after, "xlir_http_request_duration_seconds_count", endpoint="/search", method="POST") == 4
    assert value(after, "xlir_http_request_duration_seconds_sum", endpoint="/search", method="POST") > 0
    assert value(after, "xlir_http_request_duration_seconds_bucket", endpoint="/search", method="POST",
                 le="+Inf") == 4
    assert "12345" not in client.get("/metrics").text  # raw paths never become labels


def test_path_parameters_are_labelled_by_template(index_dir: Path) -> None:
    app = create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())

    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    app.add_api_route("/items/{item_id}", item, methods=["GET"])
    with TestClient(app) as c:
        for i in (1, 2, 3):
            assert c.get(f"/items/{i}").status_code == 200
        samples = scrape(c)
    assert value(samples, "xlir_http_requests_total", endpoint="/items/{item_id}", method="GET", status="200") == 3


def test_batch_sizes_index_size_and_languages(client: TestClient) -> None:
    for q in ("apples", "pears"):
        client.post("/search", json={"query": q, "mode": "dense"})
    client.post("/search", json={"query": "bm25 only", "mode": "bm25"})  # never reaches the encoder
    s = scrape(client)
    assert value(s, "xlir_batch_size_sum") == 2 and 1 <= value(s, "xlir_batch_size_count") <= 2
    assert value(s, "xlir_queue_depth") == 0
    assert value(s, "xlir_ready") == 1 and value(s, "xlir_index_documents") == 6
    langs = {dict(labels)["lang"]: v for (name, labels), v in s.items() if name == "xlir_index_documents_by_language"}
    assert langs == {"de": 1, "en": 2, "fr": 1, "hi": 1, "zh": 1}
    assert value(s, "xlir_index_bytes") > 1000


def test_queue_depth_is_read_from_the_batcher_at_scrape_time() -> None:
    m = Metrics()
    index = SimpleNamespace(size=3, languages={"en": 3}, manifest=SimpleNamespace(files={}))
    state = SimpleNamespace(service=SimpleNamespace(batcher=SimpleNamespace(depth=7), index=index), ready=True)
    text = m.scrape(state).decode()  # type: ignore[arg-type]
    assert "xlir_queue_depth 7.0" in text and 'xlir_index_documents_by_language{lang="en"} 3.0' in text
    index.languages = {"de": 3}  # a reloaded index: the old language label goes away
    text = m.scrape(state).decode()  # type: ignore[arg-type]
    assert 'lang="en"' not in text and 'lang="de"' in text


def test_overload_answers_are_counted(index_dir: Path) -> None:
    class Full:
        async def search(self, req: object) -> object:
            raise Overloaded("query queue is full (1 waiting); retry later")

    app = create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())
    app.dependency_overrides[get_service] = Full
    with TestClient(app) as c:
        assert scrape(c).get(("xlir_overloaded_total", frozenset()), 0.0) == 0
        for _ in range(2):
            assert c.post("/search", json={"query": "apples"}).status_code == 429
        s = scrape(c)
    assert value(s, "xlir_overloaded_total") == 2
    assert value(s, "xlir_http_requests_total", endpoint="/search", method="POST", status="429") == 2


def test_body_limit_rejections_are_counted_under_their_route(index_dir: Path) -> None:
    with TestClient(create_app(Settings(index=index_dir, warmup=False, max_body_bytes=50),
                               encoder=FakeEncoder())) as c:
        assert c.post("/search", json={"query": "apples " * 20}).status_code == 413
        s = scrape(c)
    assert value(s, "xlir_http_requests_total", endpoint="/search", method="POST", status="413") == 1


def test_each_app_has_its_own_registry(index_dir: Path) -> None:
    a = create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())
    b = create_app(Settings(index=index_dir, warmup=False), encoder=FakeEncoder())
    with TestClient(a) as ca, TestClient(b) as cb:
        for _ in range(3):
            ca.post("/search", json={"query": "apples"})
        assert value(scrape(ca), "xlir_http_requests_total", endpoint="/search", method="POST", status="200") == 3
        assert value(scrape(cb), "xlir_http_requests_total", endpoint="/search", method="POST", status="200") == 0


def test_not_ready_server_reports_zero(tmp_path: Path) -> None:
    with TestClient(create_app(Settings(index=tmp_path / "missing"), encoder=FakeEncoder())) as c:
        s = scrape(c)
    assert value(s, "xlir_ready") == 0 and value(s, "xlir_index_documents") == 0


def test_metrics_stay_open_when_api_keys_are_set(index_dir: Path) -> None:
    app = create_app(Settings(index=index_dir, warmup=False, api_keys="k-1234567890:read"), encoder=FakeEncoder())
    with TestClient(app) as c:
        assert c.post("/search", json={"query": "apples"}).status_code == 401
        s = scrape(c)
    assert value(s, "xlir_http_requests_total", endpoint="/search", method="POST", status="401") == 1
