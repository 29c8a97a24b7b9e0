import json
from pathlib import Path

import numpy as np
import pytest

from app.schemas import SearchRequest
from indexer.build import BuildOptions, build_index
from indexer.manifest import MANIFEST
from indexer.store import open_index, verify_checksums
from indexer.text import tokenize
from tests.conftest import FakeEncoder, retrieve, write_jsonl
from xlir.errors import CorpusError, IndexInvalid, XlirError

DOCS = [
    {"id": "en-cat", "title": "Cats", "text": "the cat sleeps on the warm mat", "lang": "en"},
    {"id": "de-cat", "title": "Katzen", "text": "die Katze schläft auf der warmen Matte", "lang": "de"},
    {"id": "zh-cat", "title": "猫", "text": "猫在温暖的垫子上睡觉", "lang": "zh"},
    {"id": "en-bank", "title": "Banks", "text": "the central bank raised interest rates", "lang": "en"},
    {"id": "ru-bank", "title": "Банки", "text": "центральный банк повысил процентные ставки", "lang": "ru"},
    {"id": "ar-sun", "title": "الشمس", "text": "الشمس نجم في مركز النظام الشمسي", "lang": "ar"},
    {"id": "hi-sun", "title": "सूर्य", "text": "सूर्य सौर मंडल के केंद्र में एक तारा है", "lang": "hi"},
]


def _table() -> dict[str, list[float]]:
    """Exact vectors: three topics on three axes, documents of a topic at known cosines."""
    def vec(topic: int, lean: float) -> list[float]:
        v = [0.0] * 8
        v[topic] = 1.0
        v[7] = lean
        return v

    from indexer.build import passage_text
    leans = {"en-cat": 0.1, "de-cat": 0.2, "zh-cat": 0.3, "en-bank": 0.1, "ru-bank": 0.5, "ar-sun": 0.1, "hi-sun": 0.4}
    topics = {"cat": 0, "bank": 1, "sun": 2}
    table = {passage_text(d["title"], d["text"]): vec(topics[d["id"].split("-")[1]], leans[d["id"]]) for d in DOCS}
    table["QUERY cat"] = vec(0, 0.0)
    return table


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "corpus.jsonl", DOCS)


def _build(corpus: Path, out: Path, **opts: object) -> tuple[FakeEncoder, object]:
    enc = FakeEncoder(dim=8, table=_table())
    m = build_index([corpus], out, enc, BuildOptions(progress=False, **opts))  # type: ignore[arg-type]
    return enc, m


def test_manifest_records_what_the_index_holds(corpus: Path, tmp_path: Path) -> None:
    _, m = _build(corpus, tmp_path / "idx", shard_size=3)
    saved = json.loads((tmp_path / "idx" / MANIFEST).read_text())
    assert saved["doc_count"] == 7
    assert [s["count"] for s in saved["shards"]] == [3, 3, 1]
    assert [s["offset"] for s in saved["shards"]] == [0, 3, 6]
    assert saved["languages"] == {"ar": 1, "de": 1, "en": 2, "hi": 1, "ru": 1, "zh": 1}
    vs = saved["vector_sets"]["main"]
    assert (vs["encoder"], vs["encoder_checksum"], vs["dim"], vs["metric"], vs["index_type"]) == \
        ("fake", "fake-checksum", 8, "cosine", "flat")
    assert saved["bm25"]["analyzer"] == "xlir-script-v1" and saved["bm25"]["k1"] == 1.2
    assert {"faiss-cpu", "bm25s", "numpy", "python"} <= set(saved["versions"])
    assert "shards/00002/main.faiss" in saved["files"] and "bm25/params.index.json" in saved["files"]
    assert all(len(f["sha256"]) == 64 for f in saved["files"].values())
    assert saved["build"]["docs_per_second"] > 0


def test_dense_ranks_are_exact_and_docs_round_trip(corpus: Path, tmp_path: Path) -> None:
    enc, _ = _build(corpus, tmp_path / "idx", shard_size=2, centering="off")
    index = open_index(tmp_path / "idx")
    req = SearchRequest(query="QUERY cat", k=3, mode="dense", feedback="off")  # exact first-search cosines
    hits = retrieve(index, req, enc.encode_queries(["QUERY cat"])[0], None)
    ids = [index.doc(h.row)["id"] for h in hits[:3]]
    # cos = 1/sqrt(1+lean^2): smaller lean, higher score
    assert ids == ["en-cat", "de-cat", "zh-cat"]
    assert hits[0].score == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)
    assert index.doc(hits[2].row) == {"id": "zh-cat", "title": "猫", "text": "猫在温暖的垫子上睡觉", "lang": "zh"}


def test_language_filter(corpus: Path, tmp_path: Path) -> None:
    enc, _ = _build(corpus, tmp_path / "idx", centering="off")
    index = open_index(tmp_path / "idx")
    qvec = enc.encode_queries(["QUERY cat"])[0]
    hits = retrieve(index, SearchRequest(query="QUERY cat", k=10, mode="dense", langs=["zh", "ru"]), qvec, None)
    assert [index.doc(h.row)["id"] for h in hits] == ["zh-cat", "ru-bank"]
    hits = retrieve(index, SearchRequest(query="x", k=10, mode="bm25", langs=["de"]), None, tokenize("katze"))
    assert [index.doc(h.row)["id"] for h in hits] == ["de-cat"]


