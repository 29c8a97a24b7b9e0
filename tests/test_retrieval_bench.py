"""The retrieval benchmark runner (benchmarks/retrieval.py): metrics, TREC files, REST == in-process, index cache."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks import retrieval
from benchmarks.datasets import Query, RetrievalDataset
from benchmarks.demo_bench import free_port
from indexer.readers import Document
from indexer.store import Index, open_index
from tests.conftest import FakeEncoder, serve_app

DOCS = [
    ("en", "e1", "The cat sleeps on the warm mat all day"),
    ("en", "e2", "Dogs bark loudly at the postman every morning"),
    ("en", "e3", "The river flows through the old city to the sea"),
    ("en", "e4", "Bread is baked in the oven before sunrise"),
    ("en", "e5", "The mountain is covered with snow in winter"),
    ("en", "e6", "Children play football in the park after school"),
    ("de", "d1", "Die Katze schläft den ganzen Tag auf der warmen Matte"),
    ("de", "d2", "Hunde bellen jeden Morgen laut den Briefträger an"),
    ("de", "d3", "Der Fluss fließt durch die alte Stadt zum Meer"),
    ("de", "d4", "Brot wird vor Sonnenaufgang im Ofen gebacken"),
    ("de", "d5", "Der Berg ist im Winter mit Schnee bedeckt"),
    ("de", "d6", "Kinder spielen nach der Schule Fußball im Park"),
]
QUERIES = [
    Query("q-en-1", "where does the cat sleep", "en", "test"),
    Query("q-en-2", "river through the old city", "en", "test"),
    Query("q-de-1", "Wann wird das Brot gebacken", "de", "test"),
    Query("q-de-2", "Schnee auf dem Berg", "de", "test"),
]
QRELS = {
    "q-en-1": {"e1": 1, "d1": 1},
    "q-en-2": {"e3": 1, "d3": 1},
    "q-de-1": {"e4": 1, "d4": 1},
    "q-de-2": {"e5": 1, "d5": 1},
}


class OverlapReranker:
    """Scores a passage by the number of query words it contains (deterministic, no model)."""

    name = "overlap"

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        words = set(query.lower().split())
        return np.asarray([len(words & set(p.lower().split())) for p in passages], dtype=np.float32)


RERANK = {"mode": "hybrid", "fusion": "weighted", "alpha": 0.7, "rerank": True, "rerank_depth": 8}


def tiny_dataset() -> RetrievalDataset:
    docs = [Document(did, text, f"title {did}", lang) for lang, did, text in DOCS]
    return RetrievalDataset("tiny", docs, list(QUERIES), {q: dict(r) for q, r in QRELS.items()})


# --------------------------------------------------------------------------------------------------
# metrics and TREC files
# --------------------------------------------------------------------------------------------------


def test_evaluate_matches_hand_computed_metrics() -> None:
    docs = [Document(f"d{i}", f"text {i}", "", "en") for i in range(1, 10)]
    queries = [Query("q1", "one", "en", "test"), Query("q2", "two", "de", "test")]
    qrels = {"q1": {"d1": 1, "d3": 1}, "q2": {"d5": 1, "d9": 1}}
    ds = RetrievalDataset("hand", docs, queries, qrels)
    # raw scores tie on purpose: the rank order must be what counts
    run = retrieval.Run({"q1": [("d1", 0.5), ("d2", 0.5), ("d3", 0.5)], "q2": [("d4", 0.9), ("d5", 0.1)]})

    res = retrieval.evaluate(ds, run)

    # q1: relevant at ranks 1 and 3 of |R| = 2; q2: relevant at rank 2, one of |R| = 2 not retrieved
    ap1 = (1 / 1 + 2 / 3) / 2
    ap2 = (1 / 2) / 2
    ndcg1 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg2 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert res["en"]["map@20"] == pytest.approx(ap1, abs=1e-12)
    assert res["de"]["map@20"] == pytest.approx(ap2, abs=1e-12)
    assert res["en"]["ndcg@10"] == pytest.approx(ndcg1, abs=1e-12)
    assert res["de"]["ndcg@10"] == pytest.approx(ndcg2, abs=1e-12)
    assert res["en"]["recall@100"] == 1.0
    assert res["de"]["recall@100"] == 0.5
    assert res["all"]["map@20"] == pytest.approx((ap1 + ap2) / 2, abs=1e-12)
    assert res["all"]["ndcg@10"] == pytest.approx((ndcg1 + ndcg2) / 2, abs=1e-12)
    assert res["all"]["recall@100"] == pytest.approx(0.75, abs=1e-12)
    assert set(res) == {"all", "en", "de"}


def test_evaluate_query_without_results_scores_zero() -> None:
    ds = RetrievalDataset("hand", [Document("d1", "x", "", "en")], [Query("q1", "x", "en", "test"),
                                                                    Query("q2", "y", "en", "test")],
                          {"q1": {"d1": 1}, "q2": {"d1": 1}})
    res = retrieval.evaluate(ds, retrieval.Run({"q1": [("d1", 1.0)], "q2": []}))
    assert res["en"] == {"map@20": 0.5, "ndcg@10": 0.5, "recall@100": 0.5}


def test_trec_round_trip(tmp_path: Path) -> None:
    run = retrieval.Run({"en/q1": [("en/0/1/2", 0.3), ("de/0/1/2", 0.3), ("zh/4/0/0", -1.5)],
                         "de/q2": [("de/1/0/0", 2.0)]})
    path = tmp_path / "runs" / "dense.trec"
    retrieval.write_trec(run, path, "xlir-dense")

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4
    for line in lines:
        parts = line.split()
        assert len(parts) == 6
        assert parts[1] == "Q0" and parts[5] == "xlir-dense"
    by_q: dict[str, list[int]] = {}
    for line in lines:
        qid, _, _, rank, _, _ = line.split()
        by_q.setdefault(qid, []).append(int(rank))
    assert by_q == {"en/q1": [1, 2, 3], "de/q2": [1]}
    back = retrieval.read_trec(path)
    assert back.rankings() == run.rankings()
    # rank-derived scores, strictly decreasing
    assert back.raw() == {"en/q1": {"en/0/1/2": 3.0, "de/0/1/2": 2.0, "zh/4/0/0": 1.0}, "de/q2": {"de/1/0/0": 1.0}}
    with pytest.raises(ValueError, match="whitespace"):
        retrieval.write_trec(retrieval.Run({"q 1": [("d", 1.0)]}), tmp_path / "bad.trec", "t")


# --------------------------------------------------------------------------------------------------
# index cache, in-process, REST
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RetrievalDataset, FakeEncoder, Path, Index]]:
    root = tmp_path_factory.mktemp("bench-indexes")
    ds, enc = tiny_dataset(), FakeEncoder()
    path = retrieval.index_for(ds, enc, root, progress=False)
    index = open_index(path)
    yield ds, enc, path, index
    index.close()


def test_index_for_reuses_the_cache(built: tuple[RetrievalDataset, FakeEncoder, Path, Index]) -> None:
    ds, enc, path, _ = built
    root = path.parent
    assert path.name.startswith(f"tiny-{enc.checksum[:12]}-")
    assert sum(len(c) for c in enc.passage_calls) == len(ds.docs)
    calls = len(enc.passage_calls)
    assert retrieval.index_for(ds, enc, root, progress=False) == path
    assert len(enc.passage_calls) == calls  # not re-embedded
    assert not list(root.glob(".*"))  # no docs file or temporary build left behind
    # another pool -> another index
    other = RetrievalDataset("tiny", ds.docs[:-1], ds.queries, ds.qrels)
    assert retrieval.index_dir(other, enc, root) != path


def test_monolingual_returns_only_same_language_docs(
        built: tuple[RetrievalDataset, FakeEncoder, Path, Index], tmp_path: Path) -> None:
    ds, enc, _, index = built
    lang_of = {d.id: d.lang for d in ds.docs}
    for name, params in retrieval.CONDITIONS.items():
        run = retrieval.run_inprocess(index, enc, ds, params, k=10, monolingual=True, cache_dir=tmp_path)
        for q in ds.queries:
            got = run.ranking(q.qid)
            assert got, (name, q.qid)
            assert {lang_of[d] for d in got} == {q.lang}, (name, q.qid, got)
    cross = retrieval.run_inprocess(index, enc, ds, {"mode": "dense"}, k=12, cache_dir=tmp_path)
    assert len({lang_of[d] for d in cross.ranking("q-en-1")}) == 2
    # judged against the relevant documents in the query's language only
    mono = retrieval.same_language_qrels(ds)
    assert mono.qrels == {"q-en-1": {"e1": 1}, "q-en-2": {"e3": 1}, "q-de-1": {"d4": 1}, "q-de-2": {"d5": 1}}
    assert [q.qid for q in mono.queries] == [q.qid for q in ds.queries]


@pytest.fixture(scope="module")
def server(built: tuple[RetrievalDataset, FakeEncoder, Path, Index]) -> Iterator[str]:
    from app.main import create_app
    from app.settings import Settings

    _, _, path, _ = built
    app = create_app(Settings(index=path, warmup=False), encoder=FakeEncoder(), reranker=OverlapReranker())
    with serve_app(app, timeout=20) as url:
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 200, "the test server is not ready"
        yield url


@pytest.mark.parametrize("monolingual", [False, True])
def test_rest_equals_inprocess(built: tuple[RetrievalDataset, FakeEncoder, Path, Index], server: str,
                               tmp_path: Path, monolingual: bool) -> None:
    ds, enc, _, index = built
    info = retrieval.server_info(server)
    assert info["docs"] == len(ds.docs) and info["reranker"] == "overlap"
    conditions = {**retrieval.CONDITIONS, "hybrid-weighted-0.3": {"mode": "hybrid", "fusion": "weighted",
                                                                  "alpha": 0.3}, retrieval.RERANK: RERANK}
    for name, params in conditions.items():
        local = retrieval.run_inprocess(index, enc, ds, params, k=8, monolingual=monolingual, cache_dir=tmp_path,
                                        reranker=OverlapReranker())
        remote, latencies = retrieval.run_rest(server, ds, params, k=8, monolingual=monolingual, concurrency=3)
        assert remote.rankings() == local.rankings(), name
        assert list(remote.hits) == [q.qid for q in ds.queries]
        for qid, hits in local.hits.items():
            assert [s for _, s in remote.hits[qid]] == pytest.approx([s for _, s in hits], rel=1e-6, abs=1e-6)
        assert retrieval.evaluate(ds, remote) == retrieval.evaluate(ds, local), name
        assert len(latencies) == len(ds.queries) and all(ms > 0 for ms in latencies)
        summary = retrieval.latency_summary(latencies)
        assert 0 < summary["p50"] <= summary["p95"] <= summary["p99"]


def test_sweep_alpha_picks_the_best_and_larger_on_ties(
        built: tuple[RetrievalDataset, FakeEncoder, Path, Index], tmp_path: Path) -> None:
    ds, enc, _, index = built
    best, table = retrieval.sweep_alpha(index, enc, ds, alphas=(0.0, 0.5, 1.0), k=10, cache_dir=tmp_path)
    assert set(table) == {0.0, 0.5, 1.0}
    top = max(v["map@20"] for v in table.values())
    assert best == max(a for a, v in table.items() if v["map@20"] == top)
    # a constant run function: every alpha ties, the larger wins
    const = retrieval.Run({q.qid: [("e1", 1.0)] for q in ds.queries})
    best, _ = retrieval.sweep(lambda _ds, _p: const, ds, alphas=(0.2, 0.9, 0.4))
    assert best == 0.9


def test_query_vectors_are_cached(built: tuple[RetrievalDataset, FakeEncoder, Path, Index], tmp_path: Path) -> None:
    ds, _, _, index = built
    enc = FakeEncoder()
    retrieval.run_inprocess(index, enc, ds, {"mode": "dense"}, k=5, cache_dir=tmp_path)
    assert sum(len(c) for c in enc.query_calls) == len(ds.queries)
    retrieval.run_inprocess(index, enc, ds, {"mode": "dense"}, k=5, cache_dir=tmp_path)
    assert sum(len(c) for c in enc.query_calls) == len(ds.queries)


def test_bad_input_is_a_clear_error(built: tuple[RetrievalDataset, FakeEncoder, Path, Index]) -> None:
    from benchmarks.datasets import DatasetError
    from xlir.errors import XlirError

    ds, enc, _, index = built
    empty = RetrievalDataset("tiny", ds.docs, [], {})
    with pytest.raises(DatasetError, match="no queries"):
        retrieval.run_inprocess(index, enc, empty, {"mode": "dense"})
    with pytest.raises(XlirError, match="reranker"):
        retrieval.run_inprocess(index, enc, ds, {"mode": "hybrid", "rerank": True}, cache_dir=None)
    with pytest.raises(XlirError, match="cannot reach"):
        retrieval.server_info(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(DatasetError, match="miracl-corpus"):
        retrieval.main(["--dataset", "miracl", "--lang", "sw"])


def test_rerank_reorders_by_the_reranker(built: tuple[RetrievalDataset, FakeEncoder, Path, Index],
                                         tmp_path: Path) -> None:
    ds, enc, _, index = built
    fused = retrieval.run_inprocess(index, enc, ds, {k: v for k, v in RERANK.items() if "rerank" not in k}, k=8,
                                    cache_dir=tmp_path)
    reranked = retrieval.run_inprocess(index, enc, ds, RERANK, k=8, cache_dir=tmp_path, reranker=OverlapReranker())
    for qid in fused.hits:
        assert set(reranked.ranking(qid)) == set(fused.ranking(qid))
        scores = [s for _, s in reranked.hits[qid]]
        assert scores == sorted(scores, reverse=True)


def _squad(lang: str, articles: list[tuple[str, str, str, str]]) -> dict[str, object]:
    """SQuAD v1 JSON: per article (title, context, question, answer), one paragraph with one question."""
    data = []
    for a, (title, context, question, answer) in enumerate(articles):
        qas = [{"id": f"q{a}", "question": question,
                "answers": [{"answer_start": context.index(answer), "text": answer}]}]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": qas}]})
    return {"data": data}


def test_main_end_to_end_with_a_fake_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import models.encoders

    data = tmp_path / "data" / "xquad-r"
    data.mkdir(parents=True)
    en = [("Cats", "Cats sleep a lot. The cat sleeps on the warm mat.", "Where does the cat sleep?", "warm mat"),
          ("Rivers", "The river is long. The river flows to the sea.", "Where does the river flow?", "the sea"),
          ("Bread", "Bread is old. Bread is baked before sunrise.", "When is bread baked?", "before sunrise"),
          ("Snow", "Mountains are high. Snow covers the mountain in winter.", "When is there snow?", "in winter")]
    de = [("Katzen", "Katzen schlafen viel. Die Katze schläft auf der Matte.", "Wo schläft die Katze?", "der Matte"),
          ("Flüsse", "Der Fluss ist lang. Der Fluss fließt zum Meer.", "Wohin fließt der Fluss?", "zum Meer"),
          ("Brot", "Brot ist alt. Brot wird früh gebacken.", "Wann wird Brot gebacken?", "früh"),
          ("Schnee", "Berge sind hoch. Schnee bedeckt im Winter den Berg.", "Wann liegt Schnee?", "im Winter")]
    for lang, arts in (("en", en), ("de", de)):
        (data / f"{lang}.json").write_text(json.dumps(_squad(lang, arts)), encoding="utf-8")
    monkeypatch.setenv("XLIR_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(models.encoders, "load_encoder", lambda *a, **kw: FakeEncoder())
    out = tmp_path / "out"

    code = retrieval.main(["--dataset", "xquad-r-sentence", "--data", str(tmp_path / "data"), "--langs", "en,de",
                           "--out", str(out), "--k", "10"])

    assert code == 0
    res = json.loads((out / "xquad-r-sentence" / "metrics.json").read_text(encoding="utf-8"))
    assert set(res["metrics"]) == set(retrieval.DEFAULT_CONDITIONS)
    assert res["queries"] == 4 and res["langs"] == ["de", "en"]  # test split: the odd articles
    assert res["alpha_source"].startswith("dev sweep") and len(res["alpha_sweep"]) == len(retrieval.ALPHAS)
    assert set(res["metrics"]["dense"]) == {"all", "de", "en"}
    for cond in retrieval.DEFAULT_CONDITIONS:
        run = retrieval.read_trec(out / "xquad-r-sentence" / f"{cond}.trec")
        assert set(run.hits) == {"en/q1", "en/q3", "de/q1", "de/q3"}
    printed = capsys.readouterr().out
    assert "### map@20" in printed and "| condition | de | en | all |" in printed
    assert Path(res["index"]).parent == tmp_path / "home" / "cache" / "bench-indexes"

    from benchmarks.datasets import DatasetError

    with pytest.raises(DatasetError, match="unknown condition"):
        retrieval.main(["--dataset", "xquad-r-sentence", "--data", str(tmp_path / "data"), "--conditions", "foo"])
    with pytest.raises(DatasetError, match="needs a reranker"):
        retrieval.main(["--dataset", "xquad-r-sentence", "--data", str(tmp_path / "data"), "--langs", "en,de",
                        "--out", str(out), "--conditions", "hybrid-rerank"])


# --------------------------------------------------------------------------------------------------
# LAReQA's AP@20, the alpha rule, the detected-language conditions
# --------------------------------------------------------------------------------------------------


def test_ap_at_k_hand_computed() -> None:
    # relevant a, b, c; hits at ranks 1 and 3: (1/1 + 2/3) / 3
    assert retrieval.ap_at_k({"a", "b", "c"}, ["a", "x", "b", "y"]) == pytest.approx((1 + 2 / 3) / 3)
    # a hit beyond k does not count; the divisor is min(|R|, k)
    assert retrieval.ap_at_k({"a", "b"}, ["x", "a", "y", "b"], k=2) == pytest.approx((1 / 2) / 2)
    assert retrieval.ap_at_k({"a"}, ["x", "y"]) == 0.0 and retrieval.ap_at_k(set(), ["a"]) == 0.0


def test_ap20_through_ranx_matches_hand_computation() -> None:
    docs = [f"d{i}" for i in range(30)]
    qrels = {"q1": {"d0": 1, "d2": 1, "d25": 1}, "q2": {"d1": 1, "d3": 1, "d4": 1, "d19": 1}, "q3": {"d29": 1}}
    ds = RetrievalDataset("hand", [Document(d, d, "", "en") for d in docs],
                          [Query(q, q, "en", "test") for q in qrels], qrels)
    got = retrieval.per_query_metrics(ds, retrieval.Run({q: [(d, 1.0) for d in docs] for q in qrels}), ["map@20"])
    hand = {"q1": (1 / 1 + 2 / 3) / 3, "q2": (1 / 2 + 2 / 4 + 3 / 5 + 4 / 20) / 4, "q3": 0.0}
    for q, value in hand.items():
        assert got[q]["map@20"] == pytest.approx(value)
        assert retrieval.ap_at_k(qrels[q], docs, 20) == pytest.approx(value)


def test_sweep_takes_the_best_alpha_then_the_larger_on_ties() -> None:
    docs = [Document(f"d{i}", "x", "", "en") for i in range(10)]
    ds = RetrievalDataset("one", docs, [Query("q", "x", "en", "dev")], {"q": {"d0": 1}})

    def runs(rank_of: dict[float, int]) -> retrieval.RunFn:  # AP = 1 / rank of the relevant document
        return lambda _ds, p: retrieval.Run({"q": [(f"d{i}", 1.0) for i in range(1, rank_of[p["alpha"]])]
                                                   + [("d0", 1.0)]})

    scores = {0.0: 10, 0.5: 3, 0.7: 3, 1.0: 5}
    assert retrieval.sweep(runs(scores), ds, alphas=(0.0, 0.5, 0.7, 1.0))[0] == 0.7
    assert retrieval.sweep(runs(scores), ds, alphas=(1.0, 0.7, 0.5, 0.0))[0] == 0.7  # the order is irrelevant
    assert retrieval.sweep(runs({0.0: 2, 1.0: 2}), ds, alphas=(0.0, 1.0))[0] == 1.0
    with pytest.raises(ValueError):
        retrieval.sweep(runs(scores), ds, alphas=())


def test_detected_conditions_leave_lang_to_the_detector() -> None:
    q = Query("q", "Der Fluss fließt durch die alte Stadt zum Meer", "en", "test")  # labelled wrongly on purpose
    body = retrieval.request_body(q, retrieval.CONDITIONS["dense-detected"], 5, False)
    assert "lang" not in body and retrieval.DETECT not in body and body["mode"] == "dense"
    assert retrieval.request_body(q, retrieval.CONDITIONS["dense"], 5, False)["lang"] == "en"
    # the language the one retrieval path then centres with: the request's, else the server's detector's
    from types import SimpleNamespace

    from app.service import SearchService
    from indexer.langid import LanguageDetector

    server = SimpleNamespace(detector=LanguageDetector())
    for condition, want in (("dense", ("en", "request")), ("dense-centering-offset-detected", ("de", "detected"))):
        body = retrieval.request_body(q, retrieval.CONDITIONS[condition], 5, False)
        assert SearchService.query_language(server, q.text, body.get("lang")) == want  # type: ignore[arg-type]
