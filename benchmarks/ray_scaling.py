"""Local vs Ray: build throughput, serving latency, and the exact fan-out merge from 1 to 64 shards (issue 23).

Four parts, each merging its figures into a JSON file (``--out``, default ``benchmarks/results/ray_<part>.json``):

``build``
    ``n`` synthetic passages (benchmarks/synth.py, ~100 tokens, 12 languages, no ``lang`` field: language ID runs),
    indexed by the local build (:func:`indexer.build.build_index`, what ``xlir index`` runs) and by
    :func:`indexer.ray_build.build_index_ray` on a Ray cluster (``--ray ADDRESS``, else a new local one with
    ``--cpus`` CPUs). Reports docs/s, the ratio Ray / local, Ray's overhead (wall time not spent in the tasks'
    language ID, embedding and writing) and whether both indexes give the same answers to a sample of queries
    (dense and BM25).
``serve``
    One index served by ``xlir serve`` single-process and with ``XLIR_RAY`` (shard actors, replicated query
    encoder), closed-loop load at each concurrency (benchmarks/load.py): p50/p99, searches/s, ratio Ray / single.
``simulate``
    ``n`` stand-in e5-like vectors (benchmarks/speed_faiss.synth_vectors) split into N = 1..64 flat shards, searched
    one query at a time through the in-process fan-out (:func:`indexer.dense.search_shards`) and through Ray shard
    actors: mismatches against one flat brute-force index (the merge must be exact: 0), p50/p99 latency and the
    merge's share of it, for k = 10 and 100 (``--ray`` adds the Ray half; ``--max-actors`` groups shards per actor
    beyond that many).
``pq``
    IVF-SQ8 and IVF-PQ at ``--m`` bytes per vector, each tuned by the product's tuner to the planner's recall target:
    bytes per vector, the recall reached, queries/s (docs/scaling.md's memory table).

Run: ``python -m benchmarks.ray_scaling PART [options]`` (``--help`` lists every option, by part). The Ray halves
live in :mod:`benchmarks.ray_fanout`. Measurements, not tests (benchmarks/RESULTS.md section 11).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ray_fanout import (
    build_ray,
    exact_top_k,
    flat_index,
    loadavg,
    measure_fanout,
    serve_compare,
    simulate_ray,
    split_offsets,
    time_calls,
)

RESULTS = Path(__file__).resolve().parent / "results"
SHARD_COUNTS = (1, 2, 4, 8, 16, 32, 64)
MACHINE = "2 cores (Intel Xeon), 24 GiB, no GPU, Python 3.11"


# ----------------------------------------------------------------------------------------------- helpers

def _update_json(path: Path, key: str, value: Any) -> dict[str, Any]:
    """Merge ``{key: value}`` into the JSON object at ``path`` (created if missing); returns the whole object."""
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    data[key] = value
    data.setdefault("machine", MACHINE)
    data["commit"] = "(lead fills in)"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return data


# ----------------------------------------------------------------------------------------------- simulate

def simulate_inprocess(x: np.ndarray, queries: np.ndarray, exact: dict[int, tuple[np.ndarray, np.ndarray]],
                       counts: Sequence[int], ks: Sequence[int]) -> list[dict[str, Any]]:
    """The in-process fan-out over N flat shards of ``x`` (local :class:`indexer.dense.DenseShard` s)."""
    from indexer.dense import DenseShard

    rows = []
    for n in counts:
        shards = [DenseShard(index=flat_index(x[a:b]), offset=a) for a, b in split_offsets(len(x), n)]
        rows += measure_fanout("in-process", shards, queries, exact, ks)
        del shards
        gc.collect()
    return rows


def reference(x: np.ndarray, queries: np.ndarray, ks: Sequence[int]
              ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[int, int]]:
    """Per k, the brute-force (scores, rows) of each query over one flat index of ``x``, ties ordered by the
    product's rule; and per k the number of queries whose FAISS order differed (equal scores)."""
    ref = flat_index(x)
    exact, ties = {}, {}
    for k in ks:
        res, ms = time_calls(lambda q, k=k: ref.search(q, min(k + 16, len(x))), queries)  # type: ignore[misc]
        tops = [exact_top_k(r[0][0], r[1][0], k) for r in res]
        exact[k] = (np.stack([t[0] for t in tops]), np.stack([t[1] for t in tops]))
        ties[k] = sum(not np.array_equal(r[1][0][:k], t[1]) for r, t in zip(res, tops, strict=True))
        print(f"single flat index k={k}: p50 {np.median(ms):.2f} ms; {ties[k]} queries with equal scores that FAISS "
              "orders otherwise than the product's rule (lower row first)", flush=True)
    return exact, ties


