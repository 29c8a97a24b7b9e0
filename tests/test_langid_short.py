"""Query language ID on short queries (issue 19 part 2): detection restricted to the index's languages, the
embedding evidence, the confidence, the low-confidence shifts (mixture / fallback / argmax), and the response."""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.service import QueryLangPolicy, SearchService, center_query, guess_language
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.centering import MIN_CENTROID_DOCS, Centroids, CentroidStats, mixture, normalize
from indexer.langid import (
    UNDETERMINED,
    LangGuess,
    LanguageDetector,
    best,
    combine,
    embedding_posteriors,
    normalize_lang,
    restrict,
)
from tests.conftest import FakeEncoder, write_jsonl

SHORT = "Super Bowl 50"  # py3langid alone: Maltese


@pytest.fixture(scope="module")
def detector() -> LanguageDetector:
    return LanguageDetector()


# --- the text detector, restricted ----------------------------------------------------------------------------


def test_restriction_gives_a_label_inside_the_index_languages(detector: LanguageDetector) -> None:
    assert detector.detect(SHORT) == "mt"
    assert detector.detect(SHORT, ["en", "de"]) == "en"
    probs = detector.posteriors(SHORT, ["en", "de"])
    assert list(probs) == ["en", "de"] and math.isclose(sum(probs.values()), 1.0)
    assert probs["en"] > 0.5
    # restricting the unrestricted posteriors is the same as restricting at once
    assert restrict(detector.posteriors(SHORT), ["en", "de"]) == pytest.approx(probs)


def test_posteriors_are_folded_codes_and_leave_the_shared_model_alone(detector: LanguageDetector) -> None:
    model = detector._get_model()
    classes, ptc = list(model.identifier.nb_classes), model.identifier.nb_ptc
    probs = detector.posteriors("今天天气很好，我们去公园散步。")
    assert next(iter(probs)) == "zh" and math.isclose(sum(probs.values()), 1.0)
    assert all(normalize_lang(code) == code for code in probs)  # wuu, yue, cmn... folded into zh
    assert UNDETERMINED not in probs
    detector.posteriors(SHORT, ["en"])
    assert model.identifier.nb_classes == classes and model.identifier.nb_ptc is ptc  # no set_languages


