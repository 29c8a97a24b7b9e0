"""BM25 speed at scale: xlir's BM25 (``indexer.bm25``, bm25s numba) against rank-bm25 on the same tokens, same run.

Run: ``python -m benchmarks.speed_bm25 [--n 200000] [--out benchmarks/results/speed_bm25.json]``
(``make bench-speed``). ``--n 20000`` for a quick run while developing.

Corpus: :mod:`benchmarks.synth` (``--n`` passages of ~100 analyzer tokens in 12 languages, recombined from real
sentences, seeded) and its queries (windows of passages' sentences). Both systems get the same token lists, made
once by the product analyzer (:func:`indexer.text.tokenize`, timed separately: it is shared).

**Parameters aligned.** xlir: k1 = 1.2, b = 0.75, bm25s ``method="lucene"``: idf = ln(1 + (N - df + 0.5) /
(df + 0.5)), term weight idf * tf / (tf + k1 * (1 - b + b * dl / avgdl)). rank-bm25's ``BM25Okapi`` uses the
Robertson idf ln((N - df + 0.5) / (df + 0.5)) with negative values floored at epsilon * mean idf, and multiplies the
term weight by (k1 + 1). The baseline is therefore :class:`LuceneBM25Okapi`, a ``BM25Okapi`` whose only change is the
idf (Lucene's); its scores are ``(k1 + 1)`` times xlir's (a constant: same ranking), so they are divided by
``k1 + 1`` before comparison. Its build and scoring code are rank-bm25's own.

Measured:

- build: xlir = ``BM25Builder.add`` over all token lists (vocabulary ids) + ``save`` (bm25s index + write to disk);
  rank-bm25 = the ``LuceneBM25Okapi`` constructor (in memory, nothing written); and xlir's load (``BM25Searcher``).
  bm25s's numba functions compile on first use, once per process: a 3-document index is built and searched first,
  and that time is reported apart;
- queries: xlir ``BM25Searcher.search(tokens, 10)`` (what the server calls, one query at a time) over all queries;
  rank-bm25 ``get_scores`` + the same top-10 selection on a sample (``--baseline-queries``; it scores every
  document in Python, so it is slow at this size); per-query milliseconds, queries/s and the ratio. The product has
  no batched BM25 call (the server batches encoder calls only); for reference, bm25s's own batched ``retrieve``
  (numba, parallel over queries) on the same index is timed too, labelled as such;
- agreement: on the baseline's sample, xlir's top 10 against the baseline's (ids, and scores to 1e-5 relative to the
  larger), documents with a zero score excluded from both (xlir returns positive scores only). Rankings may differ
  only inside groups of scores tied within that tolerance (float32 in bm25s vs float64 in rank-bm25).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rank_bm25 import BM25Okapi

from benchmarks.demo_bench import commit, machine, rss_bytes, save_results
from indexer import bm25 as bm25_mod
from indexer.text import ANALYZER_NAME, tokenize
from indexer.topk import top_k

SCORE_RTOL = 1e-5


class LuceneBM25Okapi(BM25Okapi):
    """rank-bm25's ``BM25Okapi`` with Lucene's idf, ln(1 + (N - df + 0.5) / (df + 0.5)) (always positive).

    Its scores are ``(k1 + 1)`` times Lucene's / bm25s's (``get_scores`` is rank-bm25's, unchanged).
    """

    def _calc_idf(self, nd: dict[str, int]) -> None:
        n = self.corpus_size
        self.idf = {word: math.log(1.0 + (n - df + 0.5) / (df + 0.5)) for word, df in nd.items()}
        self.average_idf = sum(self.idf.values()) / len(self.idf) if self.idf else 0.0


def baseline_topk(model: BM25Okapi, tokens: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores / (k1 + 1), rows) of the top ``k`` positive-scoring documents, ties by row: xlir's selection rule."""
    return top_k(np.asarray(model.get_scores(list(tokens)), dtype=np.float64) / (model.k1 + 1.0), k, above=0.0)


def topk_agree(ours: tuple[np.ndarray, np.ndarray], base: tuple[np.ndarray, np.ndarray],
               rtol: float = SCORE_RTOL) -> bool:
    """Same length, scores equal within ``rtol`` (relative to the larger, absolute below 1), and the same ids at
    every position except inside a group of scores tied within that tolerance (a group cut by the top-k boundary
    may hold different members)."""
    s1, r1 = np.asarray(ours[0], np.float64), np.asarray(ours[1])
    s2, r2 = np.asarray(base[0], np.float64), np.asarray(base[1])
    if len(r1) != len(r2):
        return False
    if not np.all(np.abs(s1 - s2) <= rtol * np.maximum(1.0, np.maximum(np.abs(s1), np.abs(s2)))):
        return False
    if np.array_equal(r1, r2):
        return True
    tol = rtol * max(1.0, float(np.abs(s2).max(initial=0.0)))
    last = len(r2) - 1
    i = 0
    while i <= last:  # walk groups of tied scores
        j = i
        while j < last and s2[j] - s2[j + 1] <= tol:
            j += 1
        a, b = set(r1[i : j + 1].tolist()), set(r2[i : j + 1].tolist())
        if a != b and j != last:  # only the last group may be cut differently
            return False
        i = j + 1
    return True


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run(n: int, n_queries: int, baseline_queries: int, seed: int, data_dir: Path | None, repeats: int,
        k: int = 10) -> dict[str, Any]:
    from benchmarks.synth import SynthCorpus, load_pool

    t0 = time.perf_counter()
    synth = SynthCorpus(load_pool(data_dir), seed=seed)
    texts, langs = [], []
    for p in synth.passages(n):
        texts.append(p.text)
        langs.append(p.lang)
    queries = synth.queries(min(n_queries, n), n)
    gen_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    corpus_tokens = [tokenize(t) for t in texts]
    tok_s = time.perf_counter() - t0
    del texts
    q_tokens = [tokenize(q.text) for q in queries]
    n_tokens = sum(map(len, corpus_tokens))

    out: dict[str, Any] = {
        "passages": n, "tokens": n_tokens, "languages": dict(sorted(Counter(langs).items())),
        "queries": len(queries), "baseline_queries": min(baseline_queries, len(queries)), "k": k, "seed": seed,
        "analyzer": ANALYZER_NAME, "k1": bm25_mod.K1, "b": bm25_mod.B, "method": bm25_mod.METHOD,
        "generate_seconds": gen_s, "tokenize_seconds": tok_s, "tokenize_docs_per_second": n / tok_s,
        "mean_query_tokens": float(np.mean([len(t) for t in q_tokens])),
    }

    with tempfile.TemporaryDirectory(prefix="xlir-bm25-") as tmp:
        path = Path(tmp) / "bm25"
        t0 = time.perf_counter()  # numba compiles bm25s's functions once per process: not part of the build time
        warm = bm25_mod.BM25Builder()
        for toks in corpus_tokens[:3]:
            warm.add(toks)
        warm.save(Path(tmp) / "warmup")
        bm25_mod.BM25Searcher(Path(tmp) / "warmup").search(q_tokens[0], 1)
        jit_s = time.perf_counter() - t0
        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        builder = bm25_mod.BM25Builder()
        for toks in corpus_tokens:
            builder.add(toks)
        t1 = time.perf_counter()
        builder.save(path)
        t2 = time.perf_counter()
        out["xlir_build"] = {"seconds": t2 - t0, "add_seconds": t1 - t0, "index_and_save_seconds": t2 - t1,
                             "vocab": len(builder.vocab), "disk_bytes": _dir_bytes(path), "jit_warmup_seconds": jit_s,
                             "rss_delta_bytes": rss_bytes() - rss0}
        del builder
        gc.collect()
        t0 = time.perf_counter()
        searcher = bm25_mod.BM25Searcher(path, mmap=False)
        out["xlir_build"]["load_seconds"] = time.perf_counter() - t0

        gc.collect()
        rss0 = rss_bytes()
        t0 = time.perf_counter()
        baseline = LuceneBM25Okapi(corpus_tokens, k1=bm25_mod.K1, b=bm25_mod.B)
        out["rank_bm25_build"] = {"seconds": time.perf_counter() - t0, "rss_delta_bytes": rss_bytes() - rss0}
        del corpus_tokens

        t0 = time.perf_counter()
        ours = []
        for _ in range(repeats):
            ours = [searcher.search(t, k) for t in q_tokens]
        ours_s = (time.perf_counter() - t0) / (repeats * len(q_tokens))

        sample = list(range(0, len(q_tokens), max(1, len(q_tokens) // out["baseline_queries"])))
        sample = sample[: out["baseline_queries"]]
        t0 = time.perf_counter()
        base = [baseline_topk(baseline, q_tokens[i], k) for i in sample]
        base_s = (time.perf_counter() - t0) / len(sample)

        ids = [[searcher.vocab[t] for t in toks if t and t in searcher.vocab] or [searcher.vocab[""]]
               for toks in q_tokens] if "" in searcher.vocab else None
        batched_s = None
        if ids is not None:
            searcher._r.retrieve(ids[:2], k=k, backend_selection="numba", n_threads=-1, show_progress=False)
            t0 = time.perf_counter()
            for _ in range(repeats):
                searcher._r.retrieve(ids, k=k, backend_selection="numba", n_threads=-1, show_progress=False)
            batched_s = (time.perf_counter() - t0) / (repeats * len(ids))

        agree = [topk_agree(ours[i], b) for i, b in zip(sample, base, strict=True)]
        exact = [bool(np.array_equal(ours[i][1], b[1])) for i, b in zip(sample, base, strict=True)]
        diffs = [float(np.max(np.abs(ours[i][0] - b[0]), initial=0.0)) for i, b in zip(sample, base, strict=True)
                 if len(ours[i][0]) == len(b[0])]
        out["query"] = {
            "xlir_ms": ours_s * 1000, "xlir_qps": 1 / ours_s,
            "rank_bm25_ms": base_s * 1000, "rank_bm25_qps": 1 / base_s,
            "speedup": base_s / ours_s,
            "bm25s_batched_ms": batched_s * 1000 if batched_s else None,
            "bm25s_batched_qps": 1 / batched_s if batched_s else None,
            "repeats": repeats,
        }
        out["agreement"] = {
            "queries": len(sample), "identical_top_k": int(sum(agree)), "identical_ids_in_order": int(sum(exact)),
            "max_abs_score_diff": max(diffs, default=0.0),
            "disagreeing": [queries[i].qid for i, a in zip(sample, agree, strict=True) if not a],
        }
        out["build_speedup"] = out["rank_bm25_build"]["seconds"] / out["xlir_build"]["seconds"]
    return out


def markdown(r: dict[str, Any]) -> str:
    xb, rb, q, a = r["xlir_build"], r["rank_bm25_build"], r["query"], r["agreement"]
    lines = [
        f"Machine: {r['machine']}. Commit {r['commit']}.",
        "",
        f"Corpus: {r['passages']:,} synthetic passages (benchmarks/synth.py, seed {r['seed']}, "
        f"{len(r['languages'])} languages, {r['tokens'] / r['passages']:.0f} tokens each on average, "
        f"{r['tokens']:,} in all); {r['queries']} queries ({r['mean_query_tokens']:.1f} tokens on average), top "
        f"{r['k']}. Tokenized once by the product analyzer ({r['analyzer']}): {r['tokenize_seconds']:.1f} s = "
        f"{r['tokenize_docs_per_second']:,.0f} passages/s, shared by both systems. BM25 k1 = {r['k1']}, b = {r['b']}, "
        "Lucene idf on both sides (rank-bm25's BM25Okapi with the Lucene idf, scores divided by k1 + 1).",
        "",
        "| | xlir (bm25s, numba) | rank-bm25 (baseline) | ratio (baseline / xlir) |",
        "|---|---|---|---|",
        f"| build (s) | {xb['seconds']:.1f} (ids {xb['add_seconds']:.1f} + index and write "
        f"{xb['index_and_save_seconds']:.1f}) | {rb['seconds']:.1f} (in memory) | {r['build_speedup']:.2f}x |",
        f"| memory after build (RSS delta, approximate) | {xb['rss_delta_bytes'] / 2**20:,.0f} MiB (on disk "
        f"{xb['disk_bytes'] / 2**20:,.0f} MiB) | {rb['rss_delta_bytes'] / 2**20:,.0f} MiB | |",
        f"| query, one at a time (ms) | {q['xlir_ms']:.2f} ({r['queries']} queries x {q['repeats']}) "
        f"| {q['rank_bm25_ms']:.1f} ({r['baseline_queries']} queries) | **{q['speedup']:.0f}x** |",
        f"| queries/s, one at a time | {q['xlir_qps']:,.0f} | {q['rank_bm25_qps']:.2f} | {q['speedup']:.0f}x |",
    ]
    if q["bm25s_batched_qps"]:
        lines.append(f"| queries/s, batched (bm25s `retrieve`, numba, all queries in one call; not a product API) "
                     f"| {q['bm25s_batched_qps']:,.0f} | | |")
    lines += [
        "",
        f"Load of the xlir index: {xb['load_seconds']:.2f} s; numba compilation, once per process, excluded from "
        f"the build and query times: {xb['jit_warmup_seconds']:.1f} s. Agreement on the baseline's {a['queries']} "
        "queries: "
        f"**{a['identical_top_k']}/{a['queries']} identical top {r['k']}** (ids, scores within "
        f"{SCORE_RTOL:g} relative; {a['identical_ids_in_order']} with the very same order, the others differ only "
        f"inside tied scores), largest score difference {a['max_abs_score_diff']:.2e}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="passages (default 200,000)")
    ap.add_argument("--queries", type=int, default=1000, help="queries for xlir (default 1000)")
    ap.add_argument("--baseline-queries", type=int, default=100, help="of those, how many rank-bm25 runs")
    ap.add_argument("--repeats", type=int, default=3, help="passes over the queries for xlir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    res = {"machine": machine(), "commit": commit(),
           **run(args.n, args.queries, args.baseline_queries, args.seed, args.data_dir, args.repeats)}
    save_results(args.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
