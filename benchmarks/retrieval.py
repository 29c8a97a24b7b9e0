"""Retrieval benchmark THROUGH THE PRODUCT: an xlir index, the server's one retrieval path or its REST API, ranx scores.
Over 500 lines: one benchmark (index cache, in-process and REST runners, metrics, TREC files, CLI) run as a whole.

Run: ``xlir bench retrieval --dataset xquad-r-sentence [--langs en,de,zh] [--max-per-lang 100] [--out DIR]``
(or ``python -m benchmarks.retrieval ...``; ``--help`` lists every option).

**What is measured.** The dataset's documents are written to a JSONL file and indexed by
:func:`indexer.build.build_index` with the product defaults (centring ``auto``, flat FAISS, BM25 over
:func:`indexer.text.tokenize`), cached under ``$XLIR_HOME/cache/bench-indexes/<dataset>-<model>-<docs>`` (the index
is the embedding cache of the candidate pool, :func:`index_for`). Each query goes through the product:

- in-process (default): the query vectors are encoded up front in length-sorted batches (the benchmarks' one
  embedding cache, :mod:`benchmarks.embeddings`), then the server's :meth:`app.service.SearchService.retrieve`
  (those vectors behind its query batcher) with a :class:`app.schemas.SearchRequest` built from the condition's
  parameters and ``lang`` = the query's language (so centring uses the true query language), or, for the
  ``-detected`` conditions, no ``lang``: the server detects it (:class:`indexer.langid.LanguageDetector`), as it
  does for a client; ``hybrid-rerank`` reranks there too;
- ``--target URL``: ``POST URL/search`` with the same request fields, ``concurrency`` requests in flight; also
  reports latency percentiles. The server must serve an index of *the same dataset documents* (built by this
  module or with ``xlir index`` over the same documents, same ids): the runner checks the document count that
  ``/ready`` reports and that every returned id is a document of the dataset, but cannot check the texts.
  ``hybrid-rerank`` is run when ``/ready`` reports a reranker.

Both paths produce the same rankings (``tests/test_retrieval_bench.py`` checks it with a fake encoder; with a real
model the server's query batching can change the last float bits of a query vector, hence rarely the order of
near-tied documents).

**Conditions** (:data:`CONDITIONS`): ``bm25``, ``dense``, ``hybrid-rrf`` (rrf_k 60), ``hybrid-weighted`` (alpha
chosen by :func:`sweep_alpha` on the **dev** split, by mean AP@20 over query languages, ties to the larger alpha;
``--alpha`` skips the sweep; a dataset without dev queries uses the product default 0.7) and, with a reranker,
``hybrid-rerank`` (hybrid-weighted at that alpha, the top ``k`` reranked). ``--monolingual`` adds
``langs=[query language]``: each query only sees candidates in its own language, and is judged against its
relevant documents in that language only (:func:`same_language_qrels`; queries without one are dropped).

**Runs** keep each query's documents in rank order with their raw scores; ranx and the TREC files get
rank-derived scores (``n - rank + 1``) so that tied raw scores cannot be reordered by a sort.

**Metrics** (ranx, binary or graded relevance as in the qrels; queries without any relevant document are left
out; a query without results scores 0): ``map@20``, ``ndcg@10``, ``recall@100`` per query language (the mean over
that language's queries) and ``all`` = the mean over the languages (each language weighs the same). ranx's
``map@20`` divides the sum of precisions at the relevant hits of the top 20 by ``|R|`` (the number of relevant
documents), LAReQA's mAP@20 by ``min(|R|, 20)``: the two agree while no query has more than 20 relevant documents,
which :func:`main` asserts for XQuAD-R (about 7 relevant sentences per question, one per language). For MIRACL the
figure reported is ranx's (``|R|`` in the denominator).

Output: ``DIR/<dataset>/<condition>.trec`` (``qid Q0 docid rank score tag``), ``DIR/<dataset>/metrics.json``
(metrics, alpha sweep, timings, latencies) and one Markdown table per metric on stdout, languages as columns.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.datasets import DatasetError, Query, RetrievalDataset
from indexer.store import Index, SearchIndex
from models.base import Encoder
from models.rerankers import Reranker
from xlir.errors import XlirError

METRICS: tuple[str, ...] = ("map@20", "ndcg@10", "recall@100")
ALPHAS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
DEFAULT_ALPHA = 0.7  # the product default (SearchRequest.alpha)
DEFAULT_K = 100
# every condition but `dense-feedback` runs without query feedback (as they were recorded before it existed), so
# that each measures one thing; `dense-feedback` is the product's default dense search (feedback auto, rrf merge)
CONDITIONS: dict[str, dict[str, Any]] = {
    "bm25": {"mode": "bm25"},
    "dense": {"mode": "dense", "feedback": "off"},
    "dense-feedback": {"mode": "dense"},
    "hybrid-rrf": {"mode": "hybrid", "fusion": "rrf", "feedback": "off"},
    "hybrid-weighted": {"mode": "hybrid", "fusion": "weighted", "feedback": "off"},
    # language centring per request (the index is built with `auto`): what it is worth, condition by condition;
    # "-detected": no `lang` in the request, the query language is the detector's (what the server does then)
    "dense-detected": {"mode": "dense", "detect_lang": True, "feedback": "off"},
    "dense-centering-off": {"mode": "dense", "centering": "off", "feedback": "off"},
    "dense-centering-offset": {"mode": "dense", "centering": "offset", "feedback": "off"},
    "dense-centering-offset-detected": {"mode": "dense", "centering": "offset", "detect_lang": True,
                                        "feedback": "off"},
}
DETECT = "detect_lang"  # a condition's flag, not a request field: leave `lang` out of the request
DEFAULT_CONDITIONS = ("bm25", "dense", "hybrid-rrf", "hybrid-weighted")
RERANK = "hybrid-rerank"
DATASETS = ("xquad-r-sentence", "xquad-r-paragraph", "miracl")
MAX_RELEVANT_MAP = 20  # ranx map@20 == LAReQA mAP@20 only while every query has at most 20 relevant documents


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """Per query id, the returned documents in rank order with their raw scores (the product's scores)."""

    hits: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    # per query id, the wall time of each stage of the retrieval path (in-process runs: ``Retrieved.timings``)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)

    def ranking(self, qid: str) -> list[str]:
        return [doc for doc, _ in self.hits.get(qid, [])]

    def rankings(self) -> dict[str, list[str]]:
        return {qid: self.ranking(qid) for qid in self.hits}

    def raw(self) -> dict[str, dict[str, float]]:
        """``{qid: {docid: raw score}}`` in rank order (raw scores may tie)."""
        return {qid: dict(hits) for qid, hits in self.hits.items()}

    def rank_scores(self) -> dict[str, dict[str, float]]:
        """``{qid: {docid: n - rank + 1}}``: strictly decreasing, so no sort can reorder tied raw scores."""
        return {qid: {doc: float(len(hits) - i) for i, (doc, _) in enumerate(hits)} for qid, hits in self.hits.items()}


def request_body(query: Query, params: Mapping[str, Any], k: int, monolingual: bool) -> dict[str, Any]:
    """The ``SearchRequest`` fields of one benchmark query (shared by the in-process and the REST runner)."""
    body: dict[str, Any] = {"query": query.text, "k": k, **{f: v for f, v in params.items() if f != DETECT}}
    if not params.get(DETECT):
        body["lang"] = query.lang
    if monolingual:
        body["langs"] = [query.lang]
    return body


def _check_run_inputs(dataset: RetrievalDataset, k: int) -> None:
    if k < 1:
        raise DatasetError(f"k must be >= 1, not {k}")
    if not dataset.queries:
        raise DatasetError(f"dataset {dataset.name!r} has no queries (check --split, --langs)")


# --------------------------------------------------------------------------------------------------
# Index (the embedding cache of the candidate pool)
# --------------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    from models.registry import xlir_home

    return xlir_home() / "cache" / "bench-indexes"


def docs_hash(dataset: RetrievalDataset) -> str:
    """sha256 over the documents' ids, titles, texts and languages, in order (what the index is built from)."""
    h = hashlib.sha256()
    for doc in dataset.docs:
        for part in (doc.id, doc.title, doc.text, doc.lang or ""):
            h.update(part.encode("utf-8"))
            h.update(b"\x1f")
        h.update(b"\x1e")
    return h.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def index_dir(dataset: RetrievalDataset, encoder: Encoder, cache_root: Path) -> Path:
    return Path(cache_root) / f"{_safe(dataset.name)}-{encoder.checksum[:12]}-{docs_hash(dataset)[:12]}"


def built_by_current_rule(directory: Path) -> bool:
    """Whether a cached index's centroids follow today's centring rule (an index cached before LSAR is rebuilt)."""
    from indexer.centering import MIN_CENTROID_DOCS, Centroids, lsar_rank
    from indexer.manifest import Manifest

    name = Manifest.read(directory).vector_sets["main"].centroids
    if name is None:
        return True
    c = Centroids.load(directory / name)
    return c.lsar_rank == lsar_rank(int((c.counts >= MIN_CENTROID_DOCS).sum()))


def index_for(dataset: RetrievalDataset, encoder: Encoder, cache_root: Path | None = None, *,
              progress: bool = True) -> Path:
    """The xlir index of ``dataset``'s documents embedded by ``encoder``: built once, then reused.

    The documents are written to a JSONL file (``id``, ``title``, ``text``, ``lang``) next to the index and
    indexed with the product defaults (:class:`indexer.build.BuildOptions`: centring auto, flat FAISS). The
    directory name holds the dataset name, the encoder's weights checksum and the hash of the documents, so a
    changed pool or model gets an index of its own.
    """
    from indexer.build import BuildOptions, build_index
    from indexer.manifest import MANIFEST as MANIFEST_NAME

    if not dataset.docs:
        raise DatasetError(f"dataset {dataset.name!r} has no documents")
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    out = index_dir(dataset, encoder, root)
    if (out / MANIFEST_NAME).is_file() and built_by_current_rule(out):
        return out
    root.mkdir(parents=True, exist_ok=True)
    docs_file = root / f".{out.name}.docs-{os.getpid()}.jsonl"
    try:
        with docs_file.open("w", encoding="utf-8") as fh:
            for doc in dataset.docs:
                rec: dict[str, str] = {"id": doc.id, "title": doc.title, "text": doc.text}
                if doc.lang:
                    rec["lang"] = doc.lang
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        try:
            build_index([docs_file], out, encoder, BuildOptions(overwrite=out.exists(), progress=progress))
        except (OSError, XlirError):
            if (out / MANIFEST_NAME).is_file():  # another process finished the same index first
                return out
            raise
    finally:
        docs_file.unlink(missing_ok=True)
    return out


# --------------------------------------------------------------------------------------------------
# In-process runner
# --------------------------------------------------------------------------------------------------


def query_vectors(encoder: Encoder, queries: Sequence[Query], cache_dir: Path | None = None) -> np.ndarray:
    """Raw query embeddings in length-sorted batches, cached on disk by model checksum + texts."""
    from benchmarks.embeddings import embed

    return embed(encoder, "query", [q.text for q in queries], cache_dir, "queries")


def load_centroid_table(encoder: Encoder) -> Any:
    """The encoder's centroid table the server would load by default (``XLIR_HOME/centroids``), if any."""
    from indexer.centering import Centroids
    from indexer.centroid_table import default_table_path
    from models.registry import xlir_home

    path = default_table_path(xlir_home(), encoder.checksum)
    return Centroids.load(path, encoder.checksum) if path.is_file() else None


def run_inprocess(index: SearchIndex, encoder: Encoder, dataset: RetrievalDataset, params: Mapping[str, Any],
                  k: int = DEFAULT_K, monolingual: bool = False, *, reranker: Reranker | None = None,
                  cache_dir: Path | None = None, qvecs: np.ndarray | None = None, table: Any = None,
                  lang_policy: Any = None) -> Run:
    """Every query of ``dataset`` through the server's one retrieval path, :meth:`app.service.SearchService.retrieve`
    (validation, centring with the given or detected query language, fusion, reranking); only the query vectors
    come from elsewhere: the embedding cache, behind the same query batcher (``qvecs``, raw query vectors in
    ``dataset.queries`` order, skips even that)."""
    from app.batching import QueryBatcher
    from app.schemas import SearchRequest
    from app.service import SearchService
    from indexer.text import tokenize

    _check_run_inputs(dataset, k)
    if params.get("rerank") and reranker is None:
        raise XlirError("condition asks for rerank but no reranker was given (--reranker PATH)")
    if qvecs is None:
        qvecs = query_vectors(encoder, dataset.queries, cache_dir)
    if len(qvecs) != len(dataset.queries):
        raise ValueError(f"{len(qvecs)} query vectors for {len(dataset.queries)} queries")
    cached = {q.text: v for q, v in zip(dataset.queries, qvecs, strict=True)}
    batcher = QueryBatcher(lambda texts: np.stack([cached[t] for t in texts]), max_batch=1, max_wait_ms=0.0)
    service = SearchService(index, encoder, batcher, tokenize, reranker, centroid_table=table, lang_policy=lang_policy)

    async def run_all() -> Run:
        run = Run()
        await batcher.start()
        try:
            for query in dataset.queries:
                got = await service.retrieve(SearchRequest(**request_body(query, params, k, monolingual)))
                run.hits[query.qid] = [(str(got.docs[h.row]["id"]), float(h.score)) for h in got.hits]
                run.timings[query.qid] = got.timings
        finally:
            await batcher.close()
        return run

    return asyncio.run(run_all())


# --------------------------------------------------------------------------------------------------
# REST runner
# --------------------------------------------------------------------------------------------------


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"n": 0}
    arr = np.asarray(latencies_ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {"n": float(len(arr)), "mean": float(arr.mean()), "p50": float(p50), "p95": float(p95),
            "p99": float(p99), "max": float(arr.max())}


def server_info(target_url: str, timeout: float = 30.0) -> dict[str, Any]:
    """``GET /ready`` of the server at ``target_url``; a clear error when it is down or not ready."""
    import httpx

    url = target_url.rstrip("/")
    try:
        resp = httpx.get(f"{url}/ready", timeout=timeout)
    except httpx.HTTPError as exc:
        raise XlirError(f"cannot reach the xlir server at {url}: {type(exc).__name__}: {exc}") from exc
    body: dict[str, Any] = resp.json() if resp.headers.get("content-type", "").startswith("application/json") else {}
    if resp.status_code != 200 or not body.get("ready"):
        raise XlirError(f"the xlir server at {url} is not ready (HTTP {resp.status_code}): {body.get('detail')}")
    return body


async def _run_rest_async(target_url: str, dataset: RetrievalDataset, params: Mapping[str, Any], k: int,
                          monolingual: bool, concurrency: int, timeout: float) -> tuple[Run, list[float]]:
    import httpx

    url = target_url.rstrip("/") + "/search"
    sem = asyncio.Semaphore(concurrency)
    results: dict[str, list[tuple[str, float]]] = {}
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, query: Query) -> None:
        body = request_body(query, params, k, monolingual)
        async with sem:
            t0 = time.perf_counter()
            try:
                resp = await client.post(url, json=body)
            except httpx.HTTPError as exc:
                raise XlirError(f"POST {url} failed for query {query.qid!r}: {type(exc).__name__}: {exc}") from exc
            latencies.append((time.perf_counter() - t0) * 1000.0)
        if resp.status_code != 200:
            raise XlirError(f"POST {url} answered HTTP {resp.status_code} for query {query.qid!r}: {resp.text[:300]}")
        results[query.qid] = [(str(h["id"]), float(h["score"])) for h in resp.json()["results"]]

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = [asyncio.create_task(one(client, q)) for q in dataset.queries]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
    return Run({q.qid: results[q.qid] for q in dataset.queries}), latencies


