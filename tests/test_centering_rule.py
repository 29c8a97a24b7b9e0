"""The one rule of indexer.centering for a language without a reliable centroid: documents and queries of the
same language take the same shift (at build, in the exact re-scoring of another mode, in the live delta and at
query time); the encoder's centroid table serves only a query in a language the index holds no document of."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.centering import MIN_CENTROID_DOCS, CentroidStats, center_sides, normalize
from indexer.centroid_table import default_table_path
from indexer.mining_search import ArrayRows, centred_sources
from tests.conftest import FakeEncoder, write_jsonl

DIM = 8
LANG_AXIS = {"de": 4, "fr": 5, "it": 6, "es": 7, "pt": 7}  # each language adds 2 x its own unit vector
COUNTS = {"de": MIN_CENTROID_DOCS, "fr": MIN_CENTROID_DOCS + 2, "it": 3}  # "it" is rare, "es" and "pt" absent


def _vec(lang: str, i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i % 4] = 1.0
    v[(i + 1) % 4] = 0.1 * (i + 1)  # no two documents alike
    v[LANG_AXIS[lang]] = 2.0
    return normalize(v.astype(np.float32))


DOCS: list[dict[str, Any]] = [{"id": f"{lang}-{i}", "title": "", "text": f"{lang} text {i}", "lang": lang}
        for lang, n in COUNTS.items() for i in range(n)]
NEW: list[dict[str, Any]] = [{"id": "es-new", "text": "es text 0", "lang": "es"},
                              {"id": "it-new", "text": "it text 7", "lang": "it"}]
VECS = {d["text"]: _vec(d["lang"], int(d["text"].split()[-1])) for d in DOCS + NEW}
# a query with exactly the vector of a document of its language scores 1.0 with it iff both got the same shift
QUERIES = {"q it": ("it", VECS["it text 1"]), "q es": ("es", VECS["es text 0"]), "q pt": ("pt", _vec("pt", 2))}
LANG_OF = {d["id"]: d["lang"] for d in DOCS + NEW}
RAW_OF = {d["id"]: VECS[d["text"]] for d in DOCS + NEW}


def _expected(mode: str, query: str, ids: list[str]) -> dict[str, float]:
    """Independent reference: explicit means of the built index's documents, the fallback spelled out."""
    raw = np.stack([RAW_OF[d["id"]] for d in DOCS])
    langs = np.array([d["lang"] for d in DOCS])
    glob = raw.mean(0)
    fallback = glob if mode == "full" else np.zeros(DIM)

    def shift(lang: str) -> np.ndarray:
        if (langs == lang).sum() < MIN_CENTROID_DOCS:
            return fallback
        mean = raw[langs == lang].mean(0)
        return mean if mode == "full" else mean - glob

    # LSAR under full: the top L - 1 right singular vectors of the reliable languages' means are projected out
    reliable = [lang for lang in sorted(set(langs)) if (langs == lang).sum() >= MIN_CENTROID_DOCS]
    top = np.zeros((DIM, 0))
    if mode == "full":
        means = np.stack([raw[langs == lang].mean(0) for lang in reliable])
        top = np.linalg.svd(means, full_matrices=False)[2][: len(reliable) - 1].T

    def transform(x: np.ndarray) -> np.ndarray:
        return normalize(x - top @ (top.T @ x))

    lang, qv = QUERIES[query]
    q = transform(qv - shift(lang))
    return {i: float(transform(RAW_OF[i] - shift(LANG_OF[i])) @ q) for i in ids}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """A ``full`` index (FAISS holds its documents centred at build) and a centroid table holding every language
    of the test, so that any use of the table where the rule forbids it shows in the scores."""
    table = {**{t: v.tolist() for t, v in VECS.items()}, **{q: v.tolist() for q, (_, v) in QUERIES.items()}}
    build_index([write_jsonl(tmp_path / "c.jsonl", DOCS)], tmp_path / "idx", FakeEncoder(DIM, table),
                BuildOptions(progress=False, centering="full", shard_size=7))
    stats = CentroidStats(DIM)
    rng = np.random.default_rng(0)
    for lang in LANG_AXIS:
        stats.add([lang] * MIN_CENTROID_DOCS, normalize(rng.standard_normal((MIN_CENTROID_DOCS, DIM))))
    path = default_table_path(tmp_path / "home", "fake-checksum")
    path.parent.mkdir(parents=True)
    stats.centroids().save(path, "fake-checksum")
    settings = Settings(index=tmp_path / "idx", home=tmp_path / "home", warmup=False, reload_interval=0)
    with TestClient(create_app(settings, encoder=FakeEncoder(DIM, table))) as c:
        yield c


