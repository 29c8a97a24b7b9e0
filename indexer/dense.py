"""FAISS shards: building one shard's index from its raw vectors, and exact fan-out search.

Each shard keeps its raw float32 vectors (``<set>.f32``, mmap-able, so a different FAISS index type can
be rebuilt without re-embedding) and a FAISS index over them (``<set>.faiss``). Search asks every shard
for its top ``k`` and merges by score; with exact (flat) shards the merge equals brute force over the
whole collection, ties broken by lower global row.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import faiss
import numpy as np

from indexer.planning import HNSW_M, IVF_MIN_VECTORS, TuneOptions, ivf_nlist, pq_sizes, tune_index
from indexer.topk import Transform, read_rows, top_k

INDEX_TYPES = ("flat", "hnsw", "ivfflat", "ivfsq8", "ivfpq")
IVF_TYPES = ("ivfflat", "ivfsq8", "ivfpq")
HNSW_EF_CONSTRUCTION = 200
HNSW_EF_SEARCH = 128
IVF_NPROBE = 16  # before tuning


def build_faiss_index(
    kind: str, vectors: np.ndarray, chunk: int = 65_536, transform: Transform | None = None,
    options: Mapping[str, Any] | None = None, tune: TuneOptions | None = None,
) -> tuple[faiss.Index, dict[str, Any]]:
    """An inner-product FAISS index over ``vectors`` (n x d float32) and the parameters it was built with.

    ``transform(chunk, rows)`` maps a chunk of stored vectors (and their row numbers) to what is indexed, e.g.
    language centring; it is applied chunk by chunk, so a memory-mapped shard is never copied whole.
    Kinds: ``flat`` (exact), ``hnsw``, and the IVF family ``ivfflat`` (full vectors), ``ivfsq8`` (8-bit scalar
    quantizer), ``ivfpq`` (product quantizer, ``m`` bytes per vector). ``options`` may set ``nlist``, ``nprobe``,
    ``m`` (PQ), ``M`` / ``efConstruction`` / ``efSearch`` (HNSW), ``min_docs``: an IVF shard with fewer vectors
    than that (default 10,000) falls back to flat, and ``fallback`` (HNSW with ``tune``): the kind built instead when
    the graph cannot reach the recall target (both recorded in the returned parameters).
    With ``tune``, an approximate index gets ``nprobe`` / ``efSearch`` tuned to the recall target
    (:func:`indexer.planning.tune_index`; an HNSW graph is tuned before its last ``tune.sample`` rows are added).
    """

    if kind not in INDEX_TYPES:
        raise ValueError(f"unknown index type {kind!r}; choose from {', '.join(INDEX_TYPES)}")
    opts = dict(options or {})
    n, dim = vectors.shape
    params: dict[str, Any] = {"type": kind}
    index: faiss.Index
    min_docs = int(opts.get("min_docs", IVF_MIN_VECTORS))
    if kind in IVF_TYPES and n < min_docs:
        params = {"type": "flat", "fallback_from": kind, "reason": f"{n} < {min_docs} docs"}
        kind = "flat"
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        m_links = int(opts.get("M", HNSW_M))
        index = faiss.IndexHNSWFlat(dim, m_links, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(opts.get("efConstruction", HNSW_EF_CONSTRUCTION))
        index.hnsw.efSearch = int(opts.get("efSearch", HNSW_EF_SEARCH))
        params.update(M=m_links, efConstruction=index.hnsw.efConstruction, efSearch=index.hnsw.efSearch)
    else:
        nlist = int(opts.get("nlist", ivf_nlist(n)))
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivfflat":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        elif kind == "ivfsq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
        else:
            m = int(opts.get("m") or next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0))
            if m not in pq_sizes(dim) and m != dim:
                raise ValueError(f"PQ m={m} must divide the dimension {dim}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
            params.update(m=m, nbits=8)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, max(256 * 39, nlist * 39)), replace=False))
        index.train(read_rows(vectors, sample, transform))
        nprobe = min(nlist, int(opts.get("nprobe", IVF_NPROBE)))
        index.nprobe = nprobe
        params.update(nlist=nlist, nprobe=nprobe)
    held_out = min(tune.sample, n // 2) if tune is not None and kind == "hnsw" else 0

    def add(lo: int, hi: int) -> None:
        for start in range(lo, hi, chunk):
            index.add(read_rows(vectors, np.arange(start, min(hi, start + chunk)), transform))

    add(0, n - held_out)
    if tune is not None:
        params.update(tune_index(index, vectors, transform=transform, options=tune, held_out=held_out))
    add(n - held_out, n)
    fallback = opts.get("fallback")
    tuning = params.get("tuning") or {}
    if kind == "hnsw" and fallback and tuning and not tuning["reached"]:
        # the graph cannot reach the target at any efSearch: an IVF index can (nprobe = nlist is exhaustive)
        del index
        rest = {key: v for key, v in opts.items() if key not in ("fallback", "M", "efConstruction", "efSearch")}
        index, alt = build_faiss_index(fallback, vectors, chunk, transform, rest, tune)
        key = next(k for k in tuning if k.startswith("recall_at_"))
        alt.update(fallback_from="hnsw", reason=f"HNSW reached {key.replace('_', ' ')} {tuning[key]} < "
                   f"{tuning['target_recall']} at efSearch {params['efSearch']}", hnsw_tuning=tuning)
        return index, alt
    return index, params


def apply_search_params(index: faiss.Index, params: Mapping[str, Any] | None) -> None:
    """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW) from a shard's recorded parameters (the manifest's)."""
    if not params:
        return
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexIVF) and params.get("nprobe") is not None:
        inner.nprobe = int(params["nprobe"])
    elif isinstance(inner, faiss.IndexHNSW) and params.get("efSearch") is not None:
        inner.hnsw.efSearch = int(params["efSearch"])


def exact_share(inner: faiss.Index) -> float:
    """The share of an approximate index's rows at or below which a filtered search scans the selected rows exactly:
    where the exact scan (``share * n`` distances) costs what the filtered walk costs. HNSW: the walk grown by
    ``1 / share`` computes about ``efSearch * M / share`` distances, so ``sqrt(efSearch * M / n)`` (measured on 100,000
    vectors, efSearch 20, M 32: the crossover was between 5% and 10%; this gives 8%); IVF: ``nprobe / nlist`` (from
    there the grown nprobe probes every list anyway)."""
    if isinstance(inner, faiss.IndexHNSW):
        graph: Any = inner.hnsw  # the bundled stubs do not declare nb_neighbors
        links = graph.nb_neighbors(1)  # M (the base layer has 2M)
        return min(1.0, math.sqrt(inner.hnsw.efSearch * links / max(1, inner.ntotal)))
    if isinstance(inner, faiss.IndexIVF):
        return min(1.0, inner.nprobe / inner.nlist)
    return 0.0


def _selector_params(inner: faiss.Index, sel: Any, exhaustive: bool, share: float = 1.0) -> Any:
    """Search parameters with the selector ``sel`` of ``share`` of the rows: the graph's candidate list (HNSW) and
    the lists probed (IVF) grow by ``1 / share``, as only that share of what they visit can be returned."""
    fx: Any = faiss  # the SWIG constructors take keyword arguments the bundled stubs do not declare
    grow = 1.0 / max(share, 0.01)
    if isinstance(inner, faiss.IndexHNSW):
        return fx.SearchParametersHNSW(sel=sel, efSearch=math.ceil(inner.hnsw.efSearch * grow))
    if isinstance(inner, faiss.IndexIVF):
        nprobe = inner.nlist if exhaustive else min(inner.nlist, math.ceil(inner.nprobe * grow))
        return fx.SearchParametersIVF(sel=sel, nprobe=nprobe)
    return fx.SearchParameters(sel=sel)


def _masked_search(index: faiss.Index, queries: np.ndarray, k: int, mask: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """FAISS search restricted to the rows ``mask`` selects, returning ``min(k, selected)`` hits per query.

    A flat index scans exactly with the selector. An approximate one filters while it searches, which can find
    fewer than ``k`` selected rows (an HNSW graph walk or the probed IVF lists hold few of them): a selection of at
    most :func:`exact_share` of the rows is scanned exactly at once (HNSW: its flat storage with the selector; IVF:
    every list, ``nprobe = nlist``); a broader one is searched with efSearch / nprobe grown by the inverse of its
    share (so about as many selected rows are visited as unfiltered), and a query that still came back short is
    searched again exactly."""
    if mask is None:
        return index.search(queries, k)
    bits = np.packbits(mask, bitorder="little")  # must outlive the search: the selector keeps a pointer
    sel = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bits))
    inner = faiss.downcast_index(index)
    approximate = isinstance(inner, faiss.IndexHNSW | faiss.IndexIVF)
    selected = int(np.count_nonzero(mask))

    def exact(qs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(inner, faiss.IndexHNSW):  # the graph's vectors, scanned as a flat index
            flat = faiss.downcast_index(inner.storage)
            return flat.search(qs, k, params=_selector_params(flat, sel, True))
        return index.search(qs, k, params=_selector_params(inner, sel, True))

    if approximate and selected <= exact_share(inner) * len(mask):
        scores, ids = exact(queries)
    else:
        scores, ids = index.search(queries, k, params=_selector_params(inner, sel, False, selected / len(mask)))
        short = np.flatnonzero(np.count_nonzero(ids >= 0, axis=1) < min(k, selected))
        if approximate and len(short):
            scores[short], ids[short] = exact(np.ascontiguousarray(queries[short]))
    del bits
    return scores, ids


ShardHits = tuple[np.ndarray, np.ndarray]  # one shard's (scores, global rows; -1: the shard had no more), nq x k


class ShardSearcher(Protocol):
    """What the fan-out of :func:`search_shards` asks of a shard: a local :class:`DenseShard`, or one served
    elsewhere (``indexer/ray_shards.py: RemoteShard``, a Ray actor). ``submit`` starts the search and returns the
    call that gathers its :data:`ShardHits`, so remote shards search in parallel while the merge is this one."""

    offset: int  # global row of the shard's first vector

    @property
    def size(self) -> int: ...

    def submit(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> Callable[[], ShardHits]: ...


def shard_hits(index: faiss.Index, offset: int, queries: np.ndarray, k: int, mask: np.ndarray | None) -> ShardHits:
    """One shard's top ``k`` per query (``k`` at most its size), as global rows: what every shard answers."""
    s, ids = _masked_search(index, queries, k, mask)
    return s, np.where(ids >= 0, ids + offset, -1)


