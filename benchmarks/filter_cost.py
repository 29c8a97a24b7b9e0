"""The cost of a metadata filter (issue 22, RESULTS 10.1): p50 latency of a search in-process with no filter, a
broad (50%) and a selective (1%) filter, dense over a flat and an HNSW index, and BM25.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.filter_cost [--n 100000] [--queries 200]`` (builds its two synthetic
indexes once under ``$XLIR_HOME/cache/filter-cost/``, a few minutes on 2 cores; writes
``benchmarks/results/filter_cost.json``).

The indexes are synthetic like :mod:`benchmarks.big_index`: real passage texts (:class:`benchmarks.synth.SynthCorpus`,
12 languages, so BM25 is real) and stand-in vectors with e5-small-like statistics
(:func:`benchmarks.speed_faiss.synth_vectors`); only speed is measured. Each document gets metadata ``{"source":
"s0".."s9", "year": 2000..2099}``, spread over the rows by a fixed permutation: the broad filter is ``{"source":
{"in": ["s0".."s4"]}}`` (50%), the selective one ``{"year": 2042}`` (1%). Every search goes through
:func:`benchmarks.retrieval.run_inprocess` (the one retrieval path, ``SearchService.retrieve``) with ``k=10``,
feedback off (so each query is one dense or one BM25 search), the query vectors given. The first filtered query of
an index builds its metadata columns: that one-off time is reported apart, and the queries are timed after a
warm-up, the conditions taking turns every 5 queries (the machine is shared). ``OMP_NUM_THREADS=1``: the searches
run in worker threads, where FAISS takes OpenMP's default thread count, and on a busy machine the waits for a
second core (not the search) made one unfiltered flat search 3x slower than a filtered one. ``full_pages`` is the
share of queries answered with min(k, documents that match) results (BM25: that match and hold a query term); the
HNSW rows also give the recall@10 against the flat index's exact answer (same vectors, same filter).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.big_index import documents
from benchmarks.datasets import Query, RetrievalDataset
from benchmarks.demo_bench import commit, pct, save_results
from benchmarks.retrieval import Run, run_inprocess
from indexer.build import chunks, staged
from indexer.langid import normalize_lang
from indexer.manifest import MANIFEST
from indexer.store import Index, open_index
from indexer.write import Batch, EncoderInfo, WriteOptions, write_index
from models.registry import xlir_home

DIM = 384
SOURCES = [f"s{i}" for i in range(10)]
FILTERS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "broad (50%)": {"source": {"in": SOURCES[:5]}},
    "selective (1%)": {"year": 2042},
}
RESULTS = Path(__file__).resolve().parent / "results" / "filter_cost.json"
CACHE_VERSION = 1


class GivenVectors:
    """The encoder of the runs: never called, as the query vectors are given (``run_inprocess(qvecs=...)``)."""

    name = "synthetic"
    checksum = "synthetic-vectors"
    dim = DIM

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        raise RuntimeError("the filter benchmark gives every query vector")

    encode_passages = encode_queries


def metadata(n: int, seed: int = 0) -> list[dict[str, Any]]:
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return [{"source": SOURCES[int(p) % 10], "year": 2000 + (int(p) // 10) % 100} for p in perm]


def build(n: int, index_type: str, out: Path, seed: int = 0) -> Path:
    """The synthetic index of ``n`` passages with metadata (cached)."""
    if (out / MANIFEST).is_file():
        return out
    from benchmarks.speed_faiss import synth_vectors

    vectors, _ = synth_vectors(n, DIM, seed=seed)
    meta = metadata(n, seed)

    def batches() -> Iterator[Batch]:
        start = 0
        for docs in chunks(documents(n, seed), 8192):
            for i, doc in enumerate(docs):
                doc.metadata = meta[start + i]
            yield docs, [normalize_lang(d.lang or "") for d in docs], vectors[start : start + len(docs)]
            start += len(docs)

    with staged(out, overwrite=True) as tmp:
        write_index(tmp, batches(), WriteOptions(index_type=index_type, progress=True),
                    EncoderInfo("synthetic", "synthetic-vectors", DIM))
    return out


def queries(n: int, count: int, seed: int = 0) -> tuple[RetrievalDataset, np.ndarray]:
    from benchmarks.speed_faiss import synth_vectors
    from benchmarks.synth import SynthCorpus, load_pool

    drawn = SynthCorpus(load_pool(), seed=seed).queries(count, n)
    qs = [Query(q.qid, q.text, normalize_lang(q.lang), "test") for q in drawn]
    _, qvecs = synth_vectors(1, DIM, n_queries=count, seed=seed)
    return RetrievalDataset("synthetic-filter", [], qs, {}), qvecs


def p50(run: Run) -> float:
    return pct([t["total"] for t in run.timings.values()], 50)


def measure(index: Index, dataset: RetrievalDataset, qvecs: np.ndarray,
            conditions: list[tuple[str, dict[str, Any] | None]], chunk: int = 5, warmup: int = 10) -> list[Run]:
    """One run per condition ``(mode, filter)``, the conditions taking turns every ``chunk`` queries, so a change of
    the machine's load (it is shared) falls on all of them alike."""
    def params(mode: str, flt: dict[str, Any] | None) -> dict[str, Any]:
        return {"mode": mode, "feedback": "off", **({"filter": flt} if flt else {})}

    enc: Any = GivenVectors()
    warm = RetrievalDataset(dataset.name, [], dataset.queries[:warmup], {})
    for mode, flt in conditions:
        run_inprocess(index, enc, warm, params(mode, flt), k=10, qvecs=qvecs[:warmup])
    runs = [Run() for _ in conditions]
    for start in range(0, len(dataset.queries), chunk):
        part = RetrievalDataset(dataset.name, [], dataset.queries[start : start + chunk], {})
        for run, (mode, flt) in zip(runs, conditions, strict=True):
            got = run_inprocess(index, enc, part, params(mode, flt), k=10, qvecs=qvecs[start : start + chunk])
            run.hits.update(got.hits)
            run.timings.update(got.timings)
    return runs


