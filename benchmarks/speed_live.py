"""Cost of live updates: BM25 with global statistics over segments vs bm25s's precomputed scores, and WAL commits.

Run: ``python -m benchmarks.speed_live [--n 100000] [--out benchmarks/results/speed_live.json]`` (``--n 20000`` for
a quick run while developing).

Corpus: :mod:`benchmarks.synth` (``--n`` passages of ~100 analyzer tokens in 12 languages, seeded) and its queries,
tokenized once by the product analyzer. The main segment is built by the product (``BM25Builder`` + ``save``: bm25s
scores and the term-frequency postings used by live updates).

Measured, one query at a time (as the server runs them), top 10:

- ``bm25s``: ``BM25Searcher.search`` (numba, precomputed scores): what an index with no pending updates runs;
- ``live, unchanged``: :func:`indexer.bm25.lucene_scores` over the main postings alone + the same top-k selection;
  its scores are checked against bm25s's (max relative difference reported);
- ``live, updated``: the same scorer with ``--deleted`` main documents tombstoned and a delta segment of ``--delta``
  more passages (what a server with pending updates runs until the next compaction);
- WAL: upsert records with a 384-dim vector appended and fsync'd, ``--commits`` commits per batch size: commits/s and
  documents/s (the durability cost of ``POST /documents``; group commit makes concurrent requests share an fsync).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.demo_bench import commit, machine, save_results
from indexer import wal
from indexer.bm25 import BM25Builder, BM25Searcher, Postings, Segment, lucene_scores
from indexer.text import tokenize
from indexer.topk import top_k


def _per_query_ms(fn: Any, queries: list[list[str]], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for q in queries:
            fn(q)
        best = min(best, (time.perf_counter() - t0) / len(queries) * 1000)
    return best


def run_bm25(n: int, n_queries: int, delta: int, deleted: int, seed: int, repeats: int) -> dict[str, Any]:
    from benchmarks.synth import SynthCorpus, load_pool

    synth = SynthCorpus(load_pool(None), seed=seed)
    tokens = [tokenize(p.text) for p in synth.passages(n + delta)]
    queries = [tokenize(q.text) for q in synth.queries(min(n_queries, n), n)]
    main_tokens, delta_tokens = tokens[:n], tokens[n:]
    with tempfile.TemporaryDirectory() as tmp:
        builder = BM25Builder()
        for t in main_tokens:
            builder.add(t)
        t0 = time.perf_counter()
        builder.save(Path(tmp) / "bm25")
        save_s = time.perf_counter() - t0
        searcher = BM25Searcher(Path(tmp) / "bm25", mmap=False)
        searcher.search(queries[0], 10)  # numba compiles on first use
        postings = searcher.postings()
        assert postings is not None
        postings = Postings(postings.vocab, *(np.asarray(a) for a in (postings.indptr, postings.indices,
                                                                        postings.data, postings.doc_len)))
        k1, b = searcher.k1, searcher.b
        unchanged = [Segment(postings, 0)]
        c1: dict[Any, np.ndarray] = {}
        c2: dict[Any, np.ndarray] = {}
        worst = 0.0
        for q in queries[:200]:
            want = searcher.scores(q)
            got = lucene_scores(unchanged, q, n, k1, b)
            scale = max(float(np.abs(want).max()), 1e-9)
            worst = max(worst, float(np.abs(got - want).max()) / scale)
        live = np.ones(n, dtype=bool)
        live[np.random.default_rng(seed).choice(n, size=min(deleted, n), replace=False)] = False
        updated = [Segment(postings, 0, live), Segment(Postings.from_tokens(delta_tokens), n)]
        ms = {
            "bm25s": _per_query_ms(lambda q: searcher.search(q, 10), queries, repeats),
            "live_unchanged": _per_query_ms(lambda q: top_k(lucene_scores(unchanged, q, n, k1, b, c1), 10, above=0),
                                            queries, repeats),
            "live_updated": _per_query_ms(lambda q: top_k(lucene_scores(updated, q, n + delta, k1, b, c2), 10,
                                                          above=0), queries, repeats),
        }
    return {"passages": n, "queries": len(queries), "delta": delta, "deleted": deleted, "save_seconds": save_s,
            "max_rel_diff_vs_bm25s": worst, "ms_per_query": ms,
            "ratio_live_unchanged_vs_bm25s": ms["live_unchanged"] / ms["bm25s"],
            "ratio_live_updated_vs_bm25s": ms["live_updated"] / ms["bm25s"]}


def run_wal(commits: int, dim: int = 384) -> dict[str, Any]:
    out = {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 8, 64):
            writer = wal.WalWriter(Path(tmp) / f"w{batch}.log")
            lsn = 0
            t0 = time.perf_counter()
            for _ in range(commits):
                recs = []
                for _ in range(batch):
                    lsn += 1
                    doc = {"id": f"d{lsn}", "title": "", "text": "x " * 300, "lang": "en"}
                    recs.append(wal.Record.upsert(lsn, doc, rng.standard_normal(dim).astype(np.float32)))
                writer.append(recs)
                writer.sync()
            s = time.perf_counter() - t0
            writer.close()
            out[str(batch)] = {"commits_per_s": commits / s, "docs_per_s": commits * batch / s,
                               "ms_per_commit": s / commits * 1000}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--delta", type=int, default=5_000, help="passages in the delta segment")
    ap.add_argument("--deleted", type=int, default=1_000, help="main passages tombstoned")
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res = {"machine": machine(), "commit": commit(),
           "bm25": run_bm25(args.n, args.queries, args.delta, args.deleted, args.seed, args.repeats),
           "wal": run_wal(args.commits)}
    b: dict[str, Any] = res["bm25"]  # type: ignore[assignment]
    print(f"BM25, {b['passages']:,} passages, {b['queries']} queries, top 10 (ms/query): bm25s "
          f"{b['ms_per_query']['bm25s']:.2f}; live scorer unchanged {b['ms_per_query']['live_unchanged']:.2f} "
          f"(x{b['ratio_live_unchanged_vs_bm25s']:.2f}, max rel diff {b['max_rel_diff_vs_bm25s']:.1e}); live with "
          f"{b['deleted']:,} deleted + {b['delta']:,} delta {b['ms_per_query']['live_updated']:.2f} "
          f"(x{b['ratio_live_updated_vs_bm25s']:.2f})")
    walres: dict[str, dict[str, float]] = res["wal"]  # type: ignore[assignment]
    for batch, w in walres.items():
        print(f"WAL batch {batch}: {w['ms_per_commit']:.2f} ms/commit, {w['docs_per_s']:.0f} docs/s")
    save_results(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