def test_restricted_detection_is_thread_safe(detector: LanguageDetector) -> None:
    cases = [(SHORT, ("en", "de")), (SHORT, ("de", "fr")), ("Der Fluss", ("de", "en")), ("Der Fluss", ("fr", "es"))]
    want = [detector.posteriors(text, among) for text, among in cases]
    gate = threading.Barrier(8)
    bad: list[int] = []

    def worker(i: int) -> None:
        gate.wait()
        for _ in range(50):
            text, among = cases[i % len(cases)]
            if detector.posteriors(text, among) != want[i % len(cases)]:
                bad.append(i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad


def test_no_evidence_is_undetermined(detector: LanguageDetector) -> None:
    assert detector.posteriors("308") == {} and detector.posteriors("ok", ["en"]) == {}
    assert detector.detect("ok", ["en", "de"]) == UNDETERMINED
    assert best({}) == LangGuess(UNDETERMINED, 0.0, {})


def test_lazy_no_model_for_text_without_letters() -> None:
    fresh = LanguageDetector()
    assert fresh.posteriors("1 2 3", ["en"]) == {} and not fresh.loaded


# --- pure functions -------------------------------------------------------------------------------------------


def test_restrict_combine_best_exact() -> None:
    got = restrict({"a": 0.2, "b": 0.6, "c": 0.2}, ["a", "b"])
    assert list(got) == ["b", "a"] and got == pytest.approx({"b": 0.75, "a": 0.25}, abs=1e-15)
    assert list(restrict({"a": 0.5, "b": 0.5}, ["b", "a"])) == ["a", "b"]  # ties in code order
    assert restrict({"a": 0.0}, ["a"]) == {} and restrict({"a": 1.0}, ["b"]) == {}
    assert combine({"a": 0.5, "b": 0.5}, {"a": 0.75, "b": 0.25}) == {"a": 0.75, "b": 0.25}
    assert combine({"a": 0.2, "b": 0.8}, {}) == {"b": 0.8, "a": 0.2}  # no embedding evidence: the text alone
    assert combine({"a": 0.6, "b": 0.4}, {"a": 0.5}) == {"a": 1.0}  # no mass for b in the second
    assert combine() == {}
    assert best({"a": 0.25, "b": 0.75}) == LangGuess("b", 0.75, {"b": 0.75, "a": 0.25})


def test_embedding_posteriors_exact() -> None:
    means = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    got = embedding_posteriors(np.array([3.0, 0.0]), means, ["a", "b", "c"], 0.5)
    cos = {"a": 1.0, "b": 0.0, "c": 1 / math.sqrt(2)}
    z = {k: math.exp(v / 0.5) for k, v in cos.items()}
    assert list(got) == ["a", "c", "b"]
    assert got == pytest.approx({k: v / sum(z.values()) for k, v in z.items()}, abs=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        embedding_posteriors(np.ones(2), means, ["a", "b", "c"], 0.0)
    with pytest.raises(ValueError, match="3 means"):
        embedding_posteriors(np.ones(2), means, ["a", "b"], 1.0)


def test_mixture_exact() -> None:
    np.testing.assert_array_equal(mixture(np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([3.0, 1.0])),
                                  np.array([0.75, 0.5], dtype=np.float32))
    with pytest.raises(ValueError, match="non-negative"):
        mixture(np.eye(2), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="1 weights for 2 shifts"):
        mixture(np.eye(2), np.array([1.0]))


def _centroids() -> Centroids:
    """a: 10 x [1, 0]; b: 10 x [0, 1]; r (rare, below MIN_CENTROID_DOCS): 5 x [1, 1]. No LSAR projection (the
    shift is what is tested here; ``centering.center`` applies the projection after it, whatever the shift)."""
    s = CentroidStats(2)
    s.add(["a"] * MIN_CENTROID_DOCS, np.tile([[1.0, 0.0]], (MIN_CENTROID_DOCS, 1)))
    s.add(["b"] * MIN_CENTROID_DOCS, np.tile([[0.0, 1.0]], (MIN_CENTROID_DOCS, 1)))
    s.add(["r"] * 5, np.tile([[1.0, 1.0]], (5, 1)))
    return dataclasses.replace(s.centroids(), lsar_rank=0)


def test_mixture_shift_follows_the_centring_rule() -> None:
    c = _centroids()
    g = np.array([15.0, 15.0]) / 25  # the global mean
    np.testing.assert_allclose(c.mixture_shift("full", {"a": 0.75, "b": 0.25}), [0.75, 0.25], atol=1e-7)
    np.testing.assert_allclose(c.mixture_shift("offset", {"a": 0.75, "b": 0.25}),
                               0.75 * (np.array([1.0, 0.0]) - g) + 0.25 * (np.array([0.0, 1.0]) - g), atol=1e-7)
    # a rare language takes the fallback, as its documents do: the global mean under full, nothing under offset
    np.testing.assert_allclose(c.mixture_shift("full", {"a": 0.5, "r": 0.5}), 0.5 * np.array([1.0, 0.0]) + 0.5 * g,
                               atol=1e-7)
    np.testing.assert_allclose(c.mixture_shift("offset", {"r": 1.0}), [0.0, 0.0], atol=1e-7)


# --- the query's shift under each policy ----------------------------------------------------------------------


def _index(c: Centroids, languages: dict[str, int] | None = None) -> Any:
    return SimpleNamespace(languages=languages or {"a": 10, "b": 10, "r": 5}, centroids=c,
                           require_centroids=lambda mode: c)


@pytest.mark.parametrize(
    ("policy", "source", "shift", "applied", "expected_shift"),
    [
        (QueryLangPolicy(min_confidence=0.7, low="mixture"), "detected", "mixture", True, [0.6, 0.4]),
        (QueryLangPolicy(min_confidence=0.7, low="fallback"), "detected", "fallback", False, [0.6, 0.6]),
        (QueryLangPolicy(min_confidence=0.7, low="argmax"), "detected", "language", True, [1.0, 0.0]),
        (QueryLangPolicy(min_confidence=0.5, low="fallback"), "detected", "language", True, [1.0, 0.0]),
        (QueryLangPolicy(min_confidence=0.7, low="mixture"), "request", "language", True, [1.0, 0.0]),
    ],
)
def test_center_query_low_confidence_policies(policy: QueryLangPolicy, source: str, shift: str, applied: bool,
                                              expected_shift: list[float]) -> None:
    q = np.array([0.6, 0.8], dtype=np.float32)
    guess = LangGuess("a", 0.6, {"a": 0.6, "b": 0.4})
    got, info = center_query(_index(_centroids()), None, q, "full", guess, source, policy)
    np.testing.assert_allclose(got, normalize(q - np.asarray(expected_shift, dtype=np.float32)), atol=1e-6)
    assert (info.shift, info.applied, info.query_lang, info.lang_confidence) == (shift, applied, "a", 0.6)
    assert info.lang_candidates == ({"a": 0.6, "b": 0.4} if source == "detected" else None)
    if shift != "language":
        assert "confidence 0.60 < 0.7" in (info.note or "")


def test_center_query_without_any_evidence_takes_the_fallback() -> None:
    q = np.array([0.6, 0.8], dtype=np.float32)
    got, info = center_query(_index(_centroids()), None, q, "full", LangGuess(UNDETERMINED, 0.0, {}), "detected",
                             QueryLangPolicy(min_confidence=0.7, low="mixture"))
    np.testing.assert_allclose(got, normalize(q - np.array([0.6, 0.6], dtype=np.float32)), atol=1e-6)
    assert info.shift == "fallback" and not info.applied
    off, info = center_query(_index(_centroids()), None, q, "off", LangGuess("a", 0.6, {"a": 1.0}), "detected")
    assert off is q and info.shift is None and info.lang_confidence == 0.6


def test_guess_language_restricts_and_weighs_the_embedding(detector: LanguageDetector) -> None:
    s = CentroidStats(2)
    s.add(["en"] * 10 + ["de"] * 10 + ["und"] * 10, np.array([[1.0, 0.0]] * 10 + [[0.0, 1.0]] * 10 + [[1.0, 1.0]] * 10))
    index = _index(dataclasses.replace(s.centroids(), lsar_rank=0), {"en": 10, "de": 10, "und": 10})
    de_like = np.array([0.0, 1.0])
    text_only = guess_language(detector, SHORT, index, de_like, QueryLangPolicy(temperature=None, weigh_outside=False))
    assert text_only.lang == "en" and set(text_only.probs) == {"en", "de"}  # never "und", never "mt"
    assert text_only.probs == pytest.approx(detector.posteriors(SHORT, ["en", "de"]))
    with_emb = guess_language(detector, SHORT, index, de_like, QueryLangPolicy(temperature=0.05, weigh_outside=False))
    emb = embedding_posteriors(de_like, np.array([[1.0, 0.0], [0.0, 1.0]]), ["en", "de"], 0.05)
    assert with_emb.lang == "de" and with_emb.probs == pytest.approx(combine(text_only.probs, emb))
    # weigh_outside (the default): the confidence times the text's posterior mass on the index's languages
    weighed = guess_language(detector, SHORT, index, de_like, QueryLangPolicy(temperature=None, weigh_outside=True))
    everything = detector.posteriors(SHORT)
    assert weighed.lang == "en" and weighed.probs == text_only.probs
    assert weighed.confidence == pytest.approx(text_only.confidence * (everything["en"] + everything["de"]))
    assert weighed.confidence < 0.5 < text_only.confidence  # py3langid puts most of it elsewhere: uncertain
    before = guess_language(detector, SHORT, index, de_like, QueryLangPolicy(restrict=False))
    assert before.lang == "mt"  # the detector before issue 19
    # a text in none of the index's languages keeps its own label, so the centroid table can serve it
    japanese = "今日はとても良い天気なので、公園を散歩します。"
    outside = guess_language(detector, japanese, index, de_like, QueryLangPolicy())
    assert outside.lang == "ja" and outside.confidence > 0.9
    # an index language without a mean (a live write after the generation's centroids): the text alone
    partial = _index(s.centroids(), {"en": 10, "de": 10, "fr": 1})
    assert guess_language(detector, SHORT, partial, de_like, QueryLangPolicy(temperature=0.05)).probs == \
        pytest.approx(detector.posteriors(SHORT, ["en", "de", "fr"]))


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="unknown low-confidence policy 'sometimes'"):
        QueryLangPolicy(low="sometimes")
    with pytest.raises(ValueError, match="temperature"):
        QueryLangPolicy(temperature=0)


# --- through the API with the fake encoder --------------------------------------------------------------------

DIM = 8
QUERY = "Der Fluss fließt durch die alte Stadt zum Meer"


def _doc_vec(topic: int, lang: str) -> list[float]:
    v = np.zeros(DIM)
    v[topic] = 1.0
    v[{"de": 6, "fr": 7}[lang]] = 2.0
    v[(topic + 1) % 6] += 0.1 * (topic + 1)
    return v.tolist()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], dict[str, list[float]]]:
    tmp = tmp_path_factory.mktemp("langid-short")
    docs, table = [], {}
    for lang in ("de", "fr"):
        for t in range(MIN_CENTROID_DOCS):
            doc = {"id": f"{lang}-{t}", "title": "", "text": f"{lang} document {t}", "lang": lang}
            docs.append(doc)
            table[doc["text"]] = _doc_vec(t % 6, lang)
    q = np.zeros(DIM)
    q[2], q[6], q[7] = 1.0, 1.0, 0.5
    table[QUERY] = table[SHORT] = q.tolist()
    idx = tmp / "idx"
    build_index([write_jsonl(tmp / "c.jsonl", docs)], idx, FakeEncoder(DIM, table),
                BuildOptions(progress=False, centering="full"))
    return idx, docs, table