def run_simulate(args: argparse.Namespace) -> int:
    from benchmarks.speed_faiss import synth_vectors

    out = args.out or RESULTS / "ray_simulate.json"
    t0 = time.perf_counter()
    x, queries = synth_vectors(args.n, 384, n_queries=args.queries, seed=args.seed)
    print(f"{len(x):,} x 384 stand-in vectors, {len(queries)} queries ({time.perf_counter() - t0:.1f} s)",
          flush=True)
    threads = _faiss_threads(args.threads)
    exact, ties = reference(x, queries, args.k)
    setup = {"n": args.n, "dim": 384, "queries": args.queries, "seed": args.seed, "k": args.k,
             "shard_counts": args.shards, "faiss_threads": threads, "reference_tie_queries": ties}
    if not args.skip_inprocess:
        rows = simulate_inprocess(x, queries, exact, args.shards, args.k)
        _update_json(out, "inprocess", {"setup": setup, "rows": rows})
    if args.ray is not None:
        rows = simulate_ray(x, queries, exact, args.shards, args.k, address=ray_target(args.ray),
                            max_actors=args.max_actors)
        _update_json(out, "ray", {"setup": {**setup, "max_actors": args.max_actors}, "rows": rows})
    print(f"-> {out}")
    return 0


def _faiss_threads(n: int | None) -> int:
    import faiss

    if n:
        faiss.omp_set_num_threads(n)
    return int(faiss.omp_get_max_threads())


# ----------------------------------------------------------------------------------------------- pq

def run_pq(args: argparse.Namespace) -> int:
    """IVF-PQ's recall@10 at each ``m`` (bytes per vector), tuned by the product's tuner to the planner's target
    (what a shard of the billion-passage plan could hold), next to SQ8 and flat."""
    from benchmarks.speed_faiss import measure_kind, synth_vectors
    from indexer.planning import TuneOptions

    out = args.out or RESULTS / "ray_pq.json"
    _faiss_threads(args.threads)
    x, queries = synth_vectors(args.n, 384, n_queries=args.queries, seed=args.seed)
    flat, exact = measure_kind("flat", x, queries, None, k=10, batch=32, single=20)
    rows = [flat]
    kinds = [("ivfsq8", None)] + [("ivfpq", m) for m in args.m]
    for kind, m in kinds:
        res, _ = measure_kind(kind, x, queries, exact, k=10, batch=32, single=200, tune=TuneOptions(),
                              options={"m": m} if m else None)
        t = res.get("tuning") or {}
        print(f"{kind} m={m}: recall@10 {res['recall_at_10']:.3f} (reached: {t.get('reached')}, nprobe "
              f"{res['params'].get('nprobe')}), {res['index_bytes'] / len(x):.0f} bytes/vector, single QPS "
              f"{res['qps_single']:.0f}", flush=True)
        rows.append(res)
    _update_json(out, f"n{args.n}", {"n": args.n, "queries": args.queries, "rows": rows, "loadavg": loadavg()})
    print(f"-> {out}")
    return 0


# ----------------------------------------------------------------------------------------------- build

def corpus_path(workdir: Path, n: int, seed: int) -> Path:
    """The ``n``-passage synthetic corpus (written once into ``workdir``)."""
    from benchmarks.index_speed import write_corpus

    path = workdir / f"corpus-{n}-{seed}.jsonl"
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        info = write_corpus(path, n, seed)
        print(f"corpus: {info}", flush=True)
    return path


def encoder_factory(model: str) -> Callable[[], Any]:
    """A picklable callable that loads ``model`` for passage batches (in a Ray task or here)."""
    import functools

    from models.encoders import load_encoder

    return functools.partial(load_encoder, model, device="cpu", workload="passages")


