import faiss
import numpy as np
import pytest

from indexer.dense import DenseShard, build_faiss_index, search_shards
from indexer.topk import top_k


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _shards(x: np.ndarray, size: int) -> list[DenseShard]:
    out = []
    for start in range(0, len(x), size):
        index, _ = build_faiss_index("flat", x[start : start + size])
        out.append(DenseShard(index, start))
    return out


def _brute(x: np.ndarray, q: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[np.ndarray]:
    sims = q @ x.T
    if mask is not None:
        sims[:, ~mask] = -np.inf
    res = []
    for row in sims:
        order = np.argsort(-row, kind="stable")
        order = order[np.isfinite(row[order])]
        res.append(order[:k])
    return res


@pytest.mark.parametrize("n,shard_size,k", [(1, 1, 5), (10, 3, 4), (257, 1, 7), (257, 64, 300),
                                            (1000, 333, 10), (1000, 1000, 17), (1001, 999, 1000)])
def test_sharded_search_equals_brute_force(n: int, shard_size: int, k: int) -> None:
    rng = np.random.default_rng(n + shard_size)
    x, q = _unit(rng, n, 24), _unit(rng, 5, 24)
    got = search_shards(_shards(x, shard_size), q, k)
    for qi, ((scores, rows), exp) in enumerate(zip(got, _brute(x, q, k), strict=True)):
        assert rows.tolist() == exp.tolist()
        np.testing.assert_allclose(scores, x[rows] @ q[qi], atol=1e-5)


@pytest.mark.parametrize("shard_size", [1, 7, 50, 200])
def test_sharded_search_with_mask_equals_brute_force(shard_size: int) -> None:
    rng = np.random.default_rng(7)
    x, q = _unit(rng, 200, 16), _unit(rng, 3, 16)
    mask = rng.random(200) < 0.3
    shards = _shards(x, shard_size)
    masks = [mask[s.offset : s.offset + s.size] for s in shards]
    got = search_shards(shards, q, 25, masks)
    for (_, rows), exp in zip(got, _brute(x, q, 25, mask), strict=True):
        assert rows.tolist() == exp.tolist()
        assert mask[rows].all()


def test_scores_are_cosines() -> None:
    rng = np.random.default_rng(1)
    x, q = _unit(rng, 30, 8), _unit(rng, 1, 8)
    scores, rows = search_shards(_shards(x, 4), q, 30)[0]
    np.testing.assert_allclose(scores, (x[rows] @ q[0]), atol=1e-5)


def test_mask_with_no_allowed_rows_returns_nothing() -> None:
    rng = np.random.default_rng(2)
    x = _unit(rng, 10, 8)
    shards = _shards(x, 4)
    scores, rows = search_shards(shards, x[:1], 5, [np.zeros(s.size, bool) for s in shards])[0]
    assert len(rows) == 0 and len(scores) == 0


def test_merge_topk_breaks_ties_by_row_and_drops_missing() -> None:  # the shard merge of search_shards
    rows = np.array([8, 3, 2, -1])
    s, r = top_k(np.array([0.5, 0.9, 0.5, 0.1], np.float32), 3, labels=rows, mask=rows >= 0)
    assert r.tolist() == [3, 2, 8]


@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_approximate_indexes_find_exact_neighbours_of_stored_vectors(kind: str) -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng, 12_000 if kind == "ivfpq" else 2000, 32)
    index, params = build_faiss_index(kind, x)
    assert params["type"] == kind
    _, ids = index.search(x[:50], 1)
    hit_rate = float(np.mean(ids[:, 0] == np.arange(50)))
    assert hit_rate >= (0.9 if kind == "ivfpq" else 0.98)


def test_ivfpq_on_a_small_shard_falls_back_to_flat() -> None:
    x = _unit(np.random.default_rng(4), 100, 16)
    index, params = build_faiss_index("ivfpq", x)
    assert params["type"] == "flat" and params["fallback_from"] == "ivfpq"
    assert isinstance(index, faiss.IndexFlatIP)


def test_unknown_index_type() -> None:
    with pytest.raises(ValueError, match="unknown index type"):
        build_faiss_index("lsh", np.zeros((2, 4), np.float32))
