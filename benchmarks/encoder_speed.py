"""Encoder backends (issue 5.1): speed and quality of torch, onnx and onnx-int8 on one model (default e5-small).

Run: ``python -m benchmarks.encoder_speed --out benchmarks/results/encoder_speed.json`` (about 10 minutes on 2
cores when the torch embeddings of the quality sets are cached by ``benchmarks.embeddings``, a few more otherwise;
``--passages/--queries/--limit`` for quick runs). Writes the JSON and a Markdown report beside it (``.md``).

Every figure goes through the :class:`models.encoders.Encoder` protocol, tokenization included, with the
encoders as ``load_encoder(model, device="cpu", backend=...)`` builds them (2 intra-op threads on this machine for
torch and ONNX Runtime alike). Backends run in turns within each round, so a load change on the machine hits them
alike; speed is reported as the median over rounds and as a ratio against torch measured in the same run.

- **Indexing**: ``encode_passages(batch_size=32)`` (token-budget batches) on real passages of about 100 tokens:
  XQuAD-R paragraphs (:func:`benchmarks.datasets.load_xquad_r`, ``level="paragraph"``, languages in turn) cut
  after their 100th token (the model's tokenizer, before the ``passage:`` prefix and special tokens); sentences/s.
- **Short sentences** (the mining workload): ``encode_passages(batch_size=32)`` on Tatoeba sentences (both
  sides of the 9 pairs in turn); sentences/s.
- **Single queries**: ``encode_queries([q])`` one question at a time (XQuAD-R questions, languages in turn):
  p50/p95 latency and queries/s.
- **Quality**, as a delta against torch fp32: Tatoeba accuracy (9 pairs xx-eng, 1000 lines, both directions,
  cosine nearest neighbour, :func:`benchmarks.matrix.bitext_accuracy`, without and with each side centred) and
  the XQuAD-R pool mAP@20 of the sentences' vectors (LAReQA, all 7 languages and articles, no titles: a delta
  between backends' vectors, not a retrieval figure, which is the matrix's; :func:`benchmarks.retrieval.ap_at_k`
  over the exact top 20, centring ``off`` and ``full`` with the true query language), plus the cosine between
  each backend's vectors and torch's for the same sentences. Embeddings come from
  :func:`benchmarks.embeddings.embed` and its cache (``$XLIR_HOME/cache/embeddings``), keyed per backend.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import TATOEBA_PAIRS, RetrievalDataset, default_data_dir, load_tatoeba, load_xquad_r
from benchmarks.demo_bench import commit, machine, pct, save_results
from benchmarks.embeddings import EmbedStats, embed, embed_by_group

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("torch", "onnx", "onnx-int8", "onnx-f16w")
PASSAGE_TOKENS = 100
BATCH = 32


# --------------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------------


def cut_to_tokens(tokenizer: Any, texts: Sequence[str], n_tokens: int) -> list[str]:
    """Each text cut after its ``n_tokens``-th token (no special tokens counted); shorter texts are dropped."""
    enc = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for text, offsets in zip(texts, enc["offset_mapping"], strict=True):
        if len(offsets) >= n_tokens:
            out.append(text[: offsets[n_tokens - 1][1]])
    return out


def interleave(groups: dict[str, list[str]], n: int) -> list[str]:
    """Up to ``n`` items taking one from each group in turn (groups in sorted order)."""
    out: list[str] = []
    keys = sorted(groups)
    i = 0
    while len(out) < n and any(i < len(groups[k]) for k in keys):
        out.extend(groups[k][i] for k in keys if i < len(groups[k]) and len(out) < n)
        i += 1
    return out


def speed_inputs(data: Path, tokenizer: Any, n_passages: int, n_queries: int,
                 n_sentences: int) -> tuple[list[str], list[str], list[str]]:
    """~100-token passages and single questions from XQuAD-R, short Tatoeba sentences, languages in turn."""
    ds = load_xquad_r(data, level="paragraph")
    paras: dict[str, list[str]] = {}
    for d in ds.docs:
        paras.setdefault(d.lang or "und", []).append(d.text)
    cut = {lang: cut_to_tokens(tokenizer, texts, PASSAGE_TOKENS) for lang, texts in paras.items()}
    questions: dict[str, list[str]] = {}
    for q in ds.queries:
        questions.setdefault(q.lang, []).append(q.text)
    sentences: dict[str, list[str]] = {}
    for pair, (xx, en) in load_tatoeba(data, TATOEBA_PAIRS).items():
        sentences[pair] = [s for both in zip(xx, en, strict=True) for s in both]
    return interleave(cut, n_passages), interleave(questions, n_queries), interleave(sentences, n_sentences)


# --------------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------------


def time_batched(enc: Any, texts: Sequence[str]) -> float:
    t0 = time.perf_counter()
    enc.encode_passages(texts, batch_size=BATCH)
    return time.perf_counter() - t0


def time_queries(enc: Any, queries: Sequence[str]) -> list[float]:
    out = []
    for q in queries:
        t0 = time.perf_counter()
        enc.encode_queries([q])
        out.append(time.perf_counter() - t0)
    return out


def measure_speed(encoders: dict[str, Any], passages: list[str], queries: list[str], rounds: int,
                  sentences: Sequence[str] = ()) -> dict[str, Any]:
    """Backends in turns within each round; warm-up first (not timed)."""
    for enc in encoders.values():
        enc.encode_passages(passages[:BATCH], batch_size=BATCH)
        if sentences:
            enc.encode_passages(list(sentences[:BATCH]), batch_size=BATCH)
        time_queries(enc, queries[:20])
    passage_seconds: dict[str, list[float]] = {b: [] for b in encoders}
    sentence_seconds: dict[str, list[float]] = {b: [] for b in encoders}
    query_seconds: dict[str, list[float]] = {b: [] for b in encoders}
    for r in range(rounds):
        order = list(encoders) if r % 2 == 0 else list(reversed(encoders))
        for b in order:
            passage_seconds[b].append(time_batched(encoders[b], passages))
            if sentences:
                sentence_seconds[b].append(time_batched(encoders[b], sentences))
            query_seconds[b].extend(time_queries(encoders[b], queries))
            extra = f"{len(sentences) / sentence_seconds[b][-1]:.1f} sentences/s, " if sentences else ""
            print(f"  round {r + 1}/{rounds} {b}: {len(passages) / passage_seconds[b][-1]:.1f} passages/s, {extra}"
                  f"query p50 {1000 * statistics.median(query_seconds[b][-len(queries):]):.1f} ms", file=sys.stderr)
    out: dict[str, Any] = {}
    for b in encoders:
        per_round = [len(passages) / s for s in passage_seconds[b]]
        lat = query_seconds[b]
        out[b] = {
            "passages_per_s": statistics.median(per_round), "passages_per_s_rounds": per_round,
            "query_ms_p50": 1000 * pct(lat, 50), "query_ms_p95": 1000 * pct(lat, 95),
            "query_ms_mean": 1000 * float(np.mean(lat)), "queries_per_s": len(lat) / float(np.sum(lat)),
        }
        if sentences:
            per_round = [len(sentences) / s for s in sentence_seconds[b]]
            out[b].update(sentences_per_s=statistics.median(per_round), sentences_per_s_rounds=per_round)
    return out


# speed figure of each ``models.encoders.WORKLOADS`` entry, higher is faster
WORKLOAD_FIGURES = {"queries": "queries_per_s", "passages": "passages_per_s", "sentences": "sentences_per_s"}
# a backend whose quality is this close to torch fp32 (points of every quality figure) counts as lossless
LOSSLESS_POINTS = 0.05


def auto_choice(res: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per workload, the fastest backend among those with torch's quality (every figure within
    :data:`LOSSLESS_POINTS`), against what ``backend="auto"`` loads on a CPU (``CPU_AUTO_BACKEND``)."""
    from models.encoders import CPU_AUTO_BACKEND

    q0 = res["backends"]["torch"].get("quality")

    def is_lossless(b: str, r: dict[str, Any]) -> bool:
        if b == "torch":
            return True
        q = r.get("quality")  # without quality figures a backend can be timed, not chosen
        return q is not None and q0 is not None and all(
            abs(100 * (q[m][c]["mean"] - q0[m][c]["mean"])) <= LOSSLESS_POINTS for m in q for c in q[m])

    lossless = [b for b, r in res["backends"].items() if is_lossless(b, r)]
    out = {}
    for workload, key in WORKLOAD_FIGURES.items():
        if not all(key in res["backends"][b]["speed"] for b in lossless):
            continue
        speeds = {b: res["backends"][b]["speed"][key] for b in lossless}
        best = max(speeds, key=lambda b: speeds[b])
        out[workload] = {"measured_best": best, "ratio_to_torch": speeds[best] / speeds["torch"],
                         "auto": CPU_AUTO_BACKEND[workload], "agrees": CPU_AUTO_BACKEND[workload] == best}
    return out