def run_rest(target_url: str, dataset: RetrievalDataset, params: Mapping[str, Any], k: int = DEFAULT_K,
             monolingual: bool = False, concurrency: int = 8, *, timeout: float = 60.0) -> tuple[Run, list[float]]:
    """Every query of ``dataset`` as ``POST target_url/search`` (``concurrency`` in flight); returns the run and
    each request's latency in ms (client side: send to full response)."""
    _check_run_inputs(dataset, k)
    if concurrency < 1:
        raise DatasetError(f"concurrency must be >= 1, not {concurrency}")
    return asyncio.run(_run_rest_async(target_url, dataset, params, k, monolingual, concurrency, timeout))


# --------------------------------------------------------------------------------------------------
# TREC files and metrics
# --------------------------------------------------------------------------------------------------


def write_trec(run: Run, path: Path, tag: str, raw_scores: bool = False) -> None:
    """TREC run file, one line per hit: ``qid Q0 docid rank score tag`` with rank 1..n and the rank-derived
    score ``n - rank + 1`` (raw scores may tie, and TREC tools sort by score), or with ``raw_scores`` the run's own
    scores, written so that they read back exactly (``xlir search --topics``)."""
    for token, what in ((tag, "tag"), *((q, "query id") for q in run.hits)):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"{what} {token!r} is empty or has whitespace: not valid in a TREC run")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for qid, hits in run.hits.items():
        n = len(hits)
        for rank, (doc, raw) in enumerate(hits, start=1):
            if not doc or any(c.isspace() for c in doc):
                raise ValueError(f"document id {doc!r} is empty or has whitespace: not valid in a TREC run")
            score = repr(float(raw)) if raw_scores else str(n - rank + 1)
            lines.append(f"{qid} Q0 {doc} {rank} {score} {tag}\n")
    path.write_text("".join(lines), encoding="utf-8")


