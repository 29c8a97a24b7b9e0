"""``xlir mine --ray``: the mining job of :mod:`indexer.mining_job` with its embedding and k-NN search run as Ray
tasks, writing the same TSV, byte for byte.

:func:`mine_files_ray` calls :func:`indexer.mining_job.mine_files` itself with a :class:`RayRunner`: reading,
de-duplication, the embedding cache and its resumable files, centring, the search plans, the IVF training, the
margin scoring, the threshold and the atomic writer are the local job's code, run on the driver. Only the three
loops that :class:`indexer.mining_job.MineRunner` names run on the cluster:

- **embedding** (``embed_chunks``): one task per chunk of ``EMBED_CHUNK`` sentences, at the local job's chunk
  boundaries, both sides at once (``mine_files`` runs the two sides in two threads when given a runner), each
  calling the same ``_embed`` with the same batch size on an encoder built in the worker from ``encoder_factory``
  (a picklable zero-argument callable: the CLI passes ``functools.partial(load_encoder, ...)``, the tests a fake
  encoder); the driver writes the vectors in order into the same cache file and resume state as
  the local job, so either run reuses what the other embedded (the encoder is the same function of the same
  texts: with a deterministic encoder the vectors are the same);
- **exact search** (``knn``, the plan when both sides have at most ``exact_max`` rows): one task per (query block
  x base shard) pair; each searches its shard with FAISS ``IndexFlatIP`` in the local job's query chunks and keeps
  the shard's top-k, ordered by (similarity desc, id asc), with global ids. :func:`merge_topk` keeps the first k
  of the shards' lists in the same order. Every similarity is the same float32 value as in the local search (each
  is one query-vector inner product; shards start at multiples of FAISS's BLAS block, 1024 rows, and query blocks
  at multiples of the local chunk, so even FAISS's BLAS path would make the same calls), and the top k of a union
  of per-shard top-k lists is the top k of the whole; so the neighbour lists equal :func:`indexer.mining._knn`'s
  and the local ``_candidates`` / ``_select`` (float64 cosines) score them;
- **IVF search** (``search_chunks``): the driver trains and fills the IVF index once, as the local job does (and
  saves it in the work folder), puts it in the object store, and one task per local search chunk runs the local
  chunk search (:func:`indexer.mining_search.search_chunk`) on it; the driver saves each chunk's neighbours in
  the work folder in the local format, so a killed job (local or Ray) resumes from the chunks either finished.

A task whose worker dies is run again by Ray (``max_retries``); results are gathered in order, so a retry changes
nothing. On several machines the input, cache and work folders must be on a shared filesystem.
"""

from __future__ import annotations

import os
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from indexer.mining import MineOptions, _knn, effective_k, sort_rows
from indexer.mining_job import MineReport, _embed, _options, mine_files
from indexer.mining_search import Range, Result, RowSource, search_chunk
from indexer.ray_cluster import connect, factory_key, worker_cached
from models.ray_encoder import unwrap
from xlir.errors import XlirError

FLAT_BLOCK = 1024  # base rows per FAISS BLAS block (faiss.cvar.distance_compute_blas_database_bs): shard unit
MAX_RETRIES = 3  # runs of a task whose worker died, after the first
TASKS_PER_CPU = 2  # tasks per search direction (and embedding tasks in flight) per cluster CPU

EncoderFactory = Callable[[], Any]


# --------------------------------------------------------------------------------------------------
# Pure: blocks, shard search and the exact merge
# --------------------------------------------------------------------------------------------------


