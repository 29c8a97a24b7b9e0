"""FAISS index kinds at 1M x 384: build time, memory, queries/s, recall@10 against exact search; and the plan.

Run: ``python -m benchmarks.speed_faiss [--n 1000000] [--out benchmarks/results/speed_faiss.json]``
(``make bench-speed``; ~15 minutes on 2 cores). ``--n 100000`` while developing. ``--calibrate`` adds the
comparison of the synthetic vectors with real e5-small embeddings (below; needs the model, and about 7 minutes
the first time to embed the XQuAD-R and Tatoeba texts, then cached by :mod:`benchmarks.embeddings`).

**Vectors.** Uniform random vectors are a worst case for approximate search and not representative, and a few
thousand real embeddings are too few for 1M, so the vectors come from a seeded generative model shaped like
e5-small passage embeddings (:func:`synth_vectors`): a common mean direction (real embeddings share one: the mean
of unit e5-small vectors has norm ~0.86), plus a topic centre (``n / 100`` topics), plus a sub-topic centre (groups
of ~7 points: near-duplicates, translations), plus per-point noise, every offset Gaussian with the same power-law
spectrum (the i-th principal axis has standard deviation proportional to i^-0.4) in a random orthonormal basis;
then normalised. The scales were fitted once so that, at the size of the real sample, the statistics of the
synthetic vectors match those of 25,582 real e5-small passage embeddings (XQuAD-R sentences in 7 languages and
Tatoeba, 10 languages) queried with 8,330 real XQuAD-R question embeddings: mean pairwise cosine, cosine to the 1st
and 10th nearest neighbour, the eigenvalue spectrum, and, what matters here, IVF-Flat's recall@10 at
nprobe 1 / 8 / 64 for the same nlist (``--calibrate`` prints both side by side). Queries are fresh draws of the
same model (not in the index).

How the structure grows with the corpus cannot be fitted at 1M without 1M real embeddings (hours of encoding on 2
cores); what can be measured is the trend on real subsets: the ``nprobe`` that IVF-Flat needs for recall@10 0.95 on
3,200 / 6,400 / 12,800 / 25,582 real passages (1000 real queries) grows slowly: 24, 36, 56, 52 (of 82, 164, 328,
639 lists), like a fixed distribution sampled more densely, not like a structure that grows with ``n``. With topic
and sub-topic counts proportional to ``n`` (``growth`` 1) the generator needs 6, 16, 32, 88, and at 1M 1280 of 4000
lists (a pessimistic bound, measured); with fixed counts (``growth`` 0) 32, 52, 80, 80; the default, ``growth``
0.5, follows the real subsets closest: 26, 40, 56, 72. ``--growth`` changes it, ``--calibrate`` prints the table.

**Indexes**, each built by the product's :func:`indexer.dense.build_faiss_index` on all ``--n`` vectors, with the
product's defaults: ``flat`` (exact: the baseline, and the ground truth of recall), ``hnsw`` with M=16,
efConstruction=40 (what :func:`indexer.planning.plan_index` picks above 200k vectors without a memory budget:
:data:`indexer.planning.AUTO_HNSW`, FAISS's own defaults; ``--hnsw-m`` / ``--hnsw-ef-construction``; the graph of an
explicit ``--index hnsw``, M=32 / efConstruction=200, took 674 s for 200k vectors on the loaded machine, so about
an hour for 1M), ``ivfflat`` (the plan's fallback, and its choice when the graph does not fit the budget),
``ivfsq8`` and ``ivfpq`` (what it picks when a budget is too small for full vectors).
Each approximate index is then tuned exactly as ``xlir index`` does (:func:`indexer.planning.tune_index`: the
smallest ``nprobe`` / ``efSearch`` whose recall@10 lower confidence bound reaches 0.95 on 512 leave-one-out vectors
of the index; for HNSW, the last 512 vectors, added to the graph after tuning), and
measured at that setting:

- build: wall time of training + adding (the tuning, done inside the build as in ``xlir index``, is reported
  apart); memory: the serialized index size (what is
  loaded) and the process RSS growth while building (approximate: it includes allocator slack);
- queries/s: one query per ``search`` call (``--single-queries`` queries; ``--flat-queries`` for flat, which scans
  everything) and in batches of ``--batch`` (32) over all ``--queries`` queries; FAISS's default threads (2 here);
- recall@10 of the fresh queries against the flat index's exact top 10 (the tuning sample's recall is reported
  too: how well the build-time estimate predicts it).

A **threshold check** measures flat, the tuned HNSW and IVF-Flat on the first 200,000 vectors (the planning
boundary),
and the **plan** section lists what ``plan_index`` picks for 1M x 384 under several memory budgets.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.demo_bench import commit, machine, rss_bytes, save_results
from indexer.dense import build_faiss_index
from indexer.planning import (
    AUTO_HNSW,
    TuneOptions,
    format_bytes,
    holdout_sample,
    index_bytes,
    ivf_nlist,
    plan_index,
    recall_at_k,
)
from indexer.topk import top_k_dot

KINDS = ("flat", "hnsw", "ivfflat", "ivfsq8", "ivfpq")
BUDGETS = (None, "2G", "1G", "512M", "256M", "64M")


@dataclass(frozen=True)
class SynthParams:
    """The generative model of :func:`synth_vectors` (scales relative to a unit-norm total offset spectrum)."""

    alpha: float = 0.4  # the i-th principal axis has std ~ i^-alpha
    mean_norm: float = 0.85  # the common direction
    topic: float = 0.23  # scale of topic centres
    subtopic: float = 0.30  # scale of sub-topic centres around their topic
    point: float = 0.33  # scale of each point around its sub-topic
    per_topic: int = 100  # at ref_n vectors: ref_n / per_topic topics
    per_subtopic: int = 7  # at ref_n vectors: ref_n / per_subtopic sub-topics
    ref_n: int = 25_600  # the size the scales were fitted at (the real sample)
    growth: float = 0.5  # topic and sub-topic counts grow as (n / ref_n) ** growth


def synth_vectors(n: int, dim: int = 384, n_queries: int = 0, seed: int = 0, params: SynthParams | None = None,
                  chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """(``n`` x ``dim`` corpus, ``n_queries`` x ``dim`` queries), unit float32, from the same seeded mixture."""
    p = params or SynthParams()
    rng = np.random.default_rng([seed, 0])
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -p.alpha
    spectrum /= np.sqrt((spectrum**2).sum())
    shape = (spectrum[:, None] * basis.T).astype(np.float32)  # z @ shape: an offset with the spectrum
    mean = rng.standard_normal(dim)
    mean = (mean / np.linalg.norm(mean) * p.mean_norm).astype(np.float32)
    total = n + n_queries
    grow = (n / p.ref_n) ** p.growth  # queries are extra draws: they do not change the structure
    n_topics = max(1, round(p.ref_n / p.per_topic * grow))
    n_sub = max(1, round(p.ref_n / p.per_subtopic * grow))
    topics = p.topic * (rng.standard_normal((n_topics, dim), dtype=np.float32) @ shape)
    subs = topics[rng.integers(n_topics, size=n_sub)]
    subs += p.subtopic * (rng.standard_normal((n_sub, dim), dtype=np.float32) @ shape)
    subs += mean
    out = np.empty((total, dim), dtype=np.float32)
    for c, start in enumerate(range(0, total, chunk)):
        r = np.random.default_rng([seed, 1, c])
        m = min(chunk, total - start)
        block = subs[r.integers(n_sub, size=m)] + p.point * (r.standard_normal((m, dim), dtype=np.float32) @ shape)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start : start + m] = block
    return out[:n], out[n:]


def serialized_bytes(index: faiss.Index) -> int:
    with tempfile.TemporaryDirectory(prefix="xlir-faiss-") as tmp:
        path = Path(tmp) / "x.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def qps_single(index: faiss.Index, queries: np.ndarray, k: int) -> float:
    t0 = time.perf_counter()
    for q in queries:
        index.search(q[None, :], k)
    return len(queries) / (time.perf_counter() - t0)


def search_batched(index: faiss.Index, queries: np.ndarray, k: int, batch: int) -> tuple[np.ndarray, float]:
    ids = np.empty((len(queries), k), dtype=np.int64)
    t0 = time.perf_counter()
    for start in range(0, len(queries), batch):
        ids[start : start + batch] = index.search(queries[start : start + batch], k)[1]
    return ids, len(queries) / (time.perf_counter() - t0)


def measure_kind(kind: str, x: np.ndarray, queries: np.ndarray, exact: np.ndarray | None, *, k: int, batch: int,
                 single: int, options: dict[str, Any] | None = None, tune: TuneOptions | None = None
                 ) -> tuple[dict[str, Any], np.ndarray]:
    """Build ``kind`` over ``x``, tune it, measure it; returns the figures and the batched result ids."""
    gc.collect()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    index, params = build_faiss_index(kind, x, options={"min_docs": 0, **(options or {})}, tune=tune)
    total_s = time.perf_counter() - t0
    rss_delta = rss_bytes() - rss0
    tuning = params.pop("tuning", None)
    tune_s = tuning["seconds"] + tuning["exact_seconds"] if tuning else 0.0
    build_s = total_s - tune_s
    ids, qps_b = search_batched(index, queries, k, batch)
    res: dict[str, Any] = {
        "kind": kind, "params": params, "build_seconds": build_s, "tune_seconds": tune_s,
        "index_bytes": serialized_bytes(index), "estimated_bytes": index_bytes(kind, len(x), x.shape[1],
                                                                               m=params.get("m")),
        "rss_delta_bytes": rss_delta, "qps_batched": qps_b, "qps_single": qps_single(index, queries[:single], k),
        "single_queries": min(single, len(queries)),
        "recall_at_10": recall_at_k(ids, exact) if exact is not None else 1.0,
        "tuning": tuning,
    }
    del index
    gc.collect()
    return res, ids


def threshold_check(x: np.ndarray, queries: np.ndarray, *, n: int, k: int, batch: int, single: int,
                    tune: TuneOptions, hnsw: dict[str, Any]) -> dict[str, Any]:
    sub = np.ascontiguousarray(x[:n])
    flat, exact = measure_kind("flat", sub, queries, None, k=k, batch=batch, single=single)
    graph, _ = measure_kind("hnsw", sub, queries, exact, k=k, batch=batch, single=single * 10, tune=tune,
                            options=hnsw)
    ivf, _ = measure_kind("ivfflat", sub, queries, exact, k=k, batch=batch, single=single * 10, tune=tune)
    return {"n": n, "flat": flat, "hnsw": graph, "ivfflat": ivf}


def plans(n: int, dim: int) -> list[dict[str, Any]]:
    from indexer.planning import parse_bytes

    out = []
    for b in BUDGETS:
        budget = parse_bytes(b) if b else None
        try:
            p = plan_index(n, dim, budget)
            out.append({"budget": b, "kind": p.kind, "options": p.options, "estimated_bytes": p.estimated_bytes,
                        "reason": p.reason})
        except ValueError as exc:
            out.append({"budget": b, "kind": None, "reason": str(exc)})
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    tune = TuneOptions()
    t0 = time.perf_counter()
    params = SynthParams(growth=args.growth)
    x, queries = synth_vectors(args.n, args.dim, args.queries, seed=args.seed, params=params)
    out: dict[str, Any] = {"n": args.n, "dim": args.dim, "queries": len(queries), "k": args.k, "batch": args.batch,
                           "seed": args.seed, "synth": asdict(params), "threads": faiss.omp_get_max_threads(),
                           "generate_seconds": time.perf_counter() - t0, "tune_options": asdict(tune),
                           "nlist": ivf_nlist(args.n), "results": {}}
    print(f"generated {args.n:,} x {args.dim} + {len(queries)} queries in {out['generate_seconds']:.1f} s",
          file=sys.stderr)
    flat, exact = measure_kind("flat", x, queries, None, k=args.k, batch=args.batch, single=args.flat_queries)
    out["results"]["flat"] = flat
    print(f"flat: {flat['qps_single']:.1f} q/s single, {flat['qps_batched']:.1f} batched", file=sys.stderr)
    for kind in args.kinds:
        if kind == "flat":
            continue
        opts = {"M": args.hnsw_m, "efConstruction": args.hnsw_ef_construction} if kind == "hnsw" else None
        res, _ = measure_kind(kind, x, queries, exact, k=args.k, batch=args.batch, single=args.single_queries,
                              options=opts, tune=tune)
        out["results"][kind] = res
        print(f"{kind}: built in {res['build_seconds']:.1f} s, {res['params']}, recall {res['recall_at_10']:.3f}, "
              f"{res['qps_single']:.0f} q/s single, {res['qps_batched']:.0f} batched", file=sys.stderr)
    if args.threshold and args.n > args.threshold:
        out["threshold"] = threshold_check(x, queries, n=args.threshold, k=args.k, batch=args.batch,
                                           single=args.flat_queries, tune=tune,
                                           hnsw={"M": args.hnsw_m, "efConstruction": args.hnsw_ef_construction})
    out["plans"] = plans(args.n, args.dim)
    return out


# --------------------------------------------------------------------------------------------------
# Calibration against real e5-small embeddings
# --------------------------------------------------------------------------------------------------


def vector_stats(x: np.ndarray, seed: int = 1, sample: int = 2000) -> dict[str, Any]:
    """Mean pairwise cosine, mean cosine to the 1st and 10th nearest neighbour (of a sample), norm of the mean,
    eigenvalues of the covariance at ranks 2, 5, 10, 20, 50, 100 relative to the first."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=min(sample, len(x)), replace=False)
    s = x[rows] @ x.T
    s[np.arange(len(rows)), rows] = -np.inf
    top = -np.sort(-s, axis=1)[:, :10]
    pair = x[rows] @ x[rows].T
    mean = x.mean(axis=0)
    ev = np.linalg.eigvalsh(np.cov((x[:20_000] - mean).T))[::-1]
    return {"mean_cos": float(pair[np.triu_indices(len(rows), 1)].mean()), "nn1_cos": float(top[:, 0].mean()),
            "nn10_cos": float(top[:, 9].mean()), "mean_norm": float(np.linalg.norm(mean)),
            "eig_ratios": [float(ev[i] / ev[0]) for i in (1, 4, 9, 19, 49, 99)]}