def read_trec(path: Path) -> Run:
    """A TREC run file back into a :class:`Run` (ordered by rank; the score column as the raw score)."""
    rows: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if len(parts) != 6:
            raise ValueError(f"{path}:{n}: expected 6 columns, got {len(parts)}")
        qid, _, doc, rank, score, _ = parts
        rows[qid].append((int(rank), doc, float(score)))
    return Run({qid: [(doc, score) for _, doc, score in sorted(r)] for qid, r in rows.items()})


def same_language_qrels(dataset: RetrievalDataset) -> RetrievalDataset:
    """``dataset`` with each query's qrels cut to documents in the query's language (the judgments of a
    ``--monolingual`` run, whose candidates are those documents only); queries left without any are dropped."""
    lang_of = {d.id: d.lang for d in dataset.docs}
    qrels = {q.qid: {d: v for d, v in dataset.qrels.get(q.qid, {}).items() if lang_of.get(d) == q.lang}
             for q in dataset.queries}
    queries = [q for q in dataset.queries if any(v > 0 for v in qrels[q.qid].values())]
    return RetrievalDataset(dataset.name, dataset.docs, queries, {q.qid: qrels[q.qid] for q in queries},
                            dict(getattr(dataset, "notes", {})))


def ap_at_k(relevant: Iterable[str], ranked: Sequence[str], k: int = 20) -> float:
    """LAReQA's AP@k: the sum of P@i over the relevant hits in the top ``k``, divided by ``min(|R|, k)``."""
    rel = set(relevant)
    hits, total = 0, 0.0
    for i, doc in enumerate(ranked[:k], start=1):
        if doc in rel:
            hits += 1
            total += hits / i
    return total / min(len(rel), k) if rel else 0.0


