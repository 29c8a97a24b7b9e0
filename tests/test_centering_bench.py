"""Unit tests of the centring benchmark's pure parts (no model): splitter, qrels, AP@20, cache key."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.centering import (
    answer_sentences,
    ap_at_k,
    build_pool,
    cache_key,
    first_per_lang,
    other_lang_share,
    split_mask,
    split_sentences,
    top_k,
)


def sentences(text: str, lang: str | None = None) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text, lang)]


# --------------------------------------------------------------------------------------------------
# Sentence splitter
# --------------------------------------------------------------------------------------------------


def test_split_latin() -> None:
    text = "The cat sat. Did it? Yes! It cost 3.5 dollars, e.g. a lot.  Then it left."
    assert sentences(text) == ["The cat sat.", "Did it?", "Yes!", "It cost 3.5 dollars, e.g. a lot.", "Then it left."]


def test_split_cyrillic() -> None:
    assert sentences("Кошка сидела. Собака лаяла! Почему?") == ["Кошка сидела.", "Собака лаяла!", "Почему?"]


def test_split_devanagari_danda() -> None:
    # the danda ends a sentence with or without a following space
    text = "बिल्ली बैठी थी। कुत्ता भौंका।फिर क्या हुआ?"
    assert sentences(text) == ["बिल्ली बैठी थी।", "कुत्ता भौंका।", "फिर क्या हुआ?"]


def test_split_arabic() -> None:
    text = "جلست القطة. لماذا نبح الكلب؟ لا أعرف."
    assert sentences(text) == ["جلست القطة.", "لماذا نبح الكلب؟", "لا أعرف."]


def test_split_chinese() -> None:
    text = "猫坐着。狗叫了！为什么？“好的。”结束"
    assert sentences(text) == ["猫坐着。", "狗叫了！", "为什么？", "“好的。”", "结束"]


def test_split_closing_quotes_and_initials() -> None:
    assert sentences('He said "stop." She left. J. R. R. Tolkien wrote.') == [
        'He said "stop."', "She left.", "J. R. R. Tolkien wrote."]


def test_split_german_ordinals_only_for_german() -> None:
    text = "Er kam am 31. August. Sie blieb."
    assert sentences(text, "de") == ["Er kam am 31. August.", "Sie blieb."]
    assert sentences(text) == ["Er kam am 31.", "August.", "Sie blieb."]


def test_split_spans_are_offsets_without_whitespace() -> None:
    text = "  One.   Two.  "
    assert split_sentences(text) == [(2, 6), (9, 13)]
    assert split_sentences("") == [] and split_sentences("   ") == []
    assert sentences("no terminator") == ["no terminator"]


def test_answer_sentences() -> None:
    spans = [(0, 10), (11, 20), (22, 30)]
    assert answer_sentences(spans, 12, 3) == [1]
    assert answer_sentences(spans, 8, 5) == [0, 1]  # crosses a boundary
    assert answer_sentences(spans, 20, 1) == [2]  # between sentences: the next one
    assert answer_sentences(spans, 0, 0) == [0]


# --------------------------------------------------------------------------------------------------
# Qrels
# --------------------------------------------------------------------------------------------------


def squad(contexts: list[tuple[str, list[tuple[str, str, str]]]]) -> dict[str, Any]:
    """One article per context; qas are (id, question, answer), answer_start found in the context."""
    return {"data": [{"title": f"t{i}", "paragraphs": [{"context": ctx, "qas": [
        {"id": qid, "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]} for qid, q, a in qas]}]}
        for i, (ctx, qas) in enumerate(contexts)]}


FIXTURE = {
    "en": squad([("Paris is big. The tower is 330 metres tall. It is old.",
                  [("q1", "How tall is the tower?", "330 metres")]),
                 ("Rome is old. It has a forum.", [("q2", "What does Rome have?", "a forum")])]),
    "zh": squad([("巴黎很大。铁塔高330米。它很古老。", [("q1", "铁塔有多高？", "330米")]),
                 ("罗马很古老。它有一个广场。", [("q2", "罗马有什么？", "一个广场")])]),
}


def test_qrels_answer_sentence_relevant_in_both_languages() -> None:
    pool = build_pool(FIXTURE)
    assert pool.cand_ids == ["en:0:0:0", "en:0:0:1", "en:0:0:2", "en:1:0:0", "en:1:0:1",
                             "zh:0:0:0", "zh:0:0:1", "zh:0:0:2", "zh:1:0:0", "zh:1:0:1"]
    assert pool.cand_texts[1] == "The tower is 330 metres tall." and pool.cand_texts[6] == "铁塔高330米。"
    assert pool.query_keys == ["en:q1", "en:q2", "zh:q1", "zh:q2"]
    # the answer is in the 2nd sentence: that sentence is relevant in both languages, for the question in either
    assert pool.qrels["en:q1"] == pool.qrels["zh:q1"] == {"en:0:0:1": 1, "zh:0:0:1": 1}
    assert pool.qrels["en:q2"] == pool.qrels["zh:q2"] == {"en:1:0:1": 1, "zh:1:0:1": 1}
    assert pool.cand_langs.count("zh") == 5 and pool.query_langs == ["en", "en", "zh", "zh"]
    assert list(pool.cand_articles) == [0, 0, 0, 1, 1] * 2


def test_splits_by_article_parity() -> None:
    pool = build_pool(FIXTURE)
    dev, test = split_mask(pool.query_articles, "dev"), split_mask(pool.query_articles, "test")
    assert [pool.query_keys[i] for i in np.flatnonzero(dev)] == ["en:q1", "zh:q1"]
    assert [pool.query_keys[i] for i in np.flatnonzero(test)] == ["en:q2", "zh:q2"]
    assert split_mask(pool.query_articles, "all").all()
    assert list(first_per_lang(pool.query_langs, split_mask(pool.query_articles, "all"), 1)) == [0, 2]


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_ap_at_k_hand_computed() -> None:
    # relevant a, b, c; hits at ranks 1 and 3: (1/1 + 2/3) / 3
    assert ap_at_k({"a", "b", "c"}, ["a", "x", "b", "y"]) == pytest.approx((1 + 2 / 3) / 3)
    # a hit beyond k does not count; the divisor is min(|R|, k)
    assert ap_at_k({"a", "b"}, ["x", "a", "y", "b"], k=2) == pytest.approx((1 / 2) / 2)
    assert ap_at_k({"a"}, ["x", "y"]) == 0.0 and ap_at_k(set(), ["a"]) == 0.0


def test_ap20_through_ranx_matches_hand_computation() -> None:
    from benchmarks.centering import evaluate_run

    docs = [f"d{i}" for i in range(30)]
    qrels = {"q1": {"d0": 1, "d2": 1, "d25": 1}, "q2": {"d1": 1, "d3": 1, "d4": 1, "d19": 1}, "q3": {"d29": 1}}
    run = {q: {d: 1.0 - i / 100 for i, d in enumerate(docs)} for q in qrels}
    got = evaluate_run(qrels, run, ["map@20"])["map@20"]
    hand = {"q1": (1 / 1 + 2 / 3) / 3, "q2": (1 / 2 + 2 / 4 + 3 / 5 + 4 / 20) / 4, "q3": 0.0}
    for q, value in hand.items():
        assert got[q] == pytest.approx(value)
        assert ap_at_k(qrels[q], docs, 20) == pytest.approx(value)


def test_top_k_and_other_lang_share() -> None:
    cands = np.eye(4, dtype=np.float32)
    queries = np.asarray([[0.1, 0.9, 0.5, 0.0]], dtype=np.float32)
    rows, scores = top_k(queries, cands, 3)
    assert rows.tolist() == [[1, 2, 0]] and scores[0, 0] == pytest.approx(0.9)
    share = other_lang_share(["en"], ["en", "de", "en", "zh"], rows, k=3)
    assert share.tolist() == pytest.approx([1 / 3])


# --------------------------------------------------------------------------------------------------
# Embedding cache key
# --------------------------------------------------------------------------------------------------


def test_cache_key() -> None:
    base = cache_key("sum1", "passage", ["a", "b"])
    assert base == cache_key("sum1", "passage", ["a", "b"]) and len(base) == 64
    others = [cache_key("sum2", "passage", ["a", "b"]), cache_key("sum1", "query", ["a", "b"]),
              cache_key("sum1", "passage", ["a", "c"]), cache_key("sum1", "passage", ["b", "a"]),
              cache_key("sum1", "passage", ["ab"]), cache_key("sum1", "passage", ["a", "b", ""])]
    assert len({base, *others}) == len(others) + 1


# --------------------------------------------------------------------------------------------------
# Hybrid section: alpha choice, fusion of runs, ranx runs in fused order
# --------------------------------------------------------------------------------------------------


def test_choose_alpha_best_then_larger_on_ties() -> None:
    from benchmarks.centering import choose_alpha

    assert choose_alpha({0.0: 0.1, 0.5: 0.3, 0.7: 0.3, 1.0: 0.2}) == 0.7
    assert choose_alpha({1.0: 0.2, 0.7: 0.3, 0.5: 0.3, 0.0: 0.1}) == 0.7  # order of the mapping is irrelevant
    assert choose_alpha({0.0: 0.4, 1.0: 0.4}) == 1.0 and choose_alpha({0.3: 0.0}) == 0.3
    with pytest.raises(ValueError):
        choose_alpha({})


def test_fuse_rankings_rrf_and_weighted() -> None:
    from app.fusion import Run
    from benchmarks.centering import dense_runs, fuse_rankings

    dense = dense_runs(np.asarray([[0, 1, 2]]), np.asarray([[1.0, 0.5, 0.0]]))
    assert dense[0].rows.tolist() == [0, 1, 2] and dense[0].scores.tolist() == [1.0, 0.5, 0.0]
    bm25 = [Run(np.asarray([2, 3]), np.asarray([4.0, 2.0]))]
    # RRF: row 2 = 1/63 + 1/61, row 0 = 1/61, rows 1 and 3 tie at 1/62 (lower row first)
    assert fuse_rankings(dense, bm25, "rrf", 60) == [[2, 0, 1, 3]]
    # weighted, min-max: dense 0 -> 1, 1 -> .5, 2 -> 0; bm25 2 -> 1, 3 -> 0 (missing rows min-filled to 0)
    assert fuse_rankings(dense, bm25, "weighted", 0.5) == [[0, 2, 1, 3]]  # 0 and 2 tie at .5
    assert fuse_rankings(dense, bm25, "weighted", 0.5, k=2) == [[0, 2]]
    assert fuse_rankings(dense, bm25, "weighted", 1.0) == [[0, 1, 2, 3]]
    assert fuse_rankings(dense, bm25, "weighted", 0.0) == [[2, 0, 1, 3]]
    no_hit = [Run(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))]
    assert fuse_rankings(dense, no_hit, "weighted", 0.5) == [[0, 1, 2]]
    assert fuse_rankings(dense, no_hit, "rrf", 60) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        fuse_rankings(dense, bm25, "max", 0.5)


def test_ranked_run_keeps_the_fused_order() -> None:
    from benchmarks.centering import evaluate_run, ranked_run

    run = ranked_run(["q1", "q2"], ["a", "b", "c"], [[2, 0], []])
    assert run == {"q1": {"c": 2.0, "a": 1.0}, "q2": {}}
    # rank 2 of 3 -> AP 1/2, whatever ranx would do with equal scores
    got = evaluate_run({"q1": {"a": 1}}, ranked_run(["q1"], ["a", "b", "c"], [[1, 0, 2]]), ["map@20"])
    assert got["map@20"]["q1"] == pytest.approx(0.5)
