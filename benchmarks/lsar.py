"""LSAR ablation: the rank r of the centring rule's projection (``indexer.centering``), on the three XQuAD-R pools.

The product builds every ``full`` index with r = :func:`indexer.centering.lsar_rank` (L - 1, at most 8) and cannot
switch it per request, so this module measures the rule itself: the stored raw document vectors of the full pool's
index (``title\\ntext`` as ``xlir index`` embedded them) and the cached query vectors, centred by
:func:`indexer.centering.center` with the pool's own centroids (``CentroidStats``, as a build computes them) and
the top r directions of their means projected out, then an exact search (what a flat index returns) and the
benchmark's evaluation (ranx; map@20 = LAReQA's AP@20). r = 0 is the rule before LSAR; on the full pool it equals
the product's ``dense`` figure of the benchmark matrix.

Pools (``benchmarks.datasets.xquad_r_pools``): ``full`` (parallel), ``nonparallel`` (each paragraph in one
language) and ``parallel`` (same size); ``mono``: each language's queries against its own documents, centroids of
the multilingual pool (a single-language slice of a multilingual index), nDCG@10.

    python -m benchmarks.lsar --out benchmarks/results/lsar.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import RetrievalDataset, default_data_dir, xquad_r_pools
from benchmarks.retrieval import Run, evaluate, index_for, query_vectors, same_language_qrels
from indexer.centering import Centroids, CentroidStats, center, lsar_rank
from indexer.store import open_index

RANKS = (0, 2, 4, 6, 7)


def lsar_runs(raw: np.ndarray, doc_ids: Sequence[str], doc_langs: Sequence[str], qvecs: np.ndarray,
              dataset: RetrievalDataset, ranks: Sequence[int], cents: Centroids | None = None,
              k: int = 100) -> dict[int, Run]:
    """Exact dense runs of ``dataset``'s queries (raw vectors ``qvecs``, their own languages) over the documents
    ``raw`` under ``full`` centring with r = each of ``ranks`` language directions projected out; ``cents``: the
    centroids (default: those of ``raw``, as a build of these documents computes them)."""
    if cents is None:
        stats = CentroidStats(raw.shape[1])
        stats.add(doc_langs, raw)
        cents = stats.centroids()
    docs_c = center(raw, cents.lookup("full", doc_langs)[0])
    qs_c = center(qvecs, cents.lookup("full", [q.lang for q in dataset.queries])[0])
    out: dict[int, Run] = {}
    for r in ranks:
        basis = cents.directions(r) if r else None
        d = center(docs_c, np.zeros(1, np.float32), basis)
        q = center(qs_c, np.zeros(1, np.float32), basis)
        run = Run()
        for start in range(0, len(q), 512):
            scores = q[start : start + 512] @ d.T
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            for i, row in enumerate(top):
                run.hits[dataset.queries[start + i].qid] = [(doc_ids[j], float(scores[i, j])) for j in row]
        out[r] = run
    return out


def measure(data: Path, model: str = "e5-small", ranks: Sequence[int] = RANKS) -> dict[str, Any]:
    from models.encoders import load_encoder

    enc = load_encoder(model)
    pools = xquad_r_pools(data)
    index = open_index(index_for(pools["full"], enc))
    raw_all = np.concatenate([np.asarray(r) for r in index.raw_vectors()])
    row_of = {index.doc(r)["id"]: r for r in range(index.size)}
    qvec_of = dict(zip((q.qid for q in pools["full"].queries), query_vectors(enc, pools["full"].queries),
                       strict=True))
    res: dict[str, Any] = {"model": model, "ranks": list(ranks), "pools": {}}

    def one(ds: RetrievalDataset, metric: str, rs: Sequence[int]) -> dict[str, dict[str, float]]:
        rows = [row_of[d.id] for d in ds.docs]
        runs = lsar_runs(raw_all[rows], [d.id for d in ds.docs], [str(d.lang) for d in ds.docs],
                         np.stack([qvec_of[q.qid] for q in ds.queries]), ds, rs)
        return {str(r): {split: round(evaluate(ds.subset(split=split), run, [metric])["all"][metric], 4)
                         for split in ("dev", "test")} for r, run in runs.items()}

    for name, ds in pools.items():
        rule = lsar_rank(len({d.lang for d in ds.docs}))
        res["pools"][name] = {"docs": len(ds.docs), "queries": len(ds.queries), "rule_rank": rule,
                              "map@20": one(ds, "map@20", sorted({*ranks, rule}))}
    full = pools["full"]
    rule = lsar_rank(len(full.langs()))
    stats = CentroidStats(raw_all.shape[1])
    stats.add([str(d.lang) for d in full.docs], raw_all[[row_of[d.id] for d in full.docs]])
    mono: dict[str, dict[str, dict[str, float]]] = {}
    for lang in full.langs():  # the language's own documents, with the centroids and basis of the whole pool
        ds = same_language_qrels(full.subset(langs=[lang]))
        own = [d for d in full.docs if d.lang == lang]
        runs = lsar_runs(raw_all[[row_of[d.id] for d in own]], [d.id for d in own], [lang] * len(own),
                         np.stack([qvec_of[q.qid] for q in ds.queries]), ds, sorted({0, rule}), stats.centroids())
        mono[lang] = {str(r): {split: round(evaluate(ds.subset(split=split), run, ["ndcg@10"])["all"]["ndcg@10"], 4)
                               for split in ("dev", "test")} for r, run in runs.items()}
    res["mono"] = {"rule_rank": rule, "ndcg@10": {
        str(r): {split: round(float(np.mean([mono[lang][str(r)][split] for lang in mono])), 4)
                 for split in ("dev", "test")} for r in sorted({0, rule})}, "per_lang": mono}
    return res


def render(res: Mapping[str, Any]) -> str:
    """One row per pool, one column per rank r: dev / test (AP@20 for the pools, nDCG@10 for ``mono``)."""
    ranks = [str(r) for r in res["ranks"]]
    rows = [(f"{name} (AP@20)", p["docs"], p["map@20"], p["rule_rank"]) for name, p in res["pools"].items()]
    rows.append(("mono (nDCG@10)", "", res["mono"]["ndcg@10"], res["mono"]["rule_rank"]))
    lines = ["| pool | docs | " + " | ".join(f"r = {r}" for r in ranks) + " | rule r |",
             "|---|---:|" + "---|" * len(ranks) + "---:|"]
    for name, docs, m, rule in rows:
        cells = [f"{m[r]['dev']:.4f} / {m[r]['test']:.4f}" if r in m else "" for r in ranks]
        lines.append(f"| {name} | {docs} | " + " | ".join(cells) + f" | {rule} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.lsar", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    res = measure(args.data or default_data_dir(), args.model)
    print(render(res))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