# --------------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------------


def cache_tag(backend: str) -> str:
    """The ``tag`` of a backend's cache entries (:func:`benchmarks.embeddings.embed`): the ONNX encoders share
    torch's weights checksum, their embeddings must not share its entries. torch keeps the plain key (its cached
    embeddings are reused); ONNX ones add the backend and the onnxruntime version."""
    if backend == "torch":
        return ""
    from importlib.metadata import version

    return f"{backend}/onnxruntime-{version('onnxruntime')}"


@dataclass
class QualityData:
    pool: RetrievalDataset
    tatoeba: dict[str, tuple[list[str], list[str]]]


def quality_data(data: Path, limit: int | None) -> QualityData:
    pool = load_xquad_r(data, articles=None if limit is None else max(2, limit // 100))  # quick runs: first articles
    tatoeba = load_tatoeba(data, TATOEBA_PAIRS)
    if limit is not None:
        tatoeba = {k: (xx[:limit], en[:limit]) for k, (xx, en) in tatoeba.items()}
    return QualityData(pool, tatoeba)


def embed_all(enc: Any, qd: QualityData, stats: EmbedStats, tag: str) -> dict[str, Any]:
    pool = qd.pool
    return {
        "cands": embed_by_group(enc, "passage", [d.text for d in pool.docs], [str(d.lang) for d in pool.docs],
                                "xquad sentences", stats, tag),
        "queries": embed_by_group(enc, "query", [q.text for q in pool.queries], [q.lang for q in pool.queries],
                                  "xquad questions", stats, tag),
        "tatoeba": {code: (embed(enc, "passage", xx, None, f"tatoeba {code}", stats, tag),
                           embed(enc, "passage", en, None, f"tatoeba {code}-eng", stats, tag))
                    for code, (xx, en) in qd.tatoeba.items()},
    }


def xquad_map20(pool: RetrievalDataset, cands: np.ndarray, queries: np.ndarray, mode: str) -> dict[str, float]:
    """mAP@20 over the whole pool (all articles), per query language and their mean; ``full`` uses the true
    query language's centroid (the pool's per-language means)."""
    from benchmarks.retrieval import ap_at_k
    from indexer.centering import CentroidStats, center, center_by_lang
    from indexer.topk import top_k_dot

    c_langs = [str(d.lang) for d in pool.docs]
    q_langs = [q.lang for q in pool.queries]
    if mode != "off":
        stats = CentroidStats(cands.shape[1])
        stats.add(c_langs, cands)
        table = stats.centroids()
        cands = center_by_lang(cands, np.asarray([table.langs.index(x) for x in c_langs]), table.shifts(mode))
        queries = center(queries, np.stack([table.shifts(mode)[table.langs.index(x)] for x in q_langs]))
    rows = top_k_dot(cands, queries, 20)
    aps = np.asarray([ap_at_k(pool.qrels[q.qid], [pool.docs[i].id for i in r], 20)
                      for q, r in zip(pool.queries, rows, strict=True)])
    out = {lang: float(aps[np.asarray(q_langs) == lang].mean()) for lang in sorted(set(q_langs))}
    return {**out, "mean": float(np.mean(list(out.values())))}


def tatoeba_accuracy(sides: dict[str, tuple[np.ndarray, np.ndarray]], mode: str) -> dict[str, float]:
    """Cosine nearest-neighbour accuracy per pair (mean of xx->en and en->xx) and the mean over pairs."""
    from benchmarks.matrix import bitext_accuracy
    from indexer.centering import center_sides

    out: dict[str, float] = {}
    for code, (xx, en) in sides.items():
        a, b = center_sides(xx, en, mode)
        out[code] = (bitext_accuracy(a, b, "absolute") + bitext_accuracy(b, a, "absolute")) / 2
    out["mean"] = float(np.mean([out[c] for c in sides]))
    return out


def agreement(ref: dict[str, Any], got: dict[str, Any]) -> dict[str, float]:
    """Cosine between a backend's vectors and torch's for the same texts (pool sentences, questions, Tatoeba)."""
    pairs = [(ref["cands"], got["cands"]), (ref["queries"], got["queries"])]
    pairs += [(ref["tatoeba"][c][i], got["tatoeba"][c][i]) for c in ref["tatoeba"] for i in (0, 1)]
    cos = np.concatenate([(a * b).sum(axis=1) for a, b in pairs])
    return {"min": float(cos.min()), "p1": pct(cos, 1), "mean": float(cos.mean())}


def quality(vecs: dict[str, Any], qd: QualityData) -> dict[str, Any]:
    return {
        "xquad_map20": {m: xquad_map20(qd.pool, vecs["cands"], vecs["queries"], m) for m in ("off", "full")},
        "tatoeba_acc": {m: tatoeba_accuracy(vecs["tatoeba"], m) for m in ("off", "full")},
    }


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def render(res: dict[str, Any]) -> str:
    base = res["backends"]["torch"]
    L = [f"## Encoder backends: {res['model']} on CPU", "",
         f"Machine: {res['machine']}; commit {res['commit']}; {res['threads']} threads; {res['rounds']} rounds, "
         f"backends in turns, median over rounds. Passages: {res['passages']} XQuAD-R paragraphs cut at "
         f"{PASSAGE_TOKENS} tokens ({res['passage_tokens_mean']:.1f} tokens each with prefix and special tokens), "
         f"batch_size {BATCH}, token budget {res['token_budget']}; "
         + (f"short sentences: {res['sentences']} Tatoeba sentences ({res['sentence_tokens_mean']:.1f} tokens each), "
            f"batch_size {BATCH}; " if res.get("sentences") else "")
         + f"single queries: {res['queries']} XQuAD-R questions "
         f"x {res['rounds']} rounds, one per call.", ""]
    sent = "sentences_per_s" in base["speed"]
    head = ["backend", "passages/s", "x torch"] + (["short sentences/s", "x torch"] if sent else [])
    head += ["query p50 ms", "p95 ms", "queries/s", "x torch", "load s"]
    qual = "quality" in base
    if qual:
        head += ["Tatoeba acc", "Δ pts", "XQuAD-R mAP@20", "Δ pts", "full: Tatoeba", "Δ", "full: mAP@20", "Δ",
                 "min cos", "mean cos"]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b, r in res["backends"].items():
        s, s0 = r["speed"], base["speed"]
        row = [b, f"{s['passages_per_s']:.1f}", f"{s['passages_per_s'] / s0['passages_per_s']:.2f}"]
        if sent:
            row += [f"{s['sentences_per_s']:.1f}", f"{s['sentences_per_s'] / s0['sentences_per_s']:.2f}"]
        row += [f"{s['query_ms_p50']:.1f}", f"{s['query_ms_p95']:.1f}", f"{s['queries_per_s']:.1f}",
               f"{s['queries_per_s'] / s0['queries_per_s']:.2f}", f"{r['load_seconds']:.1f}"]
        if qual:
            q, q0 = r["quality"], base["quality"]
            for m in ("off", "full"):
                for metric in ("tatoeba_acc", "xquad_map20"):
                    v, v0 = q[metric][m]["mean"], q0[metric][m]["mean"]
                    row += [f"{v:.4f}", f"{100 * (v - v0):+.2f}"]
            agree = r.get("agreement", {"min": 1.0, "mean": 1.0})
            row += [f"{agree['min']:.4f}", f"{agree['mean']:.4f}"]
        L.append("| " + " | ".join(row) + " |")
    L.append("")
    if qual:
        L += [f"Quality: Tatoeba = mean over {len(TATOEBA_PAIRS)} pairs of the xx->en and en->xx cosine "
              f"nearest-neighbour accuracy ({res['tatoeba_lines']} lines a pair); XQuAD-R = LAReQA mAP@20 over "
              f"the whole 7-language pool ({res['pool_candidates']} sentences, {res['pool_queries']} questions); "
              "`off` without centring, `full` with each language's mean removed (the product default on a "
              "multilingual index and for mining). Δ in points against torch fp32. min/mean cos: each backend's "
              "vectors against torch's for the same texts.", ""]
    choice = res.get("auto_choice") or {}
    if choice:
        L += ["`backend=auto` on a CPU, per workload (fastest backend with torch's quality, every quality figure "
              f"within {LOSSLESS_POINTS} points): "
              + "; ".join(f"{w}: measured best {c['measured_best']} (x{c['ratio_to_torch']:.2f} torch), auto loads "
                          f"{c['auto']}" + ("" if c["agrees"] else " **(disagrees: update CPU_AUTO_BACKEND)**")
                          for w, c in choice.items()) + ".", ""]
    files = res.get("onnx_files", {})
    if files:
        L += ["ONNX files: " + "; ".join(f"{b} {v['megabytes']:.0f} MB ({v['path']})" for b, v in files.items())
              + ".", ""]
    return "\n".join(L)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from models.encoders import load_encoder
    from models.onnx_backend import cpu_cores
    from models.registry import resolve_model

    res: dict[str, Any] = {"model": args.model, "machine": machine(), "commit": commit(), "threads": cpu_cores(),
                           "rounds": args.rounds, "backends": {}}
    encoders: dict[str, Any] = {}
    for b in args.backends:
        t0 = time.perf_counter()
        encoders[b] = load_encoder(args.model, device="cpu", backend=b)
        res["backends"][b] = {"load_seconds": time.perf_counter() - t0}
        print(f"{b}: loaded in {res['backends'][b]['load_seconds']:.1f}s", file=sys.stderr)
    res["token_budget"] = encoders[args.backends[0]].token_budget
    res["onnx_files"] = {b: {"path": str(e.model_path), "megabytes": e.model_path.stat().st_size / 1e6}
                         for b, e in encoders.items() if hasattr(e, "model_path")}

    tok = AutoTokenizer.from_pretrained(str(resolve_model(args.model).path), local_files_only=True)
    passages, queries, sentences = speed_inputs(args.data, tok, args.passages, args.queries, args.sentences)
    first = encoders[args.backends[0]]
    res.update(passages=len(passages), queries=len(queries), sentences=len(sentences),
               passage_tokens_mean=float(np.mean(first.token_lengths(["passage: " + p for p in passages]))),
               sentence_tokens_mean=float(np.mean(first.token_lengths(["passage: " + p for p in sentences]))))
    print(f"speed: {len(passages)} passages, {len(sentences)} sentences, {len(queries)} queries, {args.rounds} "
          "rounds", file=sys.stderr)
    speed = measure_speed(encoders, passages, queries, args.rounds, sentences)
    for b in encoders:
        res["backends"][b]["speed"] = speed[b]

    if not args.skip_quality:
        qd = quality_data(args.data, args.limit)
        res.update(pool_candidates=len(qd.pool.docs), pool_queries=len(qd.pool.queries),
                   tatoeba_lines=len(next(iter(qd.tatoeba.values()))[0]))
        vecs: dict[str, Any] = {}
        for b, enc in encoders.items():
            stats = EmbedStats()
            t0 = time.perf_counter()
            vecs[b] = embed_all(enc, qd, stats, cache_tag(b))
            res["backends"][b]["quality"] = quality(vecs[b], qd)
            res["backends"][b]["quality_embed"] = {"cache_hits": stats.hits, "cache_misses": stats.misses,
                                                   "texts_embedded": stats.texts_embedded,
                                                   "seconds": time.perf_counter() - t0}
            print(f"{b}: quality done ({stats.texts_embedded} texts embedded, {stats.hits} cache hits)",
                  file=sys.stderr)
        if "torch" in vecs:
            for b in vecs:
                res["backends"][b]["agreement"] = agreement(vecs["torch"], vecs[b])
            res["auto_choice"] = auto_choice(res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.encoder_speed", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder_speed.json")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--backends", default="torch,onnx,onnx-int8",
                    help=f"comma-separated of {', '.join(BACKENDS)}; torch first (the baseline)")
    ap.add_argument("--passages", type=int, default=1024, help="~100-token passages per indexing round")
    ap.add_argument("--queries", type=int, default=300, help="single queries per round")
    ap.add_argument("--sentences", type=int, default=2048, help="short Tatoeba sentences per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=None,
                    help="quick runs: quality on the first N Tatoeba lines and about N/100 XQuAD-R articles")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--data", type=Path, default=default_data_dir())
    args = ap.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends or args.backends[0] != "torch":
        ap.error(f"--backends: a comma-separated list of {', '.join(BACKENDS)} starting with torch (the baseline)")
    if min(args.passages, args.queries, args.sentences, args.rounds) < 1 or (args.limit is not None and args.limit < 1):
        ap.error("--passages, --queries, --rounds and --limit must be >= 1")
    res = run(args)
    text = render(res)
    print(text)
    save_results(args.out, res, text)
    print(f"\nraw figures: {args.out}; report: {args.out.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
