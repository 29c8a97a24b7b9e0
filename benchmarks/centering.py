"""Language centring (issue 11) measured with e5-small: LAReQA-style XQuAD-R, single-language indexes, Tatoeba.

Run: ``python -m benchmarks.centering [--out benchmarks/results/centering.json] [--max-questions N]``. Prints a
Markdown report and writes the raw figures as JSON. Centring modes are those of :mod:`indexer.centering`
(``off``; ``offset``: subtract ``mu_lang - mu_all``; ``full``: subtract ``mu_lang``; both re-normalised).

**XQuAD-R, LAReQA style** (Roy et al. 2020, "LAReQA: Language-agnostic answer retrieval from a multilingual
pool"). Every paragraph of every language is cut into sentences by :func:`split_sentences` (our splitter, not
the ``sentence_breaks`` shipped with the data; the report compares the two). The candidates are all sentences of
all paragraphs in all 7 languages; a question's relevant candidates are, in each of the 7 languages, the
sentence(s) overlapping the answer span ``[answer_start, answer_start + len(text))`` of the same question id
(the files are parallel), so a question has about 7 relevant sentences, one per language. Queries are the
questions of every language (e5 ``query:``), candidates are embedded as passages. Articles ``data[i]`` with
``i`` even form **dev**, odd **test** (both pool and questions are split); **all** is the whole set, the pool of
the LAReQA paper. The centroids are the per-language means of the pool's passage embeddings
(:class:`indexer.centering.CentroidStats`); a query is shifted with the centroid of its language, either the
true one or the one :class:`indexer.langid.LanguageDetector` finds in the question. A detected language that
has no centroid in the pool (``und``, or a language outside the 7) leaves the query unshifted, as the count of
such fallbacks in the report shows.

Metrics come from ``ranx`` on the top 100 of each query. AP@20 is LAReQA's mAP@20, for one query with
relevant set ``R`` and ranking ``d_1, d_2, ...``::

    AP@20 = (1 / min(|R|, 20)) * sum_{i <= 20, d_i in R} P@i,    P@i = |{d_1..d_i} & R| / i

and mAP@20 its mean over queries. ranx's ``map@20`` divides by ``|R|`` instead of ``min(|R|, 20)``: the two are
identical as long as no question has more than 20 relevant sentences, which the benchmark checks (and it
recomputes the mean with :func:`ap_at_k` as a cross-check). Also nDCG@10 and Recall@100 (binary relevance), and
the share of candidates in another language than the query among the top 10.

**Monolingual**: per language, an index of that language's sentences only, queried with its questions, nDCG@10
with centroids from that pool: ``offset`` equals ``off`` by construction (``mu_lang == mu_all``), ``full``
shows the cost of centring a single-language index.

**Tatoeba**: 9 pairs xx-eng, 1000 aligned lines each; dev = lines 1-500, test = 501-1000, all = 1000 (mined
within each part). Accuracy of xx->en and en->xx retrieval, the fwd target of :func:`indexer.mining.mine` with
the ``absolute`` margin (cosine nearest neighbour) and the ``ratio`` margin (k=4), without centring, with each
side centred on its own mean (``full``) and with ``offset`` (the global mean is that of both sides), by
:func:`indexer.centering.center_sides`, what ``xlir mine --centering`` does.

**Hybrid** (skip with ``--skip-hybrid``): BM25 (:mod:`indexer.bm25` over :func:`indexer.text.tokenize`, one index
per pool, built in a temporary folder, searched once per query) fused with the dense run by :mod:`app.fusion`, each
retriever contributing its top ``FUSION_DEPTH`` = 100 (the server's ``fusion_depth``): RRF (rrf_k 60) and weighted
(``alpha * dense + (1 - alpha) * bm25`` after min-max, min-fill) for alpha in 0.0, 0.1, ..., 1.0. On the pool the
dense side is ``full`` with the detected query language (the product default) or ``off``; on single-language
indexes ``offset`` (what ``auto`` picks there, equal to ``off``). alpha is chosen on **dev** by the mean AP@20 over
query languages (:func:`choose_alpha`, ties to the larger alpha) and reported on test and all. Metrics are computed
on the fused order (:func:`ranked_run`), not on the fused scores, which tie often.

Embeddings are cached as ``.npy`` in ``$XLIR_HOME/cache/embeddings/``, keyed by the sha256 of the model checksum,
the kind (query or passage) and the texts, so a second run only scores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from app.fusion import Run, rrf, weighted
from benchmarks.datasets import answer_sentences, split_sentences
from indexer.centering import MODES, Centroids, CentroidStats, center, center_by_lang, center_sides
from models.encoders import ProgressFn, length_sorted_batches
from models.registry import xlir_home

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"  # ../shared/data beside the checkout, as in CI
LANGS = ("ar", "de", "en", "es", "hi", "ru", "zh")
TATOEBA = ("ara", "cmn", "deu", "fra", "hin", "jpn", "kor", "rus", "spa")
SPLITS = ("dev", "test", "all")
# (centring mode, which query language picks the query's shift)
CONDITIONS: tuple[tuple[str, str], ...] = (
    ("off", "-"), ("offset", "true"), ("offset", "detected"), ("full", "true"), ("full", "detected"))
METRICS = ("map@20", "ndcg@10", "recall@100")
DEPTH = 100  # run depth handed to the metrics
OTHER_AT = 10
MARGINS = ("absolute", "ratio")
BATCH = 32

# Sentence splitting and the answer-sentence rule are the benchmark datasets' (one splitter for every benchmark).
Span = tuple[int, int]


# --------------------------------------------------------------------------------------------------
# XQuAD-R: candidates, questions, qrels
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """Candidates and questions of XQuAD-R (all languages, all articles) and the relevant candidates."""

    cand_ids: list[str]  # "lang:article:paragraph:sentence"
    cand_langs: list[str]
    cand_articles: np.ndarray
    cand_texts: list[str]
    query_keys: list[str]  # "lang:question id"
    query_langs: list[str]
    query_articles: np.ndarray
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query key -> {candidate id: 1}
    official_counts: dict[str, tuple[int, int]]  # lang -> (our sentences, the data's sentence_breaks)


def build_pool(squads: Mapping[str, Mapping[str, Any]]) -> Pool:
    """Candidates = the sentences of every paragraph of every language; a question's relevant candidates = the
    sentence(s) holding its answer in every language that has the question id (same article and paragraph)."""
    cand_ids: list[str] = []
    cand_langs: list[str] = []
    cand_articles: list[int] = []
    cand_texts: list[str] = []
    questions: list[tuple[str, str, int, str]] = []  # key, lang, article, text
    relevant: dict[str, list[str]] = {}  # question id -> candidate ids over all languages
    official: dict[str, tuple[int, int]] = {}
    for lang, squad in squads.items():
        ours = theirs = 0
        for a, article in enumerate(squad["data"]):
            for p, para in enumerate(article["paragraphs"]):
                context: str = para["context"]
                spans = split_sentences(context, lang)
                ours += len(spans)
                theirs += len(para.get("sentence_breaks", ()))
                prefix = f"{lang}:{a}:{p}:"
                for i, (s, e) in enumerate(spans):
                    cand_ids.append(f"{prefix}{i}")
                    cand_langs.append(lang)
                    cand_articles.append(a)
                    cand_texts.append(context[s:e])
                for qa in para["qas"]:
                    questions.append((f"{lang}:{qa['id']}", lang, a, qa["question"]))
                    hits = relevant.setdefault(qa["id"], [])
                    for ans in qa["answers"]:
                        for i in answer_sentences(spans, int(ans["answer_start"]), len(ans["text"])):
                            cid = f"{prefix}{i}"
                            if cid not in hits:
                                hits.append(cid)
        official[lang] = (ours, theirs)
    qrels = {key: dict.fromkeys(relevant[key.split(":", 1)[1]], 1) for key, *_ in questions}
    return Pool(
        cand_ids=cand_ids, cand_langs=cand_langs, cand_articles=np.asarray(cand_articles, dtype=np.int64),
        cand_texts=cand_texts, query_keys=[q[0] for q in questions], query_langs=[q[1] for q in questions],
        query_articles=np.asarray([q[2] for q in questions], dtype=np.int64), query_texts=[q[3] for q in questions],
        qrels=qrels, official_counts=official)


def split_mask(articles: np.ndarray, split: str) -> np.ndarray:
    """dev: even article index; test: odd; all: everything."""
    if split == "all":
        return np.ones(len(articles), dtype=bool)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}")
    return articles % 2 == (0 if split == "dev" else 1)


def first_per_lang(langs: Sequence[str], mask: np.ndarray, limit: int | None) -> np.ndarray:
    """Rows of ``mask``, keeping at most ``limit`` per language (in order)."""
    rows = np.flatnonzero(mask)
    if limit is None:
        return rows
    seen: Counter[str] = Counter()
    keep = []
    for r in rows.tolist():
        if seen[langs[r]] < limit:
            seen[langs[r]] += 1
            keep.append(r)
    return np.asarray(keep, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# Retrieval and metrics
# --------------------------------------------------------------------------------------------------


def top_k(queries: np.ndarray, cands: np.ndarray, k: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``k`` best candidates per query by inner product (ties: lower row first)."""
    k = min(k, len(cands))
    rows = np.empty((len(queries), k), dtype=np.int64)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), chunk):
        sim = queries[s : s + chunk] @ cands.T
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(sim, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        rows[s : s + chunk] = np.take_along_axis(part, order, axis=1)
        scores[s : s + chunk] = np.take_along_axis(part_scores, order, axis=1)
    return rows, scores


def to_run(query_keys: Sequence[str], cand_ids: Sequence[str], rows: np.ndarray,
           scores: np.ndarray) -> dict[str, dict[str, float]]:
    return {q: {cand_ids[r]: float(s) for r, s in zip(rr.tolist(), ss.tolist(), strict=True)}
            for q, rr, ss in zip(query_keys, rows, scores, strict=True)}


def ap_at_k(relevant: Iterable[str], ranked: Sequence[str], k: int = 20) -> float:
    """LAReQA's AP@k: the sum of P@i over the relevant hits in the top ``k``, divided by ``min(|R|, k)``."""
    rel = set(relevant)
    if not rel:
        return 0.0
    hits, total = 0, 0.0
    for i, doc in enumerate(ranked[:k], start=1):
        if doc in rel:
            hits += 1
            total += hits / i
    return total / min(len(rel), k)


def evaluate_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]],
                 metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """Per-query scores ``{metric: {query: value}}`` computed by ranx."""
    from ranx import Qrels, Run, evaluate

    keys = list(run)
    ranx_run = Run({q: dict(run[q]) for q in keys})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unsafe cast.*")
        evaluate(Qrels({q: dict(qrels[q]) for q in keys}), ranx_run, list(metrics), threads=os.cpu_count() or 1)
    return {m: {q: float(v) for q, v in ranx_run.scores[m].items()} for m in metrics}