def _search(client: TestClient, query: str, mode: str) -> tuple[dict[str, float], dict[str, object]]:
    r = client.post("/search", json={"query": query, "lang": QUERIES[query][0], "mode": "dense", "k": 50,
                                     "centering": mode})
    assert r.status_code == 200, r.text
    body = r.json()
    return {h["id"]: h["score"] for h in body["results"]}, body["centering"]


def _check(got: dict[str, float], want: dict[str, float]) -> None:
    assert sorted(got) == sorted(want)
    for i, s in want.items():
        assert got[i] == pytest.approx(s, abs=1e-5), i


@pytest.mark.parametrize("mode", ["full", "offset"])  # full: FAISS as built; offset: exact re-scoring (store)
def test_rare_and_absent_languages_shift_documents_and_queries_alike(client: TestClient, mode: str) -> None:
    ids = [d["id"] for d in DOCS]
    got, info = _search(client, "q it", mode)  # rare in the index: the fallback, though the table has "it"
    _check(got, _expected(mode, "q it", ids))
    assert got["it-1"] == pytest.approx(1.0, abs=1e-5)
    assert info["applied"] is False and info["source"] is None and "no centroid" in str(info["note"])

    got, info = _search(client, "q pt", mode)  # no document anywhere: the table's centroid
    assert info["source"] == "table" and info["applied"] is True

    r = client.post("/documents", json={"documents": NEW})  # into the live delta, frozen centroids
    assert r.status_code == 200, r.text
    ids += [d["id"] for d in NEW]
    for query in ("q it", "q es"):  # "es" is now held (delta only): its documents and queries take the fallback
        got, info = _search(client, query, mode)
        _check(got, _expected(mode, query, ids))
        assert info["source"] is None
    assert got["es-new"] == pytest.approx(1.0, abs=1e-5)


def test_query_shift_consults_the_table_only_for_languages_without_documents() -> None:
    stats = CentroidStats(2)
    stats.add(["de"] * MIN_CENTROID_DOCS + ["it"], np.array([[1.0, 0.0]] * MIN_CENTROID_DOCS + [[0.0, 1.0]]))
    index = stats.centroids()
    tab = CentroidStats(2)
    tab.add(["it"] * MIN_CENTROID_DOCS + ["pt"] * MIN_CENTROID_DOCS,
            np.array([[0.5, 0.5]] * MIN_CENTROID_DOCS + [[0.0, 2.0]] * MIN_CENTROID_DOCS))
    table = tab.centroids()
    held = {"de", "it"}
    glob = [10 / 11, 1 / 11]
    for lang, want, source in (("de", [1.0, 0.0], "index"), ("it", glob, None), ("pt", [0.0, 2.0], "table"),
                               ("es", glob, None), (None, glob, None)):
        shift, src = index.query_shift("full", lang, table, held)
        np.testing.assert_allclose(shift, want, atol=1e-6)
        assert src == source, lang
    shift, src = index.query_shift("offset", "it", table, held)
    assert src is None and not shift.any()
    np.testing.assert_allclose(index.query_shift("offset", "pt", table, held)[0], [-0.25, 0.75], atol=1e-6)
    shifts, sources = index.lookup("full", ["it", "de", "es", "it"])  # documents: no table, one row each
    np.testing.assert_allclose(shifts, [glob, [1.0, 0.0], glob, glob], atol=1e-6)
    assert sources == [None, "index", None, None]
    assert not index.lookup("off", ["de", "it"])[0].any()


@pytest.mark.parametrize("mode", ["full", "offset", "off"])
def test_streamed_mining_sides_equal_in_memory_centring(mode: str) -> None:
    rng = np.random.default_rng(7)
    x, y = normalize(rng.standard_normal((23, 4)) + 1), normalize(rng.standard_normal((31, 4)) - 1)
    sx, sy = centred_sources(ArrayRows(x), ArrayRows(y), mode, chunk=5)
    cx, cy = center_sides(x, y, mode)
    np.testing.assert_allclose(sx.read(0, 23), cx, atol=1e-6)
    np.testing.assert_allclose(sy.read(0, 31), cy, atol=1e-6)
