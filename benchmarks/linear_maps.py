"""The linear-map student (``models/linear_maps.py``): settings chosen on XQuAD-R **dev**, then figures on test,
Tatoeba and NTREX's evaluation part, beside e5-small.

A map only moves vectors, so every figure is computed from e5-small's cached vectors (the full pool's index, the
benchmarks' embedding cache) put through the maps as :class:`models.linear_maps.LinearMapEncoder` does (each text's
language detected by its :class:`~models.linear_maps.LanguageGuesser`, that language's map, re-normalised): no
re-embedding per variant. The pools are those of ``benchmarks.datasets.xquad_r_pools`` (``full``, ``nonparallel``,
``parallel``); ``off`` is an exact search on the (mapped) raw vectors, ``default`` the product's centring of the
pool (``full`` centring with the pool's own language means and the top ``lsar_rank`` language directions projected
out, as ``benchmarks/lsar.py``; on the full pool it equals the product's ``dense`` figure); ``mono``: each
language's queries against its own documents, nDCG@10, with the full pool's centroids. AP@20 = ranx map@20.

    python -m benchmarks.linear_maps sweep --out benchmarks/results/linear_maps_sweep.json   # dev only
    python -m benchmarks.linear_maps report --out benchmarks/results/linear_maps.json        # the committed maps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import RetrievalDataset, default_data_dir, load_tatoeba, xquad_r_pools
from benchmarks.retrieval import Run, default_cache_root, evaluate, index_for, query_vectors, same_language_qrels
from indexer.centering import CentroidStats, center, center_sides, lsar_rank
from indexer.store import open_index
from indexer.write import passage_text
from models.linear_maps import LanguageGuesser, apply_maps, detection_labels, fit_map

# the NTREX codes of the XQuAD-R languages: what the sweep fits (the shipped model fits every code)
SWEEP_CODES = ("arb", "deu", "spa", "hin", "rus", "zho-CN")
SHRINKAGES = (0.0, 0.25, 0.5, 0.75)
METHODS = (("lstsq", 0.0), ("procrustes", 0.0), ("ridge", 1.0), ("ridge", 10.0))
POOLS = ("full", "nonparallel", "parallel")
QUICK: dict[str, Any] = {"metrics": ("map@20",), "k": 20}  # the sweep: AP@20 needs the top 20 only


@dataclass
class Base:
    """e5-small's vectors of the XQuAD-R pools, with each text's detected language."""

    pools: dict[str, RetrievalDataset]
    doc_ids: list[str]
    doc_langs: list[str]  # the dataset's (what centring uses)
    doc_raw: np.ndarray
    doc_detected: list[str]
    qids: list[str]
    q_raw: np.ndarray
    q_detected: list[str]


def load_base(data: Path, enc: Any) -> Base:
    pools = xquad_r_pools(data)
    full = pools["full"]
    index = open_index(index_for(full, enc))
    raw = np.concatenate([np.asarray(r) for r in index.raw_vectors()])
    row_of = {index.doc(r)["id"]: r for r in range(index.size)}
    index.close()
    guess = LanguageGuesser(detection_labels())
    return Base(pools, [d.id for d in full.docs], [str(d.lang) for d in full.docs],
                raw[[row_of[d.id] for d in full.docs]],
                guess.detect([passage_text(d.title, d.text) for d in full.docs]),
                [q.qid for q in full.queries], query_vectors(enc, full.queries),
                guess.detect([q.text for q in full.queries]))


def exact_run(docs: np.ndarray, ids: Sequence[str], qs: np.ndarray, qids: Sequence[str], k: int = 100) -> Run:
    run = Run()
    for start in range(0, len(qs), 1024):
        scores = qs[start : start + 1024] @ docs.T
        part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        for i, cand in enumerate(part):
            order = cand[np.argsort(-scores[i, cand], kind="stable")]
            run.hits[qids[start + i]] = [(ids[j], float(scores[i, j])) for j in order]
    return run


def centred(docs: np.ndarray, doc_langs: Sequence[str], qs: np.ndarray, q_langs: Sequence[str],
            stats: CentroidStats | None = None, r: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The product's default centring: the language means (of ``stats``, default the pool's own) subtracted and
    the top ``r`` directions of those means projected out (default ``lsar_rank`` of the pool's languages)."""
    if stats is None:
        stats = CentroidStats(docs.shape[1])
        stats.add(list(doc_langs), docs)
    cents = stats.centroids()
    r = lsar_rank(len(set(doc_langs))) if r is None else r
    basis = cents.directions(r) if r else None
    return (center(docs, cents.lookup("full", list(doc_langs))[0], basis),
            center(qs, cents.lookup("full", list(q_langs))[0], basis))