def other_lang_share(query_langs: Sequence[str], cand_langs: Sequence[str], rows: np.ndarray,
                     k: int = OTHER_AT) -> np.ndarray:
    """Per query, the share of its top ``k`` candidates whose language differs from the query's."""
    codes = {lang: i for i, lang in enumerate(sorted(set(cand_langs) | set(query_langs)))}
    c = np.asarray([codes[x] for x in cand_langs], dtype=np.int64)
    q = np.asarray([codes[x] for x in query_langs], dtype=np.int64)
    return (c[rows[:, :k]] != q[:, None]).mean(axis=1) if len(rows) else np.zeros(0)


def by_lang(values: Mapping[str, float] | np.ndarray, keys: Sequence[str], langs: Sequence[str]) -> dict[str, float]:
    """Mean per language plus ``mean`` (over the languages present, i.e. macro)."""
    vals = np.asarray([values[k] for k in keys] if isinstance(values, Mapping) else values, dtype=np.float64)
    out = {lang: float(vals[np.asarray(langs) == lang].mean()) for lang in sorted(set(langs))}
    out["mean"] = float(np.mean(list(out.values()))) if out else float("nan")
    return out


def query_shifts(table: Centroids, mode: str, langs: Sequence[str]) -> tuple[np.ndarray, int]:
    """One shift per query (its language's; zero when the table lacks it) and how many lacked one."""
    out = np.zeros((len(langs), table.means.shape[1]), dtype=np.float32)
    missing = 0
    for i, lang in enumerate(langs):
        shift = table.shift(mode, lang)
        if shift is None:
            missing += 1
        else:
            out[i] = shift
    return out, missing


def centred_pool(table: Centroids, mode: str, vecs: np.ndarray, langs: Sequence[str]) -> np.ndarray:
    if mode == "off":
        return vecs
    rows = np.asarray([table.langs.index(x) for x in langs], dtype=np.int64)
    return center_by_lang(vecs, rows, table.shifts(mode))


def pool_centroids(vecs: np.ndarray, langs: Sequence[str]) -> Centroids:
    stats = CentroidStats(vecs.shape[1])
    stats.add(list(langs), vecs)
    return stats.centroids()


# --------------------------------------------------------------------------------------------------
# Embeddings (cached)
# --------------------------------------------------------------------------------------------------


