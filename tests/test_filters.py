"""Documents with metadata, search filters and pagination (issue 22): metadata read from JSONL and kept through the
write stage, live upserts, the log and compaction; filters parsed against the index's fields (422 for an unknown
field or a wrong type) and applied to dense (flat, HNSW, IVF) and BM25 alike with exactly ``k`` results when that
many match (checked against brute force); ``offset`` pages through one ranking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.batching import QueryBatcher
from app.schemas import SearchRequest
from app.service import SearchService
from indexer.compact import compact
from indexer.dense import _masked_search, exact_share
from indexer.docstore import META_FILE, DocStore
from indexer.filters import MetadataColumns, filter_mask, parse_date, parse_filter
from indexer.live import LiveStore
from indexer.readers import MAX_METADATA_BYTES, Document, read_jsonl
from indexer.store import Index, open_index
from indexer.topk import top_k
from indexer.write import EncoderInfo, WriteOptions, write_index
from tests.conftest import FakeEncoder, fake_index, retrieve, unit, write_jsonl
from xlir.errors import BadQuery, CorpusError

DIM = 16
ENC = EncoderInfo("fake", "fake-checksum", DIM)


# ------------------------------------------------------------------------------------------------- metadata in


def test_jsonl_metadata_is_read_and_bad_metadata_names_file_and_line(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [
        {"id": "a", "text": "x", "metadata": {"source": "wiki", "year": 2020, "tags": ["a", "b"], "ok": True,
                                              "score": 0.5, "none": None}},
        {"id": "b", "text": "y"},
        {"id": "c", "text": "z", "metadata": None},
    ])
    docs = list(read_jsonl(good))
    assert docs[0].metadata == {"source": "wiki", "year": 2020, "tags": ["a", "b"], "ok": True, "score": 0.5,
                                "none": None}
    assert docs[1].metadata == {} and docs[2].metadata == {}
    bad = [
        ({"metadata": ["x"]}, "metadata must be a JSON object, got list"),
        ({"metadata": {"a": {"b": 1}}}, "metadata['a'] is a dict"),
        ({"metadata": {"a": [1, [2]]}}, "a list item of metadata['a'] is a list"),
        ({"metadata": {"": 1}}, "a metadata key is empty"),
        ({"metadata": {"lang": "de"}}, "the metadata key 'lang' is reserved"),
        ({"metadata": {"n": 10**20}}, "metadata['n'] is an integer too large"),
        ({"metadata": {"big": "x" * MAX_METADATA_BYTES}}, f"the limit is {MAX_METADATA_BYTES}"),
    ]
    for extra, message in bad:
        path = write_jsonl(tmp_path / "bad.jsonl", [{"id": "ok", "text": "fine"}, {"id": "x", "text": "t", **extra}])
        with pytest.raises(CorpusError) as exc:
            list(read_jsonl(path))
        assert f"{path}:2: " in exc.value.detail and message in exc.value.detail, exc.value.detail


def test_a_shard_written_before_metadata_reads_as_without(tmp_path: Path) -> None:
    idx = fake_index(tmp_path, [{"id": "a", "text": "apple"}, {"id": "b", "text": "pear", "metadata": {"n": 1}},
                                {"id": "c", "text": "plum"}])
    shard = next((idx / "shards").iterdir())
    store = DocStore(shard)
    assert store.metadata() == [{}, {"n": 1}, {}]
    assert store.get(1)["metadata"] == {"n": 1} and "metadata" not in store.get(0)
    (shard / META_FILE).unlink()  # an index of an older xlir (or one without metadata: the file is not written)
    assert DocStore(shard).metadata() == [{}, {}, {}]
    (tmp_path / "plain").mkdir()
    plain = fake_index(tmp_path / "plain", [{"id": "a", "text": "apple"}])
    assert not (next((plain / "shards").iterdir()) / META_FILE).exists()
    assert open_index(plain).metadata_fields == {}


# ------------------------------------------------------------------------------------------------- the filter module

META: list[dict[str, Any] | None] = [
    {"source": "wiki", "year": 2018, "tag": ["a", "b"], "published": "2018-05-01", "ok": True},
    {"source": "news", "year": 2019.5, "tag": "b", "published": "2020-01-01T10:00:00Z", "ok": False},
    {"source": "wiki", "year": 2021, "tag": ["c"], "published": "2021-12-31", "mixed": 1},
    None,
    {"source": "blog", "year": 2022, "published": "2022-06-01T00:00:00+02:00", "mixed": "1"},
]


def _rows(raw: dict[str, Any], meta: Sequence[dict[str, Any] | None] = META) -> list[int]:
    cols = MetadataColumns.build(meta)
    mask = filter_mask(cols, parse_filter(raw, cols.schema))
    assert mask is not None
    return np.flatnonzero(mask).tolist()


def test_field_types_come_from_the_values() -> None:
    assert MetadataColumns.build(META).schema == {"source": "str", "year": "number", "tag": "str",
                                                  "published": "date", "ok": "bool", "mixed": "mixed"}
    assert parse_date("2020-01-01") == parse_date("2020-01-01T00:00:00Z") == parse_date("2020-01-01T01:00:00+01:00")
    assert parse_date("2020-1-1") is None and parse_date("yesterday") is None and parse_date(2020) is None


@pytest.mark.parametrize(("raw", "rows"), [
    ({"source": "wiki"}, [0, 2]),
    ({"source": {"in": ["news", "blog"]}}, [1, 4]),
    ({"source": "nowhere"}, []),
    ({"year": 2021}, [2]),
    ({"year": {"gte": 2019, "lt": 2022}}, [1, 2]),
    ({"year": {"gt": 2019.5}}, [2, 4]),
    ({"tag": "b"}, [0, 1]),  # a list matches when one of its values does
    ({"tag": {"in": ["c", "zzz"]}}, [2]),
    ({"published": {"gte": "2020-01-01"}}, [1, 2, 4]),
    ({"published": {"lt": "2020-01-01T10:00:00Z"}}, [0]),
    ({"published": {"lte": "2022-05-31T22:00:00Z"}}, [0, 1, 2, 4]),  # 2022-06-01T00:00+02:00 is 05-31T22:00Z
    ({"published": "2021-12-31"}, [2]),
    ({"ok": True}, [0]),
    ({"ok": False}, [1]),
    ({"mixed": 1}, [2]),
    ({"mixed": "1"}, [4]),
    ({"mixed": {"in": [1, "1"]}}, [2, 4]),
    ({"source": "wiki", "year": {"gte": 2020}}, [2]),
])
def test_conditions_select_the_rows_they_describe(raw: dict[str, Any], rows: list[int]) -> None:
    assert _rows(raw) == rows


def test_a_list_field_takes_every_bound_on_one_value() -> None:
    meta = [{"n": [1, 10]}, {"n": [5]}]
    assert _rows({"n": {"gt": 2, "lt": 8}}, meta) == [1]  # row 0 has a value > 2 and one < 8, but none in between


def test_a_field_every_row_holds_once_matches_row_for_value() -> None:
    meta: list[dict[str, Any] | None] = [{"s": "a", "n": 1}, {"s": "b", "n": 5}, {"s": "a", "n": 9}]
    cols = MetadataColumns.build(meta)
    assert cols.fields["s"].kinds["str"].every_row and cols.fields["n"].kinds["number"].every_row
    assert _rows({"s": "a"}, meta) == [0, 2]
    assert _rows({"s": {"in": ["b", "c"]}, "n": {"lte": 5}}, meta) == [1]
    assert _rows({"n": {"gt": 1}}, meta) == [1, 2]


@pytest.mark.parametrize(("raw", "message"), [
    ({"colour": "red"}, "unknown field 'colour'; the index's metadata fields are source (str), year (number)"),
    ({"source": {"gte": "a"}}, "the range operator 'gte' needs a number or date field; source is a str field"),
    ({"year": "2019"}, "year is a number field: '2019' is a str"),
    ({"year": {"gte": "2019"}}, "year.gte must be a number"),
    ({"year": {"between": [1, 2]}}, "unknown operator 'between'; the operators are in, gt, gte, lt, lte"),
    ({"year": {}}, "an empty object"),
    ({"year": [2019, 2020]}, "for any of several values write {\"in\": [...]}"),
    ({"year": {"in": []}}, "year.in must be a non-empty list"),
    ({"year": None}, "null is not a value"),
    ({"published": {"gte": "last year"}}, "published.gte must be an ISO date"),
    ({"ok": 1}, "ok is a bool field: 1 is a number"),
    ({"mixed": {"lt": 3}}, "mixed is a mixed field"),
    ({"lang": {"gte": "de"}}, "not the operator 'gte'"),
    ({"lang": 3}, "lang values are language codes"),
    ({"source": {"in": ["a", "\ud800"]}}, "not valid Unicode text"),
    ({"\ud800": 1}, "not valid Unicode text"),
    ({"year": {"lt": 10**400}}, "year: the number 10000000000000000000... is too large"),
])
def test_bad_filters_say_what_is_wrong(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(BadQuery) as exc:
        parse_filter(raw, MetadataColumns.build(META).schema)
    assert message in exc.value.detail, exc.value.detail


# ------------------------------------------------------------------------------------------------- exact k, dense


def _synthetic(out: Path, n: int, kind: str, shard_size: int, seed: int = 0) -> tuple[Index, np.ndarray]:
    rng = np.random.default_rng(seed)
    vecs = unit(rng.standard_normal((n, DIM)))
    docs = [Document(f"d{i}", f"text {i}", "", "en", {"bucket": i % 100, "even": i % 2 == 0}) for i in range(n)]
    opts = WriteOptions(shard_size=shard_size, index_type=kind, progress=False, centering="off", ivf_min_docs=1)
    write_index(out, [(docs, ["en"] * n, vecs)], opts, ENC)
    return open_index(out), vecs


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfflat"])
def test_filtered_dense_search_returns_k_hits_like_brute_force(tmp_path: Path, kind: str,
                                                                 single_faiss_thread: None) -> None:
    n = 2_503 if kind != "ivfflat" else 1_013  # awkward sizes: the last shard is a short one
    index, vecs = _synthetic(tmp_path / "idx", n, kind, shard_size=700 if kind != "ivfflat" else 400)
    assert index.vector_set.index_type == kind
    queries = unit(np.random.default_rng(1).standard_normal((8, DIM)))
    k = 10
    for raw, selected in [({"bucket": 7}, n // 100 + (n % 100 > 7)),  # 1%: 25 (or 10) rows
                          ({"bucket": {"in": [3, 5]}}, None),
                          ({"even": True}, (n + 1) // 2),  # 50%
                          ({"bucket": {"gte": 98}}, None)]:
        mask = index.filter_mask(raw)
        assert mask is not None
        if selected is not None:
            assert int(mask.sum()) == selected
        for q, hits in zip(queries, index.dense(queries, k, mask), strict=True):
            scores = vecs @ q
            best_s, best = top_k(scores, k, mask=mask)
            assert len(hits.rows) == min(k, int(mask.sum()))
            assert mask[hits.rows].all()
            if kind == "flat" or mask.mean() <= 0.05:  # exact: flat, or a selective filter on any kind
                assert hits.rows.tolist() == best.tolist()
            else:
                assert len(set(hits.rows.tolist()) & set(best.tolist())) >= k - 2
            np.testing.assert_allclose(hits.scores, scores[hits.rows], rtol=1e-5, atol=1e-5)


def test_an_approximate_shard_short_of_hits_is_searched_again_exactly(single_faiss_thread: None) -> None:
    import faiss

    rng = np.random.default_rng(0)
    vecs = unit(rng.standard_normal((3_000, DIM)))
    graph = faiss.IndexHNSWFlat(DIM, 4, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efSearch = 1  # a walk this short finds few of the selected rows
    graph.add(vecs)
    mask = np.zeros(len(vecs), dtype=bool)
    mask[rng.choice(len(vecs), 600, replace=False)] = True  # 20%: searched through the graph first
    queries = unit(rng.standard_normal((20, DIM)))
    scores, ids = _masked_search(graph, queries, 50, mask)
    for q, row_s, row_ids in zip(queries, scores, ids, strict=True):
        assert (row_ids >= 0).all() and mask[row_ids].all()
        assert len(set(row_ids.tolist())) == 50
        np.testing.assert_allclose(row_s, vecs[row_ids] @ q, rtol=1e-5, atol=1e-5)


def test_the_exact_scan_takes_the_selections_smaller_than_the_walk_would_visit() -> None:
    import faiss

    vecs = unit(np.random.default_rng(0).standard_normal((10_000, DIM)))
    graph = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efSearch = 20
    graph.add(vecs)
    assert exact_share(graph) == pytest.approx((20 * 32 / 10_000) ** 0.5)  # 25%
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, 64, faiss.METRIC_INNER_PRODUCT)
    ivf.train(vecs)
    ivf.nprobe = 4
    assert exact_share(ivf) == 4 / 64
    assert exact_share(faiss.IndexFlatIP(DIM)) == 0.0


# ------------------------------------------------------------------------------------------------- through the service

DOCS = [
    {"id": "w1", "text": "apple river market", "lang": "en", "metadata": {"source": "wiki", "year": 2018}},
    {"id": "w2", "text": "apple green stone", "lang": "en", "metadata": {"source": "wiki", "year": 2021}},
    {"id": "n1", "text": "apple music winter", "lang": "en", "metadata": {"source": "news", "year": 2020}},
    {"id": "n2", "text": "apfel fluss markt", "lang": "de", "metadata": {"source": "news", "year": 2022}},
    {"id": "b1", "text": "pomme rivière marché", "lang": "fr", "metadata": {"source": "blog", "year": 2019}},
    {"id": "x1", "text": "apple apple apple", "lang": "en"},
]


def _brute(index: Any, qvec: np.ndarray, keep: set[str], k: int) -> list[str]:
    """Dense ranking by exact cosine over the documents whose id is in ``keep`` (centring off)."""
    rows = [r for r in range(index.size) if index.doc(r)["id"] in keep]
    vecs, _ = index.centred_vectors(rows, "off")
    order = sorted(range(len(rows)), key=lambda i: (-float(vecs[i] @ qvec), rows[i]))
    return [index.doc(rows[i])["id"] for i in order[:k]]


def _ids(index: Any, qvec: np.ndarray, tokens: Sequence[str] = (), **fields: Any) -> list[str]:
    hits = retrieve(index, SearchRequest(query="q", centering="off", feedback="off", **fields), qvec, tokens)
    return [index.doc(h.row)["id"] for h in hits]


def test_filters_apply_to_dense_bm25_and_hybrid_and_combine_with_langs(tmp_path: Path) -> None:
    index = open_index(fake_index(tmp_path, DOCS))
    enc = FakeEncoder()
    q = enc.vec("apple")
    wiki_news = {"w1", "w2", "n1", "n2"}
    assert _ids(index, q, mode="dense", k=3, filter={"source": {"in": ["wiki", "news"]}}) == \
        _brute(index, q, wiki_news, 3)
    assert _ids(index, q, mode="dense", k=10, filter={"year": {"gte": 2020}}) == \
        _brute(index, q, {"w2", "n1", "n2"}, 10)
    assert _ids(index, q, ["apple"], mode="bm25", k=10, filter={"source": "wiki"}) == ["w1", "w2"]
    assert _ids(index, q, ["apple"], mode="bm25", k=10) [0] == "x1"
    hybrid = _ids(index, q, ["apple"], mode="hybrid", k=10, filter={"year": {"lt": 2021}})
    assert set(hybrid) == {"w1", "n1", "b1"}
    # lang in the filter, langs in the request: ANDed
    assert _ids(index, q, mode="dense", k=10, filter={"lang": "en", "source": "news"}) == ["n1"]
    assert _ids(index, q, mode="dense", k=10, langs=["de", "en"], filter={"lang": {"in": ["de", "fr"]}}) == ["n2"]
    assert _ids(index, q, mode="dense", k=10, filter={"source": "nowhere"}) == []
    with pytest.raises(BadQuery, match="unknown field 'colour'; the index's metadata fields are source"):
        _ids(index, q, mode="dense", filter={"colour": "red"})


def test_live_upserts_deletes_log_and_compaction_keep_metadata(tmp_path: Path) -> None:
    root = fake_index(tmp_path, DOCS)
    enc = FakeEncoder()
    store = LiveStore(root, encoder_checksum=enc.checksum)
    new = [{"id": "d1", "title": "", "text": "apple delta", "lang": "en", "metadata": {"source": "wiki", "year": 2030}},
           {"id": "w1", "title": "", "text": "apple river market", "lang": "en",
            "metadata": {"source": "news", "year": 2018}}]  # replaces w1: now news
    plain = [{"id": "p1", "title": "", "text": "apple without metadata", "lang": "en"}]  # as an older log holds it
    store.upsert(plain, enc.encode_passages([d["text"] for d in plain]))
    store.upsert(new, enc.encode_passages([d["text"] for d in new]))
    store.delete("w2")
    snap = store.snapshot
    q = enc.vec("apple")
    assert snap.metadata_fields == {"source": "str", "year": "number"}
    assert _ids(snap, q, mode="dense", k=10, filter={"source": "wiki"}) == ["d1"]
    assert _ids(snap, q, ["apple"], mode="bm25", k=10, filter={"year": {"gte": 2020}}) == ["d1", "n1"]
    assert sorted(_ids(snap, q, mode="dense", k=10, filter={"source": "news"})) == ["n1", "n2", "w1"]
    assert "p1" in _ids(snap, q, mode="dense", k=10) and "p1" not in _ids(snap, q, mode="dense", k=10,
                                                                          filter={"year": {"gte": 0}})
    store.close()
    replayed = LiveStore(root, encoder_checksum=enc.checksum).snapshot  # from the log
    assert _ids(replayed, q, mode="dense", k=10, filter={"source": "wiki"}) == ["d1"]
    compact(root)
    after = LiveStore(root, encoder_checksum=enc.checksum).snapshot
    assert not after.view.n
    assert _ids(after, q, mode="dense", k=10, filter={"source": "wiki"}) == ["d1"]
    row = next(r for r in range(after.size) if after.doc(r)["id"] == "w1")
    assert after.doc(row)["metadata"] == {"source": "news", "year": 2018}


# ------------------------------------------------------------------------------------------------- pagination


class LengthReranker:
    """A fake reranker: scores a passage by its number of words (so it reorders the first stage)."""

    name = "fake-length"
    prior_weight = 0.0

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        return np.asarray([len(p.split()) for p in passages], dtype=np.float32)


def _page(index: Index, qvec: np.ndarray, tokens: list[str], **fields: Any) -> list[str]:
    batcher = QueryBatcher(lambda texts: np.stack([qvec] * len(texts)), max_batch=1, max_wait_ms=0.0)
    service = SearchService(index, FakeEncoder(), batcher, lambda _q: tokens, reranker=LengthReranker())

    async def run() -> list[str]:
        await batcher.start()
        try:
            resp = await service.search(SearchRequest(query="apple", centering="off", **fields))
            return [h.id for h in resp.results]
        finally:
            await batcher.close()

    return asyncio.run(run())


@pytest.mark.parametrize("fields", [
    {"mode": "dense", "feedback": "off"},
    {"mode": "hybrid", "feedback": "off"},
    {"mode": "bm25"},
    {"mode": "dense", "feedback": "dense", "feedback_docs": 2},
    {"mode": "dense", "feedback": "off", "rerank": True, "rerank_depth": 7},
    {"mode": "dense", "feedback": "off", "filter": {"n": {"gte": 3}}},
])
def test_page_two_is_ranks_six_to_ten(tmp_path: Path, fields: dict[str, Any]) -> None:
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime"]
    docs = [{"id": f"p{i}", "text": " ".join(words[j % 6] for j in range(i, i + 1 + i % 4)), "lang": "en",
             "metadata": {"n": i}} for i in range(24)]
    index = open_index(fake_index(tmp_path, docs))
    q = FakeEncoder().vec("apple plum")
    tokens = ["apple", "plum"]
    top10 = _page(index, q, tokens, k=10, **fields)
    assert len(top10) == 10
    assert _page(index, q, tokens, k=5, **fields) == top10[:5]
    assert _page(index, q, tokens, k=5, offset=5, **fields) == top10[5:]
    assert _page(index, q, tokens, k=3, offset=8, **fields) == top10[8:] + _page(index, q, tokens, k=1, offset=10,
                                                                                 **fields)


def test_offset_is_bounded(tmp_path: Path) -> None:
    index = open_index(fake_index(tmp_path, DOCS))
    with pytest.raises(BadQuery, match=r"offset \+ k = 1001 is over the limit 1000"):
        _ids(index, FakeEncoder().vec("apple"), mode="dense", k=1, offset=1000)
    with pytest.raises(ValueError, match="offset"):
        SearchRequest(query="q", offset=-1)


# ------------------------------------------------------------------------------------------------- the API


def test_api_documents_carry_metadata_and_search_filters(tmp_path: Path) -> None:
    from app.main import create_app
    from app.settings import Settings

    root = fake_index(tmp_path, DOCS)
    settings = Settings(index=root, reload_interval=0, warmup=False)  # type: ignore[call-arg]
    with TestClient(create_app(settings, encoder=FakeEncoder())) as client:
        r = client.post("/documents", json={"documents": [
            {"id": "api1", "text": "apple from the api", "lang": "en", "metadata": {"source": "api", "year": 2024,
                                                                                   "tags": ["x", "y"]}}]})
        assert r.status_code == 200, r.text
        got = client.get("/documents/api1").json()
        assert got["metadata"] == {"source": "api", "year": 2024, "tags": ["x", "y"]}
        assert client.get("/documents/w1").json()["metadata"] == {"source": "wiki", "year": 2018}
        assert client.get("/documents/x1").json()["metadata"] == {}
        r = client.post("/search", json={"query": "apple", "mode": "dense", "k": 3,
                                         "filter": {"tags": "y", "year": {"gte": 2020}}})
        assert r.status_code == 200, r.text
        hits = r.json()["results"]
        assert [h["id"] for h in hits] == ["api1"] and hits[0]["metadata"]["source"] == "api"
        r = client.post("/search", json={"query": "apple", "mode": "dense", "k": 2, "offset": 1})
        assert r.status_code == 200 and len(r.json()["results"]) == 2
        for body, fragment in [
            ({"filter": {"colour": "red"}}, "unknown field 'colour'"),
            ({"filter": {"source": {"gt": 3}}}, "source is a str field"),
            ({"filter": {"year": {"near": 3}}}, "unknown operator 'near'"),
            ({"offset": 995, "k": 10}, "offset + k = 1005"),
        ]:
            r = client.post("/search", json={"query": "apple", **body})
            assert r.status_code == 422, r.text
            assert set(r.json()) == {"error", "detail"} and fragment in r.json()["detail"], r.text
        r = client.post("/documents", json={"documents": [{"id": "bad", "text": "t", "metadata": {"a": {"b": 1}}}]})
        assert r.status_code == 422 and "metadata['a'] is a dict" in r.json()["detail"], r.text


def test_cli_filter_must_be_a_json_object(tmp_path: Path) -> None:
    import subprocess
    import sys

    xlir = Path(sys.executable).with_name("xlir")
    root = fake_index(tmp_path, DOCS)
    for arg, fragment in [("{bad", "--filter is not valid JSON"), ("[1]", "--filter must be a JSON object")]:
        res = subprocess.run([str(xlir), "search", "apple", "--index", str(root), "--filter", arg],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and fragment in res.stderr and "Traceback" not in res.stderr, res.stderr
