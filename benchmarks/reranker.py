"""Issue 21's benchmark: the first stage against xlir's trained reranker at depth 20, 50 and 100.

Every run goes through the one retrieval path (:func:`benchmarks.retrieval.run_inprocess`, the server's defaults
otherwise: auto mode, centring, feedback), one query at a time (concurrency 1), on

- the **XQuAD-R pool** (all 7 languages' sentences, one index; a query's relevant sentences are in every language):
  AP@20 and nDCG@10, dev and test;
- **single-language** retrieval (the same index, ``langs=[query language]``, qrels cut to that language): nDCG@10;
- **qa-train validation** (the 5% of questions held back from training, ``benchmarks/qa_groups.py``): MRR@10 of
  the first stage's top ``depth`` reranked (the first stage's own order for the first row);

with the reranker at its default scope (``auto``) and, at depth 20, both explicit scopes, so the cross-language
effect is visible. Latency: the rerank stage's wall time (``Retrieved.timings["rerank"]``) per query, p50/p95, and
the whole path's p50 with and without it. Run it on a quiet machine: the times are measured, not simulated.

    python -m benchmarks.reranker --max-per-lang 60 --out benchmarks/results/reranker.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import RetrievalDataset, default_data_dir, load_xquad_r
from models.rerankers import Reranker, residual_order, residual_scores

DEPTHS = (20, 50, 100)
SPLITS = ("dev", "test")
METRICS = ("map@20", "ndcg@10")


def conditions(depths: Sequence[int] = DEPTHS) -> dict[str, dict[str, Any]]:
    """Condition name -> request fields over the defaults."""
    out: dict[str, dict[str, Any]] = {"first stage": {}}
    for d in depths:
        out[f"rerank {d}"] = {"rerank": True, "rerank_depth": d}
    out["rerank 20, scope all"] = {"rerank": True, "rerank_depth": 20, "rerank_scope": "all"}
    out["rerank 20, same language"] = {"rerank": True, "rerank_depth": 20, "rerank_scope": "same_language"}
    return out


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "n": len(values)}


def retrieval(enc: Any, reranker: Reranker, full: RetrievalDataset, max_per_lang: int | None,
              conds: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{pool: {split: {condition: {metrics, per_lang, latency}}}}`` for the pools ``full`` and ``mono``."""
    from benchmarks import retrieval as rb
    from indexer.store import open_index

    table = rb.load_centroid_table(enc)
    index = open_index(rb.index_for(full, enc))
    out: dict[str, Any] = {}
    try:
        for pool in ("full", "mono"):
            for split in SPLITS:
                ds = full.subset(split=split, max_per_lang=max_per_lang)
                if pool == "mono":
                    ds = rb.same_language_qrels(ds)
                qvecs = rb.query_vectors(enc, ds.queries)
                for name, params in conds.items():
                    if pool == "mono" and "rerank_scope" in params:
                        continue  # one language: every scope is the same
                    run = rb.run_inprocess(index, enc, ds, params, monolingual=pool == "mono", qvecs=qvecs,
                                           table=table, reranker=reranker)
                    res = rb.evaluate(ds, run)
                    head = "ndcg@10" if pool == "mono" else "map@20"
                    out.setdefault(pool, {}).setdefault(split, {})[name] = {
                        "all": {m: round(res["all"][m], 4) for m in METRICS},
                        "per_lang": {lang: round(v[head], 4) for lang, v in res.items() if lang != "all"},
                        "queries": len(ds.queries),
                        "rerank_ms": percentiles([t["rerank"] for t in run.timings.values() if "rerank" in t]),
                        "total_ms": percentiles([t["total"] for t in run.timings.values()]),
                    }
                    print(f"  {pool} {split} {name}: " + ", ".join(f"{m} {res['all'][m]:.4f}" for m in METRICS)
                          + f"; rerank p50 {out[pool][split][name]['rerank_ms'].get('p50', 0)} ms", file=sys.stderr)
    finally:
        index.close()
    return out