def build_local(corpus: Path, out: Path, model: str) -> dict[str, Any]:
    from indexer.build import BuildOptions, build_index

    encoder = encoder_factory(model)()
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest = build_index([corpus], out, encoder, BuildOptions(overwrite=True, progress=True, resume=False))
    wall = time.perf_counter() - t0
    return {"docs": manifest.doc_count, "seconds": wall, "docs_per_second": manifest.doc_count / wall,
            "build": manifest.build, "shards": len(manifest.shards), "loadavg_end": loadavg()}


def tie_at_cut(a: Sequence[str], b: Sequence[str], scores: np.ndarray) -> bool:
    """Two rankings with the same scores that differ only among the hits tied with the last one (which of several
    equal-scored documents makes the cut: FAISS does not order equal scores by row within a shard)."""
    if len(a) != len(b) or not len(scores):
        return False
    tied = scores == scores[-1]
    return bool(all(x == y for x, y, t in zip(a, b, tied, strict=True) if not t))


def compare_indexes(a: Path, b: Path, model: str, n_queries: int, seed: int) -> dict[str, Any]:
    """Dense and BM25 top 10 of both indexes for ``n_queries`` synthetic queries: ids (documents' own ids) equal,
    scores within 1e-5."""
    from benchmarks.synth import SynthCorpus, load_pool
    from indexer.store import open_index
    from indexer.text import tokenize

    texts = [q.text for q in SynthCorpus(load_pool(), seed=seed).queries(n_queries, 10_000)]
    qv = encoder_factory(model)().encode_queries(texts)
    out: dict[str, Any] = {"queries": n_queries, "dense_same": 0, "bm25_same": 0, "max_score_diff": 0.0,
                           "dense_tie_at_cut": 0, "bm25_tie_at_cut": 0}
    ia, ib = open_index(a), open_index(b)
    try:
        for i, text in enumerate(texts):
            for kind in ("dense", "bm25"):
                if kind == "dense":
                    ha, hb = ia.dense(qv[i : i + 1], 10)[0], ib.dense(qv[i : i + 1], 10)[0]
                else:
                    toks = tokenize(text)
                    ha, hb = ia.bm25_search(toks, 10), ib.bm25_search(toks, 10)
                ida = [ia.doc(int(r))["id"] for r in ha.rows]
                idb = [ib.doc(int(r))["id"] for r in hb.rows]
                diff = float(np.max(np.abs(np.asarray(ha.scores) - np.asarray(hb.scores)))) if len(ha.scores) \
                    and len(ha.scores) == len(hb.scores) else 0.0
                out["max_score_diff"] = max(out["max_score_diff"], diff)
                if ida == idb and diff <= 1e-5:
                    out[f"{kind}_same"] += 1
                elif diff <= 1e-5 and tie_at_cut(ida, idb, np.asarray(ha.scores)):
                    out[f"{kind}_tie_at_cut"] += 1
    finally:
        ia.close()
        ib.close()
    return out


def run_build(args: argparse.Namespace) -> int:
    out = args.out or RESULTS / "ray_build.json"
    corpus = corpus_path(args.workdir, args.n, args.seed)
    tag = f"{args.model}-{args.n}"
    local_dir, ray_dir = args.workdir / f"local-{tag}", args.workdir / f"ray-{tag}"
    if "local" in args.what:
        print(f"== local build: {args.n:,} passages, {args.model}", flush=True)
        res = {"model": args.model, "n": args.n, "loadavg_start": loadavg(), **build_local(corpus, local_dir,
                                                                                           args.model)}
        print(f"local: {res['docs_per_second']:.1f} docs/s ({res['seconds']:.1f} s)", flush=True)
        _update_json(out, f"local/{tag}", res)
    if "ray" in args.what:
        print(f"== Ray build: {args.n:,} passages, {args.model}", flush=True)
        res = {"model": args.model, "n": args.n, "loadavg_start": loadavg(),
               **build_ray(corpus, ray_dir, encoder_factory(args.model), address=ray_target(args.ray),
                           cpus=args.cpus, shard_size=args.shard_size)}
        print(f"ray: {res['docs_per_second']:.1f} docs/s ({res['seconds']:.1f} s)", flush=True)
        _update_json(out, f"ray/{tag}", res)
    if "compare" in args.what:
        cmp = compare_indexes(local_dir, ray_dir, args.model, args.compare_queries, args.seed)
        print(f"same answers: {cmp}", flush=True)
        data = _update_json(out, f"compare/{tag}", cmp)
        loc, ray = data.get(f"local/{tag}"), data.get(f"ray/{tag}")
        if loc and ray:
            _update_json(out, f"ratio/{tag}", ray["docs_per_second"] / loc["docs_per_second"])
    print(f"-> {out}")
    return 0


