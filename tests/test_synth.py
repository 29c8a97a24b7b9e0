"""The synthetic speed-test corpus: pool reading, determinism, passage sizes, languages, queries."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from benchmarks.datasets import DatasetError, default_data_dir
from benchmarks.synth import MAX_TOKENS, SentencePool, SynthCorpus, load_pool, main
from indexer.text import tokenize


def _squad(contexts: list[str]) -> dict[str, object]:
    return {"data": [{"title": "t", "paragraphs": [{"context": c, "qas": []} for c in contexts]}]}


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "xquad-r").mkdir(parents=True)
    (root / "qa-train").mkdir()
    (root / "tatoeba").mkdir()
    de = ["Die Katze schläft auf der warmen Matte. Der Hund bellt laut im Garten.",
          "Berlin ist die Hauptstadt von Deutschland. Die Katze schläft auf der warmen Matte."]
    (root / "xquad-r" / "de.json").write_text(json.dumps(_squad(de)), encoding="utf-8")
    zh = ["北京是中国的首都。长城是世界上最长的城墙。", "熊猫吃竹子。"]
    (root / "qa-train" / "zh-test-train.json.gz").write_bytes(gzip.compress(json.dumps(_squad(zh)).encode()))
    (root / "tatoeba" / "tatoeba.fra-eng.fra").write_text("Il fait beau aujourd'hui.\nJ'aime les pommes vertes.\n")
    (root / "tatoeba" / "tatoeba.fra-eng.eng").write_text("The weather is nice today.\nI like green apples.\n")
    return root


def test_pool_reads_every_source_splits_and_deduplicates(data_dir: Path) -> None:
    pool = load_pool(data_dir)
    assert pool.langs == ["de", "en", "fr", "zh"]
    # the repeated German sentence is kept once, in file order
    assert pool.sentences["de"] == ["Die Katze schläft auf der warmen Matte.", "Der Hund bellt laut im Garten.",
                                    "Berlin ist die Hauptstadt von Deutschland."]
    assert pool.sentences["zh"] == ["北京是中国的首都。", "长城是世界上最长的城墙。", "熊猫吃竹子。"]
    assert pool.sentences["en"] == ["The weather is nice today.", "I like green apples."]
    assert [int(n) for n in pool.tokens["de"]] == [len(tokenize(s)) for s in pool.sentences["de"]]
    w = pool.weights()
    assert w.sum() == pytest.approx(1.0)
    sizes = np.asarray([pool.tokens[lang].sum() for lang in pool.langs], dtype=float)
    np.testing.assert_allclose(w, np.sqrt(sizes) / np.sqrt(sizes).sum())


def test_pool_drops_too_short_and_too_long_sentences() -> None:
    long = " ".join(f"w{i}" for i in range(MAX_TOKENS + 1))
    pool = SentencePool.from_sentences({"en": ["a b", "one two three", long, "a b"], "xx": ["a"]})
    assert pool.langs == ["en"]
    assert pool.sentences["en"] == ["one two three"]


def test_no_data_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="none of"):
        load_pool(tmp_path)


def test_passages_are_deterministic_and_independent_of_order(data_dir: Path) -> None:
    pool = load_pool(data_dir)
    a = [p.record() for p in SynthCorpus(pool, seed=3).passages(50)]
    b = [p.record() for p in SynthCorpus(pool, seed=3).passages(50)]
    assert a == b
    assert SynthCorpus(pool, seed=3).passage(37).record() == a[37]  # random access, no state
    assert [p.record() for p in SynthCorpus(pool, seed=3).passages(10, start=40)] == a[40:]
    assert [p.record() for p in SynthCorpus(pool, seed=4).passages(50)] != a
    assert len({r["id"] for r in a}) == 50 and a[7]["id"] == "synth-0000007"


def test_passages_are_made_of_sentences_of_one_language_near_the_target_length(data_dir: Path) -> None:
    pool = load_pool(data_dir)
    corpus = SynthCorpus(pool, seed=0, target_tokens=30)
    for p in corpus.passages(200):
        assert set(p.sentences) <= set(pool.sentences[p.lang])
        assert p.tokens == sum(len(tokenize(s)) for s in p.sentences)
        assert p.text == ("" if p.lang == "zh" else " ").join(p.sentences)
        longest = int(pool.tokens[p.lang].max())
        assert 30 - longest < p.tokens < 30 + longest


def test_queries_are_windows_of_their_source_passage(data_dir: Path) -> None:
    corpus = SynthCorpus(load_pool(data_dir), seed=1)
    qs = corpus.queries(40, 100)
    assert len({q.source for q in qs}) == 40 and len({q.qid for q in qs}) == 40
    for q in qs:
        p = corpus.passage(int(q.source.split("-")[1]))
        assert q.lang == p.lang and q.text and q.text in p.text
        assert any(q.text in s for s in p.sentences)
    assert [q.record() for q in corpus.queries(40, 100)] == [q.record() for q in qs]
    with pytest.raises(ValueError):
        corpus.queries(101, 100)


def test_cli_streams_jsonl(data_dir: Path, tmp_path: Path) -> None:
    out, qout = tmp_path / "c.jsonl.gz", tmp_path / "q.jsonl"
    assert main(["--n", "30", "--data-dir", str(data_dir), "--out", str(out), "--queries", str(qout),
                 "--n-queries", "5"]) == 0
    recs = [json.loads(line) for line in gzip.decompress(out.read_bytes()).decode().splitlines()]
    assert [r["id"] for r in recs] == [f"synth-{i:07d}" for i in range(30)]
    assert set(recs[0]) == {"id", "lang", "text"}
    queries = [json.loads(line) for line in qout.read_text(encoding="utf-8").splitlines()]
    assert len(queries) == 5 and {q["source"] for q in queries} <= {r["id"] for r in recs}


REAL = default_data_dir()


@pytest.mark.skipif(not (REAL / "xquad-r").is_dir(), reason="benchmark data not present")
def test_real_pool_covers_twelve_languages_with_passages_of_about_100_tokens() -> None:
    corpus = SynthCorpus(load_pool(REAL), seed=0)
    assert corpus.pool.langs == ["ar", "de", "en", "es", "fr", "hi", "id", "ja", "ko", "pt", "ru", "zh"]
    ps = list(corpus.passages(3000))
    langs = Counter(p.lang for p in ps)
    assert set(langs) == set(corpus.pool.langs)
    assert langs.most_common(1)[0][0] == "ja"  # the largest pool, but under half of the corpus
    assert langs["ja"] < 0.5 * len(ps)
    lengths = np.asarray([p.tokens for p in ps])
    assert 90 <= lengths.mean() <= 110
    assert [len(tokenize(p.text)) for p in ps[:50]] == lengths[:50].tolist()