def qa_validation(reranker: Reranker, folder: Path, depths: Sequence[int] = DEPTHS,
                  limit: int | None = None) -> dict[str, Any]:
    """MRR@10 on the held-back qa-train questions (the first ``limit``): the first stage's order and the reranked
    top ``depth``."""
    from models.train_reranker import load_groups, mrr_at_10

    groups = load_groups(folder)
    groups.val = groups.val[:limit]
    out: dict[str, Any] = {"questions": len(groups.val)}
    first: list[float] = []
    by_depth: dict[int, list[float]] = {d: [] for d in depths}
    ms: dict[int, list[float]] = {d: [] for d in depths}
    for g in groups.val:
        order = sorted(range(len(g.docs)), key=lambda i: g.ranks[i])
        first.append(mrr_at_10(order, g.labels))
        for d in depths:
            top = [i for i in order if g.ranks[i] <= d]
            t0 = time.perf_counter()
            corr = reranker.score(g.query, [groups.texts[g.docs[i]] for i in top])
            ms[d].append((time.perf_counter() - t0) * 1000)
            ranks = [g.ranks[i] for i in top]
            final = residual_scores(ranks, corr, reranker.prior_weight)
            reranked = [top[j] for j in residual_order(ranks, final)] + [i for i in order if g.ranks[i] > d]
            by_depth[d].append(mrr_at_10(reranked, g.labels))  # candidate positions, labels by position
    out["first stage"] = round(float(np.mean(first)), 4)
    for d in depths:
        out[f"rerank {d}"] = round(float(np.mean(by_depth[d])), 4)
        out[f"rerank {d} ms"] = percentiles(ms[d])
    return out


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


def render(res: Mapping[str, Any]) -> str:
    """The issue's table: pool AP@20 / nDCG@10 (dev, test), single-language nDCG@10 (dev, test), qa-train
    validation MRR@10 and the rerank stage's p50 at concurrency 1."""
    lines = ["| | XQuAD-R pool AP@20 dev / test | pool nDCG@10 dev / test | single-language nDCG@10 dev / test "
             "| qa-train val MRR@10 | rerank p50 / p95 ms (pool test) | path p50 ms |",
             "|---|---|---|---|---|---|---|"]
    ret, qa = res["retrieval"], res.get("qa_validation", {})
    for name in res["conditions"]:
        full = {s: ret["full"][s].get(name) for s in SPLITS}
        mono = {s: ret["mono"][s].get(name) for s in SPLITS}

        def cell(d: Mapping[str, Any], metric: str) -> str:
            return " / ".join(f"{d[s]['all'][metric]:.3f}" if d[s] else "-" for s in SPLITS)

        lat = full["test"]["rerank_ms"] if full["test"] else {}
        qa_cell = f"{qa[name]:.3f}" if name in qa else "-"
        lines.append(f"| {name} | {cell(full, 'map@20')} | {cell(full, 'ndcg@10')} | "
                     f"{cell(mono, 'ndcg@10') if all(mono.values()) else '-'} | {qa_cell} | "
                     f"{lat.get('p50', 0)} / {lat.get('p95', 0)} | {full['test']['total_ms'].get('p50', '-')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reranker", default=None, help="reranker folder (default: the built xlir-rerank)")
    ap.add_argument("--model", default="e5-small", help="first-stage encoder")
    ap.add_argument("--data", type=Path, default=None, help="data root (default ../shared/data)")
    ap.add_argument("--groups", type=Path, default=None, help="qa-train groups folder (default: the reranker run's "
                    "data folder, XLIR_HOME/runs/xlir-rerank/data)")
    ap.add_argument("--max-per-lang", type=int, default=60, help="XQuAD-R queries per language and split")
    ap.add_argument("--depths", default="20,50,100")
    ap.add_argument("--qa-max", type=int, default=None, help="held-back qa-train questions used (default all)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    from models.encoders import load_encoder
    from models.registry import model_dir, xlir_home
    from models.rerankers import DEFAULT_RERANKER, load_reranker

    reranker = load_reranker(Path(args.reranker) if args.reranker else model_dir(DEFAULT_RERANKER))
    depths = [int(x) for x in args.depths.split(",") if x]
    enc = load_encoder(args.model)
    data = args.data or default_data_dir()
    full = load_xquad_r(data, level="sentence")
    conds = conditions(depths)
    t0 = time.perf_counter()
    from benchmarks.demo_bench import commit

    res: dict[str, Any] = {"machine": machine(), "commit": commit(), "reranker": reranker.name,
                           "first_stage": args.model, "conditions": list(conds), "max_per_lang": args.max_per_lang}
    groups = args.groups or xlir_home() / "runs" / DEFAULT_RERANKER / "data"
    if (groups / "groups.jsonl").is_file():
        res["qa_validation"] = qa_validation(reranker, groups, depths, args.qa_max)
        print(f"  qa-train validation: {res['qa_validation']}", file=sys.stderr)
    res["retrieval"] = retrieval(enc, reranker, full, args.max_per_lang, conds)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    print(render(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