@dataclass
class DenseShard:
    index: faiss.Index
    offset: int  # global row of the shard's first vector

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def submit(self, queries: np.ndarray, k: int, mask: np.ndarray | None) -> Callable[[], ShardHits]:
        hits = shard_hits(self.index, self.offset, queries, k, mask)  # searched now, in this process
        return lambda: hits


def load_shard_index(path: Path, offset: int, search_params: Mapping[str, Any] | None = None) -> DenseShard:
    """Read a shard's index (memory-mapped when the type allows) and apply its recorded ``search_params``."""
    try:
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError:  # index types without mmap support are read into memory
        index = faiss.read_index(str(path))
    apply_search_params(index, search_params)
    return DenseShard(index=index, offset=offset)


def merge_shard_hits(parts: Sequence[ShardHits], n_queries: int, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, (scores, global rows) of the top ``k`` over the shards' answers (ties by lower row)."""
    all_s = [np.zeros((n_queries, 0), np.float32), *(p[0] for p in parts)]
    all_r = [np.zeros((n_queries, 0), np.int64), *(p[1] for p in parts)]
    s, r = np.concatenate(all_s, axis=1), np.concatenate(all_r, axis=1)
    return [top_k(s[q], k, labels=r[q], mask=r[q] >= 0) for q in range(n_queries)]


def search_shards(
    shards: Sequence[ShardSearcher],
    queries: np.ndarray,
    k: int,
    masks: Sequence[np.ndarray | None] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per query, (scores, global rows) of the top ``k`` over all shards, local or remote (every search is
    submitted before any is gathered; a remote shard that cannot answer raises, so a merge is never partial).

    ``masks[i]`` is an optional boolean array over shard ``i``'s rows; False rows are never returned.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    pending = []
    for i, shard in enumerate(shards):
        mask = masks[i] if masks is not None else None
        if shard.size == 0 or (mask is not None and not mask.any()):
            continue
        pending.append(shard.submit(queries, min(k, shard.size), mask))
    return merge_shard_hits([gather() for gather in pending], len(queries), k)
