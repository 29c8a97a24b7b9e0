"""The one exact top-k (indexer.topk) against a full sort, at awkward sizes, with ties, masks and chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.topk import top_k, top_k_dot


def _sorted(scores: np.ndarray, k: int, keep: np.ndarray, labels: np.ndarray | None = None) -> list[int]:
    """Brute force: every qualifying entry, fully sorted by score desc then label asc, cut at k."""
    rows = np.arange(len(scores)) if labels is None else labels
    both = sorted((-float(s), int(r)) for s, r, ok in zip(scores, rows, keep, strict=True) if ok)
    return [r for _, r in both[: max(k, 0)]]


def _scores(rng: np.random.Generator, n: int, dtype: type, ties: bool) -> np.ndarray:
    # few distinct values make ties at the cut-off the rule, not the exception
    return (rng.integers(-3, 4, n) if ties else rng.standard_normal(n)).astype(dtype)


SIZES = [(0, 0), (0, 3), (1, 0), (1, 1), (5, 1), (5, 5), (5, 9), (37, 10), (64, 63), (200, 7)]


@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_vector_equals_full_sort(n: int, k: int, dtype: type, ties: bool) -> None:
    rng = np.random.default_rng(n * 31 + k)
    scores = _scores(rng, n, dtype, ties)
    mask = rng.random(n) < 0.6
    for kw, keep in [({}, np.ones(n, bool)), ({"mask": mask}, mask), ({"above": 0.0}, scores > 0),
                     ({"mask": mask, "above": 0.0}, mask & (scores > 0))]:
        s, rows = top_k(scores, k, **kw)  # type: ignore[arg-type]
        assert rows.tolist() == _sorted(scores, k, keep), kw
        assert rows.dtype == np.int64 and s.dtype == dtype
        np.testing.assert_array_equal(s, scores[rows])


@pytest.mark.parametrize("n,k", SIZES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_matrix_rows_equal_full_sort_padded(n: int, k: int, dtype: type, ties: bool) -> None:
    rng = np.random.default_rng(n * 17 + k)
    scores = np.stack([_scores(rng, n, dtype, ties) for _ in range(6)])
    mask = rng.random(scores.shape) < 0.5
    for kw, keep in [({}, np.ones(scores.shape, bool)), ({"mask": mask}, mask), ({"above": 0.0}, scores > 0)]:
        s, cols = top_k(scores, k, **kw)  # type: ignore[arg-type]
        width = max(min(k, n), 0)
        assert s.shape == cols.shape == (6, width) and cols.dtype == np.int64
        for i in range(6):
            want = _sorted(scores[i], k, keep[i])
            assert cols[i].tolist() == want + [-1] * (width - len(want)), (kw, i)
            assert s[i, : len(want)].tolist() == scores[i, want].tolist()
            assert (s[i, len(want) :] == -np.inf).all()


def test_mask_leaving_fewer_than_k_rows() -> None:
    scores = np.linspace(1, 0, 50, dtype=np.float32)
    k = 10
    mask = np.zeros(50, bool)
    mask[[3, 40, 7, 20, 33, 1, 49, 12, 8]] = True  # k - 1 rows left
    s, rows = top_k(scores, k, mask=mask)
    assert rows.tolist() == sorted(np.flatnonzero(mask).tolist())
    s2, cols = top_k(np.stack([scores, scores]), k, mask=np.stack([mask, ~mask]))
    assert cols[0].tolist() == rows.tolist() + [-1] and s2[0, -1] == -np.inf
    assert cols[1].tolist() == [i for i in range(50) if not mask[i]][:k]


def test_labels_order_ties_and_are_returned_as_rows() -> None:
    # candidates of several shards: equal scores go to the lower global row, whatever their position
    s, r = top_k(np.array([0.5, 0.75, 0.5, 0.1], np.float32), 3, labels=np.array([8, 3, 2, 4]))
    assert r.tolist() == [3, 2, 8] and s.tolist() == [0.75, 0.5, 0.5]
    rng = np.random.default_rng(5)
    scores, labels = rng.integers(0, 3, 40).astype(np.float32), rng.permutation(1000)[:40]
    for k in (0, 1, 7, 40, 41):
        assert top_k(scores, k, labels=labels)[1].tolist() == _sorted(scores, k, np.ones(40, bool), labels)


def test_all_equal_scores_give_the_lowest_rows() -> None:
    # argpartition alone may keep any of the tied rows; the answer must be the first k, in every row of a matrix too
    scores = np.zeros((3, 1000), np.float32)
    scores[1, 500:] = 1.0
    s, cols = top_k(scores, 5)
    assert cols.tolist() == [[0, 1, 2, 3, 4], [500, 501, 502, 503, 504], [0, 1, 2, 3, 4]]
    assert top_k(scores[0], 5)[1].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("n,k,chunk", [(0, 3, 4), (1, 0, 4), (1, 1, 1), (10, 10, 3), (10, 15, 4), (97, 5, 10),
                                       (97, 1, 97), (100, 20, 7), (64, 8, 64), (1000, 20, 300)])
@pytest.mark.parametrize("ties", [False, True])
def test_chunked_dot_equals_brute_force(n: int, k: int, chunk: int, ties: bool) -> None:
    rng = np.random.default_rng(n + k + chunk)
    x = (rng.integers(-1, 2, (n, 4)) if ties else rng.standard_normal((n, 4))).astype(np.float32)
    q = (rng.integers(-1, 2, (5, 4)) if ties else rng.standard_normal((5, 4))).astype(np.float32)
    exclude = rng.integers(0, max(n, 1), 5) if n else None
    got = top_k_dot(x, q, k, exclude=exclude, chunk=chunk)
    full = q @ x.T
    assert got.shape == (5, max(min(k, n), 0))
    for i in range(5):
        keep = np.ones(n, bool)
        if exclude is not None:
            keep[exclude[i]] = False
        want = _sorted(full[i], k, keep)
        assert got[i].tolist() == want + [-1] * (got.shape[1] - len(want))


def test_chunked_dot_applies_the_transform_by_row() -> None:
    rng = np.random.default_rng(3)
    x, q = rng.standard_normal((50, 6)).astype(np.float32), rng.standard_normal((4, 6)).astype(np.float32)

    def transform(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return block * (1.0 + (idx % 3)[:, None])  # row-dependent, so chunk offsets matter

    got = top_k_dot(x, q, 8, transform=transform, chunk=7)
    full = q @ transform(x, np.arange(50)).T
    assert got.tolist() == [_sorted(full[i], 8, np.ones(50, bool)) for i in range(4)]


def test_exact_dense_search_and_the_live_delta_give_tied_documents_in_row_order(tmp_path: Path) -> None:
    # 600 documents with one text: every score ties; the exact scan of another centring mode (store) and the
    # delta of a live index used to keep any 5 of the tied rows (argpartition's choice), now the first 5
    from indexer.build import BuildOptions, build_index
    from indexer.live import LiveStore
    from indexer.store import open_index
    from tests.conftest import FakeEncoder, write_jsonl

    enc = FakeEncoder()
    docs = [{"id": f"d{i}", "text": "apple river", "lang": "en" if i % 2 else "de"} for i in range(600)]
    build_index([write_jsonl(tmp_path / "c.jsonl", docs)], tmp_path / "idx", enc,
                BuildOptions(progress=False, shard_size=400))
    index = open_index(tmp_path / "idx")
    q = enc.encode_queries(["apple river"])
    assert index.centering == "full"
    assert index.dense(q, 5, mode="off")[0].rows.tolist() == [0, 1, 2, 3, 4]
    assert index.dense(q, 5, mode="off", mask=np.arange(600) >= 397)[0].rows.tolist() == [397, 398, 399, 400, 401]
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    new = [{"id": f"n{i}", "title": "", "text": "pear", "lang": "en"} for i in range(600)]
    store.upsert(new, enc.encode_passages([d["text"] for d in new]))
    live = store.snapshot
    assert live.dense(enc.encode_queries(["pear"]), 5, mode="off")[0].rows.tolist() == [600, 601, 602, 603, 604]