def ivf_curve(x: np.ndarray, queries: np.ndarray, probes: Sequence[int] = (1, 8, 64), k: int = 10,
              noise: float | None = None) -> dict[str, float]:
    """IVF-Flat recall@k per nprobe for ``queries``, or, with ``noise``, for the held-out tuning sample of ``x``."""
    index, _ = build_faiss_index("ivfflat", x, options={"min_docs": 0})
    exclude = None
    if noise is not None:
        queries, exclude = holdout_sample(x, len(queries), noise=noise, seed=1)
    exact = top_k_dot(x, queries, k, exclude=exclude)
    out = {}
    inner: Any = faiss.downcast_index(index)
    for p in probes:
        inner.nprobe = p
        if exclude is None:
            found = index.search(queries, k)[1]
        else:
            _, ids = index.search(queries, k + 1)
            found = np.asarray([[r for r in row if r != e][:k] for row, e in zip(ids, exclude, strict=True)])
        out[str(p)] = recall_at_k(found, exact)
    return out


def needed_nprobe(x: np.ndarray, queries: np.ndarray, target: float = 0.95, k: int = 10) -> tuple[int, int]:
    """(nprobe, nlist): the smallest nprobe (to within 1/8) giving IVF-Flat recall@k >= target for ``queries``."""
    from indexer.planning import tune_search_params

    index, _ = build_faiss_index("ivfflat", x, options={"min_docs": 0})
    out = tune_search_params(index, queries, top_k_dot(x, queries, k), target_recall=target)
    inner: Any = faiss.downcast_index(index)
    return int(out["nprobe"]), int(inner.nlist)


