"""Language centring: exact algebra, streaming/merged centroids, and the effect on ranks end to end."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index, passage_text
from indexer.centering import (
    MIN_CENTROID_DOCS,
    Centroids,
    CentroidStats,
    center_by_lang,
    center_sides,
    centered_scores,
    normalize,
    resolve_auto,
)
from indexer.centroid_table import default_table_path
from indexer.manifest import MANIFEST, Manifest
from tests.conftest import FakeEncoder, write_jsonl
from xlir.errors import ModelInvalid

DIM = 8
OFFSET = {"de": 6, "fr": 7}  # each language adds 3 x a unit vector of its own: the "language offset"


def _doc_vec(topic: int, lang: str, noise: int) -> list[float]:
    v = np.zeros(DIM)
    v[topic] = 1.0
    v[OFFSET[lang]] = 3.0
    v[(topic + 1) % 6] += 0.01 * noise  # tiny, deterministic: no exact ties
    return v.tolist()


def _corpus() -> tuple[list[dict[str, str]], dict[str, list[float]]]:
    """German documents on topics 0-4, French on 0-3 and 5; every language >= MIN_CENTROID_DOCS docs."""
    docs, table = [], {}
    for lang, topics in (("de", [0, 1, 2, 3, 4]), ("fr", [0, 1, 2, 3, 5])):
        for rep in range(2):
            for t in topics:
                doc = {"id": f"{lang}-t{t}-{rep}", "title": "", "text": f"{lang} topic {t} copy {rep}", "lang": lang}
                docs.append(doc)
                table[passage_text("", doc["text"])] = _doc_vec(t, lang, rep + 1)
    q = np.zeros(DIM)
    q[5], q[OFFSET["de"]] = 1.0, 3.0  # a German query about topic 5, which only French documents cover
    table["Frage zu Thema fünf"] = q.tolist()
    return docs, table


def _reference_scores(docs: list[dict[str, str]], table: dict[str, list[float]], mode: str) -> dict[str, float]:
    """Independent numpy reference: explicit per-language means, subtract, re-normalise, cosine."""
    vecs = {d["id"]: normalize(np.asarray(table[d["text"]], dtype=np.float32)) for d in docs}
    langs = {d["id"]: d["lang"] for d in docs}
    mean = {lg: np.mean([v for i, v in vecs.items() if langs[i] == lg], axis=0) for lg in ("de", "fr")}
    glob = np.mean(list(vecs.values()), axis=0)
    shift = {lg: (mean[lg] if mode == "full" else mean[lg] - glob) if mode != "off" else 0 * glob for lg in mean}
    q = normalize(np.asarray(table["Frage zu Thema fünf"], dtype=np.float32)) - shift["de"]
    q = q / np.linalg.norm(q)
    return {i: float(normalize(v - shift[langs[i]]) @ q) for i, v in vecs.items()}


def assert_ranking(got: list[str], ref: dict[str, float]) -> None:
    """``got`` lists every document, in the reference's score order (near-ties within float error in any order)."""
    assert sorted(got) == sorted(ref)
    np.testing.assert_allclose([ref[i] for i in got], sorted(ref.values(), reverse=True), atol=1e-5)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]], dict[str, list[float]]]:
    tmp = tmp_path_factory.mktemp("centering")
    docs, table = _corpus()
    return write_jsonl(tmp / "c.jsonl", docs), docs, table


def _index(tmp: Path, corpus: Path, table: dict[str, list[float]], centering: str, **kw: object) -> Path:
    out = tmp / f"idx-{centering}-{kw.get('shard_size', 'one')}"
    build_index([corpus], out, FakeEncoder(DIM, table), BuildOptions(progress=False, centering=centering,
                                                                    **kw))  # type: ignore[arg-type]
    return out


@pytest.fixture
def client_for(tmp_path: Path, synthetic: tuple[Path, list, dict]) -> Iterator:  # type: ignore[type-arg]
    corpus, _, table = synthetic
    clients: list[TestClient] = []

    def make(centering: str, **settings: object) -> TestClient:
        idx = tmp_path / f"idx-{centering}-one"
        if not idx.exists():
            _index(tmp_path, corpus, table, centering)
        c = TestClient(create_app(Settings(index=idx, home=tmp_path / "home", warmup=False, **settings),
                                  encoder=FakeEncoder(DIM, table)))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def _ids(client: TestClient, **body: object) -> list[str]:
    r = client.post("/search", json={"query": "Frage zu Thema fünf", "k": 20, "lang": "de", "feedback": "off", **body})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_plain_cosine_prefers_the_query_language_and_centring_fixes_it(client_for, synthetic) -> None:  # type: ignore[no-untyped-def]
    _, docs, table = synthetic
    off = _ids(client_for("off"))
    assert off[0].startswith("de-")  # the language offset dominates: a German document on another topic
    assert_ranking(off, _reference_scores(docs, table, "off"))
    for mode in ("full", "offset"):
        got = _ids(client_for(mode))
        assert_ranking(got, _reference_scores(docs, table, mode))
        assert got[:2] == ["fr-t5-0", "fr-t5-1"] or got[:2] == ["fr-t5-1", "fr-t5-0"], (mode, got)


