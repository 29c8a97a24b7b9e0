"""Dense pseudo-relevance feedback (issue 19 part 1): every candidate side by side on the three XQuAD-R pools.

Run: ``python -m benchmarks.feedback [--out benchmarks/results/feedback.json] [--seed 0] [--cost-queries 200]``.

**Pools** (:func:`benchmarks.datasets.xquad_r_pools`): ``full`` (the LAReQA sentence pool, fully parallel, 7
languages), ``nonparallel`` (each paragraph in one language only, round-robin after a seeded shuffle; queries in
every language) and ``parallel`` (whole paragraphs in all 7 languages, about as many sentences as ``nonparallel``);
plus ``mono``: the full pool with ``langs=[query language]`` and same-language judgments (the matrix's ``-mono``
setting, :func:`benchmarks.retrieval.same_language_qrels`). The full pool's index is the retrieval benchmark's
(:func:`benchmarks.retrieval.index_for`); the variants' indexes are written from its stored raw vectors
(:func:`subset_index`: no re-embedding), with the product's build defaults. Query vectors come from the embedding
cache (:func:`benchmarks.retrieval.query_vectors` over the full pool's queries; the variants' queries are a subset).

**Candidates**, all through the one retrieval path (:func:`benchmarks.retrieval.run_inprocess`, mode dense): ``off``;
``dense`` (always on, m=3, beta=1); each gate of :mod:`app.feedback` (``auto`` with ``feedback_gate``) at the
threshold chosen on the **dev** split; the chosen gate with ``feedback_merge=rrf``. Threshold choice, per gate, on
dev: among the thresholds of :data:`THRESHOLDS` that keep the non-parallel pool and the mono setting within
:data:`DEV_SAFETY` of ``off`` (half the issue's margin: the rest is kept for the dev-test difference), the one with
the largest mean gain on the full and the parallel pools (ties: the higher threshold, i.e. the more cautious gate);
then the gate with the largest gain there. The **test** split is only reported.

**Cost** (:func:`measure_cost`): the service in-process, composed as the server composes it (real e5 encoder behind
the query batcher, the dense batcher), closed-loop clients at concurrency 1 and 8 over test queries of the full
pool, per request latency (p50, p95) and searches per second, with feedback off, ``dense`` and ``auto``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import retrieval as rb
from benchmarks.datasets import RetrievalDataset, default_data_dir, xquad_r_pools
from indexer.store import Index
from models.base import Encoder

GATES: tuple[str, ...] = ("coherence", "languages", "agree", "translations")
THRESHOLDS: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8)
SAFETY = 0.005  # the targets: non-parallel and single-language never more than this below off (on test)
DEV_SAFETY = SAFETY / 2  # the dev choice keeps half of it in reserve for the dev-test difference
POOLS: tuple[str, ...] = ("nonparallel", "parallel", "full", "mono")
BASE: dict[str, Any] = {"mode": "dense"}


def params_of(feedback: str = "off", gate: str | None = None, threshold: float | None = None, m: int = 3,
              beta: float = 1.0, merge: str = "second") -> dict[str, Any]:
    """The request fields of a candidate."""
    if feedback == "off":
        return {**BASE, "feedback": "off"}  # explicit: the request's default is not "off"
    p: dict[str, Any] = {**BASE, "feedback": feedback, "feedback_docs": m, "feedback_weight": beta,
                         "feedback_merge": merge}
    if feedback == "auto":
        p["feedback_gate"] = gate
        if threshold is not None:
            p["feedback_threshold"] = threshold
    return p


def subset_index(full: Index, dataset: RetrievalDataset, encoder: Encoder, cache_root: Path | None = None) -> Path:
    """An index of ``dataset``'s documents (a subset of ``full``'s, same ids) written from ``full``'s stored raw
    vectors with the product's build defaults (centring auto, flat): what ``index_for`` would build, without
    embedding anything again. Cached like ``index_for`` (dataset name, encoder checksum, documents hash)."""
    from indexer.build import staged
    from indexer.manifest import MANIFEST
    from indexer.write import EncoderInfo, WriteOptions, write_index

    root = Path(cache_root) if cache_root is not None else rb.default_cache_root()
    out = rb.index_dir(dataset, encoder, root)
    if (out / MANIFEST).is_file() and rb.built_by_current_rule(out):
        return out
    row_of = {full.doc(r)["id"]: r for r in range(full.size)}
    missing = [d.id for d in dataset.docs if d.id not in row_of]
    if missing:
        raise ValueError(f"{len(missing)} documents of {dataset.name} are not in {full.dir} (e.g. {missing[0]!r})")
    raws = full.raw_vectors()
    offsets = [s.offset for s in full.manifest.shards]
    vecs = np.zeros((len(dataset.docs), full.vector_set.dim), dtype=np.float32)
    for i, d in enumerate(dataset.docs):
        r = row_of[d.id]
        shard = int(np.searchsorted(offsets, r, side="right")) - 1
        vecs[i] = raws[shard][r - offsets[shard]]
    docs = list(dataset.docs)
    with staged(out, overwrite=out.exists()) as tmp:
        write_index(tmp, [(docs, [d.lang or "" for d in docs], vecs)], WriteOptions(progress=False),
                    EncoderInfo(encoder.name, encoder.checksum, encoder.dim))
    return out


def delta(a: float, b: float) -> float:
    return round(a - b, 4)


def choose_threshold(dev: Mapping[float, Mapping[str, float]], off: Mapping[str, float]) -> tuple[float | None, str]:
    """The dev choice of one gate: ``dev[t][pool]`` and ``off[pool]`` are the pools' scores (AP@20, mono nDCG@10)."""
    safe = [t for t, s in dev.items()
            if s["nonparallel"] - off["nonparallel"] >= -DEV_SAFETY and s["mono"] - off["mono"] >= -DEV_SAFETY]
    if not safe:
        return None, "no threshold keeps the non-parallel pool and the mono setting within the safety margin on dev"
    best = max(safe, key=lambda t: (dev[t]["full"] + dev[t]["parallel"] - off["full"] - off["parallel"], t))
    return best, f"best mean gain on full+parallel among {len(safe)} safe thresholds on dev"