def full_pages(run: Run, index: Index, dataset: RetrievalDataset, mode: str, mask: np.ndarray | None,
               k: int = 10) -> float:
    """The share of queries answered with ``min(k, documents that match)`` results (dense: the filter's rows; BM25:
    those of them holding a query term)."""
    from indexer.text import tokenize

    selected = index.size if mask is None else int(mask.sum())
    ok = 0
    for q in dataset.queries:
        matching = selected
        if mode == "bm25":
            positive = index.bm25.scores(tokenize(q.text)) > 0
            matching = int(np.count_nonzero(positive if mask is None else positive & mask))
        ok += len(run.hits[q.qid]) == min(k, matching)
    return ok / len(dataset.queries)


def recall(run: Run, exact: Run, k: int = 10) -> float:
    vals = []
    for qid, ranked in exact.rankings().items():
        if ranked:
            vals.append(len(set(run.ranking(qid)[:k]) & set(ranked[:k])) / len(ranked[:k]))
    return float(np.mean(vals)) if vals else 1.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="documents in the synthetic indexes")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    cache = xlir_home() / "cache" / "filter-cost"
    dataset, qvecs = queries(args.n, args.queries)
    rows: list[dict[str, Any]] = []
    runs: dict[tuple[str, str, str], Run] = {}
    for kind in ("flat", "hnsw"):
        path = build(args.n, kind, cache / f"synth-n{args.n}-{kind}-v{CACHE_VERSION}")
        index = open_index(path)
        t0 = time.perf_counter()
        index.filter_mask(FILTERS["selective (1%)"])  # builds the metadata columns: once per generation
        columns_ms = (time.perf_counter() - t0) * 1000
        modes = ("dense", "bm25") if kind == "flat" else ("dense",)
        conditions = [(mode, name) for mode in modes for name in FILTERS]
        measured = measure(index, dataset, qvecs, [(mode, FILTERS[name]) for mode, name in conditions])
        for (mode, name), run in zip(conditions, measured, strict=True):
            flt = FILTERS[name]
            mask = index.filter_mask(flt) if flt else None
            runs[(kind, mode, name)] = run
            row = {"retriever": f"{mode} ({kind})" if mode == "dense" else "bm25", "filter": name,
                   "selected": 1.0 if mask is None else round(float(mask.mean()), 4),
                   "p50_ms": round(p50(run), 2),
                   "full_pages": full_pages(run, index, dataset, mode, mask),
                   "columns_build_ms": round(columns_ms, 1)}
            if kind == "hnsw":
                row["recall_at_10_vs_exact"] = round(recall(run, runs[("flat", "dense", name)]), 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
        index.close()
    base = {r["retriever"]: r["p50_ms"] for r in rows if r["filter"] == "none"}
    for r in rows:
        r["vs_no_filter"] = round(r["p50_ms"] / base[r["retriever"]], 2)
    out = {"benchmark": "filter_cost", "n_docs": args.n, "queries": args.queries, "k": 10, "commit": commit(),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_after": list(os.getloadavg()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
           "rows": rows}
    save_results(args.out, out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
