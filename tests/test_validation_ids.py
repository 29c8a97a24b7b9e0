"""Document ids (issue 17, point 4): one rule for corpora and the API (``indexer.readers.doc_id_problem``), and every
id it accepts can be read and deleted at ``/documents/{id}`` once percent-encoded.

The requests go over real HTTP to uvicorn: Starlette's TestClient decodes the path twice (``a%252Fb`` arrives as
``a/b``), which a real server does not.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.readers import ID_RULE, MAX_ID_CHARS, doc_id_problem, read_corpus
from tests.conftest import FakeEncoder, serve_app, write_jsonl
from xlir.errors import CorpusError

ODD_IDS = [
    "a/b", "/leading-slash", "trailing/", "a//b", "a%2Fb", "100%", "%", "with space", "a?b=c", "x#frag", "?", "#",
    "a/../b", "./x", "...", "Zürich/Straße", "北京/大学", "Москва", "مرحبا", "नमस्ते", "🍎/🍐", "a+b&c=d;e",
    "'\"<>`{}|\\^", "\u200dzwj", "é" * MAX_ID_CHARS, "🍎" * MAX_ID_CHARS,
]
BAD_IDS = {
    "": "empty",
    "x" * (MAX_ID_CHARS + 1): f"has {MAX_ID_CHARS + 1} characters",
    "a\x00b": "U+0000",
    "a\nb": "U+000A",
    "tab\there": "U+0009",
    "del\x7f": "U+007F",
    "c1\x85": "U+0085",
    "line\u2028sep": "U+2028",
    " lead": "leading or trailing whitespace",
    "trail ": "leading or trailing whitespace",
    "\u3000ideographic-space": "leading or trailing whitespace",
    ".": "cannot be addressed",
    "..": "cannot be addressed",
}


def doc_url(doc_id: str) -> str:
    return "/documents/" + quote(doc_id, safe="")


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ids")
    docs = [{"id": "base", "text": "a base document", "lang": "en"}]
    build_index([write_jsonl(tmp / "c.jsonl", docs)], tmp / "idx", FakeEncoder(), BuildOptions(progress=False))
    return tmp / "idx"


@pytest.fixture(scope="module")
def client(index_dir: Path) -> Iterator[httpx.Client]:
    app = create_app(Settings(index=index_dir, warmup=False, reload_interval=0), encoder=FakeEncoder())
    with serve_app(app) as base, httpx.Client(base_url=base, timeout=30) as http:
        yield http


def test_the_rule() -> None:
    for good in ODD_IDS + ["d1", "0"]:
        assert doc_id_problem(good) is None, good
    for bad, fragment in BAD_IDS.items():
        problem = doc_id_problem(bad)
        assert problem is not None and fragment in problem, (bad, problem)


@pytest.mark.parametrize("doc_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_every_accepted_id_can_be_read_and_deleted(client: httpx.Client, doc_id: str) -> None:
    r = client.post("/documents", json={"documents": [{"id": doc_id, "text": "zebras graze", "lang": "en"}]})
    assert r.status_code == 200, r.text
    r = client.get(doc_url(doc_id))
    assert r.status_code == 200, r.text
    assert r.json()["id"] == doc_id and r.json()["text"] == "zebras graze"
    r = client.delete(doc_url(doc_id))
    assert r.status_code == 200 and r.json()["deleted"] is True
    assert client.get(doc_url(doc_id)).status_code == 404
    assert client.delete(doc_url(doc_id)).status_code == 404
    assert client.get("/documents/base").status_code == 200  # a prefix or a neighbour was not touched


def test_ids_written_together_are_told_apart(client: httpx.Client) -> None:
    """One request, ids that a double decoding or a lost `/` would confuse: each reads back as itself."""
    ids = ["p/q", "p", "p%2Fq", "p q?r#s", "北京/大学", "🍐" * MAX_ID_CHARS]
    r = client.post("/documents", json={"documents": [{"id": i, "text": f"text of {i}", "lang": "en"} for i in ids]})
    assert r.status_code == 200 and r.json()["upserted"] == len(ids), r.text
    for doc_id in ids:
        r = client.get(doc_url(doc_id))
        assert r.status_code == 200 and r.json()["text"] == f"text of {doc_id}", (doc_id[:20], r.text[:200])
    for doc_id in ids:
        assert client.delete(doc_url(doc_id)).status_code == 200
        assert client.get(doc_url(doc_id)).status_code == 404


@pytest.mark.parametrize("doc_id", list(BAD_IDS), ids=range(len(BAD_IDS)))
def test_bad_ids_are_refused_alike_by_the_api_and_at_build(client: httpx.Client, tmp_path: Path, doc_id: str) -> None:
    fragment = BAD_IDS[doc_id]
    r = client.post("/documents", json={"documents": [{"id": "ok", "text": "t"}, {"id": doc_id, "text": "t"}]})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail.startswith("documents.1.id: ") and fragment in detail and ID_RULE in detail
    assert client.get("/documents/ok").status_code == 404  # nothing of the request was written

    corpus = write_jsonl(tmp_path / "bad.jsonl", [{"id": "fine", "text": "t"}, {"id": doc_id, "text": "t"}])
    with pytest.raises(CorpusError) as err:
        list(read_corpus([corpus]))
    assert "bad.jsonl:2: bad document id" in err.value.detail and fragment in err.value.detail
    assert ID_RULE in err.value.detail
    with pytest.raises(CorpusError, match="bad document id"):
        build_index([corpus], tmp_path / "out", FakeEncoder(), BuildOptions(progress=False))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("doc_id", ["a%00b", "a%09b", "x" * (MAX_ID_CHARS + 1), "%20lead", "a%C2%85"])
def test_reading_or_deleting_a_bad_id_names_the_rule(client: httpx.Client, doc_id: str) -> None:
    for method in ("GET", "DELETE"):
        r = client.request(method, "/documents/" + doc_id)
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith("path.doc_id: ") and ID_RULE in r.json()["detail"]


def test_a_line_break_in_the_path_matches_no_route(client: httpx.Client) -> None:
    """Starlette's path pattern stops at a line break: a plain 404, still with the one error body."""
    r = client.get("/documents/a%0Ab")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_tsv_ids_follow_the_same_rule(tmp_path: Path) -> None:
    tsv = tmp_path / "c.tsv"
    tsv.write_text("ok/1\tsome text\n" + "x" * (MAX_ID_CHARS + 1) + "\ttext\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=f"c.tsv:2: bad document id .*has {MAX_ID_CHARS + 1} characters"):
        list(read_corpus([tsv]))
    tsv.write_text("ok/1\tsome text\n\ttext\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="c.tsv:2: bad document id '': the id is empty"):
        list(read_corpus([tsv]))


@pytest.mark.parametrize(("record", "fragment"), [
    ({"id": True, "text": "t"}, "the document id must be a string or an integer, got bool"),
    ({"id": ["a"], "text": "t"}, "the document id must be a string or an integer, got list"),
    ({"id": {"a": 1}, "text": "t"}, "the document id must be a string or an integer, got dict"),
    ({"id": 1.5, "text": "t"}, "the document id must be a string or an integer, got float"),
    ({"id": "ok", "text": "a \ud800 b"}, "the text holds a lone surrogate"),
    ({"id": "ok", "title": "\udc00", "text": "t"}, "the title holds a lone surrogate"),
])
def test_jsonl_values_that_are_not_ids_or_text_are_refused(tmp_path: Path, record: dict[str, object],
                                                          fragment: str) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps(record) + "\n", encoding="ascii")
    with pytest.raises(CorpusError, match="c.jsonl:1: " + fragment):
        list(read_corpus([corpus]))


def test_integer_ids_still_read_as_strings(tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": 7, "text": "t"}, {"_id": "b/1", "text": "u"}])
    assert [d.id for d in read_corpus([corpus])] == ["7", "b/1"]