# ----------------------------------------------------------------------------------------------- serve

def run_serve(args: argparse.Namespace) -> int:
    out = args.out or RESULTS / "ray_serve.json"
    res = serve_compare(args.index, levels=args.concurrency, duration=args.duration, warmup=args.warmup,
                        mode=args.mode, address=ray_target(args.ray), replicas=args.replicas, extra_env=args.env)
    for name, value in res.items():
        _update_json(out, name, value)
    print(f"-> {out}")
    return 0


# ----------------------------------------------------------------------------------------------- CLI

def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


PART_DEFAULTS: dict[str, dict[str, Any]] = {
    "build": {"n": 100_000},
    "serve": {},
    "simulate": {"n": 131_072, "queries": 200, "threads": 1},
    "pq": {"n": 200_000, "queries": 1000, "threads": 2},
}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ray_scaling", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=list(PART_DEFAULTS), help="what to measure (see above)")
    ap.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                    help="the Ray cluster (host:port of `ray start --head`); alone or absent with build/serve: a "
                    "new local cluster; simulate goes through Ray only with --ray")
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of a new local cluster")
    ap.add_argument("--n", type=int, default=None, help="passages (build: 100,000) or vectors (simulate: 131,072; "
                    "pq: 200,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON results (default benchmarks/results/ray_PART.json)")
    g = ap.add_argument_group("build")
    g.add_argument("--model", default="e5-small-static", help="the encoder (build)")
    g.add_argument("--what", default="local,ray,compare", help="build steps: local, ray, compare")
    g.add_argument("--workdir", type=Path, default=Path("/tmp/xlir-ray-scaling"), help="corpus and indexes")
    g.add_argument("--compare-queries", type=int, default=50, help="queries both indexes must answer alike")
    g.add_argument("--shard-size", type=int, default=None, help="documents per range of the Ray build (default: "
                   "what `xlir index --ray` picks, at least 10,000)")
    g = ap.add_argument_group("serve")
    g.add_argument("--index", type=Path, default=None, help="the index to serve (serve)")
    g.add_argument("--concurrency", type=_ints, default=[1, 8], help="load levels, e.g. 1,8")
    g.add_argument("--duration", type=float, default=25.0, help="counted seconds per level")
    g.add_argument("--warmup", type=float, default=3.0, help="uncounted seconds before each level")
    g.add_argument("--mode", default=None, help="search mode sent (default: the server's)")
    g.add_argument("--replicas", type=int, default=2, help="query-encoder replicas with Ray")
    g.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra server environment")
    g = ap.add_argument_group("simulate and pq")
    g.add_argument("--queries", type=int, default=None, help="queries (simulate: 200; pq: 1000)")
    g.add_argument("--k", type=_ints, default=[10, 100], help="simulate: top k values")
    g.add_argument("--shards", type=_ints, default=list(SHARD_COUNTS), help="simulate: shard counts")
    g.add_argument("--threads", type=int, default=None, help="FAISS threads in this process (simulate: 1, pq: 2)")
    g.add_argument("--skip-inprocess", action="store_true", help="simulate: only through Ray")
    g.add_argument("--max-actors", type=int, default=64, help="simulate: more shards than this share actors")
    g.add_argument("--m", type=_ints, default=[48, 96, 192], help="pq: bytes per vector to try")
    return ap


def ray_target(value: str | None) -> str | None:
    """The address for :func:`indexer.ray_cluster.connect` of a ``--ray`` value (None: a new local cluster)."""
    return None if value in (None, "", "local") else value


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    for key, value in PART_DEFAULTS[args.part].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.part == "build":
        args.what = {w.strip() for w in args.what.split(",")}
        return run_build(args)
    if args.part == "serve":
        if args.index is None:
            print("error: serve needs --index DIR", file=sys.stderr)
            return 2
        return run_serve(args)
    if args.part == "pq":
        return run_pq(args)
    return run_simulate(args)


if __name__ == "__main__":
    sys.exit(main())