@pytest.fixture
def client(tmp_path: Path, corpus: tuple[Path, list, dict]) -> Iterator[TestClient]:  # type: ignore[type-arg]
    idx, _, table = corpus
    with TestClient(create_app(Settings(index=idx, home=tmp_path / "home", warmup=False),
                               encoder=FakeEncoder(DIM, table))) as c:
        yield c


def _search(client: TestClient, **body: object) -> dict[str, Any]:
    r = client.post("/search", json={"k": 20, "mode": "dense", "feedback": "off", **body})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_response_reports_the_detected_language_and_confidence(client: TestClient) -> None:
    cen = _search(client, query=QUERY)["centering"]
    assert (cen["query_lang"], cen["lang_source"], cen["shift"], cen["applied"]) == ("de", "detected", "language",
                                                                                    True)
    assert 0.9 < cen["lang_confidence"] <= 1.0 and set(cen["lang_candidates"]) <= {"de", "fr"}
    assert cen["lang_candidates"]["de"] >= cen["lang_confidence"]  # times the text's mass on de and fr
    short = _search(client, query=SHORT)["centering"]  # py3langid alone says Maltese: not an index language
    assert short["query_lang"] in {"de", "fr"} and short["lang_source"] == "detected"
    given = _search(client, query=SHORT, lang="fr")["centering"]
    assert (given["query_lang"], given["lang_source"], given["lang_confidence"], given["lang_candidates"]) == \
        ("fr", "request", 1.0, None)


