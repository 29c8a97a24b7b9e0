"""Exact top-k, the one selection behind BM25, the shard merges, exact dense search and the planner's recall reference:
best first, equal scores by lower row (or lower label), whatever the sizes, masks and chunks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Transform = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (block of vectors, their rows) -> block to score


def top_k(scores: np.ndarray, k: int, *, mask: np.ndarray | None = None, labels: np.ndarray | None = None,
          above: float = -np.inf) -> tuple[np.ndarray, np.ndarray]:
    """(scores, rows) of the best ``k`` entries whose ``mask`` is True and score ``> above`` (never -inf), best first,
    equal scores by lower row. Scores must be free of NaN.

    1-D ``scores``: up to ``k`` entries; ``labels`` (1-D only) stand for the positions as rows and order the ties
    (candidates merged from several shards carry their global rows). 2-D: each row of the matrix on its own, as two
    (rows, min(k, columns)) arrays, padded with score -inf and column -1 where fewer entries qualify.
    """
    keep = scores > above if mask is None else (scores > above) & mask
    if scores.ndim == 2:
        return _top_k_rows(scores if keep.all() else np.where(keep, scores, -np.inf), k)
    hits = np.flatnonzero(keep)
    s, rows = scores[hits], (hits if labels is None else np.asarray(labels)[hits]).astype(np.int64)
    if len(s) > k:  # only entries at or above the k-th best score can be in: keep all of them, the sort decides ties
        kept = s >= (np.partition(s, len(s) - k)[len(s) - k] if k > 0 else np.inf)
        s, rows = s[kept], rows[kept]
    order = np.lexsort((rows, -s))[: max(k, 0)]
    return s[order], rows[order]


def _top_k_rows(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:  # s: -inf where an entry is out
    kk = max(min(k, s.shape[1]), 0)
    if kk == 0:
        return np.zeros((len(s), 0), dtype=s.dtype), np.zeros((len(s), 0), dtype=np.int64)
    cols = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
    picked = np.take_along_axis(s, cols, axis=1)
    cut = picked.min(axis=1, keepdims=True)
    # argpartition keeps any of several entries equal to the k-th best: redo exactly the rows where it had a choice
    unsure = (cut[:, 0] > -np.inf) & ((s == cut).sum(axis=1) > (picked == cut).sum(axis=1))
    for i in np.flatnonzero(unsure):
        picked[i], cols[i] = top_k(s[i], kk)
    order = np.lexsort((cols, -picked), axis=1)
    picked, cols = np.take_along_axis(picked, order, axis=1), np.take_along_axis(cols, order, axis=1).astype(np.int64)
    cols[picked == -np.inf] = -1
    return picked, cols


def read_rows(vectors: np.ndarray, idx: np.ndarray, transform: Transform | None = None) -> np.ndarray:
    """``vectors[idx]`` as contiguous float32 (a memory map is read only there), after ``transform`` if given."""
    block = np.ascontiguousarray(vectors[idx], dtype=np.float32)
    return np.ascontiguousarray(transform(block, idx), dtype=np.float32) if transform else block


def top_k_dot(vectors: np.ndarray, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
              transform: Transform | None = None, chunk: int = 65_536) -> np.ndarray:
    """Rows of the exact top ``k`` of ``queries @ vectors.T`` per query (``vectors`` read ``chunk`` rows at a time,
    after ``transform``), ties by lower row, -1 where fewer rows qualify; ``exclude[i]`` is never returned for query
    ``i``."""
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        idx = np.arange(start, min(len(vectors), start + chunk))
        scores = queries @ read_rows(vectors, idx, transform).T
        if exclude is not None:
            hit = (exclude >= start) & (exclude < start + len(idx))
            scores[np.flatnonzero(hit), exclude[hit] - start] = -np.inf
        s, cols = top_k(scores, k)
        # the rows kept so far are lower than this chunk's and each part is sorted: position order is row order
        best_s, pos = top_k(np.concatenate([best_s, s], axis=1), k)
        best_r = np.take_along_axis(np.concatenate([best_r, cols + start], axis=1), np.maximum(pos, 0), axis=1)
    best_r[best_s == -np.inf] = -1
    return best_r