def shard_ranges(rows: int, shard_rows: int, block: int = FLAT_BLOCK) -> list[Range]:
    """``rows`` cut into shards of ``shard_rows`` rounded up to a multiple of ``block`` (the last one shorter)."""
    size = max(block, -(-shard_rows // block) * block)
    return [(a, min(a + size, rows)) for a in range(0, rows, size)]


def query_ranges(rows: int, chunk: int, per_task: int) -> list[Range]:
    """``rows`` cut into blocks of ``per_task`` rows rounded up to a multiple of ``chunk``."""
    return shard_ranges(rows, per_task, chunk)


def shard_knn(x: np.ndarray, y_shard: np.ndarray, offset: int, k: int, chunk: int) -> Result:
    """Top-``min(k, len(y_shard))`` of the shard for every row of ``x`` (as :func:`indexer.mining._knn`: searched
    ``chunk`` queries at a time, each row by similarity desc, ties by id asc), ids global (``+ offset``)."""
    sims, ids = _knn(np.ascontiguousarray(x), np.ascontiguousarray(y_shard), min(k, len(y_shard)), chunk)
    return sims, ids + offset


def merge_topk(parts: Sequence[Result], k: int) -> Result:
    """The first ``k`` of each row of the concatenated per-shard lists, by similarity desc, ties by id asc: the
    exact top-k over all shards when each part holds its shard's top-k (or all of the shard's rows)."""
    sims, ids = sort_rows(np.concatenate([s for s, _ in parts], axis=1), np.concatenate([i for _, i in parts], axis=1))
    return sims[:, :k], ids[:, :k]


# --------------------------------------------------------------------------------------------------
# Tasks (plain functions, wrapped with ray.remote by the runner; run in the workers)
# --------------------------------------------------------------------------------------------------

def _identity_task(factory: EncoderFactory, job: str) -> dict[str, Any]:
    enc = worker_cached("encoder", job, factory)
    return {"name": str(getattr(enc, "name", type(enc).__name__)), "checksum": getattr(enc, "checksum", None),
            "backend": str(getattr(enc, "backend", "torch"))}


def _embed_task(factory: EncoderFactory, job: str, texts: list[str], batch_size: int, side: str) -> np.ndarray:
    return _embed(worker_cached("encoder", job, factory), texts, batch_size, side)


def _knn_task(x: np.ndarray, y: np.ndarray, q: Range, shard: Range, k: int, chunk: int) -> Result:
    return shard_knn(x[q[0] : q[1]], y[shard[0] : shard[1]], shard[0], k, chunk)


def _search_task(blob: np.ndarray, key: str, queries: RowSource, k: int, rng: Range) -> Result:
    # the serialized index keeps its search parameters (an IVF's nprobe)
    index = worker_cached("index", key, lambda: faiss.deserialize_index(np.asarray(blob)))
    return search_chunk(index, queries, k, *rng)


# --------------------------------------------------------------------------------------------------
# The runner (driver side)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderIdentity:
    """What the driver needs of the encoder the workers build: the embedding cache's key (name, checksum,
    backend). It embeds nothing itself."""

    name: str
    checksum: str | None
    backend: str

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        raise RuntimeError("the Ray job embeds in its tasks (RayRunner.embed_chunks)")


class RayRunner:
    """:class:`indexer.mining_job.MineRunner` on a Ray cluster (see the module docstring)."""

    def __init__(self, ray: Any, encoder_factory: EncoderFactory, *, shard_rows: int | None = None,
                 query_rows: int | None = None, max_retries: int = MAX_RETRIES, progress: bool = False) -> None:
        self.ray = ray
        self.cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.shard_rows, self.query_rows = shard_rows, query_rows
        self.max_retries = max_retries
        self.progress = progress
        self.tasks = 0
        # a worker keeps the encoder of this factory across the jobs of this driver (Ray starts new workers for a
        # new driver): keyed by the pickled factory
        self.job = factory_key(ray, encoder_factory)
        self._factory = ray.put(encoder_factory)
        opts = {"num_cpus": 1, "max_retries": max_retries}
        self._identity = ray.remote(_identity_task).options(**opts)
        self._embed = ray.remote(_embed_task).options(**opts)
        self._knn = ray.remote(_knn_task).options(**opts)
        self._search = ray.remote(_search_task).options(**opts)

    # -- plumbing ----------------------------------------------------------------------------------

    def _submit(self, fn: Any, *args: Any) -> Any:
        self.tasks += 1
        return fn.remote(*args)

    def _get(self, ref: Any) -> Any:
        """A task's result; its error as the error it raised (a user error stays one), a lost task as an
        :class:`XlirError`."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.RayTaskError as exc:
            cause = unwrap(exc)
            if isinstance(cause, XlirError | ValueError | OSError):
                raise cause from None
            raise XlirError(f"a Ray task failed: {cause}") from exc
        except exceptions.RayError as exc:
            raise XlirError(f"a Ray task was lost ({self.max_retries} retries): {exc}") from exc

    def _ordered(self, submit: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[Any]:
        """Each item's task result, in order, with at most ``TASKS_PER_CPU x CPUs`` tasks in flight."""
        window = TASKS_PER_CPU * self.cpus
        todo = iter(items)
        pending = deque(submit(item) for _, item in zip(range(window), todo, strict=False))
        while pending:
            ref = pending.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(submit(nxt))
            yield self._get(ref)

    # -- the encoder ---------------------------------------------------------------------------------

    def identity(self) -> EncoderIdentity:
        """Build the encoder in a worker (it stays there for the embedding tasks) and return its identity."""
        ident = self._get(self._submit(self._identity, self._factory, self.job))
        return EncoderIdentity(ident["name"], ident["checksum"], ident["backend"])

    def embed_chunks(self, texts: Sequence[str], ranges: Sequence[Range], batch_size: int,
                     side: str) -> Iterable[np.ndarray]:
        return self._ordered(
            lambda r: self._submit(self._embed, self._factory, self.job, list(texts[r[0] : r[1]]), batch_size,
                                   side), ranges)

    # -- the searches --------------------------------------------------------------------------------

    def knn(self, x: np.ndarray, y: np.ndarray, k: int, chunk: int) -> Result:
        """:func:`indexer.mining._knn` over (query block x base shard) tasks, merged exactly."""
        kk = effective_k(k, len(y))
        want = TASKS_PER_CPU * self.cpus
        shards = shard_ranges(len(y), self.shard_rows or -(-len(y) // want))
        blocks = query_ranges(len(x), chunk, self.query_rows or -(-len(x) // max(1, want // len(shards))))
        x_ref, y_ref = self.ray.put(x), self.ray.put(y)
        refs = {self._submit(self._knn, x_ref, y_ref, q, s, kk, chunk): (qi, si)
                for qi, q in enumerate(blocks) for si, s in enumerate(shards)}
        parts: dict[tuple[int, int], Result] = {}
        sims = np.empty((len(x), kk), dtype=np.float32)
        ids = np.empty((len(x), kk), dtype=np.int64)
        with tqdm(desc="search (exact)", total=len(refs), unit="task", disable=not self.progress,
                  dynamic_ncols=True, leave=False) as bar:
            waiting = list(refs)
            while waiting:
                done, waiting = self.ray.wait(waiting, num_returns=1)
                for ref in done:
                    qi, si = refs[ref]
                    parts[qi, si] = self._get(ref)
                    bar.update(1)
                    if all((qi, j) in parts for j in range(len(shards))):
                        a, b = blocks[qi]
                        sims[a:b], ids[a:b] = merge_topk([parts.pop((qi, j)) for j in range(len(shards))], kk)
        return sims, ids

    def search_chunks(self, index: faiss.Index, queries: RowSource, k: int,
                      ranges: Sequence[Range]) -> Iterable[Result]:
        """:func:`indexer.mining_search.search_chunk` for each range, one task each, on the driver's index."""
        blob = self.ray.put(faiss.serialize_index(index))
        key = uuid.uuid4().hex
        return self._ordered(lambda r: self._submit(self._search, blob, key, queries, k, r), ranges)


def mine_files_ray(
    encoder_factory: EncoderFactory,
    src_path: str | os.PathLike[str],
    tgt_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    options: MineOptions | None = None,
    *,
    progress: bool = False,
    cache_dir: Path | None = None,
    work_dir: Path | None = None,
    address: str | None = None,
    shard_rows: int | None = None,
    query_rows: int | None = None,
    max_retries: int = MAX_RETRIES,
    **overrides: Any,
) -> MineReport:
    """:func:`indexer.mining_job.mine_files` with embedding and search as Ray tasks: the same output file.

    ``encoder_factory`` builds the encoder in each worker (once per worker and job). ``address``: the cluster
    (see :func:`indexer.ray_cluster.connect`; a process already connected keeps its cluster). ``shard_rows`` /
    ``query_rows``: base rows per shard (rounded up to 1,024) and query rows per task (rounded up to the search
    chunk) of the exact search; default about two tasks per CPU and direction. The report's ``ray_cpus`` and
    ``ray_tasks`` say where it ran.
    """
    opts = _options(options, overrides)  # invalid options fail before the cluster is used
    ray = connect(address)
    runner = RayRunner(ray, encoder_factory, shard_rows=shard_rows, query_rows=query_rows,
                       max_retries=max_retries, progress=progress)
    rep = mine_files(runner.identity(), src_path, tgt_path, out_path, opts, progress=progress,
                     cache_dir=cache_dir, work_dir=work_dir, runner=runner)
    rep.ray_cpus, rep.ray_tasks = runner.cpus, runner.tasks
    return rep