def _reference(docs: list[dict[str, str]], table: dict[str, list[float]], query: str,
               weights: dict[str, float]) -> dict[str, float]:
    """Independent numpy: full centring of each document by its language mean, the query by ``weights`` of them;
    then LSAR: the top singular direction of the two means (r = L - 1 = 1) projected out of both."""
    vecs = {d["id"]: normalize(np.asarray(table[d["text"]], dtype=np.float32)) for d in docs}
    lang = {d["id"]: d["lang"] for d in docs}
    mean = {lg: np.mean([v for i, v in vecs.items() if lang[i] == lg], axis=0) for lg in ("de", "fr")}
    top = np.linalg.svd(np.stack([mean["de"], mean["fr"]]).astype(np.float64))[2][0]

    def project(x: np.ndarray) -> np.ndarray:
        return normalize((x - (x @ top) * top).astype(np.float32))

    q = normalize(np.asarray(table[query], dtype=np.float32))
    q = project(q - sum(w * mean[lg] for lg, w in weights.items()))
    return {i: float(project(v - mean[lang[i]]) @ q) for i, v in vecs.items()}


def _ranking(scores: dict[str, float]) -> list[str]:
    return sorted(scores, key=lambda i: -scores[i])


def _assert_hits(hits: list[dict[str, Any]], ref: dict[str, float]) -> None:
    """The response ranks every document in the reference's order, with its scores (float error allowed)."""
    assert sorted(h["id"] for h in hits) == sorted(ref)
    np.testing.assert_allclose([h["score"] for h in hits], [ref[h["id"]] for h in hits], atol=1e-5)
    np.testing.assert_allclose([ref[h["id"]] for h in hits], sorted(ref.values(), reverse=True), atol=1e-5)


