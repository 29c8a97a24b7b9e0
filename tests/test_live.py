"""Live updates: after any sequence of upserts, deletes and compactions the index answers like a fresh build
over the final documents (dense, BM25, hybrid); frozen centroids before compaction, recomputed after."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.schemas import SearchRequest
from indexer import wal
from indexer.bm25 import BM25Builder, BM25Searcher, Postings, Segment, lucene_scores
from indexer.build import BuildOptions, build_index, passage_text
from indexer.centering import center
from indexer.compact import compact
from indexer.live import LiveStore, current_name, wal_path
from indexer.store import Index, open_index
from indexer.text import tokenize
from tests.conftest import SAMPLE, FakeEncoder, retrieve, write_jsonl
from xlir.errors import BadQuery, Conflict, DocumentNotFound

WORDS = {
    "en": ["apple", "river", "market", "green", "stone", "music", "winter"],
    "de": ["apfel", "fluss", "markt", "grün", "stein", "musik"],
    "fr": ["pomme", "rivière", "marché", "vert", "pierre"],
    "zh": ["苹果", "河流", "市场", "绿色"],
}
LANGS = sorted(WORDS)
SHARD = 3


def _build(docs: list[dict[str, str]], out: Path, enc: FakeEncoder) -> Index:
    corpus = write_jsonl(out.parent / f"{out.name}.jsonl", docs)
    build_index([corpus], out, enc, BuildOptions(progress=False, shard_size=SHARD))
    return open_index(out)


doc_st = st.builds(
    lambda lang, words, title: {"lang": lang, "text": " ".join(words), "title": title},
    st.sampled_from(LANGS).flatmap(lambda lang: st.just(lang)),
    st.lists(st.sampled_from(sorted({w for ws in WORDS.values() for w in ws})), min_size=1, max_size=5),
    st.sampled_from(["", "stone apple", "河流"]),
)
ops_st = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.integers(0, 14), doc_st),
        st.tuples(st.just("delete"), st.integers(0, 14), st.none()),
        st.tuples(st.just("compact"), st.just(0), st.none()),
    ),
    min_size=1, max_size=12,
)


def _queries(enc: FakeEncoder) -> list[tuple[str, list[str] | None]]:
    return [("apple river", None), ("markt stein musik", None), ("苹果 市场", None), ("green pomme", ["en", "fr"]),
            ("winter", ["zh", "de"])]


def _run(index: Index, enc: FakeEncoder, mode: str, fusion: str, query: str, langs: list[str] | None,
         k: int, centering: str | None = "off") -> dict[str, float]:
    req = SearchRequest(query=query, k=k, mode=mode, fusion=fusion, langs=langs, centering=centering,  # type: ignore[arg-type]
                        lang="en", feedback="off")  # the updates' property; feedback: tests/test_feedback.py
    try:
        hits = retrieve(index, req, enc.encode_queries([query])[0], tokenize(query))
    except BadQuery as exc:  # the server refuses a filter on languages the index has none of: nothing found
        assert exc.detail.startswith("langs:"), exc.detail
        return {}
    return {index.doc(h.row)["id"]: h.score for h in hits}


def _spread(scores: dict[str, float]) -> float:
    return max(scores.values()) - min(scores.values()) if scores else 1.0


def _assert_same(live: Index, fresh: Index, enc: FakeEncoder, n: int) -> None:
    for query, langs in _queries(enc):
        spreads = []
        for mode, fusion in (("dense", "weighted"), ("bm25", "weighted"), ("hybrid", "weighted"), ("hybrid", "rrf")):
            got = _run(live, enc, mode, fusion, query, langs, n)
            want = _run(fresh, enc, mode, fusion, query, langs, n)
            assert set(got) == set(want), (mode, fusion, query)
            if mode != "hybrid":
                spreads.append(_spread(want))
            # rrf: ranks of exact ties may differ in the last bit of a score; weighted: min-max normalisation of
            # (nearly) equal scores amplifies those bits. Both compare sets only then; the scores are checked above
            if fusion == "rrf" or (mode == "hybrid" and min(spreads) < 1e-3):
                continue
            for doc_id, score in want.items():
                assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-5), (mode, query, doc_id)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(initial=st.lists(doc_st, min_size=2, max_size=9), ops=ops_st)
def test_any_sequence_of_updates_answers_like_a_fresh_build(
    tmp_path_factory: pytest.TempPathFactory, initial: list[dict[str, str]],
    ops: list[tuple[str, int, dict[str, str] | None]],
) -> None:
    tmp = tmp_path_factory.mktemp("live")
    enc = FakeEncoder()
    model: OrderedDict[str, dict[str, str]] = OrderedDict()
    for i, d in enumerate(initial):
        model[f"d{i}"] = {"id": f"d{i}", **d}
    _build(list(model.values()), tmp / "idx", enc)
    store = LiveStore(tmp / "idx", encoder_checksum=enc.checksum)
    for op, num, doc in ops:
        doc_id = f"d{num}"
        if op == "upsert":
            assert doc is not None
            full = {"id": doc_id, **doc}
            res = store.upsert([full], enc.encode_passages([passage_text(full["title"], full["text"])]))
            assert res.existed == [doc_id in model]
            model.pop(doc_id, None)
            model[doc_id] = full
        elif op == "delete":
            if doc_id in model:
                store.delete(doc_id)
                del model[doc_id]
            else:
                with pytest.raises(DocumentNotFound):
                    store.delete(doc_id)
        elif model:
            compact(tmp / "idx")
            assert store.refresh()
        live = store.snapshot
        assert live.size == len(model)
    if not model:
        assert store.snapshot.dense(enc.encode_queries(["apple"]), 5)[0].rows.size == 0
        return
    fresh = _build(list(model.values()), tmp / "fresh", enc)
    live = store.snapshot
    assert live.languages == fresh.languages
    assert live.multilingual == fresh.multilingual
    _assert_same(live, fresh, enc, len(model))
    # and once compacted, the generation itself is a fresh build: same rows, centroids and scores
    compact(tmp / "idx")
    store.refresh()
    live = store.snapshot
    assert [live.doc(r)["id"] for r in range(live.size)] == list(model)
    assert live.centroids is not None and fresh.centroids is not None
    np.testing.assert_allclose(live.centroids.means, fresh.centroids.means, atol=1e-6)
    assert live.centering == fresh.centering
    _assert_same(live, fresh, enc, len(model))
    for query, langs in _queries(enc):  # with the index's own centring too, now that the centroids are the same
        got = _run(live, enc, "dense", "weighted", query, langs, len(model), None)
        want = _run(fresh, enc, "dense", "weighted", query, langs, len(model), None)
        assert got.keys() == want.keys()
        for doc_id, score in want.items():
            assert got[doc_id] == pytest.approx(score, rel=1e-5, abs=1e-5)
    store.close()


def test_lucene_scorer_reproduces_bm25s(tmp_path: Path) -> None:
    docs = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").read_text().splitlines()]
    texts = [passage_text(d.get("title", ""), d["text"]) for d in docs] + ["...", "a a a b"]
    builder = BM25Builder()
    for t in texts:
        builder.add(tokenize(t))
    builder.save(tmp_path / "bm25")
    searcher = BM25Searcher(tmp_path / "bm25")
    postings = searcher.postings()
    assert postings is not None and postings.num_docs == len(texts) and postings.doc_len[-2] == 1
    in_memory = Postings.from_tokens([tokenize(t) for t in texts])
    for t in texts[::7]:
        q = tokenize(t)[:8] + ["a", "a"]
        want = searcher.scores(q)
        for p in (postings, in_memory):
            got = lucene_scores([Segment(p, 0)], q, searcher.num_docs, searcher.k1, searcher.b)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_upserts_use_frozen_centroids_until_compaction(tmp_path: Path) -> None:
    enc = FakeEncoder()
    base = [{"id": f"b{lang}{i}", "text": f"{WORDS[lang][i % 4]} {WORDS[lang][(i + 1) % 4]} x{i}", "lang": lang}
            for lang in ("en", "de") for i in range(12)]
    main = _build(base, tmp_path / "idx", enc)
    assert main.centering == "full" and main.centroids is not None
    frozen = main.centroids
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    new = [{"id": f"n{i}", "title": "", "text": f"apfel markt neu{i}", "lang": "de"} for i in range(15)]
    store.upsert(new, enc.encode_passages([d["text"] for d in new]))
    live = store.snapshot
    assert live.centroids is not None  # the delta never moves the generation's centroids
    np.testing.assert_array_equal(live.centroids.means, frozen.means)
    q = center(enc.encode_queries(["apfel markt"])[0], frozen.lookup("full", ["de"])[0][0], frozen.basis("full"))
    hits = live.dense(q[None, :], len(base) + len(new))[0]
    by_row = dict(zip(hits.rows.tolist(), hits.scores.tolist(), strict=True))
    for j, d in enumerate(new):
        raw = enc.encode_passages([d["text"]])[0]
        want = float(center(raw, frozen.lookup("full", ["de"])[0][0], frozen.basis("full")) @ q)
        assert by_row[len(base) + j] == pytest.approx(want, abs=1e-5)
    compact(tmp_path / "idx")
    store.refresh()
    fresh = _build(base + new, tmp_path / "fresh", enc)
    after = store.snapshot.centroids
    assert after is not None and fresh.centroids is not None
    np.testing.assert_allclose(after.means, fresh.centroids.means, atol=1e-6)
    assert not np.allclose(after.means, frozen.means, atol=1e-3)  # 15 more German documents moved the mean


def test_compaction_carries_writes_made_while_it_ran(tmp_path: Path) -> None:
    enc = FakeEncoder()
    _build([{"id": f"d{i}", "text": f"apple river {i}", "lang": "en"} for i in range(5)], tmp_path / "idx", enc)
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    store.upsert([{"id": "before", "title": "", "text": "green stone", "lang": "en"}],
                 enc.encode_passages(["green stone"]))

    def write_during(_: str) -> None:
        store.upsert([{"id": "during", "title": "", "text": "winter music", "lang": "en"}],
                     enc.encode_passages(["winter music"]))
        store.delete("d1")

    report = compact(tmp_path / "idx", before_publish=write_during)
    assert report.carried_records == 2 and report.docs == 6
    assert store.refresh()
    live = store.snapshot
    ids = {live.doc(r)["id"] for r in range(live.main.size)}
    assert "before" in ids and "during" not in ids  # in the new generation vs carried in its log
    assert live.size == 6 and live.view.live_delta == 1 and live.view.tomb_count == 1
    assert [live.doc(int(r))["id"] for r in live.bm25_search(tokenize("winter"), 3).rows] == ["during"]


def test_interrupted_compaction_keeps_the_last_generation_and_the_next_one_completes(tmp_path: Path) -> None:
    enc = FakeEncoder()
    _build([{"id": f"d{i}", "text": f"apple river {i}", "lang": "en"} for i in range(5)], tmp_path / "idx", enc)
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    store.upsert([{"id": "x", "title": "", "text": "green stone", "lang": "en"}], enc.encode_passages(["green stone"]))

    def die(_: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        compact(tmp_path / "idx", before_publish=die)
    assert current_name(tmp_path / "idx") == "."
    assert (tmp_path / "idx" / "generations" / "g000001").is_dir()  # complete but never published
    assert not store.refresh() and store.snapshot.size == 6
    report = compact(tmp_path / "idx")
    assert report.new == "g000001" and current_name(tmp_path / "idx") == "generations/g000001"
    assert store.refresh() and store.snapshot.size == 6 and store.snapshot.view.n == 0


def test_a_second_compaction_at_once_is_refused(tmp_path: Path) -> None:
    enc = FakeEncoder()
    _build([{"id": "d0", "text": "apple", "lang": "en"}], tmp_path / "idx", enc)
    with wal.root_lock(tmp_path / "idx", name="COMPACT.lock"), pytest.raises(Conflict):
        compact(tmp_path / "idx")


def test_writes_of_another_process_are_picked_up_and_deletes_of_unknown_ids_log_nothing(tmp_path: Path) -> None:
    enc = FakeEncoder()
    _build([{"id": f"d{i}", "text": f"apple {i}", "lang": "en"} for i in range(4)], tmp_path / "idx", enc)
    a = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    b = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    a.upsert([{"id": "n", "title": "t", "text": "music", "lang": "en"}], enc.encode_passages(["t\nmusic"]))
    with pytest.raises(DocumentNotFound):
        a.delete("nope")
    assert len(wal.read(wal_path(tmp_path / "idx", ".")).records) == 1
    assert b.snapshot.size == 4 and b.refresh() and b.snapshot.size == 5
    b.delete("n")  # b appends after a's record, with the next LSN
    a.refresh()
    recs = wal.read(wal_path(tmp_path / "idx", ".")).records
    assert [r.lsn for r in recs] == [1, 2] and a.snapshot.size == 4


def test_concurrent_writes_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    import time

    enc = FakeEncoder()
    _build([{"id": "d0", "text": "apple", "lang": "en"}], tmp_path / "idx", enc)
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    syncs: list[int] = []
    real_sync = wal.WalWriter.sync

    def slow_sync(self: wal.WalWriter) -> None:
        syncs.append(self.end)
        time.sleep(0.2)  # while the first fsync runs, the other writers queue up
        real_sync(self)

    monkeypatch.setattr(wal.WalWriter, "sync", slow_sync)
    threads = [threading.Thread(target=store.upsert, args=([{"id": f"n{i}", "title": "", "text": f"w{i}",
                                                              "lang": "en"}], enc.encode_passages([f"w{i}"])))
               for i in range(8)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join()
    assert store.snapshot.size == 9 and len(wal.read(wal_path(tmp_path / "idx", ".")).records) == 8
    assert len(syncs) <= 3  # group commit: the queued writes went out together


def test_a_failing_log_write_is_not_applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from xlir.errors import IndexNotReady

    enc = FakeEncoder()
    _build([{"id": "d0", "text": "apple", "lang": "en"}], tmp_path / "idx", enc)
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    store.upsert([{"id": "a", "title": "", "text": "pear", "lang": "en"}], enc.encode_passages(["pear"]))

    def full_disk(self: wal.WalWriter) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(wal.WalWriter, "sync", full_disk)
    with pytest.raises(IndexNotReady, match="No space left"):
        store.upsert([{"id": "b", "title": "", "text": "plum", "lang": "en"}], enc.encode_passages(["plum"]))
    monkeypatch.undo()
    assert store.snapshot.size == 2 and {store.snapshot.doc(r)["id"] for r in range(2)} == {"d0", "a"}
    assert [r.doc_id for r in wal.read(wal_path(tmp_path / "idx", ".")).records] == ["a"]
    store.upsert([{"id": "c", "title": "", "text": "fig", "lang": "en"}], enc.encode_passages(["fig"]))
    assert [r.lsn for r in wal.read(wal_path(tmp_path / "idx", ".")).records] == [1, 2]
