"""Neighbour search for bitext mining at any size: exact or IVF, chunked, resumable, bounded memory.

:func:`indexer.mining.mine` holds both sides in memory and searches exactly. Beyond ``exact_max`` rows on the
searched side this module searches an IVF index instead (IVF-Flat, or IVF-SQ8 when the flat codes would not
fit the memory budget). Embeddings are read a chunk at a time from :class:`RowSource` objects (an array, or a
float32 file on disk), so a job holds at most one FAISS index, one chunk of queries and the neighbour lists
(``rows x k`` per direction) in memory: a 2M x 2M job with 384-dim vectors peaked at 4.7 GB resident (measured,
benchmarks/RESULTS.md section 4: IVF-Flat codes 3.1 GB, FAISS's coarse-quantizer distances for one chunk of
65,536 queries x 5,657 lists 1.5 GB, neighbour lists 0.2 GB); a smaller ``chunk`` lowers the second term.

Each direction's search writes one file per chunk of queries into a work directory; a job restarted with the
same work directory loads the finished chunks (and the trained index) and searches only the rest.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
from tqdm import tqdm

from indexer.centering import center, side_shifts
from indexer.mining import MinedArrays, MineOptions, _candidates, _select, effective_k, mine_neighbours, sort_rows

IVF_SQ8_SHARE = 0.6  # use SQ8 codes when flat codes would take more than this share of the budget
TRAIN_PER_LIST = 40  # training vectors per IVF list (FAISS warns below 39)
KMEANS_ITERS = 10


class RowSource(Protocol):
    """Rows of float32 embeddings, read a slice at a time."""

    @property
    def shape(self) -> tuple[int, int]: ...

    def read(self, start: int, stop: int) -> np.ndarray: ...


class ArrayRows:
    """Rows of an array in memory, optionally transformed (e.g. centred) as they are read."""

    def __init__(self, array: np.ndarray, transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self._a = array
        self._transform = transform

    @property
    def shape(self) -> tuple[int, int]:
        return int(self._a.shape[0]), int(self._a.shape[1])

    def read(self, start: int, stop: int) -> np.ndarray:
        block = np.ascontiguousarray(self._a[start:stop], dtype=np.float32)
        return self._transform(block) if self._transform else block

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray]) -> ArrayRows:
        return ArrayRows(self._a, transform)


class F32Rows:
    """Rows of a raw little-endian float32 file (``rows x dim``), read with ``pread``: nothing stays mapped,
    so the process's memory does not grow with the file."""

    def __init__(self, path: Path, rows: int, dim: int,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.path = Path(path)
        self._rows, self._dim = int(rows), int(dim)
        self._transform = transform
        size = self.path.stat().st_size
        if size != self._rows * self._dim * 4:
            raise ValueError(f"{self.path}: {size} bytes, expected {self._rows} x {self._dim} float32")

    @property
    def shape(self) -> tuple[int, int]:
        return self._rows, self._dim

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = max(0, start), min(stop, self._rows)
        count = max(0, stop - start) * self._dim
        with self.path.open("rb") as fh:
            fh.seek(start * self._dim * 4)
            block = np.fromfile(fh, dtype="<f4", count=count).reshape(-1, self._dim)
        block = np.ascontiguousarray(block, dtype=np.float32)
        return self._transform(block) if self._transform else block

    def with_transform(self, transform: Callable[[np.ndarray], np.ndarray]) -> F32Rows:
        return F32Rows(self.path, self._rows, self._dim, transform)


def iter_chunks(rows: RowSource, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
    n = rows.shape[0]
    for start in range(0, n, chunk):
        yield start, rows.read(start, min(start + chunk, n))


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchPlan:
    """How one direction is searched: ``exact`` (flat) or ``ivf-flat`` / ``ivf-sq8`` with ``nlist`` lists,
    ``nprobe`` visited per query."""

    kind: str
    rows: int
    dim: int
    nlist: int = 0
    nprobe: int = 0

    @property
    def index_bytes(self) -> int:
        per_vector = self.dim * (1 if self.kind == "ivf-sq8" else 4) + (8 if self.kind != "exact" else 0)
        return self.rows * per_vector + self.nlist * self.dim * 4

    def describe(self) -> str:
        if self.kind == "exact":
            return f"exact (flat) over {self.rows:,} rows"
        return f"{self.kind} over {self.rows:,} rows, nlist={self.nlist}, nprobe={self.nprobe}"


def default_nlist(rows: int) -> int:
    """About 4 sqrt(n) lists, at least 39 training vectors per list."""
    return max(1, min(int(round(4 * math.sqrt(rows))), rows // 39, 65_536))


def default_nprobe(nlist: int) -> int:
    """Lists visited per query: 1/32 of them, at least 16 (measured in benchmarks/mining.py)."""
    return max(1, min(nlist, max(16, nlist // 32)))


def plan_search(rows: int, dim: int, opts: MineOptions) -> SearchPlan:
    """Pick the search for a side of ``rows`` vectors (see :class:`MineOptions`)."""
    if rows < 1:
        raise ValueError("nothing to search")
    exact = opts.search == "exact" or (opts.search == "auto" and rows <= opts.exact_max)
    nlist = default_nlist(rows)
    if exact or nlist < 2:
        plan = SearchPlan("exact", rows, dim)
    else:
        nprobe = min(nlist, opts.nprobe or default_nprobe(nlist))
        plan = SearchPlan("ivf-flat", rows, dim, nlist, nprobe)
        if plan.index_bytes > IVF_SQ8_SHARE * opts.memory_budget:
            plan = SearchPlan("ivf-sq8", rows, dim, nlist, nprobe)
    if plan.index_bytes > IVF_SQ8_SHARE * opts.memory_budget:
        raise ValueError(
            f"the search index for {rows:,} x {dim} vectors needs about {plan.index_bytes / 2**30:.1f} GiB, more "
            f"than {IVF_SQ8_SHARE:.0%} of the memory budget ({opts.memory_budget / 2**30:.1f} GiB): raise "
            "--memory-budget" + (" or use --search ivf" if plan.kind == "exact" else ""))
    return plan


# --------------------------------------------------------------------------------------------------
# Search
# --------------------------------------------------------------------------------------------------


def _bar(desc: str, total: int, unit: str, progress: bool) -> tqdm:
    return tqdm(desc=desc, total=total, unit=unit, unit_scale=True, disable=not progress, dynamic_ncols=True,
                leave=False)


def build_index(rows: RowSource, plan: SearchPlan, *, chunk: int = 65_536, progress: bool = False,
                seed: int = 1234) -> faiss.Index:
    """The FAISS index of ``plan`` over all rows (IVF: k-means on a seeded sample of the rows)."""
    n, dim = rows.shape
    index: faiss.Index
    if plan.kind == "exact":
        index = faiss.IndexFlatIP(dim)
    else:
        quantizer = faiss.IndexFlatIP(dim)
        ivf: faiss.IndexIVF
        if plan.kind == "ivf-sq8":
            ivf = faiss.IndexIVFScalarQuantizer(quantizer, dim, plan.nlist, faiss.ScalarQuantizer.QT_8bit,
                                                faiss.METRIC_INNER_PRODUCT)
        else:
            ivf = faiss.IndexIVFFlat(quantizer, dim, plan.nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = KMEANS_ITERS
        ivf.cp.seed = seed
        want = min(n, TRAIN_PER_LIST * plan.nlist)
        picked = np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))
        sample = np.empty((want, dim), dtype=np.float32)
        filled = 0
        for start, block in iter_chunks(rows, chunk):  # one pass, keeping the sampled rows of each chunk
            sel = picked[(picked >= start) & (picked < start + len(block))] - start
            sample[filled : filled + len(sel)] = block[sel]
            filled += len(sel)
        with _bar(f"train {plan.kind} ({plan.nlist} lists)", 1, "step", progress) as bar:
            ivf.train(sample)
            bar.update(1)
        del sample
        ivf.nprobe = plan.nprobe
        index = ivf
    with _bar("index", n, "vec", progress) as bar:
        for _, block in iter_chunks(rows, chunk):
            index.add(block)
            bar.update(len(block))
    return index


def _search(index: faiss.Index, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k, re-searching rows that came back short (an IVF probe can visit fewer than k vectors) with
    more lists until every row is full."""
    s, i = index.search(q, k)
    short = np.flatnonzero((i < 0).any(axis=1))
    if len(short) and isinstance(index, faiss.IndexIVF):
        nprobe = index.nprobe
        try:
            while len(short) and index.nprobe < index.nlist:
                index.nprobe = min(index.nlist, index.nprobe * 4)
                s2, i2 = index.search(q[short], k)
                s[short], i[short] = s2, i2
                short = short[(i2 < 0).any(axis=1)]
        finally:
            index.nprobe = nprobe
    return sort_rows(s, i)


@dataclass
class Neighbours:
    sims: np.ndarray  # rows x k, float32, each row by similarity desc, ties by id asc
    ids: np.ndarray  # rows x k, int64


Range = tuple[int, int]
Result = tuple[np.ndarray, np.ndarray]  # (sims, ids) of a block of query rows


class SearchRunner(Protocol):
    """Where the two searches of :func:`mine_rows` run: in this process (``runner=None``) or elsewhere with
    the same results (indexer/ray_mining.py: Ray tasks)."""

    def knn(self, x: np.ndarray, y: np.ndarray, k: int, chunk: int) -> Result:
        """:func:`indexer.mining._knn`'s exact result (the exact plan)."""
        ...

    def search_chunks(self, index: faiss.Index, queries: RowSource, k: int,
                      ranges: Sequence[Range]) -> Iterable[Result]:
        """``search_chunk(index, queries, k, start, stop)`` for each range, in order (the IVF plan)."""
        ...


def search_chunk(index: faiss.Index, queries: RowSource, k: int, start: int, stop: int) -> Result:
    """Top-``k`` of ``index`` for the query rows ``start:stop``: one chunk of :func:`search_rows`."""
    return _search(index, queries.read(start, stop), k)


def search_rows(
    index: faiss.Index, queries: RowSource, k: int, *, chunk: int = 65_536, work: Path | None = None,
    name: str = "search", progress: bool = False, runner: SearchRunner | None = None,
) -> Neighbours:
    """Top-``k`` of ``index`` for every query row, a chunk at a time. With ``work``, each finished chunk is
    saved as ``<work>/<name>-<start>.npz`` and reused when the search is run again. ``runner`` searches the
    chunks not yet done (default: here, one after the other)."""
    n = queries.shape[0]
    kk = effective_k(k, index.ntotal)
    sims = np.empty((n, kk), dtype=np.float32)
    ids = np.empty((n, kk), dtype=np.int64)
    todo: list[Range] = []

    def saved(start: int) -> Path | None:  # where the chunk at ``start`` is kept
        return work / f"{name}-{start:012d}.npz" if work is not None else None

    with _bar(name, n, "query", progress) as bar:
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            path = saved(start)
            if path is not None and path.is_file():
                with np.load(path) as z:
                    sims[start:stop], ids[start:stop] = z["sims"], z["ids"]
                bar.update(stop - start)
            else:
                todo.append((start, stop))
        results = (runner.search_chunks(index, queries, kk, todo) if runner is not None and todo
                   else (search_chunk(index, queries, kk, a, b) for a, b in todo))
        for (start, stop), (s, i) in zip(todo, results, strict=True):
            sims[start:stop], ids[start:stop] = s, i
            path = saved(start)
            if path is not None:
                tmp = path.with_name(path.name + ".tmp.npz")
                np.savez(tmp, sims=s, ids=i)
                os.replace(tmp, path)
            bar.update(stop - start)
    return Neighbours(sims, ids)


# --------------------------------------------------------------------------------------------------
# Centring and the whole mining step
# --------------------------------------------------------------------------------------------------


def centred_sources(src: ArrayRows | F32Rows, tgt: ArrayRows | F32Rows, mode: str,
                    chunk: int = 65_536) -> tuple[ArrayRows | F32Rows, ArrayRows | F32Rows]:
    """Both sides centred as they are read, with :func:`indexer.centering.side_shifts` from streamed means."""
    shifts = side_shifts(mode, (b for _, b in iter_chunks(src, chunk)), (b for _, b in iter_chunks(tgt, chunk)),
                         src.shape[1])
    if shifts is None:
        return src, tgt
    s_shift, t_shift = shifts
    return (src.with_transform(lambda b: center(b, s_shift)), tgt.with_transform(lambda b: center(b, t_shift)))


@dataclass
class SearchReport:
    fwd: SearchPlan
    bwd: SearchPlan
    index_seconds: float = 0.0
    search_seconds: float = 0.0
    score_seconds: float = 0.0
    resumed_chunks: int = 0


def _job_state(work: Path, key: dict[str, object]) -> int:
    """Prepare ``work`` for the job ``key``: keep it when it belongs to the same job (return the number of
    finished chunk files), else empty it."""
    marker = work / "job.json"
    if work.is_dir() and marker.is_file():
        try:
            same = json.loads(marker.read_text()) == key
        except (OSError, ValueError):
            same = False
        if same:
            return sum(1 for _ in work.glob("*.npz"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tmp = marker.with_name("job.json.tmp")
    tmp.write_text(json.dumps(key, sort_keys=True))
    os.replace(tmp, marker)
    return 0


def _timed_index(rows: RowSource, plan: SearchPlan, opts: MineOptions, work: Path | None, name: str,
                 progress: bool) -> faiss.Index:
    path = work / f"{name}.faiss" if work is not None and plan.kind != "exact" else None
    if path is not None and path.is_file():
        loaded = faiss.read_index(str(path))
        faiss.extract_index_ivf(loaded).nprobe = plan.nprobe
        return loaded
    index = build_index(rows, plan, chunk=opts.chunk, progress=progress)
    if path is not None:
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(index, str(tmp))
        os.replace(tmp, path)
    return index


def mine_rows(
    src: ArrayRows | F32Rows,
    tgt: ArrayRows | F32Rows,
    opts: MineOptions,
    *,
    work: Path | None = None,
    job_key: Mapping[str, object] | None = None,
    progress: bool = False,
    runner: SearchRunner | None = None,
) -> tuple[MinedArrays, SearchReport]:
    """Mine two sides of embeddings with the search :func:`plan_search` picks for each direction.

    Both exact: both sides are loaded and :func:`indexer.mining.mine`'s exact path runs (cosines in float64).
    Otherwise each direction is searched chunk by chunk and the pairs are scored from the neighbour lists.
    ``work`` (with ``job_key`` describing the job) makes the search resumable; the caller removes it.
    ``runner`` runs the searches elsewhere with the same results (see :class:`SearchRunner`).
    """
    (n, dim), (m, dim_t) = src.shape, tgt.shape
    if dim != dim_t:
        raise ValueError(f"dimension mismatch: source {dim}, target {dim_t}")
    if n == 0 or m == 0:
        raise ValueError(f"nothing to mine: {n} source and {m} target embeddings")
    src_c, tgt_c = centred_sources(src, tgt, opts.centering, opts.chunk)
    report = SearchReport(fwd=plan_search(m, dim, opts), bwd=plan_search(n, dim, opts))
    select = dict(margin=opts.margin, retrieval=opts.retrieval, threshold=opts.threshold,
                  one_to_one=opts.one_to_one)
    if report.fwd.kind == "exact" and report.bwd.kind == "exact":
        x, y = src_c.read(0, n), tgt_c.read(0, m)
        t1 = time.perf_counter()
        cand = _candidates(x, y, opts.k, min(opts.chunk, 8192), knn=runner.knn if runner else None)
        t2 = time.perf_counter()
        mined = _select(cand, n, m, **select)  # type: ignore[arg-type]
        report.search_seconds, report.score_seconds = t2 - t1, time.perf_counter() - t2
        return mined, report
    if work is not None:
        key = dict(job_key or {}, fwd=asdict(report.fwd), bwd=asdict(report.bwd), k=opts.k, chunk=opts.chunk,
                   centering=opts.centering)
        report.resumed_chunks = _job_state(work, key)
    results = []
    for name, base, queries, plan in (("fwd", tgt_c, src_c, report.fwd), ("bwd", src_c, tgt_c, report.bwd)):
        t_a = time.perf_counter()
        index = _timed_index(base, plan, opts, work, name, progress)
        t_b = time.perf_counter()
        results.append(search_rows(index, queries, opts.k, chunk=opts.chunk, work=work, name=name,
                                   progress=progress, runner=runner))
        del index  # one index in memory at a time
        report.index_seconds += t_b - t_a
        report.search_seconds += time.perf_counter() - t_b
    t3 = time.perf_counter()
    fwd, bwd = results
    mined = mine_neighbours(fwd.sims, fwd.ids, bwd.sims, bwd.ids, **select)  # type: ignore[arg-type]
    report.score_seconds = time.perf_counter() - t3
    return mined, report