def test_auto_picks_full_for_a_multilingual_index_and_offset_for_one_language() -> None:
    assert resolve_auto({"de": 500, "fr": 500}) == "full"
    assert resolve_auto({"de": 1000}) == "offset"
    assert resolve_auto({"de": 10_000, "fr": 5}) == "offset"  # 0.05%: effectively monolingual


def test_request_can_switch_mode_without_re_embedding(client_for, synthetic) -> None:  # type: ignore[no-untyped-def]
    _, docs, table = synthetic
    c = client_for("full")
    for mode in ("off", "offset", "full"):
        r = c.post("/search", json={"query": "Frage zu Thema fünf", "k": 20, "lang": "de", "centering": mode,
                                    "feedback": "off"})  # the first search's exact scores
        body = r.json()
        assert_ranking([h["id"] for h in body["results"]], _reference_scores(docs, table, mode))
        assert body["centering"]["mode"] == mode and body["centering"]["applied"] == (mode != "off")


def test_sharded_centroids_merge_exactly(tmp_path: Path, synthetic) -> None:  # type: ignore[no-untyped-def]
    corpus, docs, table = synthetic
    one = Manifest.read(_index(tmp_path, corpus, table, "full"))
    for shard_size in (1, 3, 7, 19):
        idx = _index(tmp_path, corpus, table, "full", shard_size=shard_size)
        a = Centroids.load(idx / "centroids.npz")
        b = Centroids.load(tmp_path / "idx-full-one" / "centroids.npz")
        np.testing.assert_allclose(a.means, b.means, atol=1e-7)
        vecs = np.stack([normalize(np.asarray(table[d["text"]], np.float32)) for d in docs])
        langs = np.array([d["lang"] for d in docs])
        np.testing.assert_allclose(a.means[a.langs.index("fr")], vecs[langs == "fr"].mean(0), atol=1e-6)
        assert len(Manifest.read(idx).shards) == -(-len(docs) // shard_size) and one.doc_count == len(docs)


@pytest.mark.parametrize("sizes", [[1], [3, 1, 4, 1, 5], [2, 7], [20]])
def test_streaming_mean_equals_numpy(sizes: list[int]) -> None:
    rng = np.random.default_rng(sum(sizes))
    vecs = rng.standard_normal((sum(sizes), 5)).astype(np.float32)
    langs = rng.choice(["a", "b", "c"], size=len(vecs))
    parts, start = [], 0
    for n in sizes:
        s = CentroidStats(5)
        s.add(list(langs[start : start + n]), vecs[start : start + n])
        parts.append(s)
        start += n
    merged = parts[0]
    for p in parts[1:]:
        merged = merged.merge(p)
    c = merged.centroids()
    for lang in set(langs):
        np.testing.assert_allclose(c.means[c.langs.index(lang)], vecs[langs == lang].mean(0), atol=1e-6)
        assert c.counts[c.langs.index(lang)] == (langs == lang).sum()
    np.testing.assert_allclose(c.global_mean, vecs.mean(0), atol=1e-6)


def test_centered_scores_equal_explicit_centring() -> None:
    rng = np.random.default_rng(3)
    raw = normalize(rng.standard_normal((40, 6)))
    rows = rng.integers(0, 3, 40)
    shifts = rng.standard_normal((3, 6)).astype(np.float32) * 0.3
    q = normalize(rng.standard_normal(6))
    np.testing.assert_allclose(centered_scores(raw, rows, q, shifts), center_by_lang(raw, rows, shifts) @ q,
                               atol=1e-5)


def test_small_languages_fall_back_to_the_global_mean() -> None:
    s = CentroidStats(2)
    s.add(["big"] * MIN_CENTROID_DOCS, np.tile([[1.0, 0.0]], (MIN_CENTROID_DOCS, 1)))
    s.add(["tiny"], np.array([[0.0, 1.0]]))
    c = s.centroids()
    assert c.lookup("full", ["tiny", "big"])[1] == [None, "index"]  # no reliable centroid for "tiny"
    np.testing.assert_allclose(c.lookup("full", ["tiny"])[0][0], c.global_mean)
    np.testing.assert_allclose(c.lookup("offset", ["tiny"])[0][0], 0.0)


def test_query_language_without_centroid_uses_the_table_else_says_so(tmp_path: Path, client_for,  # type: ignore[no-untyped-def]
                                                                    synthetic) -> None:
    c = client_for("full")
    r = c.post("/search", json={"query": "Frage zu Thema fünf", "lang": "es"}).json()
    assert r["centering"]["applied"] is False and "no centroid for the query language 'es'" in r["centering"]["note"]
    stats = CentroidStats(DIM)
    stats.add(["es"] * MIN_CENTROID_DOCS, np.tile(np.eye(DIM, dtype=np.float32)[4], (MIN_CENTROID_DOCS, 1)))
    table_path = default_table_path(tmp_path / "home", "fake-checksum")
    table_path.parent.mkdir(parents=True)
    stats.centroids().save(table_path, "fake-checksum")
    c2 = client_for("full")
    r = c2.post("/search", json={"query": "Frage zu Thema fünf", "lang": "es"}).json()
    assert r["centering"] == {"mode": "full", "query_lang": "es", "lang_source": "request", "applied": True,
                              "source": "table", "note": None, "lang_confidence": 1.0, "lang_candidates": None,
                              "shift": "language"}


def test_centroid_table_round_trip_and_encoder_check(tmp_path: Path) -> None:
    s = CentroidStats(3)
    s.add(["en", "en", "de"], np.eye(3, dtype=np.float32))
    c = s.centroids()
    c.save(tmp_path / "t.npz", "sha-a")
    back = Centroids.load(tmp_path / "t.npz", "sha-a")
    assert back.langs == c.langs and np.array_equal(back.means, c.means) and back.counts.tolist() == [1, 2]
    with pytest.raises(ModelInvalid, match=r"t\.npz was built with encoder weights sha-a"):
        Centroids.load(tmp_path / "t.npz", "sha-b")


def test_table_of_another_encoder_stops_start_up_naming_the_file(tmp_path: Path, client_for) -> None:  # type: ignore[no-untyped-def]
    s = CentroidStats(DIM)
    s.add(["en"], np.ones((1, DIM), np.float32))
    s.centroids().save(tmp_path / "other.npz", "another-encoder")
    c = client_for("full", centroid_table=tmp_path / "other.npz")
    r = c.get("/ready")
    assert r.status_code == 503 and "other.npz was built with encoder weights anothe" in r.json()["detail"]


def test_bad_language_and_index_without_centroids(tmp_path: Path, client_for, synthetic) -> None:  # type: ignore[no-untyped-def]
    c = client_for("off")
    r = c.post("/search", json={"query": "x", "lang": "xx"})
    assert r.status_code == 422 and "accepted ISO 639-1 codes: aa, ab" in r.json()["detail"]
    r = c.post("/search", json={"query": "x", "centering": "sideways"})
    assert r.status_code == 422
    # an index from before centroids existed: no table in the manifest
    idx = tmp_path / "idx-off-one"
    m = Manifest.read(idx)
    m.vector_sets["main"].centroids = None
    (idx / MANIFEST).write_text(m.model_dump_json())
    corpus, _, table = synthetic
    with TestClient(create_app(Settings(index=idx, warmup=False), encoder=FakeEncoder(DIM, table))) as old:
        r = old.post("/search", json={"query": "x", "centering": "full"})
        assert r.status_code == 400 and r.json()["error"] == "centering_unavailable"
        assert str(idx) in r.json()["detail"] and "xlir index" in r.json()["detail"]
        assert old.post("/search", json={"query": "x"}).status_code == 200  # its own mode, off, still works


def test_embed_centered(client_for, synthetic) -> None:  # type: ignore[no-untyped-def]
    _, docs, table = synthetic
    c = client_for("full")
    raw = normalize(np.asarray(table["Frage zu Thema fünf"], np.float32))
    means = {lang: np.mean([normalize(np.asarray(table[d["text"]], np.float32)) for d in docs if d["lang"] == lang],
                           axis=0) for lang in sorted({d["lang"] for d in docs})}
    # LSAR: the top L - 1 right singular vectors of the language means are projected out after the mean
    top = np.linalg.svd(np.stack(list(means.values())), full_matrices=False)[2][: len(means) - 1].T
    x = raw - means["de"]
    body = c.post("/embed", json={"texts": ["Frage zu Thema fünf"], "centered": True, "lang": "de"}).json()
    np.testing.assert_allclose(body["embeddings"][0], normalize(x - top @ (top.T @ x)), atol=1e-5)
    assert body["langs"] == ["de"] and body["centering"] == "full"
    r = c.post("/embed", json={"texts": ["Frage zu Thema fünf"], "centered": True, "lang": "ja"})
    assert r.status_code == 422 and "no centroid" in r.json()["detail"]


def test_center_sides_for_mining() -> None:
    rng = np.random.default_rng(5)
    x, y = normalize(rng.standard_normal((17, 4)) + 2), normalize(rng.standard_normal((15, 4)) - 2)
    cx, cy = center_sides(x, y, "full")
    np.testing.assert_allclose(cx, normalize(x - x.mean(0)), atol=1e-6)
    np.testing.assert_allclose(cy, normalize(y - y.mean(0)), atol=1e-6)
    ox, _ = center_sides(x, y, "offset")
    glob = np.concatenate([x, y]).mean(0)
    np.testing.assert_allclose(ox, normalize(x - (x.mean(0) - glob)), atol=1e-6)
    assert center_sides(x, y, "off")[0] is x
    assert center_sides(x[:3], y, "full")[0] is not None and center_sides(x[:3], y, "full")[1] is y  # too small