class Bench:
    """The pools, their indexes and query vectors, and one scoring function over them."""

    def __init__(self, encoder: Encoder, seed: int, max_per_lang: int | None) -> None:
        from indexer.store import open_index

        self.encoder = encoder
        pools = xquad_r_pools(default_data_dir(), seed)
        full = pools["full"]
        self.table = rb.load_centroid_table(encoder)
        self.full_index = open_index(rb.index_for(full, encoder))
        qv = rb.query_vectors(encoder, full.queries)
        self.qvec = {q.qid: v for q, v in zip(full.queries, qv, strict=True)}
        self.indexes: dict[str, Index] = {"full": self.full_index, "mono": self.full_index}
        for name in ("nonparallel", "parallel"):
            self.indexes[name] = open_index(subset_index(self.full_index, pools[name], encoder))
        self.data: dict[tuple[str, str], RetrievalDataset] = {}
        for split in ("dev", "test"):
            for name in POOLS:
                ds = pools["full" if name == "mono" else name].subset(split=split, max_per_lang=max_per_lang)
                self.data[(name, split)] = rb.same_language_qrels(ds) if name == "mono" else ds
        self.sizes = {name: len(pools[name].docs) for name in ("nonparallel", "parallel", "full")}

    def run(self, pool: str, split: str, params: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        ds = self.data[(pool, split)]
        qvecs = np.stack([self.qvec[q.qid] for q in ds.queries])
        run = rb.run_inprocess(self.indexes[pool], self.encoder, ds, params, monolingual=pool == "mono",
                               qvecs=qvecs, table=self.table)
        return rb.evaluate(ds, run)

    @staticmethod
    def headline(pool: str, res: Mapping[str, Mapping[str, float]]) -> float:
        return res["all"]["ndcg@10" if pool == "mono" else "map@20"]


def measure_cost(index: Index, encoder: Encoder, queries: Sequence[rb.Query], candidates: Mapping[str, dict[str, Any]],
                 levels: Sequence[int] = (1, 8), table: Any = None, vectors: Mapping[str, np.ndarray] | None = None,
                 rounds: int = 2) -> dict[str, dict[str, dict[str, float]]]:
    """p50/p95 latency (ms) and searches/s of :meth:`SearchService.search` in-process, composed as the server does
    (query batcher, dense batcher; default settings), ``c`` closed-loop clients over ``queries``. The encoder is the
    real one, or with ``vectors`` (text -> raw query vector, the embedding cache) a lookup: the search path alone.
    Each level runs ``rounds`` times with the candidates interleaved (the machine is shared: slow phases hit every
    candidate alike); the figures pool the rounds."""
    from app.batching import QueryBatcher, VectorBatcher
    from app.schemas import SearchRequest
    from app.service import SearchService
    from app.settings import Settings
    from indexer.text import tokenize

    s = Settings()

    def encode(texts: Sequence[str]) -> np.ndarray:
        assert vectors is not None
        return np.stack([vectors[t] for t in texts])

    async def level(params: Mapping[str, Any], c: int) -> tuple[list[float], float]:
        batcher = QueryBatcher(encoder.encode_queries if vectors is None else encode, max_batch=s.batch_max_size,
                               max_wait_ms=s.batch_max_wait_ms, max_queue=s.queue_max,
                               max_tokens=s.batch_max_tokens if vectors is None else None,
                               token_lengths=getattr(encoder, "token_lengths", None) if vectors is None else None)
        service = SearchService(index, encoder, batcher, tokenize, centroid_table=table,
                                dense_batcher=VectorBatcher(max_batch=s.batch_max_size))
        await batcher.start()
        lat: list[float] = []
        nxt = iter(range(len(queries)))

        async def client() -> None:
            for i in nxt:
                q = queries[i]
                t0 = time.perf_counter()
                await service.search(SearchRequest(query=q.text, k=10, lang=q.lang, **params))
                lat.append((time.perf_counter() - t0) * 1000)

        try:
            for q in queries[:8]:  # warm-up
                await service.search(SearchRequest(query=q.text, k=10, lang=q.lang, **params))
            t0 = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(c)))
            wall = time.perf_counter() - t0
        finally:
            await batcher.close()
        return lat, wall

    pooled: dict[tuple[str, int], tuple[list[float], float]] = {}
    for c in levels:
        for _ in range(rounds):
            for name, params in candidates.items():
                lat, wall = asyncio.run(level(params, c))
                before = pooled.get((name, c), ([], 0.0))
                pooled[(name, c)] = (before[0] + lat, before[1] + wall)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (name, c), (lat, wall) in pooled.items():
        arr = np.asarray(lat)
        out.setdefault(name, {})[str(c)] = {
            "n": float(len(arr)), "p50": float(np.percentile(arr, 50)), "p95": float(np.percentile(arr, 95)),
            "searches_per_s": len(arr) / wall}
        print(f"cost {name} c={c}: {out[name][str(c)]}", file=sys.stderr)
    return out


