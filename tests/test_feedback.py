"""Dense pseudo-relevance feedback (issue 19 part 1): the pure Rocchio step and gates (app/feedback.py), the stage in
the one retrieval path (exact ranks with the fake encoder; live delta rows; langs filters; hybrid), the API fields
and response info, and the XQuAD-R pool variants of benchmarks/datasets.py."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import feedback as prf
from app import fusion
from app.batching import QueryBatcher
from app.main import create_app
from app.schemas import SearchRequest
from app.service import Retrieved, SearchService
from app.settings import Settings
from benchmarks.datasets import (
    XQUAD_LANGS,
    DatasetError,
    default_data_dir,
    doc_paragraph,
    load_xquad_r,
    xquad_nonparallel,
    xquad_parallel_subset,
)
from indexer.build import BuildOptions, build_index
from indexer.live import LiveStore
from indexer.store import SearchIndex, open_index
from tests.conftest import FakeEncoder, unit, write_jsonl

# 4-d vectors: "A" is the answer in three languages (en, de, es), D_en / E_es are on-topic distractors, X_fr is
# off-topic. The query (1, 1, 0, 0) ranks D_en above the German translation and E_es above the Spanish one; the
# translation group {A_en, A_de} pulls the query towards the answer.
VECS: dict[str, tuple[str, list[float]]] = {
    "A_en": ("en", [1, 0.6, 0, 0]), "A_de": ("de", [1, 0.5, 0, 0.1]), "D_en": ("en", [0.55, 1, 0, 0]),
    "A_es": ("es", [1, 0.1, 0, 0]), "E_es": ("es", [0.3, 1, 0, 0.3]), "X_fr": ("fr", [0, 0, 1, 0]),
}
Q = unit(np.array([1, 1, 0, 0], dtype=np.float32))
OFF = ["A_en", "D_en", "A_de", "E_es", "A_es", "X_fr"]


def encoder() -> FakeEncoder:
    return FakeEncoder(dim=4, table={"q": [1, 1, 0, 0], **{f"text of {k}": v for k, (_, v) in VECS.items()}})


def docs(ids: list[str]) -> list[dict[str, str]]:
    return [{"id": k, "text": f"text of {k}", "lang": VECS[k][0]} for k in ids]


def build(folder: Path, ids: list[str], centering: str = "off") -> Path:
    build_index([write_jsonl(folder / "c.jsonl", docs(ids))], folder / "idx", encoder(),
                BuildOptions(progress=False, centering=centering))
    return folder / "idx"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fb"), list(VECS))


def run(index: SearchIndex, tokens: list[str] | None = None, **fields: Any) -> Retrieved:
    batcher = QueryBatcher(lambda texts: np.stack([Q] * len(texts)), max_batch=1, max_wait_ms=0.0)
    service = SearchService(index, encoder(), batcher, lambda _q: list(tokens or []))

    async def go() -> Retrieved:
        await batcher.start()
        try:
            return await service.retrieve(SearchRequest(query="q", k=6, lang="en", **fields))
        finally:
            await batcher.close()

    return asyncio.run(go())


def ids(index: SearchIndex, got: Retrieved) -> list[str]:
    return [index.doc(h.row)["id"] for h in got.hits]


# --------------------------------------------------------------------------------------------------
# pure functions
# --------------------------------------------------------------------------------------------------


def test_rocchio_is_the_normalised_query_plus_beta_times_the_mean() -> None:
    q = np.array([1, 0, 0], dtype=np.float32)
    d = np.array([[0, 1, 0], [0, 0, 1]], dtype=np.float32)
    np.testing.assert_allclose(prf.rocchio(q, d, 1.0), unit(np.array([1, 0.5, 0.5])), atol=1e-6)
    np.testing.assert_allclose(prf.rocchio(q, d, 2.0), unit(np.array([1, 1, 1])), atol=1e-6)
    np.testing.assert_allclose(prf.rocchio(q, d, 0.0), q, atol=1e-6)
    np.testing.assert_allclose(prf.rocchio(q, d[:0], 1.0), q, atol=1e-6)


E = np.eye(4, dtype=np.float32)
NEAR = unit(np.array([[1, 0.1, 0, 0], [1, 0, 0.1, 0], [1, 0, 0, 0.1]], dtype=np.float32))  # cosines ~0.99


def test_gate_coherence_opens_on_agreeing_hits_and_stays_closed_on_orthogonal_ones() -> None:
    d = prf.gate_coherence(NEAR, ["en", "en", "en"], 0.5)
    assert d.apply and d.use == (0, 1, 2) and d.evidence["mean_cosine"] > 0.98
    d = prf.gate_coherence(E[:3], ["en", "de", "es"], 0.5)
    assert not d.apply and d.use == () and d.evidence["mean_cosine"] == 0.0 and "disagree" in d.reason


def test_gate_languages_needs_two_languages_that_agree() -> None:
    d = prf.gate_languages(NEAR, ["en", "de", "en"], 0.5)
    assert d.apply and d.evidence["languages"] == 2 and d.evidence["cross_language_cosine"] > 0.98
    d = prf.gate_languages(NEAR, ["en", "en", "en"], 0.5)
    assert not d.apply and "one language" in d.reason
    d = prf.gate_languages(E[:3], ["en", "de", "es"], 0.5)
    assert not d.apply and d.evidence["cross_language_cosine"] == 0.0


def test_gate_agree_takes_feedback_only_from_the_hits_that_agree() -> None:
    vecs = np.stack([NEAR[0], E[3], NEAR[1]])
    d = prf.gate_agree(vecs, ["en", "en", "de"], 0.7)
    assert d.apply and d.use == (0, 2) and d.evidence["agreeing"] == 2
    d = prf.gate_agree(E[:3], ["en", "de", "es"], 0.7)
    assert not d.apply and d.use == ()


def test_gate_translations_takes_one_agreeing_hit_per_language() -> None:
    d = prf.gate_translations(NEAR, ["en", "en", "de"], 0.7)  # the second "en" hit is skipped: not a translation
    assert d.apply and d.use == (0, 2) and d.evidence["agreeing_languages"] == 2
    d = prf.gate_translations(NEAR, ["en", "en", "en"], 0.7)
    assert not d.apply and "distinct languages" in d.reason
    d = prf.gate_translations(NEAR, ["en", "de", "es"], 0.999)
    assert not d.apply


def test_gates_need_two_hits_and_one_language_per_vector() -> None:
    assert not prf.decide("coherence", NEAR[:1], ["en"]).apply
    assert prf.decide("always", NEAR[:1], ["en"]).use == (0,)
    with pytest.raises(ValueError, match="2 document vectors but 3 languages"):
        prf.decide("agree", NEAR[:2], ["en", "de", "es"])
    with pytest.raises(ValueError, match="unknown feedback gate"):
        prf.decide("magic", NEAR, ["en", "de", "es"])


def test_feedback_query_only_when_the_gate_opens() -> None:
    q = np.array([0, 1, 0, 0], dtype=np.float32)
    opened = prf.decide("translations", NEAR, ["en", "en", "de"], 0.7)
    np.testing.assert_allclose(prf.feedback_query(q, NEAR, opened, 1.0), prf.rocchio(q, NEAR[[0, 2]], 1.0))
    assert prf.feedback_query(q, NEAR, prf.decide("translations", NEAR, ["en"] * 3), 1.0) is None


def test_merge_rrf_exact_order() -> None:
    rows, scores = prf.merge_rrf(np.array([5, 3, 9]), np.array([3, 7, 5]), k=3, rrf_k=1.0)
    # 3: 1/3 + 1/2, 5: 1/2 + 1/4, 7: 1/3, 9: 1/4
    assert rows.tolist() == [3, 5, 7]
    np.testing.assert_allclose(scores, [1 / 3 + 1 / 2, 1 / 2 + 1 / 4, 1 / 3], rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# the stage in the one retrieval path
# --------------------------------------------------------------------------------------------------


def test_feedback_off_is_the_plain_dense_search(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="off")
    assert ids(index, got) == OFF and got.feedback is None
    plain = index.dense(Q.reshape(1, -1), 6)[0]
    assert [h.row for h in got.hits] == plain.rows.tolist()
    assert [h.score for h in got.hits] == [float(s) for s in plain.scores]
    explicit = run(index, mode="dense", feedback="off", feedback_docs=7, feedback_weight=3.0, feedback_gate="agree")
    assert [(h.row, h.score, h.ranks, h.scores) for h in explicit.hits] == \
        [(h.row, h.score, h.ranks, h.scores) for h in got.hits]


def test_feedback_dense_always_runs_from_the_top_three(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="dense")
    assert ids(index, got) == ["A_en", "A_de", "D_en", "E_es", "A_es", "X_fr"]
    assert got.feedback is not None and got.feedback.applied and got.feedback.docs == 3
    assert got.feedback.gate == "always"


def test_feedback_auto_translations_moves_the_answer_up(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="auto", feedback_gate="translations", feedback_threshold=0.7,
              feedback_merge="second")
    assert ids(index, got) == ["A_en", "A_de", "D_en", "A_es", "E_es", "X_fr"]
    fb = got.feedback
    assert fb is not None and fb.applied and fb.docs == 2 and fb.gate == "translations"
    assert fb.evidence["agreeing_languages"] == 2 and fb.evidence["languages"] == 2
    # the scores are those of the Rocchio query over A_en and A_de
    vecs, _ = index.centred_vectors([0, 1], "off")
    q2 = prf.rocchio(Q, vecs, 1.0)
    assert got.hits[3].score == pytest.approx(float(unit(np.array([1, 0.1, 0, 0])) @ q2), abs=1e-6)


def test_the_default_is_auto_with_the_translations_gate_and_the_rrf_merge(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense")
    fb = got.feedback
    assert fb is not None and fb.mode.value == "auto" and fb.gate == "translations" and fb.applied
    assert fb.evidence["threshold"] == prf.DEFAULT_THRESHOLDS["translations"] == 0.5
    second = run(index, mode="dense", feedback="auto", feedback_merge="second")
    assert ids(index, second) == ["A_en", "A_de", "D_en", "A_es", "E_es", "X_fr"]
    # the default merges the first list (OFF) and the feedback list by RRF (rrf_k 60): A_de (ranks 3 and 2) ties
    # D_en (2 and 3) and A_es (5, 4) ties E_es (4, 5); ties go to the lower row, as in test_merge_rrf_exact_order
    assert ids(index, got) == ["A_en", "A_de", "D_en", "A_es", "E_es", "X_fr"]
    rows, scores = prf.merge_rrf(np.asarray([h.row for h in run(index, mode="dense", feedback="off").hits]),
                                 np.asarray([h.row for h in second.hits]), 6)
    assert [h.row for h in got.hits] == rows.tolist()
    np.testing.assert_allclose([h.score for h in got.hits], scores, rtol=1e-6)


def test_feedback_auto_stays_closed_and_changes_nothing(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="auto", feedback_gate="coherence", feedback_threshold=0.999)
    assert ids(index, got) == OFF
    assert got.feedback is not None and not got.feedback.applied and "disagree" in got.feedback.reason
    assert got.feedback.evidence["threshold"] == 0.999


def test_feedback_with_a_langs_filter_sees_one_language(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="auto", langs=["en"])
    assert ids(index, got) == ["A_en", "D_en"]
    assert got.feedback is not None and not got.feedback.applied and "distinct languages" in got.feedback.reason
    # forced from the top 3 (A_en, D_en, E_es: no translation among them) it drifts towards the distractors, and
    # the second search keeps the filter
    forced = run(index, mode="dense", feedback="dense", langs=["en", "es"], feedback_merge="second")
    assert ids(index, forced) == ["D_en", "A_en", "E_es", "A_es"]


def test_feedback_rrf_merge(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, mode="dense", feedback="dense", feedback_merge="rrf")
    # first list: A_en D_en A_de E_es A_es X_fr; second: A_en A_de D_en E_es A_es X_fr; A_de and D_en tie (2+3),
    # the lower row (A_de, row 1) first
    assert ids(index, got) == ["A_en", "A_de", "D_en", "E_es", "A_es", "X_fr"]
    assert got.hits[1].score == pytest.approx(got.hits[2].score)


def test_feedback_in_hybrid_refuses_the_feedback_dense_run_with_bm25(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, ["text", "x_fr"], mode="hybrid", fusion="rrf", feedback="auto", feedback_gate="translations",
              feedback_threshold=0.7)
    assert got.feedback is not None and got.feedback.applied
    vecs, _ = index.centred_vectors([0, 1], "off")  # the fused top 3: A_en, A_de, X_fr (BM25)
    second = index.dense(prf.rocchio(Q, vecs, 1.0).reshape(1, -1), 100)[0]
    bm = index.bm25_search(["text", "x_fr"], 100)
    want = fusion.rrf({"dense": fusion.Run(second.rows, second.scores), "bm25": fusion.Run(bm.rows, bm.scores)}, k=6)
    assert [(h.row, h.ranks) for h in got.hits] == [(h.row, h.ranks) for h in want]


def test_feedback_bm25_mode_has_nothing_to_do(index_dir: Path) -> None:
    index = open_index(index_dir)
    got = run(index, ["text"], mode="bm25", feedback="dense")
    assert got.feedback is not None and not got.feedback.applied and "no dense run" in got.feedback.reason


def test_feedback_on_a_live_index_uses_delta_vectors(tmp_path: Path) -> None:
    ids_main = [k for k in VECS if k != "A_de"]
    store = LiveStore(build(tmp_path, ids_main), encoder_checksum=encoder().checksum)
    new = docs(["A_de"])
    store.upsert(new, encoder().encode_passages(["text of A_de"]))
    snap = store.snapshot
    assert snap.view.n == 1  # A_de is a delta row
    got = run(snap, mode="dense", feedback="auto", feedback_gate="translations", feedback_threshold=0.7,
              feedback_merge="second")
    assert ids(snap, got) == ["A_en", "A_de", "D_en", "A_es", "E_es", "X_fr"]
    assert got.feedback is not None and got.feedback.applied and got.feedback.docs == 2
    vecs, langs = snap.centred_vectors([got.hits[1].row, got.hits[0].row], "off")
    assert langs == ["de", "en"]
    np.testing.assert_allclose(vecs[0], unit(np.array([1, 0.5, 0, 0.1])), atol=1e-6)
    store.close()


def test_centred_vectors_are_centred_like_the_index(tmp_path: Path) -> None:
    index = open_index(build(tmp_path, list(VECS) * 1, centering="full"))
    rows = [0, 1, 3]
    vecs, langs = index.centred_vectors(rows, "full")
    assert langs == ["en", "de", "es"]
    faiss_scores = index.dense(vecs, 6)  # each centred document vector finds itself first, at cosine 1
    assert [h.rows[0] for h in faiss_scores] == rows
    np.testing.assert_allclose([h.scores[0] for h in faiss_scores], 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# API: fields, validation, response info
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(index=index_dir), encoder=encoder())) as c:
        yield c


def test_api_feedback_info_and_default(client: TestClient) -> None:
    plain = client.post("/search", json={"query": "q", "lang": "en", "k": 6, "feedback": "off"}).json()
    assert plain["feedback"] is None and [h["id"] for h in plain["results"]] == OFF
    default = client.post("/search", json={"query": "q", "lang": "en", "k": 6}).json()
    assert default["feedback"]["mode"] == "auto" and default["feedback"]["applied"] is True
    assert default["results"] == client.post("/search", json={
        "query": "q", "lang": "en", "k": 6, "feedback": "auto", "feedback_merge": "rrf"}).json()["results"]
    body = client.post("/search", json={"query": "q", "lang": "en", "k": 6, "feedback": "auto",
                                        "feedback_gate": "translations", "feedback_threshold": 0.7,
                                        "feedback_merge": "second"}).json()
    assert [h["id"] for h in body["results"]] == ["A_en", "A_de", "D_en", "A_es", "E_es", "X_fr"]
    fb = body["feedback"]
    assert fb["mode"] == "auto" and fb["gate"] == "translations" and fb["applied"] is True and fb["docs"] == 2
    assert "agree" in fb["reason"] and fb["evidence"]["agreeing_languages"] == 2


@pytest.mark.parametrize("extra, field", [
    ({"feedback": "maybe"}, "feedback"),
    ({"feedback_docs": 0}, "feedback_docs"),
    ({"feedback_docs": 21}, "feedback_docs"),
    ({"feedback_docs": "3"}, "feedback_docs"),
    ({"feedback_weight": -0.5}, "feedback_weight"),
    ({"feedback_weight": 4.5}, "feedback_weight"),
    ({"feedback_weight": True}, "feedback_weight"),
    ({"feedback_weight": "1"}, "feedback_weight"),
    ({"feedback_threshold": 1.5}, "feedback_threshold"),
    ({"feedback_gate": "magic"}, "feedback_gate"),
    ({"feedback_merge": "max"}, "feedback_merge"),
])
def test_api_feedback_fields_out_of_range_are_422(client: TestClient, extra: dict[str, Any], field: str) -> None:
    r = client.post("/search", json={"query": "q", **extra})
    assert r.status_code == 422 and r.json()["error"] == "validation_error" and field in r.json()["detail"]


# --------------------------------------------------------------------------------------------------
# XQuAD-R variants (benchmarks/datasets.py)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_pool() -> Any:
    return load_xquad_r(default_data_dir(), "sentence")


def test_nonparallel_keeps_each_paragraph_in_exactly_one_language(full_pool: Any) -> None:
    np_pool = xquad_nonparallel(full_pool, seed=0)
    langs_of: dict[tuple[int, int], set[str]] = {}
    for d in np_pool.docs:
        langs_of.setdefault(doc_paragraph(d.id), set()).add(d.lang)
    all_paras = {doc_paragraph(d.id) for d in full_pool.docs}
    assert set(langs_of) == all_paras and all(len(v) == 1 for v in langs_of.values())
    per_lang = Counter(next(iter(v)) for v in langs_of.values())  # round-robin: balanced to one paragraph
    assert set(per_lang) == set(XQUAD_LANGS) and max(per_lang.values()) - min(per_lang.values()) <= 1
    # the kept copy's sentences are all there, and a query's qrels are sentences of that copy only
    kept = {d.id for d in np_pool.docs}
    for q in np_pool.queries[:500]:
        rel = list(np_pool.qrels[q.qid])
        assert rel and all(r in kept for r in rel) and len({r.split("/")[0] for r in rel}) == 1
    assert set(np_pool.langs()) == set(XQUAD_LANGS) and len(np_pool.queries) == len(full_pool.queries)
    assert {q.qid: q.split for q in np_pool.queries} == {q.qid: q.split for q in full_pool.queries}


def test_variants_are_seeded_and_stable(full_pool: Any) -> None:
    a, b = xquad_nonparallel(full_pool, seed=0), xquad_nonparallel(full_pool, seed=0)
    assert [d.id for d in a.docs] == [d.id for d in b.docs] and a.qrels == b.qrels
    c = xquad_nonparallel(full_pool, seed=1)
    assert [d.id for d in c.docs] != [d.id for d in a.docs]
    assert a.name == "xquad-r-sentence-nonparallel-s0"


def test_parallel_subset_has_whole_paragraphs_in_all_languages_and_about_the_same_size(full_pool: Any) -> None:
    nonpar = xquad_nonparallel(full_pool, seed=0)
    par = xquad_parallel_subset(full_pool, len(nonpar.docs), seed=0)
    langs_of: dict[tuple[int, int], set[str]] = {}
    for d in par.docs:
        langs_of.setdefault(doc_paragraph(d.id), set()).add(d.lang)
    assert all(v == set(XQUAD_LANGS) for v in langs_of.values())
    assert len(nonpar.docs) <= len(par.docs) <= len(nonpar.docs) * 1.1
    kept = {d.id for d in par.docs}
    assert all(set(par.qrels[q.qid]) <= kept for q in par.queries)
    assert {q.split for q in par.queries} == {"dev", "test"}
    with pytest.raises(DatasetError, match="n_docs must be >= 1"):
        xquad_parallel_subset(full_pool, 0)