def calibrate(seed: int = 0, params: SynthParams | None = None) -> dict[str, Any]:
    from benchmarks.datasets import default_data_dir, load_tatoeba, load_xquad_r
    from benchmarks.embeddings import EmbedStats, embed, embed_by_group
    from models.encoders import load_encoder

    data = default_data_dir()
    enc = load_encoder("e5-small")
    stats = EmbedStats()
    pool = load_xquad_r(data)
    parts = [embed_by_group(enc, "passage", [d.text for d in pool.docs], [str(d.lang) for d in pool.docs],
                            "xquad sentences", stats)]
    for code, (xx, en) in load_tatoeba(data).items():
        parts.append(embed(enc, "passage", xx, None, f"tatoeba {code}", stats))
        parts.append(embed(enc, "passage", en, None, f"tatoeba {code}-eng", stats))
    real = np.unique(np.concatenate(parts).astype(np.float32), axis=0)
    real_q = embed_by_group(enc, "query", [q.text for q in pool.queries], [q.lang for q in pool.queries],
                            "xquad questions", stats)
    synth, synth_q = synth_vectors(len(real), real.shape[1], len(real_q), seed=seed, params=params)
    rng = np.random.default_rng(seed)
    shuffled = real[rng.permutation(len(real))]
    q_sample = real_q[rng.choice(len(real_q), size=min(1000, len(real_q)), replace=False)]
    scaling = []
    for n in (3200, 6400, 12_800, len(real)):
        sx, sq = synth_vectors(n, real.shape[1], len(q_sample), seed=seed, params=params)
        scaling.append({"n": n, "real": needed_nprobe(np.ascontiguousarray(shuffled[:n]), q_sample),
                        "synthetic": needed_nprobe(sx, sq)})
    return {
        "scaling": scaling,
        "real": {"passages": len(real), "queries": len(real_q), **vector_stats(real),
                 "ivf_recall_queries": ivf_curve(real, real_q), "ivf_recall_tuning_sample": ivf_curve(real, real_q,
                                                                                                      noise=0.0)},
        "synthetic": {"passages": len(synth), "queries": len(synth_q), **vector_stats(synth),
                      "ivf_recall_queries": ivf_curve(synth, synth_q),
                      "ivf_recall_tuning_sample": ivf_curve(synth, synth_q, noise=0.0)},
        "nlist": ivf_nlist(len(real)),
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _mib(b: float) -> str:
    return f"{b / 2**20:,.0f}"


def _param(r: dict[str, Any]) -> str:
    p = r["params"]
    if p["type"] == "flat":
        return "exact"
    if p["type"] == "hnsw":
        return f"M={p['M']}, efC={p['efConstruction']}, efSearch={p['efSearch']}"
    extra = f", m={p['m']}" if "m" in p else ""
    return f"nlist={p['nlist']}{extra}, nprobe={p['nprobe']}"


def markdown(r: dict[str, Any]) -> str:
    res = r["results"]
    flat = res["flat"]
    lines = [
        f"Machine: {r['machine']}. Commit {r['commit']}. FAISS {faiss.__version__}, {r['threads']} threads.",
        "",
        f"{r['n']:,} x {r['dim']} synthetic vectors shaped like e5-small passage embeddings "
        f"(benchmarks/speed_faiss.py, seed {r['seed']}), {r['queries']} fresh queries from the same model, top "
        f"{r['k']}; approximate indexes tuned at build time to recall@10 >= {r['tune_options']['target_recall']} on "
        f"{r['tune_options']['sample']} held-out vectors of the index (leave-one-out; HNSW: the last ones, added "
        f"after tuning; what `xlir index` does), then measured "
        f"on the fresh queries. Ratios are against flat (build: flat / kind, so > 1 means faster to build; memory: "
        f"kind / flat; QPS: kind / flat).",
        "",
        "| index | parameters | build (s) | tune (s) | index (MiB) | RSS growth (MiB) | QPS single | QPS batch "
        f"{r['batch']} | recall@10 (tuning sample) | build ratio | memory ratio | QPS single ratio | QPS batch ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, x in res.items():
        tuning = x.get("tuning") or {}
        est = f" ({tuning.get('recall_at_10'):.3f})" if tuning else ""
        lines.append(
            f"| {kind}{' (plan)' if kind == r['plans'][0]['kind'] else ''} | {_param(x)} | {x['build_seconds']:.1f} | "
            f"{x['tune_seconds']:.1f} | {_mib(x['index_bytes'])} | {_mib(x['rss_delta_bytes'])} | "
            f"{x['qps_single']:,.1f} | {x['qps_batched']:,.0f} | {x['recall_at_10']:.3f}{est} | "
            f"{flat['build_seconds'] / x['build_seconds']:.3g} | {x['index_bytes'] / flat['index_bytes']:.2f} | "
            f"{x['qps_single'] / flat['qps_single']:.1f}x | {x['qps_batched'] / flat['qps_batched']:.1f}x |")
    lines += ["", f"Flat single-query QPS from {flat['single_queries']} queries; others from "
              f"{next((x['single_queries'] for k, x in res.items() if k != 'flat'), 0)}. Data generated in "
              f"{r['generate_seconds']:.0f} s."]
    if "threshold" in r:
        t = r["threshold"]
        f = t["flat"]
        lines += ["", f"**At the planning threshold** ({t['n']:,} vectors, the first of the set): flat "
                  f"{1000 / f['qps_single']:.1f} ms per single query ({f['qps_batched']:,.0f} q/s batched)"]
        for name in ("hnsw", "ivfflat"):
            i = t[name]
            lines[-1] += (f"; {name} ({_param(i)}) {1000 / i['qps_single']:.2f} ms ({i['qps_batched']:,.0f} q/s "
                          f"batched), recall@10 {i['recall_at_10']:.3f}, built in {i['build_seconds']:.1f} s + "
                          f"{i['tune_seconds']:.1f} s tuning")
        lines[-1] += "."
    lines += ["", f"**Plan** for {r['n']:,} x {r['dim']} (`plan_index`):", "",
              "| memory budget | index | estimated size | reason |", "|---|---|---|---|"]
    for p in r["plans"]:
        size = format_bytes(p["estimated_bytes"]) if p.get("kind") else "-"
        lines.append(f"| {p['budget'] or 'none'} | {p['kind'] or 'error'} | {size} | {p['reason']} |")
    if "calibration" in r:
        c = r["calibration"]
        lines += ["", f"**Calibration** of the synthetic vectors against real e5-small embeddings (same size, "
                  f"nlist {c['nlist']}):", "",
                  "| | passages | mean cos | 1st-NN cos | 10th-NN cos | mean norm | eigenvalue ratios "
                  "(2,5,10,20,50,100) | IVF recall@10 at nprobe 1/8/64, queries | same, tuning sample |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name in ("real", "synthetic"):
            s = c[name]
            lines.append(
                f"| {name} | {s['passages']:,} | {s['mean_cos']:.3f} | {s['nn1_cos']:.3f} | {s['nn10_cos']:.3f} | "
                f"{s['mean_norm']:.3f} | {' '.join(f'{v:.3f}' for v in s['eig_ratios'])} | "
                f"{' / '.join(f'{v:.3f}' for v in s['ivf_recall_queries'].values())} | "
                f"{' / '.join(f'{v:.3f}' for v in s['ivf_recall_tuning_sample'].values())} |")
        lines += ["", "IVF-Flat nprobe needed for recall@10 >= 0.95 (nprobe / nlist) as the corpus grows, real subsets "
                  "(real queries) vs the generator (growth " f"{r['synth']['growth']}):", "",
                  "| passages | real | synthetic |", "|---|---|---|"]
        for row in c["scaling"]:
            (a, b), (x, y) = row["real"], row["synthetic"]
            lines.append(f"| {row['n']:,} | {a} / {b} ({a / b:.3f}) | {x} / {y} ({x / y:.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=1000, help="fresh queries for recall and batched QPS")
    ap.add_argument("--single-queries", type=int, default=300, help="queries timed one by one (approximate indexes)")
    ap.add_argument("--flat-queries", type=int, default=50, help="queries timed one by one on flat")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--hnsw-m", type=int, default=AUTO_HNSW["M"])
    ap.add_argument("--hnsw-ef-construction", type=int, default=AUTO_HNSW["efConstruction"])
    ap.add_argument("--threshold", type=int, default=200_000,
                    help="also measure flat, HNSW and IVF-Flat at this size (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--growth", type=float, default=SynthParams.growth,
                    help="how topic counts grow with n: 0 fixed, 1 proportional (default 0.5)")
    ap.add_argument("--calibrate", action="store_true", help="compare the generator with real e5-small embeddings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    res: dict[str, Any] = {"machine": machine(), "commit": commit(), **run(args)}
    if args.calibrate:
        res["calibration"] = calibrate(args.seed, SynthParams(growth=args.growth))
    save_results(args.out, res)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