class BenchEncoder(Protocol):
    @property
    def checksum(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray: ...


def cache_key(checksum: str, kind: str, texts: Sequence[str]) -> str:
    """sha256 over the model checksum, the kind and the texts, each length-prefixed (no two inputs collide)."""
    h = hashlib.sha256()
    for part in (checksum, kind, str(len(texts)), *texts):
        data = part.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def embedding_cache_dir() -> Path:
    return xlir_home() / "cache" / "embeddings"


@dataclass
class EmbedStats:
    hits: int = 0
    misses: int = 0
    texts_embedded: int = 0
    seconds: float = 0.0


def embed(enc: BenchEncoder, kind: str, texts: Sequence[str], cache_dir: Path, desc: str,
          stats: EmbedStats | None = None) -> np.ndarray:
    """Embeddings of ``texts`` as ``kind`` (``query`` or ``passage``), from the cache or computed and cached."""
    from tqdm import tqdm

    if kind not in ("query", "passage"):
        raise ValueError(f"unknown kind {kind!r}")
    stats = stats if stats is not None else EmbedStats()
    path = cache_dir / f"{cache_key(enc.checksum, kind, texts)}.npy"
    if path.is_file():
        vecs = np.load(path)
        if vecs.shape == (len(texts), enc.dim):
            stats.hits += 1
            return vecs
    t0 = time.perf_counter()
    with tqdm(total=len(texts), desc=desc, unit="text", file=sys.stderr, leave=False) as bar:
        if kind == "passage":
            vecs = enc.encode_passages(texts, batch_size=BATCH, progress=bar.update)
        else:
            vecs = np.zeros((len(texts), enc.dim), dtype=np.float32)
            for batch in length_sorted_batches([len(t) for t in texts], BATCH):
                vecs[batch] = enc.encode_queries([texts[i] for i in batch.tolist()])
                bar.update(len(batch))
    stats.seconds += time.perf_counter() - t0
    stats.misses += 1
    stats.texts_embedded += len(texts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, np.ascontiguousarray(vecs, dtype=np.float32))
    tmp.replace(path)
    return vecs


def embed_by_group(enc: BenchEncoder, kind: str, texts: Sequence[str], groups: Sequence[str], cache_dir: Path,
                   what: str, stats: EmbedStats) -> np.ndarray:
    """Embed ``texts`` one group (language) at a time, so each group is a cache entry of its own."""
    out = np.zeros((len(texts), enc.dim), dtype=np.float32)
    codes = np.asarray(groups)
    for g in sorted(set(groups)):
        rows = np.flatnonzero(codes == g)
        out[rows] = embed(enc, kind, [texts[i] for i in rows.tolist()], cache_dir, f"{what} {g}", stats)
    return out


# --------------------------------------------------------------------------------------------------
# The three benchmarks
# --------------------------------------------------------------------------------------------------


def condition_name(mode: str, qlang: str) -> str:
    return mode if mode == "off" else f"{mode}/{qlang}"


def pool_slice(pool: Pool, split: str, limit: int | None) -> tuple[
        np.ndarray, np.ndarray, list[str], list[str], list[str], list[str], dict[str, dict[str, int]]]:
    """The multilingual pool of a split: candidate rows, query rows, candidate ids and languages, query keys and
    languages, and their qrels."""
    crow = np.flatnonzero(split_mask(pool.cand_articles, split))
    qrow = first_per_lang(pool.query_langs, split_mask(pool.query_articles, split), limit)
    keys = [pool.query_keys[i] for i in qrow]
    return (crow, qrow, [pool.cand_ids[i] for i in crow], [pool.cand_langs[i] for i in crow], keys,
            [pool.query_langs[i] for i in qrow], {k: pool.qrels[k] for k in keys})


def bench_xquad(pool: Pool, cand_vecs: np.ndarray, query_vecs: np.ndarray, detected: Sequence[str],
                limit: int | None) -> dict[str, Any]:
    """Multilingual pool, per split and condition: metrics per query language, other-language share, checks."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        crow, qrow, c_ids, c_langs, keys, q_langs, qrels = pool_slice(pool, split, limit)
        q_detected = [detected[i] for i in qrow]
        n_rel = np.asarray([len(qrels[k]) for k in keys])
        table = pool_centroids(cand_vecs[crow], c_langs)
        res: dict[str, Any] = {
            "candidates": len(crow), "queries": len(qrow),
            "relevant_per_query": {"mean": float(n_rel.mean()), "min": int(n_rel.min()), "max": int(n_rel.max())},
            "conditions": {},
        }
        for mode, which in CONDITIONS:
            cands = centred_pool(table, mode, cand_vecs[crow], c_langs)
            shifts, missing = query_shifts(table, mode, q_detected if which == "detected" else q_langs)
            queries = center(query_vecs[qrow], shifts) if mode != "off" else query_vecs[qrow]
            rows, scores = top_k(queries, cands, DEPTH)
            run = to_run(keys, c_ids, rows, scores)
            per_query = evaluate_run(qrels, run)
            own = [ap_at_k(qrels[k], list(run[k]), 20) for k in keys]
            res["conditions"][condition_name(mode, which)] = {
                **{m: by_lang(per_query[m], keys, q_langs) for m in METRICS},
                "other_lang@10": by_lang(other_lang_share(q_langs, c_langs, rows), keys, q_langs),
                "queries_without_centroid": missing,
                "map@20_own_minus_ranx": float(np.mean(own) - np.mean([per_query["map@20"][k] for k in keys])),
            }
        out[split] = res
    return out


def mono_slice(pool: Pool, split: str, lang: str, limit: int | None
               ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], dict[str, dict[str, int]]]:
    """One language's pool of a split: candidate rows, query rows, candidate ids, query keys and the qrels
    restricted to that language's candidates."""
    crow = np.flatnonzero(split_mask(pool.cand_articles, split) & (np.asarray(pool.cand_langs) == lang))
    qmask = split_mask(pool.query_articles, split) & (np.asarray(pool.query_langs) == lang)
    qrow = first_per_lang(pool.query_langs, qmask, limit)
    c_ids = [pool.cand_ids[i] for i in crow]
    c_set = set(c_ids)
    keys = [pool.query_keys[i] for i in qrow]
    return crow, qrow, c_ids, keys, {k: {c: 1 for c in pool.qrels[k] if c in c_set} for k in keys}


def bench_mono(pool: Pool, cand_vecs: np.ndarray, query_vecs: np.ndarray, limit: int | None) -> dict[str, Any]:
    """Single-language indexes: nDCG@10 per language and mode, centroids from that language's pool only."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        res: dict[str, Any] = {}
        for lang in LANGS:
            crow, qrow, c_ids, keys, qrels = mono_slice(pool, split, lang, limit)
            langs = [lang] * len(crow)
            table = pool_centroids(cand_vecs[crow], langs)
            vals: dict[str, float] = {}
            cands_by_mode: dict[str, np.ndarray] = {}
            for mode in MODES:
                cands = cands_by_mode[mode] = centred_pool(table, mode, cand_vecs[crow], langs)
                shifts, _ = query_shifts(table, mode, [lang] * len(qrow))
                queries = center(query_vecs[qrow], shifts) if mode != "off" else query_vecs[qrow]
                rows, scores = top_k(queries, cands, DEPTH)
                per_query = evaluate_run(qrels, to_run(keys, c_ids, rows, scores), ["ndcg@10"])
                vals[mode] = float(np.mean(list(per_query["ndcg@10"].values())))
            vals["offset_max_abs_vector_change"] = float(np.abs(cands_by_mode["offset"] - cands_by_mode["off"]).max())
            res[lang] = vals
        res["mean"] = {m: float(np.mean([res[lang][m] for lang in LANGS])) for m in MODES}
        out[split] = res
    return out


def read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")


def bitext_accuracy(src: np.ndarray, tgt: np.ndarray, margin: str, k: int = 4) -> float:
    """Share of source rows whose fwd-mined target is the row of the same index."""
    from indexer.mining import mine

    pairs = mine(src, tgt, k=k, margin=margin, retrieval="fwd")
    pred = np.full(len(src), -1, dtype=np.int64)
    for p in pairs:
        pred[p.src] = p.tgt
    return float((pred == np.arange(len(src))).mean())


def tatoeba_slices(n: int) -> dict[str, slice]:
    half = n // 2
    return {"dev": slice(0, half), "test": slice(n - half, n), "all": slice(0, n)}


def bench_tatoeba(sides: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Accuracy per split, pair and ``direction/margin/mode`` (``xx->en`` and ``en->xx``), plus means."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        res: dict[str, dict[str, float]] = {}
        for pair, (xx_all, en_all) in sides.items():
            sl = tatoeba_slices(len(xx_all))[split]
            vals: dict[str, float] = {}
            for mode in ("off", "full", "offset"):
                xx, en = center_sides(xx_all[sl], en_all[sl], mode)
                for margin in MARGINS:
                    vals[f"xx->en/{margin}/{mode}"] = bitext_accuracy(xx, en, margin)
                    vals[f"en->xx/{margin}/{mode}"] = bitext_accuracy(en, xx, margin)
            res[pair] = vals
        cols = list(next(iter(res.values())))
        res["mean"] = {c: float(np.mean([res[p][c] for p in sides])) for c in cols}
        out[split] = res
    return out


def bench_lid(langs: Sequence[str], detected: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for lang in LANGS:
        got = [d for t, d in zip(langs, detected, strict=True) if t == lang]
        wrong = Counter(d for d in got if d != lang)
        out[lang] = {"questions": len(got), "accuracy": sum(d == lang for d in got) / max(len(got), 1),
                     "confusions": dict(wrong.most_common(5))}
    out["mean"] = float(np.mean([out[lang]["accuracy"] for lang in LANGS]))
    return out


# --------------------------------------------------------------------------------------------------
# Hybrid: BM25 + dense, fused with the server's functions
# --------------------------------------------------------------------------------------------------

FUSION_DEPTH = 100  # each retriever's contribution to fusion (the server's fusion_depth)
HYBRID_RRF_K = 60.0
ALPHAS = tuple(i / 10 for i in range(11))  # weighted fusion: alpha * dense + (1 - alpha) * bm25
# hybrid conditions on the multilingual pool (the dense side of a fused run is named after the slash)
HYBRID_CONDITIONS = ("bm25", "dense/off", "dense/full", "rrf/full", "weighted/full", "weighted/off")
SWEEP_METRICS = ("map@20", "ndcg@10")  # the alpha sweeps and the single-language indexes
SWEEP_DEPTH = 20  # all those metrics need of a ranking


def choose_alpha(means: Mapping[float, float]) -> float:
    """The alpha with the highest score (mean AP@20 on dev); exact ties go to the larger alpha."""
    if not means:
        raise ValueError("no alpha to choose from")
    return max(means, key=lambda a: (means[a], a))


def ranked_run(keys: Sequence[str], cand_ids: Sequence[str],
               rankings: Sequence[Sequence[int]]) -> dict[str, dict[str, float]]:
    """A ranx run from rankings (candidate rows best first) with scores ``n, n - 1, ..., 1``, so that ranx scores
    exactly our order (fused scores tie often, e.g. RRF ranks; ranx would order ties its own way)."""
    return {q: {cand_ids[r]: float(len(rows) - i) for i, r in enumerate(rows)}
            for q, rows in zip(keys, rankings, strict=True)}


def dense_runs(rows: np.ndarray, scores: np.ndarray) -> list[Run]:
    """One fusion run per query from :func:`top_k` output."""
    return [Run(r, s) for r, s in zip(rows, scores, strict=True)]


def fuse_rankings(dense: Sequence[Run], bm25: Sequence[Run], how: str, param: float,
                  k: int = DEPTH) -> list[list[int]]:
    """Per query, the rows of the top ``k`` of :func:`app.fusion.rrf` (``how="rrf"``, ``param`` = rrf_k) or
    :func:`app.fusion.weighted` (``how="weighted"``, ``param`` = alpha, the dense weight)."""
    if how not in ("rrf", "weighted"):
        raise ValueError(f"unknown fusion {how!r}")
    out = []
    for d, b in zip(dense, bm25, strict=True):
        runs = {"dense": d, "bm25": b}
        hits = (rrf(runs, k=k, rrf_k=param) if how == "rrf"
                else weighted(runs, {"dense": param, "bm25": 1.0 - param}, k=k))
        out.append([h.row for h in hits])
    return out


@dataclass
class HybridClock:
    """Seconds spent per step of the hybrid section, and how many BM25 indexes / queries."""

    seconds: dict[str, float]
    bm25_indexes: int = 0
    bm25_queries: int = 0

    def add(self, step: str, t0: float) -> None:
        self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - t0


def bm25_runs(cand_tokens: Sequence[Sequence[str]], query_tokens: Sequence[Sequence[str]], workdir: Path,
              clock: HybridClock, k: int = FUSION_DEPTH) -> list[Run]:
    """Index ``cand_tokens`` (rows in that order) with :class:`indexer.bm25.BM25Builder` in a fresh folder under
    ``workdir`` and search it once per query: its top ``k`` hits with a positive score."""
    from indexer.bm25 import BM25Builder, BM25Searcher

    t0 = time.perf_counter()
    builder = BM25Builder()
    for tokens in cand_tokens:
        builder.add(tokens)
    directory = workdir / f"bm25-{clock.bm25_indexes}"
    builder.save(directory)
    searcher = BM25Searcher(directory)
    clock.bm25_indexes += 1
    clock.add("bm25 build", t0)
    t0 = time.perf_counter()
    out = []
    for tokens in query_tokens:
        scores, rows = searcher.search(tokens, k)
        out.append(Run(rows, scores))
    clock.bm25_queries += len(query_tokens)
    clock.add("bm25 search", t0)
    return out


def _evaluate_rankings(qrels: Mapping[str, Mapping[str, int]], keys: Sequence[str], q_langs: Sequence[str],
                       c_ids: Sequence[str], rankings: Sequence[Sequence[int]], clock: HybridClock,
                       metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    t0 = time.perf_counter()
    per_query = evaluate_run(qrels, ranked_run(keys, c_ids, rankings), metrics)
    clock.add("ranx", t0)
    return {m: by_lang(per_query[m], keys, q_langs) for m in metrics}


def _evaluate_means(qrels: Mapping[str, Mapping[str, int]], keys: Sequence[str], q_langs: Sequence[str],
                    c_ids: Sequence[str], rankings: Sequence[Sequence[int]], clock: HybridClock) -> dict[str, float]:
    got = _evaluate_rankings(qrels, keys, q_langs, c_ids, rankings, clock, SWEEP_METRICS)
    return {m: got[m]["mean"] for m in SWEEP_METRICS}


def _fuse(dense: Sequence[Run], bm25: Sequence[Run], how: str, param: float, clock: HybridClock,
          k: int = DEPTH) -> list[list[int]]:
    t0 = time.perf_counter()
    out = fuse_rankings(dense, bm25, how, param, k)
    clock.add("fusion", t0)
    return out


def _rankings(runs: Sequence[Run], k: int = DEPTH) -> list[list[int]]:
    return [r.rows[:k].tolist() for r in runs]


def bench_hybrid_xquad(pool: Pool, cand_vecs: np.ndarray, query_vecs: np.ndarray, detected: Sequence[str],
                       cand_tokens: Sequence[Sequence[str]], query_tokens: Sequence[Sequence[str]],
                       limit: int | None, workdir: Path, clock: HybridClock) -> dict[str, Any]:
    """Multilingual pool: BM25 over the split's candidates, dense off and full (detected query language), RRF
    and weighted fusion; alpha chosen on dev (weighted/full and weighted/off separately), applied to test and all."""
    out: dict[str, Any] = {"alpha": {}, "dev_sweep": {}}
    for split in SPLITS:  # dev first: it fixes the alphas
        crow, qrow, c_ids, c_langs, keys, q_langs, qrels = pool_slice(pool, split, limit)
        bm25 = bm25_runs([cand_tokens[i] for i in crow.tolist()], [query_tokens[i] for i in qrow.tolist()],
                         workdir, clock)
        t0 = time.perf_counter()
        table = pool_centroids(cand_vecs[crow], c_langs)
        dense: dict[str, list[Run]] = {}
        for mode in ("off", "full"):
            cands = centred_pool(table, mode, cand_vecs[crow], c_langs)
            shifts, _ = query_shifts(table, mode, [detected[i] for i in qrow])
            queries = center(query_vecs[qrow], shifts) if mode != "off" else query_vecs[qrow]
            dense[mode] = dense_runs(*top_k(queries, cands, FUSION_DEPTH))
        clock.add("dense", t0)
        evaluate = partial(_evaluate_rankings, qrels, keys, q_langs, c_ids, clock=clock)
        evaluate_top = partial(_evaluate_rankings, qrels, keys, q_langs, c_ids, clock=clock, metrics=SWEEP_METRICS)
        conds: dict[str, Any] = {"bm25": evaluate(_rankings(bm25)), "dense/off": evaluate(_rankings(dense["off"])),
                                 "dense/full": evaluate(_rankings(dense["full"])),
                                 "rrf/full": evaluate(_fuse(dense["full"], bm25, "rrf", HYBRID_RRF_K, clock))}
        for mode in ("full", "off"):
            if split == "dev":
                sweep = {a: evaluate_top(_fuse(dense[mode], bm25, "weighted", a, clock, SWEEP_DEPTH)) for a in ALPHAS}
                out["dev_sweep"][mode] = {str(a): {m: v[m]["mean"] for m in SWEEP_METRICS} for a, v in sweep.items()}
                out["alpha"][mode] = choose_alpha({a: v["map@20"]["mean"] for a, v in sweep.items()})
            conds[f"weighted/{mode}"] = evaluate(_fuse(dense[mode], bm25, "weighted", out["alpha"][mode], clock))
        out[split] = {"candidates": len(crow), "queries": len(qrow),
                      "bm25_queries_without_hit": sum(len(r.rows) == 0 for r in bm25),
                      "conditions": {c: conds[c] for c in HYBRID_CONDITIONS}}
    return out


def bench_hybrid_mono(pool: Pool, cand_vecs: np.ndarray, query_vecs: np.ndarray, cand_tokens: Sequence[Sequence[str]],
                      query_tokens: Sequence[Sequence[str]], limit: int | None, workdir: Path,
                      clock: HybridClock) -> dict[str, Any]:
    """Single-language indexes: BM25 over that language's sentences, dense with ``offset`` (what ``auto`` picks
    for one language; equal to ``off``), RRF and weighted fusion, alpha chosen on dev by mean AP@20 over the 7
    languages; nDCG@10 (and AP@20) per language."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        per_lang: dict[str, dict[str, Any]] = {}
        for lang in LANGS:
            crow, qrow, c_ids, keys, qrels = mono_slice(pool, split, lang, limit)
            q_langs = [lang] * len(qrow)
            bm25 = bm25_runs([cand_tokens[i] for i in crow.tolist()], [query_tokens[i] for i in qrow.tolist()],
                             workdir, clock)
            t0 = time.perf_counter()
            langs = [lang] * len(crow)
            table = pool_centroids(cand_vecs[crow], langs)
            cands = centred_pool(table, "offset", cand_vecs[crow], langs)
            shifts, _ = query_shifts(table, "offset", q_langs)
            dense = dense_runs(*top_k(center(query_vecs[qrow], shifts), cands, FUSION_DEPTH))
            clock.add("dense", t0)
            evaluate = partial(_evaluate_means, qrels, keys, q_langs, c_ids, clock=clock)
            k = SWEEP_DEPTH
            vals: dict[str, Any] = {"bm25": evaluate(_rankings(bm25, k)), "dense": evaluate(_rankings(dense, k)),
                                    "rrf": evaluate(_fuse(dense, bm25, "rrf", HYBRID_RRF_K, clock, k))}
            if split == "dev":
                vals["sweep"] = {a: evaluate(_fuse(dense, bm25, "weighted", a, clock, k)) for a in ALPHAS}
            else:
                vals["weighted"] = evaluate(_fuse(dense, bm25, "weighted", out["alpha"], clock, k))
            per_lang[lang] = vals
        if split == "dev":
            sweep = {a: {m: float(np.mean([per_lang[lang]["sweep"][a][m] for lang in LANGS])) for m in SWEEP_METRICS}
                     for a in ALPHAS}
            out["dev_sweep"] = {str(a): v for a, v in sweep.items()}
            alpha = out["alpha"] = choose_alpha({a: v["map@20"] for a, v in sweep.items()})
            for lang in LANGS:
                per_lang[lang]["weighted"] = per_lang[lang].pop("sweep")[alpha]
        res: dict[str, Any] = {lang: per_lang[lang] for lang in LANGS}
        res["mean"] = {c: {m: float(np.mean([per_lang[lang][c][m] for lang in LANGS])) for m in SWEEP_METRICS}
                       for c in ("bm25", "dense", "rrf", "weighted")}
        out[split] = res
    return out