def test_low_confidence_mixture_and_fallback_through_the_api(client: TestClient, corpus: tuple[Path, list, dict],
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            detector: LanguageDetector) -> None:
    _, docs, table = corpus
    assert _ranking(_reference(docs, table, SHORT, {"de": 0.5, "fr": 0.5})) != \
        _ranking(_reference(docs, table, SHORT, {"de": 1.0}))
    monkeypatch.setattr(SearchService, "lang_policy", QueryLangPolicy(temperature=None, min_confidence=1.01,
                                                                     low="mixture"))
    got = _search(client, query=SHORT)
    weights = detector.posteriors(SHORT, ["de", "fr"])
    assert got["centering"]["shift"] == "mixture" and got["centering"]["applied"]
    assert got["centering"]["lang_candidates"] == {k: round(v, 4) for k, v in weights.items() if v >= 0.01}
    _assert_hits(got["results"], _reference(docs, table, SHORT, weights))
    monkeypatch.setattr(SearchService, "lang_policy", QueryLangPolicy(temperature=None, min_confidence=1.01,
                                                                     low="fallback"))
    got = _search(client, query=SHORT)
    assert got["centering"]["shift"] == "fallback" and not got["centering"]["applied"]
    # the fallback under full is the global mean: here the mean of the two languages' means (10 documents each)
    _assert_hits(got["results"], _reference(docs, table, SHORT, {"de": 0.5, "fr": 0.5}))


def test_embed_bets_on_the_best_candidate_when_unsure(client: TestClient, corpus: tuple[Path, list, dict],
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """/embed with ``centered`` refuses the language-agnostic shift: below the confidence bar it centres the text
    with its best candidate (and says which) instead of answering 422."""
    _, docs, table = corpus
    monkeypatch.setattr(SearchService, "lang_policy", QueryLangPolicy(min_confidence=1.01, low="fallback"))
    assert _search(client, query=SHORT)["centering"]["shift"] == "fallback"  # a search does not bet
    r = client.post("/embed", json={"texts": [SHORT], "kind": "query", "centered": True})
    assert r.status_code == 200, r.text
    (lang,) = r.json()["langs"]
    assert lang in {"de", "fr"}
    vecs = {d["id"]: normalize(np.asarray(table[d["text"]], dtype=np.float32)) for d in docs}
    ref = _reference(docs, table, SHORT, {lang: 1.0})  # document scores against the query centred as `lang`
    got = np.asarray(r.json()["embeddings"][0], dtype=np.float32)
    mean = {lg: np.mean([v for i, v in vecs.items() if i.startswith(lg)], axis=0) for lg in ("de", "fr")}
    top = np.linalg.svd(np.stack([mean["de"], mean["fr"]]).astype(np.float64))[2][0]
    for doc_id, v in vecs.items():
        x = v - mean[doc_id.split("-")[0]]
        d = normalize((x - (x @ top) * top).astype(np.float32))
        assert float(d @ got) == pytest.approx(ref[doc_id], abs=1e-5)


def test_the_benchmark_runs_the_one_path_under_the_policy_it_is_given(corpus: tuple[Path, list, dict]) -> None:
    """``run_inprocess(lang_policy=...)``: the knob of benchmarks/langid_short.py, no class attribute swapped."""
    from benchmarks import retrieval as rb
    from benchmarks.datasets import Query, RetrievalDataset
    from indexer.store import open_index

    idx, docs, table = corpus
    ds = RetrievalDataset("short", [], [Query("s", SHORT, "de", "test")], {"s": {"de-0": 1}}, {})
    qvecs = FakeEncoder(DIM, table).encode_queries([SHORT])
    index = open_index(idx)
    def scores(policy: QueryLangPolicy | None) -> dict[str, float]:
        run = rb.run_inprocess(index, FakeEncoder(DIM, table), ds, rb.CONDITIONS["dense-detected"], k=20,
                               qvecs=qvecs, lang_policy=policy)
        return dict(run.hits["s"])

    unsure = scores(QueryLangPolicy(temperature=None, min_confidence=1.01, low="fallback"))
    fallback = _reference(docs, table, SHORT, {"de": 0.5, "fr": 0.5})  # the language-agnostic shift
    np.testing.assert_allclose([unsure[i] for i in fallback], list(fallback.values()), atol=1e-5)
    bet = scores(QueryLangPolicy(temperature=None, min_confidence=0.0, outside_mass=0.0))  # the best candidate
    lang = best(restrict(LanguageDetector().posteriors(SHORT), ["de", "fr"])).lang
    want = _reference(docs, table, SHORT, {lang: 1.0})
    np.testing.assert_allclose([bet[i] for i in want], list(want.values()), atol=1e-5)
    assert not np.allclose(list(want.values()), list(fallback.values()), atol=1e-3)
    assert SearchService.lang_policy == QueryLangPolicy()  # the server's default untouched
