"""Several indexes, one server (issue 22, point 6): named collections through the app (TestClient, fake encoder),
the settings and the CLI's ``--index NAME=DIR`` parsing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.main import create_app
from app.settings import DEFAULT_COLLECTION, Settings, parse_collection, parse_collections
from indexer.live import append_files
from tests.conftest import FakeEncoder, fake_index, write_jsonl

NEWS = [
    {"id": "n1", "title": "markets", "text": "stock markets fell sharply today", "lang": "en"},
    {"id": "n2", "title": "election", "text": "the election results were announced", "lang": "en"},
    {"id": "n3", "title": "weather", "text": "storm warnings for the coast tonight", "lang": "en"},
]
WIKI = [
    {"id": "w1", "title": "Rhine", "text": "the rhine is a river in europe", "lang": "en"},
    {"id": "w2", "title": "Apple", "text": "apples grow on trees in orchards", "lang": "en"},
    {"id": "w3", "title": "Rhein", "text": "der rhein ist ein fluss in europa", "lang": "de"},
    {"id": "w4", "title": "Alps", "text": "the alps are mountains in europe", "lang": "en"},
]


def build(folder: Path, docs: list[dict[str, object]]) -> Path:
    folder.mkdir()
    return fake_index(folder, docs)


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"news": build(tmp_path / "news", NEWS), "wiki": build(tmp_path / "wiki", WIKI)}


def make_client(**kw: object) -> TestClient:
    settings = Settings(reload_interval=0, warmup=False, **kw)  # type: ignore[arg-type]
    return TestClient(create_app(settings, encoder=FakeEncoder()))


@pytest.fixture
def client(dirs: dict[str, Path]) -> Iterator[TestClient]:
    with make_client(collections=dirs) as c:
        yield c


def ids(client: TestClient, prefix: str, query: str, k: int = 10) -> list[str]:
    r = client.post(f"{prefix}/search", json={"query": query, "mode": "bm25", "k": k})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_collections_are_listed_with_their_documents_and_languages(client: TestClient) -> None:
    r = client.get("/collections")
    assert r.status_code == 200
    assert r.json() == {"default": "news", "collections": [
        {"name": "news", "default": True, "ready": True, "detail": None, "docs": 3, "languages": {"en": 3}},
        {"name": "wiki", "default": False, "ready": True, "detail": None, "docs": 4, "languages": {"en": 3, "de": 1}},
    ]}


def test_each_collection_answers_its_own_documents_and_the_unnamed_routes_the_first(client: TestClient) -> None:
    assert ids(client, "/collections/wiki", "rhine river europe", k=2) == ["w1", "w4"]
    assert ids(client, "/collections/news", "election results") == ["n2"]
    assert ids(client, "/collections/news", "rhine river europe") == []  # no wiki document leaks into news
    assert ids(client, "", "election results") == ["n2"]  # the default (first) collection
    assert ids(client, "", "rhine river") == []
    dense = client.post("/collections/wiki/search", json={"query": "the rhine is a river in europe",
                                                           "mode": "dense", "k": 1})
    assert [h["id"] for h in dense.json()["results"]] == ["w1"]
    batch = client.post("/collections/wiki/search/batch", json={"searches": [
        {"query": "apples orchards", "mode": "bm25", "k": 1}, {"query": "alps mountains", "mode": "bm25", "k": 1}]})
    assert batch.status_code == 200, batch.text
    assert [r["results"][0]["id"] for r in batch.json()["results"]] == ["w2", "w4"]
    assert client.get("/collections/wiki/documents/w3").json()["title"] == "Rhein"
    assert client.get("/documents/w3").status_code == 404  # the default collection has no w3
    assert client.get("/collections/news/documents/n1").json()["text"] == NEWS[0]["text"]


def test_writes_to_one_collection_do_not_touch_the_other(client: TestClient) -> None:
    doc = {"id": "w9", "title": "Danube", "text": "the danube flows to the black sea", "lang": "en"}
    r = client.post("/collections/wiki/documents", json={"documents": [doc]})
    assert r.status_code == 200 and r.json()["upserted"] == 1, r.text
    assert ids(client, "/collections/wiki", "danube black sea", k=1) == ["w9"]
    assert ids(client, "/collections/news", "danube black sea") == []
    assert client.get("/collections/news/documents/w9").status_code == 404
    assert client.delete("/collections/wiki/documents/w1").status_code == 200
    assert client.delete("/collections/news/documents/w2").status_code == 404  # w2 is wiki's
    news, wiki = client.get("/collections/news/ready").json(), client.get("/collections/wiki/ready").json()
    assert (news["docs"], news["delta_docs"], news["tombstones"]) == (3, 0, 0)
    assert (wiki["docs"], wiki["delta_docs"], wiki["tombstones"]) == (4, 1, 1)
    listed = {c["name"]: c["docs"] for c in client.get("/collections").json()["collections"]}
    assert listed == {"news": 3, "wiki": 4}


def test_an_unknown_collection_is_404_naming_the_collections(client: TestClient) -> None:
    for method, path, body in (("POST", "/collections/sport/search", {"query": "x"}),
                               ("GET", "/collections/sport/documents/n1", None),
                               ("GET", "/collections/sport/ready", None),
                               ("POST", "/collections/sport/search", {"query": ""})):  # invalid body: 404 all the same
        r = client.request(method, path, json=body)
        assert r.status_code == 404, r.text
        assert r.json() == {"error": "collection_not_found",
                            "detail": "no collection 'sport'; this server has 'news', 'wiki'"}


def test_unnamed_ready_reports_every_collection_and_a_broken_one_does_not_stop_the_others(
        dirs: dict[str, Path], tmp_path: Path) -> None:
    with make_client(collections={**dirs, "gone": tmp_path / "missing"}) as c:
        r = c.get("/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["detail"].startswith("collection 'gone': ")
        assert [(x["name"], x["ready"]) for x in body["collections"]] == [("news", True), ("wiki", True),
                                                                         ("gone", False)]
        assert c.get("/collections/news/ready").status_code == 200
        assert c.get("/collections/gone/ready").status_code == 503
        assert ids(c, "/collections/wiki", "apples orchards", k=1) == ["w2"]
        r = c.post("/collections/gone/search", json={"query": "apples"})
        assert r.status_code == 503 and r.json()["error"] == "index_not_ready"
        assert "xlir_collection_ready{collection=\"gone\"} 0.0" in c.get("/metrics").text


def test_the_unnamed_form_serves_one_collection_called_default(dirs: dict[str, Path]) -> None:
    with make_client(index=dirs["wiki"]) as c:
        listing = c.get("/collections").json()
        assert listing["default"] == DEFAULT_COLLECTION == "default"
        assert [x["name"] for x in listing["collections"]] == ["default"]
        assert ids(c, "", "apples orchards", k=1) == ["w2"]
        assert ids(c, "/collections/default", "apples orchards", k=1) == ["w2"]
        ready = c.get("/ready").json()
        assert ready["ready"] is True and ready["docs"] == 4 and ready["collections"][0]["name"] == "default"


def test_each_collection_follows_its_own_index(dirs: dict[str, Path], tmp_path: Path) -> None:
    """Hot reload per collection: documents appended by another process (xlir index --append) show up in the
    collection whose index took them, and only there."""
    corpus = write_jsonl(tmp_path / "more.jsonl", [{"id": "n7", "text": "volcano erupts near the village",
                                                    "lang": "en"}])
    settings = Settings(collections=dirs, reload_interval=0.05, warmup=False)
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c:
        append_files(dirs["news"], [corpus], FakeEncoder())
        deadline = time.monotonic() + 10
        while ids(c, "/collections/news", "volcano village") != ["n7"]:
            assert time.monotonic() < deadline, "the news collection did not pick up the appended document"
            time.sleep(0.05)
        assert ids(c, "/collections/wiki", "volcano village") == []


def test_openapi_lists_each_index_route_once_per_form(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for route in ("/search", "/search/batch", "/documents", "/ready"):
        assert route in paths and f"/collections/{{name}}{route}" in paths
    assert "/collections" in paths and "/collections/{name}/mine" not in paths
    params = paths["/collections/{name}/search"]["post"]["parameters"]
    assert [p["name"] for p in params if p["in"] == "path"] == ["name"]


# --- settings and the CLI ---------------------------------------------------------------------------------------


def test_parse_collection_specs() -> None:
    assert parse_collection("news=/data/news") == ("news", Path("/data/news"))
    assert parse_collection("/data/index") == (None, Path("/data/index"))
    assert parse_collection("./a=b") == (None, Path("./a=b"))  # no name before the '=': a path
    assert parse_collections("news=A,wiki=B") == {"news": Path("A"), "wiki": Path("B")}
    assert list(parse_collections('{"wiki": "B", "news": "A"}')) == ["wiki", "news"]  # the order is kept
    for bad, why in (("=A", "name before '=' is empty"), ("news=", "no index directory"),
                     ("news=A,news=B", "given twice"), ("news=A,B", "need a name each")):
        with pytest.raises(ValueError, match=why):
            parse_collections(bad)


def test_collections_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLIR_COLLECTIONS", "news=/n,wiki=/w")
    assert Settings().collection_dirs == {"news": Path("/n"), "wiki": Path("/w")}
    monkeypatch.delenv("XLIR_COLLECTIONS")
    monkeypatch.setenv("XLIR_INDEX", "/i")
    assert Settings().collection_dirs == {"default": Path("/i")}


@pytest.mark.parametrize("args, message", [
    (["--index", "=DIR"], "collection name before '=' is empty"),
    (["--index", "news="], "no index directory after 'news='"),
    (["--index", "news=A", "--index", "news=B"], "collection 'news' is given twice"),
    (["--index", "A", "--index", "news=B"], "several indexes need a name each"),
])
def test_serve_refuses_a_bad_index_spec_with_exit_2(args: list[str], message: str) -> None:
    from cli.main import app

    r = CliRunner().invoke(app, ["serve", *args])
    assert r.exit_code == 2
    assert message in r.output and "Traceback" not in r.output


def test_serve_names_the_collection_that_cannot_load(dirs: dict[str, Path], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import app.state
    from cli.main import app as cli

    monkeypatch.setattr(app.state, "load_encoder", lambda *a, **kw: FakeEncoder())
    r = CliRunner().invoke(cli, ["serve", "--index", f"news={dirs['news']}", "--index", f"gone={tmp_path / 'x'}"])
    assert r.exit_code == 2 and "collection 'gone'" in r.output, r.output


def test_a_caller_without_a_key_learns_no_collection_names(dirs: dict[str, Path]) -> None:
    with make_client(collections=dirs, api_keys="k1:read") as c:
        r = c.post("/collections/sport/search", json={"query": "x"})
        assert r.status_code == 401 and "news" not in r.text  # the key is checked before the name
        assert c.get("/collections").status_code == 401
        r = c.post("/collections/sport/search", json={"query": "x"}, headers={"Authorization": "Bearer k1"})
        assert r.status_code == 404 and r.json()["error"] == "collection_not_found"


def test_http_metrics_are_labelled_by_the_collection_route_template(client: TestClient) -> None:
    ids(client, "/collections/wiki", "apples")
    ids(client, "", "apples")
    client.get("/collections/sport/ready")
    text = client.get("/metrics").text
    assert 'xlir_http_requests_total{endpoint="/collections/{name}/search",method="POST",status="200"} 1.0' in text
    assert 'xlir_http_requests_total{endpoint="/search",method="POST",status="200"} 1.0' in text
    assert 'xlir_http_requests_total{endpoint="/collections/{name}/ready",method="GET",status="404"} 1.0' in text


def test_the_command_line_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.main import serve_collections

    monkeypatch.setenv("XLIR_COLLECTIONS", "news=/n,wiki=/w")
    assert Settings(**serve_collections(["/i"])).collection_dirs == {"default": Path("/i")}  # type: ignore[arg-type]
    assert Settings(**serve_collections(["a=/a"])).collection_dirs == {"a": Path("/a")}  # type: ignore[arg-type]
    assert Settings().collection_dirs == {"news": Path("/n"), "wiki": Path("/w")}