@pytest.mark.parametrize("shard_size", [1, 2, 3, 6])
def test_sharded_index_answers_like_one_shard(corpus: Path, tmp_path: Path, shard_size: int) -> None:
    enc, _ = _build(corpus, tmp_path / "one", shard_size=1000)
    _build(corpus, tmp_path / "many", shard_size=shard_size)
    one, many = open_index(tmp_path / "one"), open_index(tmp_path / "many")
    for query in ["QUERY cat", "bank interest", "猫 垫子", "सूर्य तारा"]:
        for mode in ("dense", "bm25", "hybrid"):
            req = SearchRequest(query=query, k=7, mode=mode)
            a = retrieve(one, req, enc.encode_queries([query])[0], tokenize(query))
            b = retrieve(many, req, enc.encode_queries([query])[0], tokenize(query))
            assert [(h.row, round(h.score, 6)) for h in a] == [(h.row, round(h.score, 6)) for h in b]


def test_bm25_finds_documents_in_every_script(corpus: Path, tmp_path: Path) -> None:
    _build(corpus, tmp_path / "idx")
    index = open_index(tmp_path / "idx")
    for query, expected in [("Katze", "de-cat"), ("垫子", "zh-cat"), ("банк", "ru-bank"),
                            ("الشمسي", "ar-sun"), ("तारा", "hi-sun"), ("interest", "en-bank")]:
        hits = index.bm25_search(tokenize(query), 3)
        assert index.doc(int(hits.rows[0]))["id"] == expected, query
    assert len(index.bm25_search(tokenize("zzzunknownzzz"), 3).rows) == 0


def test_language_is_detected_when_missing(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [
        {"id": "1", "text": "Der schnelle braune Fuchs springt über den faulen Hund und läuft in den Wald."},
        {"id": "2", "text": "Быстрая коричневая лиса прыгает через ленивую собаку и убегает в лес."},
        {"id": "3", "text": "hello", "lang": "EN"},
    ])
    m = build_index([p], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    assert m.languages == {"de": 1, "en": 1, "ru": 1}
    assert m.build["languages_detected"] == 2


def _assert_nothing_left(tmp_path: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if ".building" in p.name]


def test_duplicate_ids_fail_and_leave_nothing(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "x", "lang": "en"}, {"id": "a", "text": "y"}])
    with pytest.raises(CorpusError, match="duplicate document id 'a'"):
        build_index([p], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    _assert_nothing_left(tmp_path, tmp_path / "idx")


def test_encoder_failure_mid_build_leaves_nothing(tmp_path: Path, corpus: Path) -> None:
    class Broken(FakeEncoder):
        def encode_passages(self, texts, **kw):  # type: ignore[no-untyped-def]
            raise RuntimeError("GPU on fire")

    with pytest.raises(RuntimeError):
        build_index([corpus], tmp_path / "idx", Broken(), BuildOptions(progress=False, chunk_docs=2))
    _assert_nothing_left(tmp_path, tmp_path / "idx")


def test_empty_corpus_bad_lang_and_existing_output(tmp_path: Path, corpus: Path) -> None:
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(CorpusError, match="no documents found"):
        build_index([empty], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "text": "x", "lang": "en_US!!"}])
    with pytest.raises(CorpusError, match="document 'a'"):
        build_index([bad], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    _assert_nothing_left(tmp_path, tmp_path / "idx")
    _build(corpus, tmp_path / "idx")
    with pytest.raises(XlirError, match="already exists"):
        _build(corpus, tmp_path / "idx")
    _build(corpus, tmp_path / "idx", overwrite=True)
    with pytest.raises(XlirError, match="unknown index type"):
        BuildOptions(index_type="annoy")


def test_empty_texts_are_skipped_and_counted(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "text": "  ", "lang": "en"},
                                           {"id": "b", "text": "ok", "lang": "en"}])
    m = build_index([p], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    assert m.doc_count == 1 and m.build["skipped_empty"] == 1


def test_broken_indexes_are_refused_with_clear_messages(corpus: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexInvalid, match="does not exist"):
        open_index(tmp_path / "nope")
    half = tmp_path / "half"
    half.mkdir()
    (half / "shards").mkdir()
    with pytest.raises(IndexInvalid, match="no manifest.json"):
        open_index(half)
    _build(corpus, tmp_path / "idx")
    shard = tmp_path / "idx" / "shards" / "00000" / "main.faiss"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(IndexInvalid, match="damaged: shards/00000/main.faiss"):
        open_index(tmp_path / "idx")
    shard.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    assert verify_checksums(tmp_path / "idx") == ["shards/00000/main.faiss"]
    (tmp_path / "idx" / "bm25" / "params.index.json").unlink()
    with pytest.raises(IndexInvalid, match="incomplete: bm25/params.index.json is missing"):
        open_index(tmp_path / "idx")
    (tmp_path / "idx" / MANIFEST).write_text("{not json")
    with pytest.raises(IndexInvalid, match="not a valid xlir manifest"):
        open_index(tmp_path / "idx")