def bench_hybrid(pool: Pool, cand_vecs: np.ndarray, query_vecs: np.ndarray, detected: Sequence[str],
                 limit: int | None) -> dict[str, Any]:
    """The hybrid section: multilingual pool and single-language indexes, with its own timings."""
    import tempfile

    from indexer.text import tokenize

    t_all = time.perf_counter()
    clock = HybridClock(seconds={})
    t0 = time.perf_counter()
    cand_tokens = [tokenize(t) for t in pool.cand_texts]
    query_tokens = [tokenize(t) for t in pool.query_texts]
    clock.add("tokenize", t0)
    with tempfile.TemporaryDirectory(prefix="xlir-centering-bm25-") as tmp:
        xquad = bench_hybrid_xquad(pool, cand_vecs, query_vecs, detected, cand_tokens, query_tokens, limit,
                                   Path(tmp), clock)
        mono = bench_hybrid_mono(pool, cand_vecs, query_vecs, cand_tokens, query_tokens, limit, Path(tmp), clock)
    from indexer import bm25

    return {"fusion_depth": FUSION_DEPTH, "rrf_k": HYBRID_RRF_K, "alphas": list(ALPHAS),
            "bm25": {"k1": bm25.K1, "b": bm25.B, "method": bm25.METHOD}, "xquad": xquad,
            "mono": mono, "timings": {**clock.seconds, "total": time.perf_counter() - t_all},
            "bm25_indexes": clock.bm25_indexes, "bm25_queries": clock.bm25_queries}


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def render(res: Mapping[str, Any]) -> str:
    L: list[str] = []
    L += [f"# Language centring with {res['model']} (issue 11)", ""]
    L += [f"Machine: {res['machine']}. Commit: {res['commit']}. Model checksum {res['checksum'][:12]}. "
          f"Metrics: ranx {res['ranx_version']}. Max questions per language and split: "
          f"{res['max_questions'] or 'all'}.", ""]
    t = res["timings"]
    L += ["Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in t.items()) + f". Embedding cache: "
          f"{res['cache']['hits']} hits, {res['cache']['misses']} misses ({res['cache']['texts_embedded']} texts "
          f"embedded) in {res['cache']['dir']}.", ""]

    x = res["xquad"]
    L += ["## XQuAD-R, multilingual pool (LAReQA style)", ""]
    sizes = ", ".join(f"{s}: {x[s]['candidates']} candidates, {x[s]['queries']} queries, "
                      f"{x[s]['relevant_per_query']['mean']:.2f} relevant per query (max "
                      f"{x[s]['relevant_per_query']['max']})" for s in SPLITS)
    L += [f"Pools: {sizes}. dev = even articles, test = odd, all = the LAReQA pool.", ""]
    seg = ", ".join(f"{lang} {o}/{t_}" for lang, (o, t_) in res["segmentation"].items())
    L += [f"Sentences, our splitter / the data's sentence_breaks: {seg}.", ""]
    L += ["### Summary: mean over query languages", ""]
    head = ["condition"] + [f"{s} {m}" for s in SPLITS for m in ("AP@20", "other@10")] + ["all nDCG@10", "all R@100"]
    rows = []
    for mode, which in CONDITIONS:
        name = condition_name(mode, which)
        row = [name]
        for s in SPLITS:
            c = x[s]["conditions"][name]
            row += [_f(c["map@20"]["mean"]), _f(c["other_lang@10"]["mean"])]
        c = x["all"]["conditions"][name]
        rows.append(row + [_f(c["ndcg@10"]["mean"]), _f(c["recall@100"]["mean"])])
    L += _table(head, rows)
    for mode, which in CONDITIONS:
        name = condition_name(mode, which)
        title = {"off": "off (plain dense)", "true": "true query language", "detected": "detected query language"}
        L += [f"### {mode}" + ("" if mode == "off" else f", {title[which]}"), ""]
        rows = []
        for s in SPLITS:
            c = x[s]["conditions"][name]
            rows.append([s, "AP@20"] + [_f(c["map@20"][lang]) for lang in (*LANGS, "mean")])
            rows.append([s, "other@10"] + [_f(c["other_lang@10"][lang]) for lang in (*LANGS, "mean")])
        L += _table(["split", "metric", *LANGS, "mean"], rows)
        if which == "detected":
            L += ["Queries whose detected language has no centroid (left unshifted): "
                  + ", ".join(f"{s} {x[s]['conditions'][name]['queries_without_centroid']}" for s in SPLITS) + ".", ""]
    diffs = [abs(x[s]["conditions"][condition_name(m, w)]["map@20_own_minus_ranx"]) for s in SPLITS
             for m, w in CONDITIONS]
    L += [f"AP@20 cross-check (own LAReQA formula vs ranx map@20): max |difference| of the means {max(diffs):.2e}.",
          ""]

    m = res["mono"]
    L += ["## Monolingual indexes: nDCG@10", "",
          "Each language alone; centroids from that pool only. Δ = full - off in nDCG points (x100).", ""]
    rows = []
    for lang in (*LANGS, "mean"):
        row = [lang]
        for s in ("dev", "test", "all"):
            v = m[s][lang]
            row += [_f(v["off"]), _f(v["offset"]), _f(v["full"]), f"{100 * (v['full'] - v['off']):+.2f}"]
        rows.append(row)
    L += _table(["lang"] + [f"{s} {c}" for s in ("dev", "test", "all") for c in ("off", "offset", "full", "Δ")], rows)
    worst = max(m[s][lang]["offset_max_abs_vector_change"] for s in SPLITS for lang in LANGS)
    same = all(m[s][lang]["offset"] == m[s][lang]["off"] for s in SPLITS for lang in LANGS)
    L += [f"offset vs off on one language: largest change of a candidate vector component {worst:.1e}; nDCG@10 "
          f"identical everywhere: {'yes' if same else 'no'}.", ""]

    tb = res["tatoeba"]
    L += ["## Tatoeba (9 pairs, accuracy of the fwd match)", "",
          "cos = nearest neighbour by cosine (margin absolute); ratio = ratio margin, k=4.", ""]
    cols = [(d, mg, mo) for mg in MARGINS for d in ("xx->en", "en->xx") for mo in ("off", "full", "offset")]
    short = {"absolute": "cos", "ratio": "ratio"}
    head = ["pair"] + [f"{d} {short[mg]} {mo}" for d, mg, mo in cols]
    for s in SPLITS:
        L += [f"### {s} ({ {'dev': 'lines 1-500', 'test': 'lines 501-1000', 'all': 'all 1000 lines'}[s] })", ""]
        rows = [[p] + [_f(tb[s][p][f"{d}/{mg}/{mo}"]) for d, mg, mo in cols] for p in (*TATOEBA, "mean")]
        L += _table(head, rows)
    L += ["### Mean of both directions over the 9 pairs", ""]
    rows = []
    for s in SPLITS:
        mean = tb[s]["mean"]
        rows.append([s] + [_f((mean[f"xx->en/{mg}/{mo}"] + mean[f"en->xx/{mg}/{mo}"]) / 2)
                           for mg in MARGINS for mo in ("off", "full", "offset")])
    L += _table(["split"] + [f"{short[mg]} {mo}" for mg in MARGINS for mo in ("off", "full", "offset")], rows)

    lid = res["lid"]
    L += ["## Language identification of the XQuAD-R questions (LanguageDetector)", ""]
    rows = [[lang, str(lid[lang]["questions"]), _f(lid[lang]["accuracy"]),
             ", ".join(f"{k} {v}" for k, v in lid[lang]["confusions"].items()) or "-"] for lang in LANGS]
    rows.append(["mean", "", _f(lid["mean"]), ""])
    L += _table(["lang", "questions", "accuracy", "most frequent wrong labels"], rows)
    if "hybrid" in res:
        L += render_hybrid(res)
    return "\n".join(L)