def max_relevant(dataset: RetrievalDataset) -> int:
    return max((sum(1 for v in rels.values() if v > 0) for rels in dataset.qrels.values()), default=0)


def per_query_metrics(dataset: RetrievalDataset, run: Run, metrics: Sequence[str] = METRICS
                      ) -> dict[str, dict[str, float]]:
    """``{qid: {metric: value}}`` by ranx for the dataset's queries with at least one relevant document."""
    import ranx

    qids = [q.qid for q in dataset.queries if any(v > 0 for v in dataset.qrels.get(q.qid, {}).values())]
    scored = run.rank_scores()
    with_hits = [q for q in qids if scored.get(q)]
    out = {q: dict.fromkeys(metrics, 0.0) for q in qids}
    if with_hits:
        qrels = ranx.Qrels({q: {d: int(v) for d, v in dataset.qrels[q].items()} for q in with_hits})
        rx = ranx.Run({q: scored[q] for q in with_hits})
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*unsafe cast.*")
            ranx.evaluate(qrels, rx, list(metrics), threads=os.cpu_count() or 1)
        for m in metrics:
            for q, v in rx.scores[m].items():
                out[q][m] = float(v)
    return out


def evaluate(dataset: RetrievalDataset, run: Run, metrics: Sequence[str] = METRICS) -> dict[str, dict[str, float]]:
    """``{"all": {metric: mean over languages}, "<lang>": {metric: mean over its queries}}`` (ranx)."""
    per_query = per_query_metrics(dataset, run, metrics)
    by_lang: dict[str, list[str]] = defaultdict(list)
    for q in dataset.queries:
        if q.qid in per_query:
            by_lang[q.lang].append(q.qid)
    out: dict[str, dict[str, float]] = {}
    for lang in sorted(by_lang):
        out[lang] = {m: float(np.mean([per_query[q][m] for q in by_lang[lang]])) for m in metrics}
    out = {"all": {m: float(np.mean([out[lang][m] for lang in out])) if out else 0.0 for m in metrics}, **out}
    return out


