"""Margin-based bitext mining over multilingual sentence embeddings.

Follows Artetxe & Schwenk (2019), "Margin-based Parallel Corpus Mining with Multilingual Sentence
Embeddings", as implemented in LASER's ``mine_bitexts.py`` (BUCC). Embeddings are L2-normalised float32
rows, so cosine similarity is the inner product.

For a source sentence ``x`` and a target sentence ``y``::

    NN_k(x)  = the k targets nearest to x (forward),   avg_fwd(x) = sum_{z in NN_k(x)} cos(x, z) / k
    NN_k(y)  = the k sources nearest to y (backward),  avg_bwd(y) = sum_{z in NN_k(y)} cos(y, z) / k

    ratio     margin(x, y) = cos(x, y) / max((avg_fwd(x) + avg_bwd(y)) / 2, MIN_RATIO_DENOMINATOR)
    distance  margin(x, y) = cos(x, y) - (avg_fwd(x) + avg_bwd(y)) / 2
    absolute  margin(x, y) = cos(x, y)

``k`` is clamped to the size of the searched side (logged as a warning; :class:`MinedArrays` records the k
used per direction). The margin discounts "hubs" (vectors close to many others): a hub's high neighbourhood
average shrinks all of its scores, so a sentence's true translation wins over a hub that plain cosine would
prefer. The ratio's denominator is floored at :data:`MIN_RATIO_DENOMINATOR` (see :func:`apply_margin`).

Candidates are each source's k nearest targets and each target's k nearest sources. Retrieval:

* ``fwd``: each source with the best-scoring target among its k nearest targets;
* ``bwd``: each target with the best-scoring source among its k nearest sources;
* ``intersect``: the pairs that are both the forward best of their source and the backward best of
  their target;
* ``max``: the union of the ``fwd`` and ``bwd`` pairs, taken greedily by descending score, keeping a
  pair only if neither its source nor its target has been used (LASER's ``max`` strategy; the result
  is one-to-one).

``threshold`` keeps pairs with score >= threshold; a rule name (``otsu``, ``runner-up``) sets it from the run's own
scores (:mod:`indexer.mining_threshold`) after the k-NN pass, and :class:`MinedArrays` records the value used.
``one_to_one`` applies the same greedy rule to ``fwd`` and ``bwd`` (``max`` and ``intersect`` are one-to-one
already). Results are sorted by score desc, ties
by (src, tgt) asc; ties between equal-scoring candidates of one sentence go to the lower index.

Layers: :func:`knn`, :func:`apply_margin`, :func:`margin_scores`, :func:`mine` and :func:`mine_neighbours`
work on arrays; :mod:`indexer.mining_search` searches at any size (IVF, chunked, resumable);
:mod:`indexer.mining_job` embeds texts (``mine_texts``) and files (``mine_files``, cached and resumable).
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from indexer.centering import check_mode
from indexer.mining_threshold import THRESHOLD_RULES, rule_threshold, runner_ups

log = logging.getLogger(__name__)
MARGINS = ("ratio", "distance", "absolute")
RETRIEVALS = ("fwd", "bwd", "max", "intersect")
SEARCHES = ("auto", "exact", "ivf")
DEFAULT_CHUNK = 8192  # query rows per FAISS search call in knn()
PAIR_CHUNK = 4096  # candidate pairs per cosine batch
MIN_RATIO_DENOMINATOR = 0.01  # floor of the ratio margin's neighbourhood mean; why: apply_margin


@dataclass(frozen=True, slots=True)
class MinedPair:
    score: float
    src: int  # row of the source sentence
    tgt: int  # row of the target sentence


# --------------------------------------------------------------------------------------------------
# Array core
# --------------------------------------------------------------------------------------------------


Threshold = float | str | None  # a number, a rule of indexer.mining_threshold, or none


def _check_options(k: int, margin: str, retrieval: str, threshold: Threshold) -> None:
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose from {', '.join(MARGINS)}")
    if retrieval not in RETRIEVALS:
        raise ValueError(f"unknown retrieval {retrieval!r}; choose from {', '.join(RETRIEVALS)}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if isinstance(threshold, str):
        if threshold not in THRESHOLD_RULES:
            raise ValueError(f"unknown threshold rule {threshold!r}; give a number or one of "
                             f"{', '.join(THRESHOLD_RULES)}")
    elif threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or np.isnan(threshold)
    ):
        raise ValueError(f"threshold must be a number, a rule ({', '.join(THRESHOLD_RULES)}) or None, "
                         f"got {threshold!r}")


def _as_embeddings(a: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows x dim), got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} has dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _check_pair(x: np.ndarray, y: np.ndarray, xname: str, yname: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_embeddings(x, xname), _as_embeddings(y, yname)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {xname} has dim {x.shape[1]}, {yname} has dim {y.shape[1]}")
    return x, y


def _check_chunk(chunk: int) -> None:
    if isinstance(chunk, bool) or not isinstance(chunk, int | np.integer) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")


def effective_k(k: int, rows: int) -> int:
    """``k`` clamped to the ``rows`` of the searched side; a clamp is logged (the margin then averages over
    the whole side, a neighbourhood that says little, see :func:`apply_margin`)."""
    if k > rows:
        log.warning("k=%d is more than the %d rows of the searched side: the margin uses k=%d (every row)",
                    k, rows, rows)
    return min(k, rows)


def sort_rows(s: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row of (scores, ids) by score desc, ties by id asc (FAISS leaves the order of equal scores open)."""
    order = np.lexsort((i, -s), axis=1)
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def _sorted_search(index: faiss.Index, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    return sort_rows(*index.search(q, depth))


def _flat_top_k(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of a flat ``index`` by similarity desc, ties by id asc, also at the k-th place:
    FAISS keeps any of the rows tied there, so the search goes deeper (2k, then 4 times deeper) for the rows
    whose k-th score is still tied at the end of their list. The result is then a function of the scores
    alone, and the top k of per-shard top-k lists is the top k of the whole (indexer/ray_mining.py)."""
    total = index.ntotal
    depth = min(total, 2 * k)
    s, i = _sorted_search(index, q, depth)
    sims, ids = s[:, :k].copy(), i[:, :k].copy()
    rows = np.flatnonzero(s[:, k - 1] == s[:, -1]) if depth > k else np.empty(0, dtype=np.int64)
    while len(rows) and depth < total:
        depth = min(total, depth * 4)
        s, i = _sorted_search(index, q[rows], depth)
        sims[rows], ids[rows] = s[:, :k], i[:, :k]
        rows = rows[s[:, k - 1] == s[:, -1]]
    return sims, ids


def _knn(x: np.ndarray, y: np.ndarray, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """knn() on already validated float32 arrays."""
    kk = effective_k(k, len(y))
    index = faiss.IndexFlatIP(y.shape[1])
    index.add(y)
    sims = np.empty((len(x), kk), dtype=np.float32)
    ids = np.empty((len(x), kk), dtype=np.int64)
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        sims[start:stop], ids[start:stop] = _flat_top_k(index, x[start:stop], kk)
    return sims, ids


def knn(x: np.ndarray, y: np.ndarray, k: int, chunk: int = DEFAULT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``y`` by inner product for every row of ``x``.

    Returns ``(sims, ids)``, both ``len(x) x min(k, len(y))`` (float32, int64), each row sorted by
    similarity desc, ties by id asc (also at the k-th place: of several tied rows the lowest ids are
    returned). ``x`` is searched ``chunk`` rows at a time (FAISS ``IndexFlatIP``),
    so memory beyond the two inputs stays bounded.
    """
    x, y = _check_pair(x, y, "x", "y")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    _check_chunk(chunk)
    if len(y) == 0:
        raise ValueError("y is empty: nothing to search")
    return _knn(x, y, int(k), int(chunk))


def apply_margin(
    cos: np.ndarray, fwd_avg: np.ndarray, bwd_avg: np.ndarray, margin: str = "ratio"
) -> np.ndarray:
    """The margin formula, elementwise (broadcasting) in float64; see the module docstring.

    The ratio divides by ``max(avg, MIN_RATIO_DENOMINATOR)``, ``avg`` being the mean of the two neighbourhood
    means. The ratio says how much closer ``y`` is to ``x`` than their usual neighbours are, which only means
    something over a positive denominator: a zero one makes the score infinite or NaN, a negative one reverses
    it (the best pair ranks last). Raw sentence embeddings keep ``avg`` far above zero (0.70 to 0.80 for
    e5-small on data/sample), but centred ones do not: centring removes the shared direction, and when ``k``
    reaches the size of a side the neighbourhood is that whole side, whose mean cosine with ``x`` is
    ``x . mean(y)``, i.e. zero after centring (measured: -0.006 to 0.001 with k=30 over 30 centred sentences).
    With the floor every score is finite and the margin stays monotone (a higher cosine scores higher, a more
    crowded neighbourhood lower, never the reverse); when every neighbourhood is degenerate, the ranking is that
    of the cosine. 0.01 is below every neighbourhood mean measured with ``k`` under the side size (smallest:
    0.06, k=10 over 30 centred sentences), so ordinary margins are unchanged.
    """
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; choose from {', '.join(MARGINS)}")
    c = np.asarray(cos, dtype=np.float64)
    avg = (np.asarray(fwd_avg, dtype=np.float64) + np.asarray(bwd_avg, dtype=np.float64)) / 2.0
    if margin == "absolute":
        return c + np.zeros_like(avg)  # same broadcast shape as the other margins
    if margin == "distance":
        return c - avg
    return c / np.maximum(avg, MIN_RATIO_DENOMINATOR)


def _pair_cos(x: np.ndarray, y: np.ndarray, src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """cos(x[src[i]], y[tgt[i]]) in float64, a bounded number of pairs at a time."""
    out = np.empty(len(src), dtype=np.float64)
    for start in range(0, len(src), PAIR_CHUNK):
        stop = min(start + PAIR_CHUNK, len(src))
        a = x[src[start:stop]].astype(np.float64)
        b = y[tgt[start:stop]].astype(np.float64)
        out[start:stop] = np.einsum("ij,ij->i", a, b)
    return out


@dataclass
class _Candidates:
    """The k-NN candidate pairs of both directions, each distinct pair scored once."""

    fwd_ids: np.ndarray  # n x kf: each source's nearest targets
    bwd_ids: np.ndarray  # m x kb: each target's nearest sources
    src: np.ndarray  # distinct candidate pairs (src[i], tgt[i]) ...
    tgt: np.ndarray
    cos: np.ndarray  # ... and their float64 cosine
    fwd_pos: np.ndarray  # n x kf: position of (i, fwd_ids[i, j]) among the distinct pairs
    bwd_pos: np.ndarray  # m x kb: position of (bwd_ids[j, i], j)
    fwd_avg: np.ndarray  # n: mean cosine of each source's k nearest targets
    bwd_avg: np.ndarray  # m: mean cosine of each target's k nearest sources


PairCos = Callable[[np.ndarray, np.ndarray], np.ndarray]
Knn = Callable[[np.ndarray, np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]  # (x, y, k, chunk) -> sims, ids


def _candidates_from(
    fwd_sims: np.ndarray, fwd_ids: np.ndarray, bwd_sims: np.ndarray, bwd_ids: np.ndarray, m: int,
    pair_cos: PairCos | None = None,
) -> _Candidates:
    """Distinct candidate pairs of both neighbour lists. Their cosine is ``pair_cos(src, tgt)`` when given
    (recomputed once per pair, so a pair found in both directions has one score), else the similarity the
    search returned (the forward one for a pair found both ways)."""
    n = len(fwd_ids)
    f_src = np.repeat(np.arange(n, dtype=np.int64), fwd_ids.shape[1])
    b_tgt = np.repeat(np.arange(bwd_ids.shape[0], dtype=np.int64), bwd_ids.shape[1])
    keys = np.concatenate((f_src * m + fwd_ids.ravel(), bwd_ids.ravel() * m + b_tgt))
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.ravel()
    src, tgt = uniq // m, uniq % m
    if pair_cos is not None:
        cos = pair_cos(src, tgt)
    else:
        cos = np.concatenate((fwd_sims.ravel(), bwd_sims.ravel())).astype(np.float64)[first]
    fwd_pos = inverse[: fwd_ids.size].reshape(fwd_ids.shape)
    bwd_pos = inverse[fwd_ids.size :].reshape(bwd_ids.shape)
    return _Candidates(
        fwd_ids=fwd_ids, bwd_ids=bwd_ids, src=src, tgt=tgt, cos=cos, fwd_pos=fwd_pos, bwd_pos=bwd_pos,
        fwd_avg=cos[fwd_pos].mean(axis=1), bwd_avg=cos[bwd_pos].mean(axis=1),
    )


def _candidates(x: np.ndarray, y: np.ndarray, k: int, chunk: int, knn: Knn | None = None) -> _Candidates:
    # FAISS (float32) picks the neighbours; their cosines are recomputed once per distinct pair in
    # float64, so a pair found in both directions has one score, and the averages use the same values.
    # ``knn`` replaces :func:`_knn` with an equal search run elsewhere (indexer/ray_mining.py: Ray tasks).
    knn = knn or _knn
    fwd_sims, fwd_ids = knn(x, y, k, chunk)
    bwd_sims, bwd_ids = knn(y, x, k, chunk)
    return _candidates_from(fwd_sims, fwd_ids, bwd_sims, bwd_ids, len(y),
                            pair_cos=lambda s, t: _pair_cos(x, y, s, t))


def margin_scores(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    src: Sequence[int] | np.ndarray,
    tgt: Sequence[int] | np.ndarray,
    *,
    k: int = 4,
    margin: str = "ratio",
    chunk: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Margin score (float64) of each pair ``(src[i], tgt[i])`` of rows of ``src_emb`` x ``tgt_emb``."""
    _check_options(k, margin, "max", None)
    _check_chunk(chunk)
    x, y = _check_pair(src_emb, tgt_emb, "src_emb", "tgt_emb")
    if len(x) == 0 or len(y) == 0:
        raise ValueError("src_emb and tgt_emb must both have at least one row")
    s, t = np.asarray(src, dtype=np.int64).ravel(), np.asarray(tgt, dtype=np.int64).ravel()
    if s.shape != t.shape:
        raise ValueError(f"src and tgt must have the same length, got {len(s)} and {len(t)}")
    if len(s) and (s.min() < 0 or s.max() >= len(x) or t.min() < 0 or t.max() >= len(y)):
        raise ValueError("src/tgt row out of range")
    cand = _candidates(x, y, int(k), int(chunk))
    return apply_margin(_pair_cos(x, y, s, t), cand.fwd_avg[s], cand.bwd_avg[t], margin)


def _best(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the id with the highest score (ties: lower id; NaN never beats a number)."""
    col = np.lexsort((ids, -scores), axis=1)[:, 0]
    rows = np.arange(len(ids))
    return ids[rows, col], scores[rows, col]


def _greedy_one_to_one(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Indices of the pairs kept when walking them in order and skipping any with a used side."""
    used_src: set[int] = set()
    used_tgt: set[int] = set()
    keep: list[int] = []
    for i, (s, t) in enumerate(zip(src.tolist(), tgt.tolist(), strict=True)):
        if s in used_src or t in used_tgt:
            continue
        used_src.add(s)
        used_tgt.add(t)
        keep.append(i)
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class MineOptions:
    """What to mine and how; shared by :func:`mine_texts`, the file job and ``POST /mine``.

    ``search``: ``exact`` (FAISS flat), ``ivf`` (IVF-Flat, or IVF-SQ8 when the flat codes would not fit
    ``memory_budget``) or ``auto`` (exact while the searched side has at most ``exact_max`` rows).
    ``nprobe`` (IVF lists visited per query) defaults to a value chosen from the number of lists.
    """

    k: int = 4
    margin: str = "absolute"  # the defaults: chosen on NTREX by leave-languages-out (benchmarks/RESULTS.md 7.3)
    retrieval: str = "max"
    threshold: Threshold = "runner-up"
    one_to_one: bool = False
    dedup: bool = False
    centering: str = "full"
    batch_size: int = 32
    search: str = "auto"
    exact_max: int = 50_000
    nprobe: int | None = None
    memory_budget: int = 8 << 30
    chunk: int = 65_536  # query rows per search chunk (and per resumable work file)

    def __post_init__(self) -> None:
        _check_options(self.k, self.margin, self.retrieval, self.threshold)
        check_mode(self.centering)
        for name in ("batch_size", "exact_max", "chunk", "memory_budget"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"unknown search {self.search!r}; choose from {', '.join(SEARCHES)}")
        if self.nprobe is not None and (
            isinstance(self.nprobe, bool) or not isinstance(self.nprobe, int | np.integer) or self.nprobe < 1
        ):
            raise ValueError(f"nprobe must be an integer >= 1, got {self.nprobe!r}")


@dataclass
class MinedArrays:
    """Mined pairs as parallel arrays, sorted by score desc, ties by (src, tgt) asc."""

    score: np.ndarray  # float64
    src: np.ndarray  # int64 rows
    tgt: np.ndarray
    k_fwd: int | None = None  # neighbours per source / per target the margin used (k clamped to the side)
    k_bwd: int | None = None
    floored: int = 0  # ratio margin: candidate pairs whose neighbourhood mean was raised to the floor
    threshold: float | None = None  # the threshold applied (a rule's value), None = every retrieved pair kept
    runner_up: np.ndarray | None = None  # each source's and each target's second-best score (threshold rules)

    def __len__(self) -> int:
        return len(self.score)

    def pairs(self) -> list[MinedPair]:
        return [
            MinedPair(score=sc, src=s, tgt=t)
            for sc, s, t in zip(self.score.tolist(), self.src.tolist(), self.tgt.tolist(), strict=True)
        ]


def _select(
    cand: _Candidates, n: int, m: int, *, margin: str, retrieval: str, threshold: Threshold, one_to_one: bool
) -> MinedArrays:
    """Score the candidates with the margin and pick the pairs of the retrieval strategy; a threshold rule is
    computed from the retrieved pairs (before any threshold) and the runner-up scores, then applied."""
    u_score = apply_margin(cand.cos, cand.fwd_avg[cand.src], cand.bwd_avg[cand.tgt], margin)
    floored = 0
    if margin == "ratio":
        floored = int(np.count_nonzero((cand.fwd_avg[cand.src] + cand.bwd_avg[cand.tgt]) / 2
                                       < MIN_RATIO_DENOMINATOR))
        if floored:
            log.warning("ratio margin: %d of %d candidate pairs have a neighbourhood mean below %g (centred "
                        "vectors with k near the side size?): they are divided by %g instead", floored,
                        len(cand.cos), MIN_RATIO_DENOMINATOR, MIN_RATIO_DENOMINATOR)
    fwd_ids, bwd_ids = cand.fwd_ids, cand.bwd_ids
    fwd_best, fwd_best_score = _best(u_score[cand.fwd_pos], fwd_ids)  # target per source
    bwd_best, bwd_best_score = _best(u_score[cand.bwd_pos], bwd_ids)  # source per target
    runner_up = np.concatenate((runner_ups(u_score[cand.fwd_pos]), runner_ups(u_score[cand.bwd_pos])))
    rule = threshold if isinstance(threshold, str) else None
    cut = None if rule is not None or threshold is None else float(threshold)
    src_rows, tgt_rows = np.arange(n, dtype=np.int64), np.arange(m, dtype=np.int64)
    if retrieval == "fwd":
        src, tgt, score = src_rows, fwd_best, fwd_best_score
    elif retrieval == "bwd":
        src, tgt, score = bwd_best, tgt_rows, bwd_best_score
    elif retrieval == "intersect":
        mutual = bwd_best[fwd_best] == src_rows
        src, tgt, score = src_rows[mutual], fwd_best[mutual], fwd_best_score[mutual]
    else:  # max
        src = np.concatenate((src_rows, bwd_best))
        tgt = np.concatenate((fwd_best, tgt_rows))
        score = np.concatenate((fwd_best_score, bwd_best_score))

    if cut is not None:
        ok = score >= cut
        src, tgt, score = src[ok], tgt[ok], score[ok]
    order = np.lexsort((tgt, src, -score))
    src, tgt, score = src[order], tgt[order], score[order]
    if retrieval == "max" or (one_to_one and retrieval in ("fwd", "bwd")):
        # Greedy by descending score. Filtering by threshold first gives the same result: every pair
        # below the threshold comes after every pair above it.
        keep = _greedy_one_to_one(src, tgt)
        src, tgt, score = src[keep], tgt[keep], score[keep]
    if rule is not None:  # set from the final list; it is sorted by score, so the cut keeps a prefix
        cut = rule_threshold(rule, score, runner_up)
        if cut is None:
            log.warning("threshold rule %s found nothing to split (%d pairs): every pair is kept", rule, len(score))
        else:
            keep_n = int(np.count_nonzero(score >= cut))
            src, tgt, score = src[:keep_n], tgt[:keep_n], score[:keep_n]
    return MinedArrays(score=score, src=src, tgt=tgt, k_fwd=int(fwd_ids.shape[1]), k_bwd=int(bwd_ids.shape[1]),
                       floored=floored, threshold=cut, runner_up=runner_up)


def mine(
    src_emb: np.ndarray,
    tgt_emb: np.ndarray,
    *,
    k: int = 4,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: Threshold = None,
    one_to_one: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> list[MinedPair]:
    """Mine parallel pairs between the rows of ``src_emb`` and ``tgt_emb`` (see the module docstring).

    Exact: FAISS flat search, cosines recomputed in float64. Raises ``ValueError`` for an unknown margin or
    retrieval, ``k < 1``, empty inputs or mismatched dimensions.
    """
    _check_options(k, margin, retrieval, threshold)
    _check_chunk(chunk)
    x, y = _check_pair(src_emb, tgt_emb, "src_emb", "tgt_emb")
    if len(x) == 0 or len(y) == 0:
        raise ValueError(f"nothing to mine: {len(x)} source and {len(y)} target embeddings")
    cand = _candidates(x, y, int(k), int(chunk))
    return _select(cand, len(x), len(y), margin=margin, retrieval=retrieval, threshold=threshold,
                   one_to_one=one_to_one).pairs()


def mine_neighbours(
    fwd_sims: np.ndarray,
    fwd_ids: np.ndarray,
    bwd_sims: np.ndarray,
    bwd_ids: np.ndarray,
    *,
    margin: str = "ratio",
    retrieval: str = "max",
    threshold: Threshold = None,
    one_to_one: bool = False,
) -> MinedArrays:
    """Mine from neighbour lists found elsewhere (chunked, approximate or resumed searches).

    ``fwd_*``: for each of the n sources, its kf nearest targets and their cosines; ``bwd_*``: for each of
    the m targets, its kb nearest sources. The margin uses these similarities as they are (LASER does the
    same); no embedding is read again, so memory stays at the size of the lists.
    """
    _check_options(1, margin, retrieval, threshold)
    fwd_sims, bwd_sims = np.asarray(fwd_sims), np.asarray(bwd_sims)
    fwd_ids, bwd_ids = np.asarray(fwd_ids, dtype=np.int64), np.asarray(bwd_ids, dtype=np.int64)
    if fwd_ids.ndim != 2 or bwd_ids.ndim != 2 or fwd_sims.shape != fwd_ids.shape or bwd_sims.shape != bwd_ids.shape:
        raise ValueError("neighbour lists must be 2-D with matching sims and ids")
    n, m = len(fwd_ids), len(bwd_ids)
    if n == 0 or m == 0 or fwd_ids.shape[1] == 0 or bwd_ids.shape[1] == 0:
        raise ValueError(f"nothing to mine: {n} source and {m} target neighbour lists")
    if fwd_ids.min() < 0 or fwd_ids.max() >= m or bwd_ids.min() < 0 or bwd_ids.max() >= n:
        raise ValueError("neighbour id out of range (a search returned fewer than k results?)")
    cand = _candidates_from(fwd_sims, fwd_ids, bwd_sims, bwd_ids, m)
    return _select(cand, n, m, margin=margin, retrieval=retrieval, threshold=threshold, one_to_one=one_to_one)