HYBRID_LABELS = {"bm25": "BM25", "dense/off": "dense off", "dense/full": "dense full (detected)",
                 "rrf/full": "RRF + dense full", "weighted/full": "weighted + dense full",
                 "weighted/off": "weighted + dense off"}


def render_hybrid(res: Mapping[str, Any]) -> list[str]:
    h = res["hybrid"]
    hx, hm = h["xquad"], h["mono"]
    a_full, a_off, a_mono = hx["alpha"]["full"], hx["alpha"]["off"], hm["alpha"]
    L = ["## Hybrid: BM25 + dense on XQuAD-R (fusion tuned with centring on)", ""]
    bm = h["bm25"]
    L += [f"BM25: `indexer.bm25` (k1 {bm['k1']:g}, b {bm['b']:g}, {bm['method']}) over `indexer.text.tokenize`, "
          f"one index per pool. Dense: "
          f"e5-small, `off` or `full` with the detected query language (the product default on a multilingual "
          f"index); on a single-language index `offset` (what `auto` picks there; equal to `off`). Each retriever "
          f"contributes its top {h['fusion_depth']} (the server's fusion_depth), fused by `app.fusion`: RRF with "
          f"rrf_k {h['rrf_k']:g}; weighted = alpha * dense + (1 - alpha) * BM25, min-max normalised, min-fill. "
          f"Metrics (ranx) on the fused top {DEPTH} in the fused order (the top {SWEEP_DEPTH}, all AP@20 and "
          f"nDCG@10 depend on, for the alpha sweeps and the single-language indexes). alpha in "
          f"{ALPHAS[0]:.1f}, {ALPHAS[1]:.1f}, ..., {ALPHAS[-1]:.1f}, chosen on **dev** by mean AP@20 over the query "
          f"languages (ties: larger alpha): "
          f"pool with dense full **{a_full:.1f}**, pool with dense off **{a_off:.1f}**, single-language indexes "
          f"**{a_mono:.1f}**; test and all are reported at those alphas.", ""]
    t = h["timings"]
    per_query = 1e6 * t.get("bm25 search", 0.0) / max(h["bm25_queries"], 1)
    L += [f"Hybrid section: {t['total']:.1f} s (tokenize {t.get('tokenize', 0.0):.1f}, BM25 build "
          f"{t.get('bm25 build', 0.0):.1f} for {h['bm25_indexes']} indexes, BM25 search {t.get('bm25 search', 0.0):.1f}"
          f" for {h['bm25_queries']} queries = {per_query:.0f} µs/query, dense {t.get('dense', 0.0):.1f}, fusion "
          f"{t.get('fusion', 0.0):.1f}, ranx {t.get('ranx', 0.0):.1f}).", ""]

    L += ["### Dev sweep of alpha (mean over query languages)", "",
          "\\* = the alpha chosen for that column's setting (by AP@20).", ""]
    rows = []
    for a in ALPHAS:
        row = [f"{a:.1f}"]
        for sweep, chosen in ((hx["dev_sweep"]["full"], a_full), (hx["dev_sweep"]["off"], a_off),
                              (hm["dev_sweep"], a_mono)):
            star = "\\*" if a == chosen else ""
            row += [_f(sweep[str(a)]["map@20"]) + star, _f(sweep[str(a)]["ndcg@10"])]
        rows.append(row)
    L += _table(["alpha", "pool+full AP@20", "pool+full nDCG@10", "pool+off AP@20", "pool+off nDCG@10",
                 "mono AP@20", "mono nDCG@10"], rows)

    L += ["### Multilingual pool: AP@20 per query language", "",
          f"Weighted + dense full at alpha {a_full:.1f}, weighted + dense off at alpha {a_off:.1f}. Δ = mean AP@20 "
          "minus that of dense full alone, in points (x100). dev is the tuning split.", ""]
    rows = []
    for s in ("test", "all", "dev"):
        conds = hx[s]["conditions"]
        base = conds["dense/full"]["map@20"]["mean"]
        for c in HYBRID_CONDITIONS:
            v = conds[c]
            rows.append([s, HYBRID_LABELS[c]] + [_f(v["map@20"][lang]) for lang in (*LANGS, "mean")]
                        + [f"{100 * (v['map@20']['mean'] - base):+.2f}", _f(v["ndcg@10"]["mean"]),
                           _f(v["recall@100"]["mean"])])
    L += _table(["split", "condition", *LANGS, "mean AP@20", "Δ", "nDCG@10", "R@100"], rows)
    L += ["Queries without a BM25 hit: " + ", ".join(f"{s} {hx[s]['bm25_queries_without_hit']}" for s in SPLITS)
          + ".", ""]

    L += ["### Single-language indexes: nDCG@10", "",
          f"Each language's own pool; BM25 over that language only; dense `offset` (= `off`); weighted at alpha "
          f"{a_mono:.1f}. dev is the tuning split.", ""]
    cols = ("bm25", "dense", "rrf", "weighted")
    names = {"bm25": "BM25", "dense": "dense", "rrf": "RRF", "weighted": "weighted"}
    rows = []
    for lang in (*LANGS, "mean"):
        rows.append([lang] + [_f(hm[s][lang][c]["ndcg@10"]) for s in ("test", "all", "dev") for c in cols])
    L += _table(["lang"] + [f"{s} {names[c]}" for s in ("test", "all", "dev") for c in cols], rows)
    rows = [[s] + [_f(hm[s]["mean"][c]["map@20"]) for c in cols] for s in ("test", "all", "dev")]
    L += ["Mean AP@20 over the 7 languages:", ""] + _table(["split"] + [names[c] for c in cols], rows)

    # hybrid vs dense alone, and a check that dense alone reproduces the centring section
    d = {s: {c: 100 * (hx[s]["conditions"][c]["map@20"]["mean"] - hx[s]["conditions"]["dense/full"]["map@20"]["mean"])
             for c in ("rrf/full", "weighted/full")} for s in ("test", "all")}
    m = {s: {c: 100 * (hm[s]["mean"][c]["ndcg@10"] - hm[s]["mean"]["dense"]["ndcg@10"]) for c in ("rrf", "weighted")}
         for s in ("test", "all")}
    L += ["Hybrid minus dense alone, in points: multilingual pool mean AP@20 "
          + "; ".join(f"{s}: RRF {d[s]['rrf/full']:+.2f}, weighted {d[s]['weighted/full']:+.2f}" for s in d)
          + ". Single-language nDCG@10 (mean of 7) "
          + "; ".join(f"{s}: RRF {m[s]['rrf']:+.2f}, weighted {m[s]['weighted']:+.2f}" for s in m) + ".", ""]
    diffs = [abs(hx[s]["conditions"][hc]["map@20"]["mean"] - res["xquad"][s]["conditions"][xc]["map@20"]["mean"])
             for s in SPLITS for hc, xc in (("dense/off", "off"), ("dense/full", "full/detected"))]
    diffs += [abs(hm[s][lang]["dense"]["ndcg@10"] - res["mono"][s][lang]["offset"]) for s in SPLITS for lang in LANGS]
    L += [f"Check: dense alone here vs the centring sections above (AP@20 means, single-language nDCG@10): max "
          f"|difference| {max(diffs):.1e}.", ""]
    return L


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def run(data: Path, model: str, limit: int | None, hybrid: bool = True) -> dict[str, Any]:
    from importlib.metadata import version

    from benchmarks.demo_bench import commit, machine
    from indexer.langid import LanguageDetector
    from models.encoders import load_encoder

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    head = {"model": model, "machine": machine(), "commit": commit()}
    t0 = time.perf_counter()
    enc = load_encoder(model)
    timings["load model"] = time.perf_counter() - t0
    cache_dir = embedding_cache_dir()
    stats = EmbedStats()

    t0 = time.perf_counter()
    squads = {lang: json.loads((data / "xquad-r" / f"{lang}.json").read_text(encoding="utf-8")) for lang in LANGS}
    pool = build_pool(squads)
    cand_vecs = embed_by_group(enc, "passage", pool.cand_texts, pool.cand_langs, cache_dir, "xquad sentences", stats)
    query_vecs = embed_by_group(enc, "query", pool.query_texts, pool.query_langs, cache_dir, "xquad questions", stats)
    sides: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for code in TATOEBA:
        stem = data / "tatoeba" / f"tatoeba.{code}-eng"
        xx_text, en_text = read_lines(Path(f"{stem}.{code}")), read_lines(Path(f"{stem}.eng"))
        if len(xx_text) != len(en_text):
            raise ValueError(f"{stem}: {len(xx_text)} vs {len(en_text)} lines")
        sides[code] = (embed(enc, "passage", xx_text, cache_dir, f"tatoeba {code}", stats),
                       embed(enc, "passage", en_text, cache_dir, f"tatoeba {code}-eng", stats))
    timings["data + embeddings"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    detector = LanguageDetector()
    detected = detector.detect_many(pool.query_texts)
    timings["language id"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    xquad = bench_xquad(pool, cand_vecs, query_vecs, detected, limit)
    timings["xquad-r eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mono = bench_mono(pool, cand_vecs, query_vecs, limit)
    timings["monolingual eval"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tatoeba = bench_tatoeba(sides)
    timings["tatoeba eval"] = time.perf_counter() - t0
    extra: dict[str, Any] = {}
    if hybrid:
        t0 = time.perf_counter()
        extra["hybrid"] = bench_hybrid(pool, cand_vecs, query_vecs, detected, limit)
        timings["hybrid eval"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_all
    return {
        **head, "checksum": enc.checksum,
        "ranx_version": version("ranx"), "max_questions": limit, "timings": timings,
        "cache": {"dir": str(cache_dir), "hits": stats.hits, "misses": stats.misses,
                  "texts_embedded": stats.texts_embedded, "embed_seconds": stats.seconds},
        "segmentation": {lang: list(v) for lang, v in pool.official_counts.items()},
        "xquad": xquad, "mono": mono, "tatoeba": tatoeba, "lid": bench_lid(pool.query_langs, detected), **extra,
    }


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.centering", description=__doc__.split("\n", 1)[0])
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "centering.json",
                    help="JSON file for the raw figures")
    ap.add_argument("--max-questions", type=int, default=None, metavar="N",
                    help="at most N questions per language and split (quick runs)")
    ap.add_argument("--data", type=Path, default=DATA, help="folder holding xquad-r/ and tatoeba/")
    ap.add_argument("--model", default="e5-small")
    ap.add_argument("--skip-hybrid", action="store_true", help="skip the hybrid (BM25 + dense fusion) section")
    args = ap.parse_args(argv)
    if args.max_questions is not None and args.max_questions < 1:
        ap.error("--max-questions must be >= 1")
    res = run(args.data, args.model, args.max_questions, hybrid=not args.skip_hybrid)
    print(render(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nraw figures: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