# --------------------------------------------------------------------------------------------------
# alpha sweep
# --------------------------------------------------------------------------------------------------

RunFn = Callable[[RetrievalDataset, Mapping[str, Any]], Run]


def sweep(run_fn: RunFn, dataset_dev: RetrievalDataset, alphas: Sequence[float] = ALPHAS,
          metric: str = "map@20") -> tuple[float, dict[float, dict[str, float]]]:
    """Weighted fusion at each alpha on ``dataset_dev``; the best alpha by the mean ``metric`` over query
    languages (ties: the larger alpha) and ``{alpha: metrics of "all"}``."""
    if not alphas:
        raise ValueError("no alphas to sweep")
    metrics = tuple(dict.fromkeys((metric, *METRICS)))
    table: dict[float, dict[str, float]] = {}
    for alpha in alphas:
        run = run_fn(dataset_dev, {**CONDITIONS["hybrid-weighted"], "alpha": float(alpha)})
        table[float(alpha)] = evaluate(dataset_dev, run, metrics)["all"]
    best = max(table, key=lambda a: (table[a][metric], a))
    return best, table


def sweep_alpha(index: Index, encoder: Encoder, dataset_dev: RetrievalDataset, alphas: Sequence[float] = ALPHAS,
                *, k: int = DEFAULT_K, monolingual: bool = False, cache_dir: Path | None = None,
                table: Any = None) -> tuple[float, dict[float, dict[str, float]]]:
    """:func:`sweep` in-process (the query vectors are encoded once)."""
    qvecs = query_vectors(encoder, dataset_dev.queries, cache_dir)
    return sweep(lambda ds, params: run_inprocess(index, encoder, ds, params, k, monolingual, qvecs=qvecs,
                                                  table=table), dataset_dev, alphas)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="xlir bench retrieval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Retrieval benchmark through the product (in-process or over REST).",
        epilog="With --target the server must serve an index of the same documents (same ids): run once without\n"
               "--target (the index is built under $XLIR_HOME/cache/bench-indexes; metrics.json names it), then\n"
               "`xlir serve --index THAT_DIR` and run with --target. The runner checks the document count and the\n"
               "returned ids; hybrid-rerank runs when the server has a reranker.")
    ap.add_argument("--dataset", required=True, choices=DATASETS)
    ap.add_argument("--data", type=Path, default=None, help="folder holding xquad-r/ (default: the datasets' default)")
    ap.add_argument("--miracl-corpus", type=Path, help="MIRACL corpus (docs-*.jsonl.gz file or folder)")
    ap.add_argument("--miracl-topics", type=Path, help="MIRACL topics file")
    ap.add_argument("--miracl-qrels", type=Path, help="MIRACL qrels file")
    ap.add_argument("--lang", help="MIRACL language (e.g. sw)")
    ap.add_argument("--langs", type=_csv, default=None, help="comma-separated query/document languages (XQuAD-R)")
    ap.add_argument("--split", default="test", choices=("dev", "test", "all"), help="split to report (default test)")
    ap.add_argument("--max-per-lang", type=int, default=None, metavar="N", help="at most N queries per language")
    ap.add_argument("--k", type=int, default=DEFAULT_K, help="results per query (default 100)")
    ap.add_argument("--conditions", type=_csv, default=None,
                    help=f"comma-separated subset of {', '.join([*CONDITIONS, RERANK])} (default: all available)")
    ap.add_argument("--alpha", type=float, default=None, help="weighted-fusion alpha (skips the dev sweep)")
    ap.add_argument("--monolingual", action="store_true", help="each query only sees documents in its language")
    ap.add_argument("--target", default=None, metavar="URL",
                    help="run over REST against a server at URL (it must serve an index of the same dataset)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight with --target (default 8)")
    ap.add_argument("--model", default="e5-small", help="encoder (in-process only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--reranker", type=Path, default=None, help="reranker folder (xlir-rerank, or a CrossEncoder): "
                    "adds hybrid-rerank")
    ap.add_argument("--cache", type=Path, default=None, help="index cache (default $XLIR_HOME/cache/bench-indexes)")
    ap.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    return ap


