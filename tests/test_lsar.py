"""LSAR in the centring rule: under ``full`` the top r = min(8, L - 1) right singular vectors of the matrix of the
reliable languages' means are projected out of documents and queries alike (indexer.centering)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.centering import (
    LSAR_MAX_RANK,
    MIN_CENTROID_DOCS,
    Centroids,
    CentroidStats,
    center,
    center_by_lang,
    centered_norms,
    centered_scores,
    lsar_rank,
    normalize,
)

DIM = 24


def _stats(counts: dict[str, int], seed: int = 0) -> tuple[CentroidStats, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    stats, vecs = CentroidStats(DIM), {}
    for i, (lang, n) in enumerate(counts.items()):
        offset = np.zeros(DIM)
        offset[i] = 2.0  # each language its own offset
        vecs[lang] = normalize(rng.standard_normal((n, DIM)) + offset)
        stats.add([lang] * n, vecs[lang])
    return stats, vecs


@pytest.mark.parametrize(("n", "want"), [(0, 0), (1, 0), (2, 1), (7, 6), (9, 8), (30, LSAR_MAX_RANK)])
def test_rank_rule(n: int, want: int) -> None:
    assert lsar_rank(n) == want


def test_basis_spans_the_top_directions_of_the_reliable_means_only() -> None:
    stats, _ = _stats({"en": 40, "de": 30, "fr": 25, "rare": MIN_CENTROID_DOCS - 1})
    c = stats.centroids()
    assert c.lsar_rank == 2  # three reliable languages; "rare" is below MIN_CENTROID_DOCS and not counted
    basis = c.basis("full")
    assert basis is not None and basis.shape == (DIM, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-5)
    reliable = np.stack([c.means[c.langs.index(x)] for x in ("de", "en", "fr")]).astype(np.float64)
    vt = np.linalg.svd(reliable, full_matrices=False)[2][:2]
    np.testing.assert_allclose(np.abs(basis.T @ vt.T), np.eye(2), atol=1e-5)  # the same subspace, up to sign
    assert c.basis("offset") is None and c.basis("off") is None


def test_single_language_and_old_centroids_have_no_projection(tmp_path: Path) -> None:
    one = _stats({"en": 50})[0].centroids()
    assert one.lsar_rank == 0 and one.basis("full") is None
    multi = _stats({"en": 20, "de": 20, "zh": 20})[0].centroids()
    multi.save(tmp_path / "new.npz", "sum")
    assert Centroids.load(tmp_path / "new.npz").lsar_rank == 2
    old = Centroids(multi.langs, multi.means, multi.counts, multi.global_mean)  # as saved before LSAR
    old.save(tmp_path / "old.npz", "sum")
    loaded = Centroids.load(tmp_path / "old.npz")
    assert loaded.lsar_rank == 0 and loaded.basis("full") is None


def test_projected_vectors_are_orthogonal_to_the_basis_and_unit_norm() -> None:
    stats, vecs = _stats({"en": 20, "de": 20, "zh": 20})
    c = stats.centroids()
    basis = c.basis("full")
    assert basis is not None
    out = center(vecs["de"], c.lookup("full", ["de"])[0], basis)
    np.testing.assert_allclose(out @ basis, 0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # and without a basis, center is the plain rule, normalize(x - shift)
    np.testing.assert_allclose(center(vecs["de"], c.means[c.langs.index("de")]),
                               normalize(vecs["de"] - c.means[c.langs.index("de")]), atol=1e-6)


@pytest.mark.parametrize("n_per_lang", [10, 13, 37])
def test_exact_rescoring_equals_the_materialised_centred_matrix(n_per_lang: int) -> None:
    stats, vecs = _stats({"en": n_per_lang, "de": n_per_lang + 1, "zh": n_per_lang + 2, "hi": n_per_lang}, seed=3)
    c = stats.centroids()
    basis = c.basis("full")
    raw = np.concatenate(list(vecs.values()))
    rows = np.concatenate([np.full(len(v), c.langs.index(lang)) for lang, v in vecs.items()])
    shifts = c.shifts("full")
    q = center(np.random.default_rng(9).standard_normal(DIM).astype(np.float32), shifts[c.langs.index("zh")], basis)
    want = center_by_lang(raw, rows, shifts, basis) @ q
    np.testing.assert_allclose(centered_scores(raw, rows, q, shifts, basis=basis), want, atol=1e-5)
    norms = centered_norms(raw, rows, shifts, basis)
    np.testing.assert_allclose(centered_scores(raw, rows, q, shifts, norms), want, atol=1e-5)


def test_a_benchmark_index_cached_before_lsar_is_rebuilt(tmp_path: Path) -> None:
    from benchmarks.datasets import Document, RetrievalDataset
    from benchmarks.retrieval import built_by_current_rule, index_for
    from indexer.manifest import Manifest
    from tests.conftest import FakeEncoder

    docs = [Document(f"{lang}/{i}", f"{lang} word{i} topic{i % 5}", "", lang) for lang in ("en", "de", "zh")
            for i in range(MIN_CENTROID_DOCS + 2)]
    ds = RetrievalDataset("tiny", docs, [], {}, {})
    enc = FakeEncoder()
    out = index_for(ds, enc, tmp_path, progress=False)
    assert built_by_current_rule(out)
    path = out / str(Manifest.read(out).vector_sets["main"].centroids)
    c = Centroids.load(path)
    assert c.lsar_rank == 2
    Centroids(c.langs, c.means, c.counts, c.global_mean).save(path, enc.checksum)  # as cached before LSAR
    assert not built_by_current_rule(out)
    assert index_for(ds, enc, tmp_path, progress=False) == out and built_by_current_rule(out)


def test_the_ablation_ranks_by_the_rule_of_the_centring_module() -> None:
    from benchmarks.datasets import Query, RetrievalDataset
    from benchmarks.lsar import lsar_runs

    stats, vecs = _stats({"en": 12, "de": 11, "zh": 13}, seed=5)
    ids = [f"{lang}/{i}" for lang, v in vecs.items() for i in range(len(v))]
    langs = [i.split("/")[0] for i in ids]
    raw = np.concatenate(list(vecs.values()))
    queries = [Query(f"q{i}", f"q{i}", lang, "dev") for i, lang in enumerate(["en", "zh", "de"])]
    qv = normalize(np.random.default_rng(1).standard_normal((3, DIM)).astype(np.float32))
    ds = RetrievalDataset("t", [], queries, {q.qid: {ids[0]: 1} for q in queries}, {})
    runs = lsar_runs(raw, ids, langs, qv, ds, [0, 2], k=5)
    c = stats.centroids()
    rows = np.asarray([c.langs.index(x) for x in langs])
    for r, basis in ((0, None), (2, c.basis("full"))):
        d = center_by_lang(raw, rows, c.shifts("full"), basis)
        for q, v in zip(queries, qv, strict=True):
            want = np.argsort(-(d @ center(v[None, :], c.lookup("full", [q.lang])[0], basis)[0]), kind="stable")[:5]
            assert runs[r].ranking(q.qid) == [ids[j] for j in want]


def test_exact_rescoring_projects_a_query_that_was_not_centred_with_the_basis() -> None:
    """FAISS holds the projected documents, so any query scores (P d) . q = d . (P q): the exact path must agree."""
    stats, vecs = _stats({"en": 15, "de": 12})
    c = stats.centroids()
    basis = c.basis("full")
    raw = np.concatenate(list(vecs.values()))
    rows = np.concatenate([np.full(len(v), c.langs.index(lang)) for lang, v in vecs.items()])
    q = normalize(np.random.default_rng(4).standard_normal(DIM).astype(np.float32))  # raw: not projected
    want = center_by_lang(raw, rows, c.shifts("full"), basis) @ q
    np.testing.assert_allclose(centered_scores(raw, rows, q, c.shifts("full"), basis=basis), want, atol=1e-5)
