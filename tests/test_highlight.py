"""Highlights (app/highlight.py, SearchRequest.highlight): sentence split, BM25 / dense sentence choice and the
query terms' spans in four scripts, and the service with the fake encoder."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.batching import QueryBatcher
from app.highlight import (
    HighlightLimits,
    HitText,
    Picked,
    best_sentence_bm25,
    highlight_docs,
    index_idf,
    nearest_sentences,
    sentence_spans,
    term_spans,
)
from app.schemas import SearchRequest, SearchResponse
from app.service import SearchService
from indexer.store import open_index
from indexer.text import tokenize
from tests.conftest import FakeEncoder, fake_index


def sentences(text: str, lang: str, **kw: Any) -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text, lang, **kw)]


def marked(sentence: str, query: str) -> list[str]:
    return [sentence[s:e] for s, e in term_spans(sentence, tokenize(query), tokenize)]


# --------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------

DE = "Der Rhein ist ein Fluss, z. B. in der Schweiz. Die Straße am Rhein ist lang! Wie lang ist die Donau?"
ZH = "长江是中国最长的河流。它流经十一个省份！黄河是第二长的河流。"
HI = "गंगा भारत की सबसे लंबी नदी है। यह हिमालय से निकलती है। क्या यह पवित्र है?"
AR = "النيلُ أطول نهر في العالم. هل يمر عبر مصر؟ نعم، يمر النيلُ عبر مصر والسودان."


def test_sentences_in_four_scripts() -> None:
    assert sentences(DE, "de") == ["Der Rhein ist ein Fluss, z. B. in der Schweiz.", "Die Straße am Rhein ist lang!",
                                   "Wie lang ist die Donau?"]
    assert sentences(ZH, "zh") == ["长江是中国最长的河流。", "它流经十一个省份！", "黄河是第二长的河流。"]
    assert sentences(HI, "hi") == ["गंगा भारत की सबसे लंबी नदी है।", "यह हिमालय से निकलती है।", "क्या यह पवित्र है?"]
    assert sentences(AR, "ar") == ["النيلُ أطول نهر في العالم.", "هل يمر عبر مصر؟", "نعم، يمر النيلُ عبر مصر والسودان."]


def test_spans_are_offsets_of_the_original_sentence() -> None:
    assert sentence_spans("  One.  Two?\n\nthree", "en") == [(2, 6), (8, 12), (14, 19)]


def test_text_without_sentence_marks_is_cut_into_windows_at_spaces() -> None:
    th = "แม่น้ำเจ้าพระยาเป็นแม่น้ำสายหลักของประเทศไทย ไหลผ่านกรุงเทพมหานคร แม่น้ำโขงยาวกว่า"
    assert sentences(th, "th", max_sentence_chars=50) == [
        "แม่น้ำเจ้าพระยาเป็นแม่น้ำสายหลักของประเทศไทย", "ไหลผ่านกรุงเทพมหานคร แม่น้ำโขงยาวกว่า"]
    # no space in the window's second half: cut at the limit, never before a combining mark
    assert sentences("ก่" * 10, "th", max_sentence_chars=5) == ["ก่ก่", "ก่ก่", "ก่ก่", "ก่ก่", "ก่ก่"]
    assert sentences("", "en") == [] and sentences(" \n ", "en") == []


def test_best_sentence_by_bm25_in_four_scripts() -> None:
    cases = [
        (DE, "de", "Straße am Rhein", 1),
        (ZH, "zh", "黄河有多长", 2),
        (HI, "hi", "गंगा कहाँ से निकलती है", 1),
        (AR, "ar", "النيل والسودان", 2),
    ]
    for text, lang, query, best in cases:
        got, score = best_sentence_bm25(tokenize(query), sentences(text, lang), tokenize)
        assert (got, score > 0) == (best, True), (lang, got)
    assert best_sentence_bm25(tokenize("Donau"), ["Ohne.", "Auch ohne."], tokenize) == (0, 0.0)
    assert best_sentence_bm25(["x"], [], tokenize) == (-1, 0.0)


def test_idf_weighs_the_rarer_term() -> None:
    sents = ["the the river", "the panda"]
    q = tokenize("the panda river")
    assert best_sentence_bm25(q, sents, tokenize)[0] == 0  # term counts: "the" twice + "river"
    assert best_sentence_bm25(q, sents, tokenize, idf={"the": 0.01, "panda": 3.0, "river": 1.0})[0] == 1


def test_term_spans_map_normalised_tokens_back_to_the_original_characters() -> None:
    # German: case and ß folded (the analyzer's "strasse"), words only whole
    assert marked("Die Straße am Rhein, STRASSE! Rheinstraße.", "strasse rhein") == ["Straße", "Rhein", "STRASSE"]
    # Chinese: bigrams; adjacent matching bigrams merge into one span
    assert marked("长江是中国最长的河流。", "长江是") == ["长江是"]
    assert marked("黄河是第二长的河流。", "黄河有多长") == ["黄河"]
    # Arabic: harakat and alef forms folded, the marks stay inside the span
    assert marked("يمر النيلُ عبر مِصر والسودان.", "النيل مصر") == ["النيلُ", "مِصر"]
    assert marked("إسلام", "اسلام") == ["إسلام"]
    # Hindi: whole words with their matras, Devanagari digits match ASCII ones
    assert marked("यह हिमालय से निकलती है। २०२४", "गंगा निकलती 2024") == ["निकलती", "२०२४"]
    # Thai: grapheme bigrams
    assert marked("ไหลผ่านกรุงเทพมหานคร", "กรุงเทพ") == ["กรุงเทพ"]
    # fullwidth, a token inside a longer one is not marked, a word after a hyphen is
    assert marked("ＰＹＴＨＯＮ python3 aa-a", "python a") == ["ＰＹＴＨＯＮ", "a"]
    assert term_spans("aa-a", ["a"], tokenize) == [(3, 4)]
    assert term_spans("nothing here", [], tokenize) == []


def test_nearest_sentence_per_group() -> None:
    q = np.array([1.0, 0.0])
    vecs = np.array([[0, 1], [1, 1], [2, 0.1], [0, 1], [1, 0], [1, 0]], dtype=np.float32)
    assert nearest_sentences(q, vecs, [3, 1, 2]) == [2, 0, 0]
    with pytest.raises(ValueError):
        nearest_sentences(q, vecs, [2])


def test_highlight_docs_rules_and_bounded_cost() -> None:
    calls: list[list[str]] = []

    def encode(texts: list[str], batch_size: int) -> np.ndarray:
        assert batch_size == HighlightLimits().encode_batch
        calls.append(texts)
        return np.stack([[1.0, 0.0] if "near" in t else [0.0, 1.0] for t in texts])

    seen: list[int] = []

    def counting(text: str) -> list[str]:
        seen.append(len(text))
        return tokenize(text)

    long = "Far away sentence number one. " * 20_000  # 600,000 characters
    hits = [HitText("Pandas eat bamboo. Cats sleep.", "en", bm25=True),
            HitText("Far away. This one is near. Far again.", "en", bm25=False),
            HitText("Only one sentence here", "en", bm25=False),
            HitText("   ", "en", bm25=True),
            HitText(long + "Pandas near the end.", "en", bm25=False)]
    got = highlight_docs(hits, tokenize("pandas sentence"), counting, encode, np.array([1.0, 0.0]))
    assert [(p.text, p.spans, p.source) if p else None for p in got] == [
        ("Pandas eat bamboo.", [(0, 6)], "bm25"),
        ("This one is near.", [], "dense"),
        ("Only one sentence here", [(9, 17)], "dense"),  # a single sentence: taken without encoding
        None,
        ("Far away sentence number one.", [(9, 17)], "dense"),  # all alike: the first; the end was never read
    ]
    assert len(calls) == 1  # the dense hits' sentences in one call
    limits = HighlightLimits()
    assert calls[0][:3] == ["Far away.", "This one is near.", "Far again."]
    assert len(calls[0]) == 3 + limits.dense_sentences
    assert sum(seen) < 3 * (limits.max_text_chars + sum(len(h.text) for h in hits[:4]))
    # no query vector (mode bm25) and no term in the text: the first sentence
    only = highlight_docs([HitText("Alpha beta. Gamma delta.", "en", bm25=True)], ["zzz"], tokenize)
    assert only == [Picked("Alpha beta.", [], "bm25")]


# any text: mixed scripts, marks, invisible characters, punctuation and spaces
CHARS = "aZß ẞİ.!?。！？।؟ \n\t-"
CHARS += "'’…٢२ـَُ\u00ad\u200c\u200d長江黄河ไทย่ก한국ＰＹ①ﬁ😀"
TEXT = st.text(st.sampled_from(list(CHARS)), max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, query=TEXT, size=st.integers(1, 40))
def test_spans_are_well_formed_for_any_text(text: str, query: str, size: int) -> None:
    spans = sentence_spans(text, "en", max_sentence_chars=size)
    assert all(0 <= s < e <= len(text) and e - s <= size for s, e in spans)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))
    q = tokenize(query)
    marks = term_spans(text, q, tokenize)
    assert all(0 <= s < e <= len(text) for s, e in marks)
    assert all(a[1] <= b[0] for a, b in zip(marks, marks[1:], strict=False))
    for s, e in marks:  # each marked piece holds a query token
        assert set(tokenize(text[s:e])) & set(q), (text, query, text[s:e])


# --------------------------------------------------------------------------------------------------
# the service
# --------------------------------------------------------------------------------------------------

DOCS = [
    {"id": "en", "lang": "en", "text": "The giant panda lives in China. Pandas eat bamboo all day. Cats sleep."},
    {"id": "de", "lang": "de", "text": "Pandas leben in China. Sie fressen fast nur Bambus. Katzen schlafen."},
    {"id": "fr", "lang": "fr", "text": "Le panda géant vit en Chine. Il mange des pousses toute la journée."},
    {"id": "one", "lang": "en", "text": "One short sentence about rivers"},
]
Q = "pandas bamboo"
QV = [1.0] + [0.0] * 15


def encoder() -> FakeEncoder:
    # the query and the sentences meant to be nearest to it share one vector; every other text is random
    near = ["The giant panda lives in China.", "Sie fressen fast nur Bambus.", "Il mange des pousses toute la journée."]
    return FakeEncoder(table={Q: QV, **{text: QV for text in near}})


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("hl"), DOCS)


def search(index_dir: Path, enc: FakeEncoder | None = None, **fields: Any) -> SearchResponse:
    enc = enc or encoder()
    index = open_index(index_dir)
    batcher = QueryBatcher(enc.encode_queries, max_batch=1, max_wait_ms=0.0)
    service = SearchService(index, enc, batcher, tokenize)

    async def go() -> SearchResponse:
        await batcher.start()
        try:
            return await service.search(SearchRequest(query=Q, k=4, lang="en", centering="off", **fields))
        finally:
            await batcher.close()

    return asyncio.run(go())


def by_id(resp: SearchResponse) -> dict[str, tuple[str, list[tuple[int, int]], str] | None]:
    return {h.id: (h.highlight.text, h.highlight.spans, h.highlight.source) if h.highlight else None
            for h in resp.results}


def test_bm25_hits_take_the_sentence_with_the_query_terms(index_dir: Path) -> None:
    got = by_id(search(index_dir, mode="bm25", highlight=True))
    assert got == {"en": ("Pandas eat bamboo all day.", [(0, 6), (11, 17)], "bm25"),
                   "de": ("Pandas leben in China.", [(0, 6)], "bm25")}


def test_dense_hits_take_the_sentence_nearest_to_the_query(index_dir: Path) -> None:
    enc = encoder()
    resp = search(index_dir, enc, mode="dense", highlight=True)
    assert by_id(resp) == {
        "en": ("The giant panda lives in China.", [], "dense"),  # not the sentence BM25 would take
        "de": ("Sie fressen fast nur Bambus.", [], "dense"),
        "fr": ("Il mange des pousses toute la journée.", [], "dense"),
        "one": ("One short sentence about rivers", [], "dense"),  # one sentence: taken without encoding
    }
    assert len(enc.passage_calls) == 1 and len(enc.passage_calls[0]) == 3 + 3 + 2  # the three others, one call
    assert "highlight" in resp.timings_ms


def test_hybrid_uses_bm25_where_bm25_found_the_hit_and_dense_elsewhere(index_dir: Path) -> None:
    got = by_id(search(index_dir, mode="hybrid", highlight=True))
    assert got["en"] == ("Pandas eat bamboo all day.", [(0, 6), (11, 17)], "bm25")
    assert got["de"] == ("Pandas leben in China.", [(0, 6)], "bm25")
    assert got["fr"] == ("Il mange des pousses toute la journée.", [], "dense")


def test_without_highlight_there_is_none_and_nothing_is_encoded(index_dir: Path) -> None:
    enc = encoder()
    resp = search(index_dir, enc, mode="hybrid")
    assert [h.highlight for h in resp.results] == [None] * 4
    assert enc.passage_calls == [] and "highlight" not in resp.timings_ms
    body = resp.model_dump(mode="json")
    assert all(h["highlight"] is None for h in body["results"])
    on = search(index_dir, mode="bm25", highlight=True).model_dump(mode="json")
    assert on["results"][0]["highlight"] == {"text": "Pandas eat bamboo all day.", "spans": [[0, 6], [11, 17]],
                                             "source": "bm25"}


def test_idf_comes_from_the_index(index_dir: Path) -> None:
    idf = index_idf(open_index(index_dir), ["pandas", "the", "missing"])
    assert idf is not None
    assert idf["missing"] > idf["pandas"] > 0  # pandas is in two documents of four, missing in none
    assert index_idf(object(), ["x"]) is None


def test_highlight_is_refused_when_not_a_boolean() -> None:
    with pytest.raises(ValueError):
        SearchRequest(query="x", highlight="yes")