def sample_probes(encoder: Encoder, candidates: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The shipped sample corpus's 10 cross-lingual probes (each answer in one language only, among passages that
    exist in several): the rank of each answer and the metrics per candidate, the query language detected (as in
    ``tests/test_e2e.py``)."""
    from benchmarks.datasets import load_sample
    from benchmarks.matrix import SAMPLE

    ds = load_sample(SAMPLE)
    index = rb.index_for(ds, encoder)
    from indexer.store import open_index

    idx = open_index(index)
    table = rb.load_centroid_table(encoder)
    out: dict[str, Any] = {}
    for name, params in candidates.items():
        run = rb.run_inprocess(idx, encoder, ds, {**params, rb.DETECT: True}, k=100, table=table)
        ranks = {q.qid: run.ranking(q.qid).index(next(iter(ds.qrels[q.qid]))) + 1
                 if next(iter(ds.qrels[q.qid])) in run.ranking(q.qid) else None for q in ds.queries}
        out[name] = {"ranks": ranks, "metrics": rb.evaluate(ds, run)["all"]}
    idx.close()
    return out


def _table(title: str, rows: Mapping[str, Mapping[str, float]], cols: Sequence[str], base: str = "off") -> list[str]:
    lines = [f"#### {title}", "", "| candidate | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, vals in rows.items():
        cells = []
        for c in cols:
            v = vals.get(c)
            if v is None:
                cells.append("-")
            elif name == base:
                cells.append(f"{v:.4f}")
            else:
                cells.append(f"{v:.4f} ({v - rows[base][c]:+.4f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.feedback", description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0, help="shuffle seed of the pool variants (default 0)")
    ap.add_argument("--max-per-lang", type=int, default=None, help="at most N queries per language and split")
    ap.add_argument("--cost-queries", type=int, default=200, help="queries per cost level (0: skip the cost)")
    ap.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/feedback.json"))
    ap.add_argument("--cost-only", action="store_true",
                    help="only the cost (off, dense, auto at the product's defaults) on the full pool")
    ap.add_argument("--sample-only", action="store_true",
                    help="only the sample corpus's 10 probes (off, dense, auto at the product's defaults)")
    ap.add_argument("--dev-from", type=Path, default=None,
                    help="reuse the dev results of an earlier run's JSON (same seed and code) instead of measuring")
    args = ap.parse_args(argv)
    from models.encoders import load_encoder

    t_all = time.perf_counter()
    encoder = load_encoder("e5-small")
    if args.sample_only:
        res = sample_probes(encoder, {"off": params_of(), "dense": params_of("dense"),
                                      "auto (translations@0.5)": params_of("auto", "translations", 0.5),
                                      "auto + rrf": params_of("auto", "translations", 0.5, merge="rrf")})
        for name, r in res.items():
            print(f"| {name} | " + " | ".join(str(v) for v in r["ranks"].values())
                  + f" | {r['metrics']['map@20']:.4f} | {r['metrics']['ndcg@10']:.4f} |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        return 0
    bench = Bench(encoder, args.seed, args.max_per_lang)
    if args.cost_only:
        full_test = bench.data[("full", "test")].queries
        sample = full_test[:: max(1, len(full_test) // args.cost_queries)][: args.cost_queries]
        cands = {"off": params_of(), "dense": params_of("dense"), "auto": params_of("auto", "translations", 0.5)}
        cached = {q.text: bench.qvec[q.qid] for q in sample}
        res = {"cost": measure_cost(bench.full_index, encoder, sample, cands, table=bench.table),
               "cost_search_only": measure_cost(bench.full_index, encoder, sample, cands, table=bench.table,
                                                vectors=cached, rounds=3)}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        return 0
    thresholds = [float(t) for t in args.thresholds.split(",") if t.strip()]
    report: dict[str, Any] = {
        "machine": "2 cores (Intel Xeon), 24 GiB, no GPU, Python " + platform.python_version(), "commit": None,
        "model": encoder.name, "seed": args.seed, "pool_docs": bench.sizes,
        "queries": {f"{p}/{s}": len(ds.queries) for (p, s), ds in bench.data.items()},
    }

    earlier: dict[str, Any] = {}
    if args.dev_from is not None:
        earlier = json.loads(args.dev_from.read_text(encoding="utf-8"))
        if earlier.get("seed") != args.seed:
            raise SystemExit(f"error: {args.dev_from} was measured with seed {earlier.get('seed')}, not {args.seed}")
        earlier = earlier["dev"]

    def over_pools(split: str, params: Mapping[str, Any], name: str = "") -> dict[str, dict[str, dict[str, float]]]:
        if split == "dev" and name in earlier:
            return dict(earlier[name])
        return {pool: bench.run(pool, split, params) for pool in POOLS}

    # dev: off, dense, every gate at every threshold
    t0 = time.perf_counter()
    dev: dict[str, dict[str, dict[str, dict[str, float]]]] = {"off": over_pools("dev", params_of(), "off")}
    dev["dense"] = over_pools("dev", params_of("dense"), "dense")
    off_dev = {p: Bench.headline(p, dev["off"][p]) for p in POOLS}
    chosen: dict[str, float | None] = {}
    why: dict[str, str] = {}
    for gate in GATES:
        sweep: dict[float, dict[str, float]] = {}
        for t in thresholds:
            res = over_pools("dev", params_of("auto", gate, t), f"{gate}@{t:g}")
            dev[f"{gate}@{t:g}"] = res
            sweep[t] = {p: Bench.headline(p, res[p]) for p in POOLS}
            print(f"dev {gate}@{t:g}: " + ", ".join(f"{p} {sweep[t][p] - off_dev[p]:+.4f}" for p in POOLS),
                  file=sys.stderr)
        chosen[gate], why[gate] = choose_threshold(sweep, off_dev)
    gains = {g: (dev[f"{g}@{t:g}"]["full"]["all"]["map@20"] + dev[f"{g}@{t:g}"]["parallel"]["all"]["map@20"])
             for g, t in chosen.items() if t is not None}
    best_gate = max(gains, key=lambda g: gains[g]) if gains else None
    report["dev_seconds"] = time.perf_counter() - t0
    report["chosen_thresholds"] = chosen
    report["choice_reason"] = why
    report["best_gate"] = best_gate
    report["dev"] = dev

    # test: off, dense, each gate at its dev threshold, the best gate with rrf merge
    candidates: dict[str, dict[str, Any]] = {"off": params_of(), "dense (m=3, beta=1)": params_of("dense")}
    candidates["coherence@0.5 (issue's gate)"] = params_of("auto", "coherence", 0.5)
    for gate, th in chosen.items():
        if th is not None:
            candidates[f"{gate}@{th:g}"] = params_of("auto", gate, th)
    if best_gate is not None:
        bt = chosen[best_gate]
        assert bt is not None
        candidates[f"{best_gate}@{bt:g} + rrf"] = params_of("auto", best_gate, bt, merge="rrf")
        dev[f"{best_gate}@{bt:g} + rrf"] = over_pools("dev", candidates[f"{best_gate}@{bt:g} + rrf"],
                                                      f"{best_gate}@{bt:g} + rrf")
        for m, beta in ((5, 1.0), (3, 0.5), (3, 2.0)):  # dev only: how sensitive the chosen gate is to m and beta
            key = f"{best_gate}@{bt:g} m={m} beta={beta:g}"
            dev[key] = over_pools("dev", params_of("auto", best_gate, bt, m, beta), key)
    test = {name: over_pools("test", p) for name, p in candidates.items()}
    report["candidates"] = candidates
    report["test"] = test

    lines = [f"## Dense pseudo-relevance feedback (seed {args.seed}; pools {bench.sizes})", ""]
    for split, results in (("test", test), ("dev (every setting; thresholds chosen here)", dev)):
        rows = {name: {p: Bench.headline(p, res[p]) for p in POOLS} for name, res in results.items()}
        lines += _table(f"{split}: AP@20 (pools), nDCG@10 (mono)", rows, POOLS)
    for pool in ("nonparallel", "parallel", "full", "mono"):
        metric = "ndcg@10" if pool == "mono" else "map@20"
        langs = [k for k in test["off"][pool] if k != "all"]
        rows = {name: {lang: res[pool][lang][metric] for lang in [*langs, "all"]} for name, res in test.items()}
        lines += _table(f"test, {pool}: {metric} per query language", rows, [*langs, "all"])

    if args.cost_queries:
        full_test = bench.data[("full", "test")].queries
        step = max(1, len(full_test) // args.cost_queries)
        sample = full_test[::step][: args.cost_queries]
        cost_candidates = {"off": params_of(), "dense": params_of("dense")}
        if best_gate is not None:
            cost_candidates["auto"] = params_of("auto", best_gate, chosen[best_gate])
        cached = {q.text: bench.qvec[q.qid] for q in sample}
        report["cost"] = measure_cost(bench.full_index, encoder, sample, cost_candidates, table=bench.table)
        report["cost_search_only"] = measure_cost(bench.full_index, encoder, sample, cost_candidates,
                                                  table=bench.table, vectors=cached, rounds=3)
        for key, what in (("cost", "real e5-small encoder behind the query batcher"),
                          ("cost_search_only", "query vectors from the embedding cache: the search path alone")):
            lines += [f"#### {key} (in-process service, {what}; full pool, k=10, {len(sample)} queries per round)",
                      "", "| candidate | c | p50 ms | p95 ms | searches/s |", "|---|---:|---:|---:|---:|"]
            for name, by_c in report[key].items():
                for c, v in by_c.items():
                    lines.append(f"| {name} | {c} | {v['p50']:.1f} | {v['p95']:.1f} | {v['searches_per_s']:.1f} |")
            lines.append("")
    report["seconds"] = time.perf_counter() - t_all
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"results: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