def score(base: Base, docs: np.ndarray, qs: np.ndarray, splits: Sequence[str], pools: Sequence[str] = POOLS,
          metrics: Sequence[str] = ("map@20", "ndcg@10", "recall@100"), k: int = 100) -> dict[str, Any]:
    """``metrics`` of each pool and centring (``off`` / ``default``) per split, and ``mono`` nDCG@10."""
    doc_row = {d: i for i, d in enumerate(base.doc_ids)}
    q_row = {q: i for i, q in enumerate(base.qids)}
    out: dict[str, Any] = {}
    for name in pools:
        for split in splits:
            ds = base.pools[name].subset(split=split)
            rows = [doc_row[d.id] for d in ds.docs]
            qrows = [q_row[q.qid] for q in ds.queries]
            langs = [base.doc_langs[i] for i in rows]
            ids = [base.doc_ids[i] for i in rows]
            qids = [q.qid for q in ds.queries]
            variants = {"off": (docs[rows], qs[qrows]),
                        "default": centred(docs[rows], langs, qs[qrows], [q.lang for q in ds.queries])}
            for cond, (d, q) in variants.items():
                run = exact_run(d, ids, q, qids, k)
                out.setdefault(name, {}).setdefault(cond, {})[split] = {
                    m: round(v, 4) for m, v in evaluate(ds, run, list(metrics))["all"].items()}
    full = base.pools["full"]
    stats = CentroidStats(docs.shape[1])  # a single-language slice of the multilingual index: its centring
    stats.add(base.doc_langs, docs)
    r_full = lsar_rank(len(full.langs()))
    mono: dict[str, dict[str, dict[str, float]]] = {}
    for lang in full.langs():
        rows = [i for i, lg in enumerate(base.doc_langs) if lg == lang]
        ids = [base.doc_ids[i] for i in rows]
        for split in splits:
            ds = same_language_qrels(full.subset(langs=[lang], split=split))
            qrows = [q_row[q.qid] for q in ds.queries]
            qids = [q.qid for q in ds.queries]
            for cond, (d, q) in {"off": (docs[rows], qs[qrows]),
                                 "default": centred(docs[rows], [lang] * len(rows), qs[qrows], [lang] * len(qrows),
                                                    stats, r_full)}.items():
                run = exact_run(d, ids, q, qids, k)
                mono.setdefault(cond, {}).setdefault(split, {})[lang] = round(
                    evaluate(ds, run, ["ndcg@10"])["all"]["ndcg@10"], 4)
    out["mono"] = {cond: {split: {"ndcg@10": round(float(np.mean(list(v.values()))), 4), "per_lang": v}
                          for split, v in per.items()} for cond, per in mono.items()}
    return out


def mapped(base: Base, maps: Mapping[str, np.ndarray], apply: str) -> tuple[np.ndarray, np.ndarray]:
    docs = apply_maps(base.doc_raw, base.doc_detected, maps)
    qs = apply_maps(base.q_raw, base.q_detected, maps) if apply == "both" else base.q_raw
    return docs, qs