def load_dataset(args: argparse.Namespace) -> tuple[str, RetrievalDataset]:
    from benchmarks import datasets

    if args.dataset == "miracl":
        missing = [f"--{n}" for n in ("miracl-corpus", "miracl-topics", "miracl-qrels", "lang")
                   if getattr(args, n.replace("-", "_")) is None]
        if missing:
            raise DatasetError(f"--dataset miracl needs {', '.join(missing)}")
        ds = datasets.load_miracl(args.miracl_corpus, args.miracl_topics, args.miracl_qrels, args.lang,
                                  split=args.split if args.split != "all" else "test")
        return ds.name, ds
    level = args.dataset.rsplit("-", 1)[1]
    data_dir = args.data if args.data is not None else datasets.default_data_dir()
    ds = datasets.load_xquad_r(data_dir, level=level, langs=args.langs)
    return args.dataset, ds


def _markdown(results: Mapping[str, Mapping[str, Mapping[str, float]]], metric: str) -> list[str]:
    langs = sorted({lang for res in results.values() for lang in res if lang != "all"})
    cols = [*langs, "all"]
    lines = [f"### {metric}", "", "| condition | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for cond, res in results.items():
        lines.append(f"| {cond} | " + " | ".join(f"{res[c][metric]:.4f}" if c in res else "-" for c in cols) + " |")
    return [*lines, ""]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.max_per_lang is not None and args.max_per_lang < 1:
        raise DatasetError("--max-per-lang must be >= 1")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise DatasetError("--alpha must be within [0, 1]")
    if args.concurrency < 1 or args.k < 1:
        raise DatasetError("--concurrency and --k must be >= 1")
    unknown = [c for c in args.conditions or () if c not in (*CONDITIONS, RERANK)]
    if unknown:
        raise DatasetError(f"unknown condition(s) {', '.join(unknown)}; choose from {', '.join([*CONDITIONS, RERANK])}")
    timings: dict[str, float] = {}
    t_all = t0 = time.perf_counter()
    name, full = load_dataset(args)
    if args.monolingual:
        name += "-monolingual"
    split = None if args.split == "all" else args.split
    try:
        test = full.subset(langs=args.langs, split=split, max_per_lang=args.max_per_lang)
        dev = full.subset(langs=args.langs, split="dev", max_per_lang=args.max_per_lang)
    except ValueError as exc:
        raise DatasetError(str(exc)) from exc
    if args.monolingual:
        test, dev = same_language_qrels(test), same_language_qrels(dev)
    timings["load dataset"] = time.perf_counter() - t0
    if not test.queries:
        raise DatasetError(f"no {args.split} queries in {name} for languages {args.langs or test.langs()}")
    if args.dataset.startswith("xquad-r") and (most := max_relevant(test)) > MAX_RELEVANT_MAP:
        raise DatasetError(f"a query has {most} relevant documents (> {MAX_RELEVANT_MAP}): ranx map@20 would "
                           "differ from LAReQA's mAP@20")

    encoder: Encoder | None = None
    index: Index | None = None
    reranker: Reranker | None = None
    table: Any = None
    dev_index: Index | None = None
    if args.target:
        info = server_info(args.target)
        n_docs = sum(1 for d in test.docs if d.text.strip() or d.title.strip())
        if info.get("docs") != n_docs:
            raise DatasetError(f"the server at {args.target} serves {info.get('docs')} documents, the {name} pool "
                               f"has {n_docs}: serve an index of the same documents (e.g. the one a run without "
                               f"--target builds under {args.cache or default_cache_root()})")
        has_reranker = bool(info.get("reranker"))
    else:
        from indexer.store import open_index
        from models.encoders import load_encoder

        t0 = time.perf_counter()
        encoder = load_encoder(args.model, device=args.device)
        timings["load model"] = time.perf_counter() - t0
        if args.reranker is not None:
            from models.rerankers import load_reranker

            reranker = load_reranker(args.reranker, device=args.device)
        t0 = time.perf_counter()
        index = open_index(index_for(test, encoder, args.cache))
        timings["index (build or load)"] = time.perf_counter() - t0
        print(f"index: {index.dir} ({index.size} documents)", file=sys.stderr)
        table = load_centroid_table(encoder)
        has_reranker = reranker is not None
    conditions = args.conditions or [*DEFAULT_CONDITIONS, *([RERANK] if has_reranker else [])]
    if RERANK in conditions and not has_reranker:
        raise DatasetError(f"{RERANK} needs a reranker: --reranker PATH, or with --target a server started with one")

    def runner(ds: RetrievalDataset, params: Mapping[str, Any], idx: Index | None = None) -> tuple[Run, list[float]]:
        if args.target:
            return run_rest(args.target, ds, params, args.k, args.monolingual, args.concurrency)
        assert encoder is not None
        use = idx or index
        assert use is not None
        return run_inprocess(use, encoder, ds, params, args.k, args.monolingual, reranker=reranker, table=table), []

    alpha, alpha_source = DEFAULT_ALPHA, "product default (no dev queries)"
    sweep_table: dict[float, dict[str, float]] = {}
    if args.alpha is not None:
        alpha, alpha_source = args.alpha, "--alpha"
    elif any(c in conditions for c in ("hybrid-weighted", RERANK)) and dev.queries:
        t0 = time.perf_counter()
        if args.target:
            if docs_hash(dev) != docs_hash(test):
                raise DatasetError("the dev split has another document pool than the reported split, and the "
                                   "server serves only one: pass --alpha")
        elif docs_hash(dev) != docs_hash(test):
            assert encoder is not None
            dev_index = open_index(index_for(dev, encoder, args.cache))
        alpha, sweep_table = sweep(lambda ds, p: runner(ds, p, dev_index)[0], dev)
        alpha_source = f"dev sweep ({len(dev.queries)} queries, mean map@20 over languages)"
        if args.split != "test":
            alpha_source += "; NB: the reported queries include the tuning ones"
        timings["alpha sweep"] = time.perf_counter() - t0
        print(f"alpha = {alpha:.1f} ({alpha_source})", file=sys.stderr)

    out_dir = args.out / name
    results: dict[str, dict[str, dict[str, float]]] = {}
    latencies: dict[str, dict[str, float]] = {}
    cond_seconds: dict[str, float] = {}
    for cond in conditions:
        params: dict[str, Any] = dict(CONDITIONS.get(cond, CONDITIONS["hybrid-weighted"]))
        if params.get("fusion") == "weighted":
            params["alpha"] = alpha
        if cond == RERANK:
            params.update(rerank=True, rerank_depth=args.k)
        t0 = time.perf_counter()
        run, lat = runner(test, params)
        cond_seconds[cond] = time.perf_counter() - t0
        if args.target:
            known = {d.id for d in test.docs}
            stray = next((d for hits in run.hits.values() for d, _ in hits if d not in known), None)
            if stray is not None:
                raise DatasetError(f"the server returned {stray!r}, not a document of {name}: it serves another index")
            latencies[cond] = latency_summary(lat)
        write_trec(run, out_dir / f"{cond}.trec", f"xlir-{cond}")
        results[cond] = evaluate(test, run)
        print(f"{cond}: {len(test.queries)} queries in {cond_seconds[cond]:.1f} s", file=sys.stderr)
    timings["total"] = time.perf_counter() - t_all

    lines = [f"## {name} ({args.split}, {len(test.queries)} queries, {len(test.docs)} documents, "
             f"{'REST ' + args.target if args.target else 'in-process'}; alpha {alpha:.1f}: {alpha_source})", ""]
    for metric in METRICS:
        lines += _markdown(results, metric)
    if latencies:
        lines += ["### latency (ms, client side)", "", "| condition | p50 | p95 | p99 |", "|---|---:|---:|---:|"]
        lines += [f"| {c} | {v['p50']:.1f} | {v['p95']:.1f} | {v['p99']:.1f} |" for c, v in latencies.items()]
        lines.append("")
    print("\n".join(lines))
    report = {
        "dataset": name, "split": args.split, "langs": test.langs(), "queries": len(test.queries),
        "docs": len(test.docs), "k": args.k, "monolingual": args.monolingual, "target": args.target,
        "model": encoder.name if encoder else None, "checksum": encoder.checksum if encoder else None,
        "index": str(index.dir) if index else None, "alpha": alpha, "alpha_source": alpha_source,
        "alpha_sweep": {f"{a:.1f}": v for a, v in sweep_table.items()}, "metrics": results,
        "latency_ms": latencies, "seconds": {**timings, **{f"run {c}": s for c, s in cond_seconds.items()}},
        "map_note": "ranx map@20: divided by |R| (LAReQA: min(|R|, 20); equal while |R| <= 20)",
        "max_relevant": max_relevant(test),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"runs and metrics: {out_dir}", file=sys.stderr)
    for idx in (index, dev_index):
        if idx is not None:
            idx.close()
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except XlirError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        raise SystemExit(2) from None
