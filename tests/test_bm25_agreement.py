"""xlir's BM25 (bm25s, Lucene variant) gives the same top 10 as rank-bm25 configured with the same formula."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from benchmarks.speed_bm25 import LuceneBM25Okapi, baseline_topk, topk_agree
from indexer.bm25 import K1, B, BM25Builder, BM25Searcher
from indexer.build import passage_text
from indexer.text import tokenize

CORPUS = Path(__file__).resolve().parent.parent / "data" / "sample" / "corpus.jsonl"


@pytest.fixture(scope="module")
def sample() -> tuple[list[list[str]], list[list[str]]]:
    docs = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    corpus = [tokenize(passage_text(d["title"], d["text"])) for d in docs]
    # queries: every title, and a window of every 7th passage's text (multi-term, repeated terms possible)
    queries = [tokenize(d["title"]) for d in docs] + [toks[3:9] for toks in corpus[::7]]
    queries.append(["water", "water", "cycle"])  # a repeated query term counts twice on both sides
    return corpus, [q for q in queries if q]


@pytest.fixture(scope="module")
def searcher(sample: tuple[list[list[str]], list[list[str]]], tmp_path_factory: pytest.TempPathFactory
             ) -> BM25Searcher:
    builder = BM25Builder()
    for toks in sample[0]:
        builder.add(toks)
    path = tmp_path_factory.mktemp("bm25") / "bm25"
    builder.save(path)
    return BM25Searcher(path)


def test_top10_ids_and_scores_equal_rank_bm25_with_lucene_idf(sample: tuple[list[list[str]], list[list[str]]],
                                                             searcher: BM25Searcher) -> None:
    corpus, queries = sample
    baseline = LuceneBM25Okapi(corpus, k1=K1, b=B)
    assert len(queries) > 300
    for q in queries:
        scores, rows = searcher.search(q, 10)
        exp_scores, exp_rows = baseline_topk(baseline, q, 10)
        assert rows.tolist() == exp_rows.tolist(), q
        np.testing.assert_allclose(scores, exp_scores, rtol=0, atol=1e-5, err_msg=str(q))
        assert len(rows) > 0


def test_every_score_equals_the_baseline_not_only_the_top(sample: tuple[list[list[str]], list[list[str]]],
                                                          searcher: BM25Searcher) -> None:
    corpus, queries = sample
    baseline = LuceneBM25Okapi(corpus, k1=K1, b=B)
    for q in queries[::25]:
        np.testing.assert_allclose(searcher.scores(q), baseline.get_scores(q) / (K1 + 1), rtol=0, atol=1e-5)


def test_rank_bm25_default_idf_would_not_agree(sample: tuple[list[list[str]], list[list[str]]],
                                               searcher: BM25Searcher) -> None:
    """The alignment matters: BM25Okapi's own idf (Robertson, floored) gives other scores, so the test above can
    tell the formulas apart."""
    corpus, queries = sample
    plain = BM25Okapi(corpus, k1=K1, b=B)
    differ = 0
    for q in queries:
        ours = searcher.search(q, 10)
        theirs = baseline_topk(plain, q, 10)
        differ += not topk_agree(ours, theirs)
    assert differ > len(queries) // 2


def test_topk_agree_tolerates_tie_order_only() -> None:
    s = np.array([3.0, 2.0, 2.0, 1.0])
    assert topk_agree((s, np.array([1, 2, 3, 4])), (s, np.array([1, 2, 3, 4])))
    assert topk_agree((s, np.array([1, 3, 2, 4])), (s, np.array([1, 2, 3, 4])))  # tie at 2.0 swapped
    assert not topk_agree((s, np.array([2, 1, 3, 4])), (s, np.array([1, 2, 3, 4])))  # 3.0 and 2.0 swapped
    assert not topk_agree((s, np.array([1, 2, 3, 4])), (s + [0, 0, 0, 1e-3], np.array([1, 2, 3, 4])))
    cut = np.array([3.0, 1.0, 1.0])
    assert topk_agree((cut, np.array([1, 5, 6])), (cut, np.array([1, 5, 7])))  # a tie cut by the top-k boundary
    assert not topk_agree((s[:3], np.array([1, 2, 3])), (s, np.array([1, 2, 3, 4])))


def test_vectorised_build_equals_bm25s_index(tmp_path: Path) -> None:
    """``BM25Builder.save`` computes bm25s's score matrix itself: the saved arrays equal those of bm25s's own
    ``index`` bit for bit (awkward corpus: repeated tokens, empty documents, terms in every document)."""
    import bm25s
    from bm25s.tokenization import Tokenized

    rng = np.random.default_rng(7)
    docs = [[f"t{int(t)}" for t in rng.integers(0, 40, size=int(rng.integers(0, 25)))] + ["all"] * int(i % 3 > 0)
            for i in range(257)]
    docs[5] = []
    builder = BM25Builder()
    for d in docs:
        builder.add(d)
    builder.save(tmp_path / "ours")

    vocab = dict(builder.vocab)
    empty = vocab.setdefault("", len(vocab))
    ref = bm25s.BM25(k1=K1, b=B, method="lucene", backend="numba")
    ref.index(Tokenized(ids=[d if d else [empty] for d in builder.doc_ids], vocab=vocab), show_progress=False,
              create_empty_token=False)
    ref.save(str(tmp_path / "ref"), show_progress=False)

    for name in ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"):
        a, b = np.load(tmp_path / "ours" / name), np.load(tmp_path / "ref" / name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    for name in ("vocab.index.json", "params.index.json"):
        assert json.loads((tmp_path / "ours" / name).read_text()) == json.loads((tmp_path / "ref" / name).read_text())
    ours = BM25Searcher(tmp_path / "ours")
    for q in (["t1", "t2"], ["all"], ["t3", "t3", "nope"]):
        s1, r1 = ours.search(q, 10)
        s2 = np.asarray(ref.get_scores([vocab[t] for t in q if t in vocab]), dtype=np.float32)
        assert np.array_equal(ours.scores(q), s2)
        assert len(r1) and s1[0] == s2.max()