def training_data(enc: Any, codes: Sequence[str], max_lines: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from models.distill_data import ntrex_pairs
    from models.linear_maps import training_vectors

    data, _ = training_vectors(enc, ntrex_pairs(list(codes)), max_lines)
    return data


def headline(res: Mapping[str, Any], split: str = "dev") -> dict[str, float]:
    """The figures the choice is made on: AP@20 of each pool and centring, mono nDCG@10 (both centrings)."""
    out = {f"{p}/{c}": res[p][c][split]["map@20"] for p in POOLS for c in ("off", "default")}
    out.update({f"mono/{c}": res["mono"][c][split]["ndcg@10"] for c in ("off", "default")})
    return out


def run_sweep(data: Path, methods: Sequence[tuple[str, float]] = METHODS, shrinkages: Sequence[float] = SHRINKAGES,
              applies: Sequence[str] = ("both", "passages"), max_lines: int = 0) -> dict[str, Any]:
    from models.encoders import load_encoder

    enc = load_encoder("e5-small")
    base = load_base(data, enc)
    train = training_data(enc, SWEEP_CODES, max_lines)
    res: dict[str, Any] = {"codes": list(SWEEP_CODES), "max_lines": max_lines,
                           "pairs": {k: len(v[0]) for k, v in train.items()},
                           "langid_accuracy": {
                               "docs": round(float(np.mean([a == b for a, b in zip(base.doc_detected,
                                                                                 base.doc_langs, strict=True)])), 4),
                               "queries": round(float(np.mean([a == q.lang for a, q in zip(
                                   base.q_detected, base.pools["full"].queries, strict=True)])), 4)},
                           "variants": {}}
    t0 = time.perf_counter()
    res["variants"]["e5-small"] = headline(score(base, base.doc_raw, base.q_raw, ["dev"], **QUICK))
    print(f"e5-small: {res['variants']['e5-small']}", file=sys.stderr, flush=True)
    for method, lam in methods:
        fitted = {lab: fit_map(x, y, method, 0.0, lam) for lab, (x, y) in train.items()}
        for a in shrinkages:
            maps = {lab: ((1 - a) * w + a * np.eye(w.shape[0])).astype(np.float32) for lab, w in fitted.items()}
            for apply in applies:
                name = f"{method}{f'-{lam:g}' if method == 'ridge' else ''}/a={a:g}/{apply}"
                res["variants"][name] = headline(score(base, *mapped(base, maps, apply), ["dev"], **QUICK))
                print(f"{name}: {res['variants'][name]} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr,
                      flush=True)
    return res


# ---- the report of the committed model ----

def tatoeba(data: Path, enc: Any, guess: LanguageGuesser, maps: Mapping[str, np.ndarray] | None,
            apply: str = "both") -> dict[str, Any]:
    """Tatoeba (9 pairs, all lines): accuracy xx->en and en->xx by cosine, centring off / full, each side through
    the maps of its detected languages."""
    from benchmarks.embeddings import embed
    from benchmarks.matrix import bitext_accuracy

    out: dict[str, Any] = {}
    for pair, (xx_s, en_s) in sorted(load_tatoeba(data).items()):
        xx = embed(enc, "passage", xx_s, None, f"tatoeba {pair}")
        en = embed(enc, "passage", en_s, None, f"tatoeba {pair} en")
        if maps is not None:
            xx, en = apply_maps(xx, guess.detect(xx_s), maps), apply_maps(en, guess.detect(en_s), maps)
        vals = {}
        for centering in ("off", "full"):
            cx, ce = center_sides(xx, en, centering)
            vals[f"xx->en/{centering}"] = round(bitext_accuracy(cx, ce, "absolute"), 4)
            vals[f"en->xx/{centering}"] = round(bitext_accuracy(ce, cx, "absolute"), 4)
        out[pair] = vals
    out["mean"] = {c: round(float(np.mean([out[p][c] for p in out])), 4) for c in next(iter(out.values()))}
    return out


def ntrex_eval(enc: Any, guess: LanguageGuesser, maps: Mapping[str, np.ndarray] | None) -> dict[str, Any]:
    """xx->en top-1 accuracy (cosine, centring off / full) on NTREX's evaluation part, every language."""
    from benchmarks.matrix import bitext_accuracy
    from benchmarks.mining_ntrex import ENGLISH, embed_all, eval_texts

    texts = eval_texts()
    vecs = embed_all(enc, texts)
    en = vecs[ENGLISH]
    if maps is not None:
        en = apply_maps(en, guess.detect(texts[ENGLISH]), maps)
    out: dict[str, Any] = {}
    for code, lines in texts.items():
        if code == ENGLISH or code.startswith("eng"):
            continue
        keep = np.asarray([bool(t.strip()) for t in lines])
        xx = apply_maps(vecs[code], guess.detect(lines), maps) if maps is not None else vecs[code]
        vals = {}
        for centering in ("off", "full"):
            cx, ce = center_sides(xx[keep], en[keep], centering)
            vals[centering] = round(bitext_accuracy(cx, ce, "absolute"), 4)
        out[code] = vals
    return out


class ReplayBase:
    """e5-small as a linear encoder's base with its vectors of known texts looked up (the cached ones), others
    encoded: the product's path (index build, ``SearchService.retrieve``) over a linear model without re-embedding."""

    def __init__(self, enc: Any, passages: Mapping[str, np.ndarray], queries: Mapping[str, np.ndarray]) -> None:
        self.enc, self.passages, self.queries = enc, dict(passages), dict(queries)
        self.name, self.dim, self.checksum = enc.name, enc.dim, enc.checksum
        self.backend, self.device = getattr(enc, "backend", "torch"), getattr(enc, "device", "cpu")

    def _lookup(self, texts: Sequence[str], table: dict[str, np.ndarray], encode: Any) -> np.ndarray:
        missing = sorted({t for t in texts if t not in table})
        if missing:
            table.update(zip(missing, encode(missing), strict=True))
        return np.stack([table[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._lookup(texts, self.queries, self.enc.encode_queries)

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32, progress: Any = None) -> np.ndarray:
        out = self._lookup(texts, self.passages, lambda t: self.enc.encode_passages(t, batch_size=batch_size))
        if progress is not None:
            progress(len(texts))
        return out


def product_path(base: Base, enc: Any, resolved: Any, cache: Path) -> dict[str, Any]:
    """The full pool through the product (the linear model's index built by ``xlir index``'s code, every query
    through ``SearchService.retrieve``): conditions ``dense`` (centring default) and ``dense-centering-off``."""
    from benchmarks.retrieval import CONDITIONS, run_inprocess
    from models.linear_maps import LinearMapEncoder

    full = base.pools["full"]
    replay = ReplayBase(enc, {passage_text(d.title, d.text): v for d, v in zip(full.docs, base.doc_raw, strict=True)},
                        {q.text: v for q, v in zip(full.queries, base.q_raw, strict=True)})
    lin = LinearMapEncoder(resolved, replay)
    index = open_index(index_for(full, lin, cache))
    qvecs = lin.encode_queries([q.text for q in full.queries])
    out: dict[str, Any] = {}
    for cond in ("dense", "dense-centering-off"):
        run = run_inprocess(index, lin, full, CONDITIONS[cond], 100, qvecs=qvecs)
        out[cond] = {split: {m: round(v, 4) for m, v in evaluate(full.subset(split=split), run)["all"].items()}
                     for split in ("dev", "test")}
    index.close()
    return out


def run_report(data: Path, model: str) -> dict[str, Any]:
    from models.encoders import load_encoder
    from models.linear_maps import LinearMapEncoder
    from models.registry import resolve_model

    enc = load_encoder("e5-small")
    lin = LinearMapEncoder(resolve_model(model), enc)
    base = load_base(data, enc)
    res: dict[str, Any] = {"model": model, "checksum": lin.checksum, "config": {
        k: v for k, v in lin.config.__dict__.items() if k != "detect"}, "maps": len(lin.maps)}
    for name, maps in (("e5-small", None), (model, lin.maps)):
        docs, qs = (base.doc_raw, base.q_raw) if maps is None else mapped(base, maps, lin.config.apply)
        res.setdefault("xquad_r", {})[name] = score(base, docs, qs, ["dev", "test"])
        res.setdefault("tatoeba", {})[name] = tatoeba(data, enc, lin.guesser, maps, lin.config.apply)
        res.setdefault("ntrex_eval", {})[name] = ntrex_eval(enc, lin.guesser, maps)
        print(f"{name}: done", file=sys.stderr, flush=True)
    res["product_path"] = product_path(base, enc, resolve_model(model), default_cache_root())
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.linear_maps", description=__doc__.split("\n\n")[0])
    ap.add_argument("part", choices=["sweep", "report"])
    ap.add_argument("--data", type=Path, default=None, help="default: ../shared/data (or XLIR_BENCH_DATA)")
    ap.add_argument("--model", default="e5-small-linear", help="the linear-maps model to report")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    ap.add_argument("--methods", default=None, help="sweep: method:lam,... (default: lstsq, procrustes, ridge:1, "
                    "ridge:10)")
    ap.add_argument("--shrinkages", default=None, help="sweep: comma-separated a (default 0,.25,.5,.75)")
    ap.add_argument("--apply", default="both,passages", help="sweep: both and/or passages")
    ap.add_argument("--max-lines", type=int, default=0, help="sweep: at most N training lines per language")
    args = ap.parse_args(argv)
    data = args.data or default_data_dir()
    if args.part == "sweep":
        methods = [(m.split(":")[0], float(m.split(":")[1]) if ":" in m else 0.0)
                   for m in args.methods.split(",")] if args.methods else METHODS
        shrinkages = [float(a) for a in args.shrinkages.split(",")] if args.shrinkages else SHRINKAGES
        res = run_sweep(data, methods, shrinkages, args.apply.split(","), args.max_lines)
    else:
        res = run_report(data, args.model)
    text = json.dumps(res, indent=1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
