"""The static student (``e5-small-static``, issue 20 part 4) beside its teacher e5-small: quality, speed, and the
combinations where it is used with e5.

Run: ``python -m benchmarks.static_student --out benchmarks/results/static_student.json [--parts ...]``.

- ``retrieval``: the XQuAD-R pools of :func:`benchmarks.datasets.xquad_r_pools` (``full``: 11 languages, fully
  parallel; ``nonparallel``; ``parallel``) and ``mono`` (each language against its own documents, nDCG@10),
  dev and test splits, dense retrieval with centring at the product default and off, all through the one retrieval
  path (:class:`benchmarks.feedback.Bench` -> :func:`benchmarks.retrieval.run_inprocess`).
- ``tatoeba``: the 9 Tatoeba pairs both directions (:func:`benchmarks.mining.run_tatoeba`).
- ``speed``: ~100-token XQuAD-R passages per second (one process, the machine's 2 cores), single-query latency,
  for the static student and e5-small on its CPU backends (:func:`benchmarks.encoder_speed.measure_speed`).
- ``oov``: share of the XQuAD-R dev tokens (questions and sentences) that the pruned vocabulary does not have.
- ``asymmetric``: the combination "e5-small index, static query encoder": the student maps into e5-small's space,
  so its query vectors search the e5 index through the same retrieval path (only the query vectors differ).
- ``mining``: the combination "static first stage, e5 re-scoring" for BUCC-style mining
  (:func:`benchmarks.mining.bucc_task`): the static student proposes each source sentence's nearest targets, e5
  re-scores only sentences that appear in a proposal; F1 and the share of sentences e5 had to embed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import default_data_dir, doc_article, load_xquad_r

STATIC = "e5-small-static"
TEACHER = "e5-small"
CONDITIONS: dict[str, dict[str, Any]] = {
    "default": {"mode": "dense", "feedback": "off"},
    "centering-off": {"mode": "dense", "centering": "off", "feedback": "off"},
}
POOLS = ("full", "nonparallel", "parallel", "mono")
DEFAULT_POOLS = ("full", "nonparallel", "mono")
METRICS = ("map@20", "ndcg@10", "recall@100")


def retrieval(models: Sequence[str], splits: Sequence[str], pools: Sequence[str],
              max_per_lang: int | None = None) -> dict[str, Any]:
    from benchmarks.feedback import Bench
    from models.encoders import load_encoder

    out: dict[str, Any] = {}
    for model in models:
        enc = load_encoder(model, workload="passages")
        bench = Bench(enc, seed=0, max_per_lang=max_per_lang)
        for split in splits:
            for pool in pools:
                for cond, params in CONDITIONS.items():
                    res = bench.run(pool, split, params)
                    out.setdefault(model, {}).setdefault(split, {}).setdefault(pool, {})[cond] = {
                        "all": {m: res["all"][m] for m in METRICS},
                        "per_lang": {lang: res[lang]["map@20" if pool != "mono" else "ndcg@10"]
                                     for lang in res if lang != "all"}}
                    print(f"{model} {split} {pool} {cond}: " + ", ".join(f"{m} {res['all'][m]:.3f}" for m in METRICS),
                          file=sys.stderr)
    return out


def asymmetric(splits: Sequence[str], pools: Sequence[str], max_per_lang: int | None = None) -> dict[str, Any]:
    """e5-small's index searched with the static student's query vectors, same retrieval path (e5-small's own
    queries: the ``retrieval`` part)."""
    from benchmarks import retrieval as rb
    from benchmarks.feedback import Bench
    from models.encoders import load_encoder

    teacher = load_encoder(TEACHER, workload="passages")
    student = load_encoder(STATIC)
    bench = Bench(teacher, seed=0, max_per_lang=max_per_lang)
    out: dict[str, Any] = {}
    for split in splits:
        for pool in pools:
            ds = bench.data[(pool, split)]
            static_q = student.encode_queries([q.text for q in ds.queries])
            for cond, params in CONDITIONS.items():
                for who, qv in (("static queries", static_q),):
                    run = rb.run_inprocess(bench.indexes[pool], teacher, ds, params, monolingual=pool == "mono",
                                           qvecs=qv, table=bench.table)
                    res = rb.evaluate(ds, run)["all"]
                    out.setdefault(split, {}).setdefault(pool, {}).setdefault(cond, {})[who] = {
                        m: res[m] for m in METRICS}
                    print(f"asymmetric {split} {pool} {cond} {who}: map@20 {res['map@20']:.3f} "
                          f"ndcg@10 {res['ndcg@10']:.3f}", file=sys.stderr)
    return out


def tatoeba() -> dict[str, Any]:
    from benchmarks.mining import run_tatoeba

    data = default_data_dir()
    return {model: run_tatoeba(data, model) for model in (TEACHER, STATIC)}


def speed(n_passages: int, n_queries: int, rounds: int) -> dict[str, Any]:
    from benchmarks.encoder_speed import measure_speed, speed_inputs
    from models.encoders import load_encoder

    teacher_torch = load_encoder(TEACHER, backend="torch")
    tok = teacher_torch._model.tokenizer  # noqa: SLF001 - the benchmark cuts passages with e5's tokenizer
    passages, queries, sentences = speed_inputs(default_data_dir(), tok, n_passages, n_queries, 0)
    encoders = {"e5-small torch": teacher_torch, "e5-small onnx": load_encoder(TEACHER, backend="onnx"),
                "static": load_encoder(STATIC)}
    res = measure_speed(encoders, passages, queries, rounds)
    # the static student on many more passages (the few hundred above take it a few tens of milliseconds)
    static = encoders["static"]
    many = passages * max(1, 20000 // max(1, len(passages)))
    t = []
    for _ in range(3):
        t0 = time.perf_counter()
        static.encode_passages(many, batch_size=1024)
        t.append(time.perf_counter() - t0)
    res["static"]["passages_per_s_20k"] = len(many) / statistics.median(t)
    best_e5 = max(res[b]["passages_per_s"] for b in ("e5-small torch", "e5-small onnx"))
    res["speedup_vs_best_e5"] = res["static"]["passages_per_s_20k"] / best_e5
    res["inputs"] = {"passages": len(passages), "queries": len(queries), "rounds": rounds}
    return res


def oov() -> dict[str, Any]:
    from models.encoders import load_encoder

    enc = load_encoder(STATIC)
    ds = load_xquad_r(default_data_dir(), level="sentence").subset(split="dev")
    by_lang: dict[str, list[str]] = {}
    for q in ds.queries:
        by_lang.setdefault(q.lang, []).append(q.text)
    for d in ds.docs:
        if doc_article(d.id) % 2 == 0:  # the dev articles (load_xquad_r: even articles are dev)
            by_lang.setdefault(d.lang or "und", []).append(d.text)
    per = {lang: enc.oov_share(texts) for lang, texts in sorted(by_lang.items())}
    mean = {key: float(np.mean([v[key] for v in per.values()])) for key in ("pruned", "unresolved")}
    return {"per_lang": per, "mean": mean, "vocabulary": enc.vocabulary}


def mining(noise: int, keep_shares: Sequence[float]) -> dict[str, Any]:
    """BUCC-style tasks (:func:`benchmarks.mining.bucc_task`, ratio margin, centring full, the product's miner
    :func:`indexer.mining_search.mine_rows`): e5 alone, static alone, and static first stage + e5: the static
    student mines every source, the sources whose static pair scores in the top ``share`` are kept, and e5 embeds
    and re-mines only those sources against their 4 nearest static targets (the union over kept sources)."""
    from benchmarks.datasets import load_tatoeba
    from benchmarks.embeddings import embed
    from benchmarks.mining import best_f1, bucc_task, noise_sources
    from indexer.mining import MineOptions
    from indexer.mining_search import ArrayRows, mine_rows
    from models.encoders import load_encoder

    opts = MineOptions(margin="ratio", centering="full", threshold=None)
    data = default_data_dir()
    tat = load_tatoeba(data)
    sources = noise_sources(data, tat)
    teacher = load_encoder(TEACHER, workload="sentences")
    student = load_encoder(STATIC)
    out: dict[str, Any] = {}

    def f1(x: np.ndarray, y: np.ndarray, gold: set[tuple[int, int]], src_rows: np.ndarray | None = None,
           tgt_rows: np.ndarray | None = None) -> dict[str, float]:
        mined, _ = mine_rows(ArrayRows(x), ArrayRows(y), opts)
        src = mined.src if src_rows is None else src_rows[mined.src]
        tgt = mined.tgt if tgt_rows is None else tgt_rows[mined.tgt]
        return best_f1(mined.score, src, tgt, gold)

    vector_of: dict[str, np.ndarray] = {}
    for name, texts in sources.items():  # as benchmarks.mining.run_bucc embeds them: the cache has them
        if texts:
            vector_of.update(zip(texts, embed(teacher, "passage", texts, None, name), strict=True))
    for pair in sorted(tat):
        task = bucc_task(pair, sources, tat, noise, seed=0)
        src_texts, tgt_texts, gold = task["src"], task["tgt"], task["gold"]
        s_src, s_tgt = student.encode_passages(src_texts), student.encode_passages(tgt_texts)
        e_src = np.stack([vector_of[t] for t in src_texts])
        e_tgt = np.stack([vector_of[t] for t in tgt_texts])
        res: dict[str, Any] = {"sizes": [len(src_texts), len(tgt_texts), len(gold)],
                               "e5": f1(e_src, e_tgt, gold), "static": f1(s_src, s_tgt, gold)}
        mined, _ = mine_rows(ArrayRows(s_src), ArrayRows(s_tgt), opts)
        best_static = np.full(len(src_texts), -np.inf)
        best_static[mined.src] = mined.score
        near = np.argsort(-(s_src @ s_tgt.T), axis=1)[:, :4]
        for share in keep_shares:
            keep = np.flatnonzero(best_static >= np.quantile(best_static, 1 - share))
            tgt_rows = np.unique(near[keep])
            res[f"static+e5@{share:g}"] = {
                **f1(e_src[keep], e_tgt[tgt_rows], gold, keep, tgt_rows),
                "e5_share_embedded": (len(keep) + len(tgt_rows)) / (len(src_texts) + len(tgt_texts)),
                "gold_sources_kept": len({s for s, _ in gold} & set(keep.tolist())) / len(gold)}
        out[pair] = res
        print(f"mining {pair}: " + ", ".join(f"{k2} F1 {v['f1']:.3f}" for k2, v in res.items() if k2 != "sizes"),
              file=sys.stderr)
    names = sorted(tat)
    conds = [c for c in out[names[0]] if c != "sizes"]
    out["mean"] = {c: {m: float(np.mean([out[p][c][m] for p in names])) for m in out[names[0]][c]} for c in conds}
    return out


def render(res: Mapping[str, Any]) -> str:
    lines: list[str] = []
    if "retrieval" in res:
        lines += ["| model | split | pool | centring | AP@20 | nDCG@10 | R@100 |", "|---|---|---|---|---:|---:|---:|"]
        for model, splits in res["retrieval"].items():
            for split, pools in splits.items():
                for pool, conds in pools.items():
                    for cond, vals in conds.items():
                        a = vals["all"]
                        lines.append(f"| {model} | {split} | {pool} | {cond} | {a['map@20']:.3f} | "
                                     f"{a['ndcg@10']:.3f} | {a['recall@100']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/static_student.json"))
    ap.add_argument("--parts", default="oov,speed,retrieval,tatoeba,asymmetric,mining")
    ap.add_argument("--splits", default="test")
    ap.add_argument("--pools", default=",".join(DEFAULT_POOLS), help=f"of {', '.join(POOLS)}")
    ap.add_argument("--max-per-lang", type=int, default=None, help="retrieval, asymmetric: the first N queries of "
                    "each language")
    ap.add_argument("--models", default=f"{TEACHER},{STATIC}", help="retrieval: the models")
    ap.add_argument("--passages", type=int, default=400)
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--noise", type=int, default=2000)
    ap.add_argument("--keep", default="0.25,0.5", help="mining: shares of the sources kept by the static stage")
    args = ap.parse_args(argv)
    res: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    res["machine"] = f"{platform.processor() or platform.machine()}, Python {platform.python_version()}"
    splits, pools = args.splits.split(","), args.pools.split(",")
    for part in args.parts.split(","):
        t0 = time.perf_counter()
        if part == "retrieval":
            got = retrieval(args.models.split(","), splits, pools, args.max_per_lang)
            for model, by_split in got.items():  # merged: one model or split at a time
                for split, vals in by_split.items():
                    res.setdefault(part, {}).setdefault(model, {}).setdefault(split, {}).update(vals)
        elif part == "asymmetric":
            for split, vals in asymmetric(splits, pools, args.max_per_lang).items():
                res.setdefault(part, {}).setdefault(split, {}).update(vals)
        elif part == "tatoeba":
            res[part] = tatoeba()
        elif part == "speed":
            res[part] = speed(args.passages, args.queries, args.rounds)
        elif part == "oov":
            res[part] = oov()
        elif part == "mining":
            res[part] = mining(args.noise, [float(x) for x in args.keep.split(",")])
        else:
            raise SystemExit(f"unknown part {part!r}")
        res.setdefault("seconds", {})[part] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1, default=float))
    print(render(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
