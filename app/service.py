"""Search and embedding services: plain Python, no HTTP, testable on their own.

:meth:`SearchService.retrieve` is **the one retrieval path**, from a request to ranked hits with each retriever's
rank and score: validate -> resolve the mode -> encode (the query batcher) and tokenize -> dense (centred) and BM25
in threads, concurrently -> fuse -> rerank. ``POST /search`` and ``xlir search`` call it through :meth:`search`
(which only formats the response), every benchmark through :func:`benchmarks.retrieval.run_inprocess`, with query
vectors from its embedding cache behind the same batcher.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from app import feedback as prf
from app import fusion
from app.batching import QueryBatcher, VectorBatcher
from app.highlight import highlight_hits
from app.schemas import (
    BatchSearchRequest,
    BatchSearchResponse,
    Centering,
    CenteringInfo,
    DeleteResponse,
    DocumentOut,
    EmbedKind,
    EmbedRequest,
    EmbedResponse,
    Feedback,
    FeedbackInfo,
    FeedbackMerge,
    Fusion,
    Highlight,
    Mode,
    ReloadResponse,
    RerankInfo,
    RerankScope,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UpsertRequest,
    UpsertResponse,
)
from indexer.build import passage_text
from indexer.centering import Centroids, center
from indexer.delta import main_id_map
from indexer.langid import UNDETERMINED, LangGuess, LanguageDetector, best, combine, embedding_posteriors, restrict
from indexer.live import LiveStore, generation_label, prepare_documents
from indexer.store import SearchIndex
from models.base import Encoder
from models.rerankers import Reranker, residual_order, residual_scores
from xlir.errors import BadQuery, DocumentNotFound, PayloadTooLarge, QueryTooLong, RerankerNotConfigured, XlirError

Tokenizer = Callable[[str], list[str]]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_query_chars: int = 2048
    max_k: int = 1000
    max_rerank_depth: int = 200
    fusion_depth: int = 100
    snippet_chars: int = 300
    embed_max_texts: int = 64
    max_batch_searches: int = 100  # POST /search/batch: searches per request (XLIR_MAX_BATCH_SEARCHES)
    # a request's default rerank_budget_ms; 0 = none. The server passes XLIR_RERANK_BUDGET_MS (500); in-process
    # runs (benchmarks/retrieval.py) keep 0, so a quality figure never depends on how busy the machine was
    rerank_budget_ms: float = 0.0
    rerank_chunk: int = 8  # pairs per reranker call when a budget is checked between calls


@dataclass
class Retrieved:
    """The outcome of the one retrieval path: the request as run (``auto`` resolved, ``rerank_depth`` defaulted),
    at most ``req.k`` hits best first, from rank ``req.offset`` on (each retriever's rank and raw score kept), their
    documents, how the query was centred (None without a dense run), what the rerank stage did (None without
    ``rerank``) and the wall time of each stage in ms (``encode``, ``retrieve``, ``fuse``, ``feedback``,
    ``rerank``, ``total``: see :class:`app.schemas.SearchResponse`)."""

    req: SearchRequest
    hits: list[fusion.FusedHit]
    docs: dict[int, dict[str, str]]
    centering: CenteringInfo | None
    feedback: FeedbackInfo | None = None  # None when feedback=off
    rerank: RerankInfo | None = None  # None without rerank
    timings: dict[str, float] = field(default_factory=dict)
    qvec: np.ndarray | None = None  # the raw query vector of the dense run (None without one): highlights use it
    index: SearchIndex | None = None  # the index snapshot the request ran on: highlights read its BM25 statistics


def resolve_mode(index: SearchIndex, req: SearchRequest) -> SearchRequest:
    """``auto`` -> dense on a multilingual index, hybrid on a single-language one (benchmarks/RESULTS.md)."""
    if req.mode is not Mode.auto:
        return req
    return req.model_copy(update={"mode": Mode.dense if index.multilingual else Mode.hybrid})


def elapsed_ms(start: float, end: float) -> float:
    return round((end - start) * 1000, 3)


def resolve_rerank_scope(requested: RerankScope, reranker: Reranker) -> RerankScope:
    """``auto`` -> the reranker's own scope (``same-language`` or ``all``; a reranker without one: all)."""
    if requested is not RerankScope.auto:
        return requested
    own = getattr(reranker, "scope", "all")
    return RerankScope.same_language if own == "same-language" else RerankScope.all


def candidate_depth(req: SearchRequest, limits: Limits) -> int:
    depth = req.k
    if req.mode is Mode.hybrid:
        depth = max(depth, limits.fusion_depth)
    if req.rerank:
        depth = max(depth, req.rerank_depth)
    return depth


def fuse(req: SearchRequest, runs: dict[str, fusion.Run], k: int) -> list[fusion.FusedHit]:
    if req.mode is not Mode.hybrid:
        name = req.mode.value
        return fusion.single(name, runs[name], k)
    if req.fusion is Fusion.rrf:
        return fusion.rrf(runs, k=k, rrf_k=req.rrf_k)
    return fusion.weighted(runs, {"dense": req.alpha, "bm25": 1.0 - req.alpha}, k=k)


@dataclass(frozen=True)
class QueryLangPolicy:
    """How a query without ``lang`` gets its language and shift (issue 19; figures in benchmarks/RESULTS.md 7.2).

    ``restrict``: choose among the index's languages (else among all of py3langid's, as before issue 19);
    ``temperature``: also weigh the cosines of the raw query vector to the index's language means
    (:func:`indexer.langid.embedding_posteriors`; None: the text alone); below ``min_confidence`` the query takes
    the ``low`` shift: ``mixture`` (the posterior-weighted mixture of the candidates' shifts), ``fallback`` (the
    language-agnostic one) or ``argmax`` (the best candidate's all the same). A text whose posterior mass on the
    index's languages is below ``outside_mass`` is in none of them (a Japanese query on a German-French index): it
    keeps the unrestricted label, so the encoder's centroid table can serve it. ``weigh_outside``: the confidence
    is the candidate's posterior times the text's posterior mass on the index's languages, so a text py3langid
    puts elsewhere (a name, a number: "Denver Broncos" looks Portuguese) counts as uncertain and, below
    ``min_confidence``, takes the language-agnostic shift as it did before issue 19."""

    restrict: bool = True
    temperature: float | None = 0.01
    min_confidence: float = 0.5
    low: str = "fallback"
    outside_mass: float = 0.001
    weigh_outside: bool = True

    def __post_init__(self) -> None:
        if self.low not in LOW_CONFIDENCE:
            raise ValueError(f"unknown low-confidence policy {self.low!r}; choose from {', '.join(LOW_CONFIDENCE)}")
        if self.temperature is not None and self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")


LOW_CONFIDENCE = ("mixture", "fallback", "argmax")
UNRESTRICTED = QueryLangPolicy(restrict=False, temperature=None, low="argmax")  # the detector before issue 19
MIN_CANDIDATE_SHARE = 0.01  # lang_candidates lists the index's languages with at least this posterior


def guess_language(detector: LanguageDetector, text: str, index: SearchIndex | None, qvec: np.ndarray | None,
                   policy: QueryLangPolicy) -> LangGuess:
    """The language of a query without ``lang``: the text's posteriors over the index's languages, times the
    embedding evidence when the policy asks and every candidate has a mean in the index's centroids."""
    candidates = [lang for lang in (index.languages if index is not None else ()) if lang != UNDETERMINED]
    if not policy.restrict or not candidates:
        lang = detector.detect(text)
        probs = detector.posteriors(text)
        return LangGuess(lang, probs.get(lang, 0.0), probs)
    everything = detector.posteriors(text)
    inside = sum(everything.get(lang, 0.0) for lang in candidates)  # the text's posterior mass on them
    if everything and inside < policy.outside_mass:
        return best(everything)  # in none of the index's languages
    text_probs = restrict(everything, candidates)
    emb: dict[str, float] = {}
    centroids = index.centroids if index is not None else None
    if policy.temperature is not None and qvec is not None and centroids is not None:
        rows = {lang: i for i, lang in enumerate(centroids.langs)}
        if all(lang in rows for lang in candidates):
            means = centroids.means[[rows[lang] for lang in candidates]]
            emb = embedding_posteriors(qvec, means, candidates, policy.temperature)
    guess = best(combine(text_probs, emb))
    if policy.weigh_outside and everything:  # the confidence also says how likely the text is in none of them
        return LangGuess(guess.lang, guess.confidence * inside, guess.probs)
    return guess


def center_query(
    index: SearchIndex, table: Centroids | None, qvec: np.ndarray, mode: str, guess: LangGuess | None,
    lang_source: str | None, policy: QueryLangPolicy | None = None,
) -> tuple[np.ndarray, CenteringInfo]:
    """Shift a raw query vector under ``mode`` by the rule of :mod:`indexer.centering` (as the index's documents
    of its language are); the info says where the centroid came from, or that the fallback was taken. A detected
    language below ``policy.min_confidence`` takes the policy's low-confidence shift instead."""
    policy = policy or QueryLangPolicy()
    lang = guess.lang if guess is not None else None
    info = CenteringInfo(mode=Centering(mode), query_lang=lang, lang_source=lang_source, applied=False, source=None)
    if guess is not None:
        info.lang_confidence = round(guess.confidence, 4)
        if lang_source == "detected":
            info.lang_candidates = {k: round(p, 4) for k, p in guess.probs.items() if p >= MIN_CANDIDATE_SHARE}
    if mode == "off":
        return qvec, info
    centroids = index.require_centroids(mode)
    fallback = "the global mean" if mode == "full" else "none"
    confidence = guess.confidence if guess is not None else 1.0
    probs = guess.probs if guess is not None else {}
    low = (lang_source == "detected" and confidence < policy.min_confidence
           and (lang == UNDETERMINED or lang in index.languages))  # not a language the index lacks (table)
    if low and policy.low == "mixture" and probs:
        info.applied, info.source, info.shift = True, "index", "mixture"
        info.note = (f"language confidence {confidence:.2f} < {policy.min_confidence}: the query took the "
                     "posterior-weighted mixture of its candidate languages' shifts")
        return center(qvec, centroids.mixture_shift(mode, probs), centroids.basis(mode)), info
    if low and policy.low == "fallback":
        info.shift = "fallback"
        info.note = (f"language confidence {confidence:.2f} < {policy.min_confidence}: the query took the "
                     f"language-agnostic shift ({fallback}; pass `lang`)")
        return center(qvec, centroids.query_shift(mode, None, None, index.languages)[0], centroids.basis(mode)), info
    shift, info.source = centroids.query_shift(mode, lang, table, index.languages)
    info.applied = info.source is not None
    info.shift = "language" if info.applied else "fallback"
    if not info.applied:
        info.note = (f"no centroid for the query language {lang!r} in the index or the centroid table: the query took "
                     f"the shift of such documents ({fallback}; pass `lang`)")
    return center(qvec, shift, centroids.basis(mode)), info


def dense_runs(index: SearchIndex, queries: np.ndarray, depth: int, mask: np.ndarray | None,
               mode: str | None = None) -> list[fusion.Run]:
    """One run per row of ``queries`` (already centred)."""
    hits = index.dense(np.ascontiguousarray(queries, dtype=np.float32), depth, mask, mode)
    return [fusion.Run(h.rows, h.scores) for h in hits]


def bm25_run(index: SearchIndex, tokens: list[str], depth: int, mask: np.ndarray | None) -> fusion.Run:
    hits = index.bm25_search(tokens, depth, mask)
    return fusion.Run(hits.rows, hits.scores)


def centering_mode(index: SearchIndex, req: SearchRequest | EmbedRequest) -> str:
    return req.centering.value if req.centering is not None else index.centering


def check_text(label: str, text: str, max_chars: int) -> None:
    """A query, or a text to embed or mine: not blank, at most ``max_chars`` characters."""
    if not text.strip():
        raise BadQuery(f"{label} is empty")
    if len(text) > max_chars:
        raise QueryTooLong(f"{label} has {len(text)} characters; the limit is {max_chars}")


def snippet(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0] if " " in text[: limit] else text[:limit]
    return cut.rstrip() + "…"


class SearchService:
    def __init__(
        self,
        index: SearchIndex,
        encoder: Encoder,
        batcher: QueryBatcher,
        tokenizer: Tokenizer,
        reranker: Reranker | None = None,
        limits: Limits = Limits(),
        detector: LanguageDetector | None = None,
        centroid_table: Centroids | None = None,
        dense_batcher: VectorBatcher | None = None,
        lang_policy: QueryLangPolicy | None = None,
    ) -> None:
        self.index = index
        self.dense_batcher = dense_batcher
        self.encoder = encoder
        self.batcher = batcher
        self.tokenize = tokenizer
        self.reranker = reranker
        self.limits = limits
        self.detector = detector or LanguageDetector()
        self.table = centroid_table
        if lang_policy is not None:
            self.lang_policy = lang_policy

    lang_policy: QueryLangPolicy = QueryLangPolicy()  # the server's default; an instance may be given its own
    # called with each answered search's timings_ms (stage -> ms): the server's per-stage histograms (app.metrics)
    on_timings: Callable[[dict[str, float]], None] | None = None

    def query_language(self, text: str, given: str | None, index: SearchIndex | None = None,
                       qvec: np.ndarray | None = None) -> tuple[str | None, str | None]:
        """The request's ``lang``, else the detected one (among ``index``'s languages when given)."""
        if given:
            return given, "request"
        if index is None:
            return self.detector.detect(text), "detected"
        return self.query_guess(text, given, index, qvec)[0].lang, "detected"

    def query_guess(self, text: str, given: str | None, index: SearchIndex,
                    qvec: np.ndarray | None) -> tuple[LangGuess, str]:
        """:meth:`query_language` with the confidence and the candidates' posteriors (:func:`guess_language`)."""
        if given:
            return LangGuess(given, 1.0, {given: 1.0}), "request"
        return guess_language(self.detector, text, index, qvec, self.lang_policy), "detected"

    def validate(self, req: SearchRequest, index: SearchIndex | None = None) -> SearchRequest:
        """Check every field whatever the others say (``rerank_depth`` without ``rerank`` too; ``langs`` against the
        languages of ``index``, default the one served); returns the request with a defaulted ``rerank_depth``
        lowered to ``XLIR_MAX_RERANK_DEPTH``."""
        index = self.index if index is None else index
        check_text("query", req.query, self.limits.max_query_chars)
        if req.rerank and self.reranker is None:
            raise RerankerNotConfigured(
                "rerank=true but no reranker is configured: build xlir's own with `make setup` (it builds "
                "xlir-rerank under XLIR_HOME/models, which the server then loads by itself), or start the server "
                "with --reranker PATH (XLIR_RERANKER) naming a reranker folder or a local sentence-transformers "
                "CrossEncoder folder")
        if req.k > self.limits.max_k:
            raise BadQuery(f"k={req.k} is over the limit {self.limits.max_k}")
        if req.offset + req.k > self.limits.max_k:
            raise BadQuery(f"offset + k = {req.offset + req.k} is over the limit {self.limits.max_k}: a search ranks "
                           f"at most {self.limits.max_k} results")
        if req.rerank_depth > self.limits.max_rerank_depth:
            if "rerank_depth" in req.model_fields_set:
                raise BadQuery(f"rerank_depth {req.rerank_depth} is over the limit {self.limits.max_rerank_depth}")
            req = req.model_copy(update={"rerank_depth": self.limits.max_rerank_depth})
        if req.langs:
            present = index.languages
            missing = [code for code in req.langs if code not in present]
            if missing:
                raise BadQuery(f"langs: {', '.join(map(repr, missing))} not in this index; its languages are "
                               f"{', '.join(sorted(present)) or 'none'}")
        return req

    async def retrieve(self, req: SearchRequest) -> Retrieved:
        """The one retrieval path (module docstring): request -> ranked hits, reranked when asked, with the wall
        time of each stage (``Retrieved.timings``)."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {"encode": 0.0}
        encoded_at: float | None = None  # when the query encoding ended: the retrieve stage is what follows
        index = self.index  # one snapshot for the whole request: live writes and reloads swap self.index
        req = self.validate(req, index)
        req = resolve_mode(index, req)
        window = req.offset + req.k  # pagination: the page is results offset .. offset+k of this ranking
        depth = max(candidate_depth(req, self.limits), window)
        if req.feedback is not Feedback.off:  # its RRF merge ranks at this depth: fixed, so pages agree
            depth = max(depth, req.feedback_docs, self.limits.fusion_depth)
        mask = index.lang_mask(req.langs)
        if req.filter:  # indexer/filters.py; the metadata columns are built at the index's first filtered query
            fmask = await asyncio.to_thread(index.filter_mask, req.filter)
            if fmask is not None:
                mask = fmask if mask is None else mask & fmask
        mode = centering_mode(index, req)
        if mode != "off":
            index.require_centroids(mode)
        info: CenteringInfo | None = None
        qc: np.ndarray | None = None  # the centred query (feedback starts from it)
        qraw: np.ndarray | None = None  # the raw query vector (highlights compare sentences with it)
        jobs: dict[str, asyncio.Future[fusion.Run] | asyncio.Task[fusion.Run]] = {}
        t_first = time.perf_counter()
        if req.mode in (Mode.bm25, Mode.hybrid):
            jobs["bm25"] = asyncio.ensure_future(asyncio.to_thread(
                lambda: bm25_run(index, self.tokenize(req.query), depth, mask)))
        if req.mode in (Mode.dense, Mode.hybrid):
            async def dense() -> fusion.Run:
                nonlocal info, qc, encoded_at, qraw
                t_encode = time.perf_counter()
                qvec = qraw = await self.batcher.encode(req.query)
                encoded_at = time.perf_counter()
                timings["encode"] = elapsed_ms(t_encode, encoded_at)
                # language ID takes well under a millisecond: no need to leave the event loop for it
                guess, source = (self.query_guess(req.query, req.lang, index, qvec) if mode != "off" or req.lang
                                 else (None, None))
                centred, info = center_query(index, self.table, qvec, mode, guess, source, self.lang_policy)
                qc = centred
                if self.dense_batcher is not None and mask is None:  # one FAISS call for the concurrent queries
                    return await self.dense_batcher.search((id(index), depth, mode), centred,
                                                           lambda qs: dense_runs(index, qs, depth, None, mode))
                return (await asyncio.to_thread(dense_runs, index, centred.reshape(1, -1), depth, mask, mode))[0]
            jobs["dense"] = asyncio.ensure_future(dense())
        try:
            results = await asyncio.gather(*jobs.values())
        finally:
            for job in jobs.values():
                job.cancel()
        t = time.perf_counter()
        timings["retrieve"] = elapsed_ms(encoded_at if encoded_at is not None else t_first, t)
        runs = dict(zip(jobs, results, strict=True))
        runs = {name: runs[name] for name in ("dense", "bm25") if name in runs}
        hits = fuse(req, runs, depth)
        fused_at = time.perf_counter()
        timings["fuse"] = elapsed_ms(t, fused_at)
        fb: FeedbackInfo | None = None
        if req.feedback is not Feedback.off:
            hits, fb = await self._feedback(index, req, runs, hits, qc, depth, mask, mode)
            timings["feedback"] = elapsed_ms(fused_at, time.perf_counter())
        docs = {h.row: index.doc(h.row) for h in hits[: max(window, req.rerank_depth if req.rerank else 0)]}
        rr: RerankInfo | None = None
        if req.rerank:
            assert self.reranker is not None  # validate refused the request otherwise
            scope = resolve_rerank_scope(req.rerank_scope, self.reranker)
            qlang = None
            if scope is RerankScope.same_language:  # the given language, else the one the centring detected
                qlang = req.lang or (info.query_lang if info is not None else None)
                qlang = qlang or self.query_language(req.query, None, index)[0]
            t = time.perf_counter()
            hits, ran = await asyncio.to_thread(self._rerank, req, hits, docs, scope, qlang, t)
            timings["rerank"] = ran.ms = elapsed_ms(t, time.perf_counter())
            rr = ran
        timings["total"] = elapsed_ms(t_start, time.perf_counter())
        return Retrieved(req, hits[req.offset : window], docs, info, fb, rr, timings, qvec=qraw, index=index)

    async def _feedback(self, index: SearchIndex, req: SearchRequest, runs: dict[str, fusion.Run],
                        hits: list[fusion.FusedHit], qc: np.ndarray | None, depth: int, mask: np.ndarray | None,
                        mode: str) -> tuple[list[fusion.FusedHit], FeedbackInfo]:
        """The feedback stage (after fusion, before rerank; :mod:`app.feedback`): the gate looks at the centred
        vectors of the top ``feedback_docs`` fused hits; when it opens, a second dense search with the Rocchio
        query (no second encoding, same ``langs`` mask and centring) replaces the dense run (or is RRF-merged with
        it, ``feedback_merge``), and the runs are fused again (hybrid: with the same BM25 run)."""
        gate = "always" if req.feedback is Feedback.dense else req.feedback_gate.value
        out = FeedbackInfo(mode=req.feedback, gate=gate, applied=False, reason="")
        if qc is None or "dense" not in runs:
            out.reason = f"mode {req.mode.value} has no dense run to take feedback from"
            return hits, out
        top = [h.row for h in hits[: req.feedback_docs]]
        try:
            vecs, langs = await asyncio.to_thread(index.centred_vectors, top, mode)
        except (OSError, ValueError, TypeError) as exc:
            out.reason = f"the index's stored vectors cannot be read ({exc}): feedback needs them"
            return hits, out
        decision = prf.decide(gate, vecs, langs, req.feedback_threshold)
        out.reason, out.evidence = decision.reason, decision.evidence
        query = prf.feedback_query(qc, vecs, decision, req.feedback_weight)
        if query is None:
            return hits, out
        if self.dense_batcher is not None and mask is None:  # batched with the other queries' searches
            second = await self.dense_batcher.search((id(index), depth, mode), query,
                                                     lambda qs: dense_runs(index, qs, depth, None, mode))
        else:
            second = (await asyncio.to_thread(dense_runs, index, query.reshape(1, -1), depth, mask, mode))[0]
        if req.feedback_merge is FeedbackMerge.rrf:
            second = fusion.Run(*prf.merge_rrf(runs["dense"].rows, second.rows, depth))
        out.applied, out.docs = True, len(decision.use)
        return fuse(req, {**runs, "dense": second}, depth), out

    async def search(self, req: SearchRequest) -> SearchResponse:
        """``POST /search`` and ``xlir search``: :meth:`retrieve`, as a response (its ``timings_ms`` reported to
        the ``on_timings`` hook)."""
        t0 = time.perf_counter()
        got = await self.retrieve(req)
        req, docs = got.req, got.docs
        out = [
            SearchHit(
                id=docs[h.row]["id"], score=h.score, lang=docs[h.row]["lang"], title=docs[h.row]["title"],
                snippet=snippet(docs[h.row]["text"], self.limits.snippet_chars), ranks=h.ranks, scores=h.scores,
                metadata=docs[h.row].get("metadata") or {},
            )
            for h in got.hits
        ]
        if req.highlight:  # app/highlight.py: the best sentence of each hit, the query terms marked
            t_hl = time.perf_counter()
            picked = await asyncio.to_thread(highlight_hits, got.index, got.hits, docs, req.query, self.tokenize,
                                             self.encoder.encode_passages, got.qvec)
            for hit, p in zip(out, picked, strict=True):
                hit.highlight = None if p is None else Highlight(text=p.text, spans=p.spans, source=p.source)
            got.timings["highlight"] = elapsed_ms(t_hl, time.perf_counter())
        resp = SearchResponse(
            query=req.query, mode=req.mode, fusion=req.fusion if req.mode is Mode.hybrid else None,
            reranked=got.rerank is not None and got.rerank.applied, took_ms=elapsed_ms(t0, time.perf_counter()),
            centering=got.centering, feedback=got.feedback, rerank=got.rerank, timings_ms=got.timings, results=out,
        )
        if self.on_timings is not None:
            self.on_timings(resp.timings_ms)
        return resp

    async def search_batch(self, req: BatchSearchRequest) -> BatchSearchResponse:
        """``POST /search/batch`` and ``xlir search --topics``: every search through :meth:`search`, all at once
        (so the query batcher encodes their queries together), answered in the request's order. At most
        ``limits.max_batch_searches`` searches (more: ``PayloadTooLarge``); each is validated before any runs, and
        the domain error of a bad one names it: ``searches[i]: <detail>``."""
        most = self.limits.max_batch_searches
        if len(req.searches) > most:
            raise PayloadTooLarge(f"searches: {len(req.searches)} searches in one batch, over the limit {most} "
                                  f"(XLIR_MAX_BATCH_SEARCHES): send them in several batches")

        def named(i: int, exc: XlirError) -> XlirError:
            exc.detail = f"searches[{i}]: {exc.detail}"
            exc.args = (exc.detail,)
            return exc

        index = self.index
        for i, one in enumerate(req.searches):
            try:
                self.validate(one, index)
            except XlirError as exc:
                raise named(i, exc) from None

        async def run(i: int, one: SearchRequest) -> SearchResponse:
            try:
                return await self.search(one)
            except XlirError as exc:
                raise named(i, exc) from None

        jobs = [asyncio.ensure_future(run(i, one)) for i, one in enumerate(req.searches)]
        try:
            return BatchSearchResponse(results=list(await asyncio.gather(*jobs)))
        finally:
            for job in jobs:  # one failed: the others are not left running
                job.cancel()

    def _rerank(self, req: SearchRequest, hits: list[fusion.FusedHit], docs: dict[int, dict[str, str]],
                scope: RerankScope, qlang: str | None, started: float) -> tuple[list[fusion.FusedHit], RerankInfo]:
        """The rerank stage (in a worker thread). The model scores the top ``rerank_depth`` candidates that
        ``scope`` takes (same_language: only those in ``qlang``; the others are not sent), ``limits.rerank_chunk``
        pairs per call with the time budget (counted from ``started``) checked between calls: once it has passed,
        the first-stage order is returned unchanged. The final score is
        :func:`models.rerankers.residual_scores` of the first-stage ranks 1..n and the model's scores (0 for a
        candidate it did not score) with the model's ``prior_weight``, ordered by
        :func:`models.rerankers.residual_order` (ties to the better first-stage rank); the candidates below
        ``rerank_depth`` follow in first-stage order."""
        reranker = self.reranker
        assert reranker is not None
        head, tail = hits[: req.rerank_depth], hits[req.rerank_depth:]
        budget = self.limits.rerank_budget_ms if req.rerank_budget_ms is None else req.rerank_budget_ms
        info = RerankInfo(applied=False, model=reranker.name, depth=req.rerank_depth, scope=scope,
                          query_lang=qlang, scored=0, reason="", ms=0.0)
        picked = [i for i, h in enumerate(head) if scope is RerankScope.all or docs[h.row]["lang"] == qlang]
        if not picked:
            why = f"no candidate in the query's language {qlang!r}" if head else "no candidates"
            info.reason = f"{why}: first-stage order kept"
            return hits, info
        texts = [passage_text(docs[head[i].row]["title"], docs[head[i].row]["text"]) for i in picked]
        scores = np.zeros(len(head), dtype=np.float64)
        chunk = max(1, self.limits.rerank_chunk) if budget > 0 else len(picked)
        deadline = started + budget / 1000
        for lo in range(0, len(picked), chunk):
            if lo and budget > 0 and time.perf_counter() > deadline:
                info.reason = f"budget {budget:g} ms passed after {lo} of {len(picked)} candidates: first-stage " \
                              "order kept"
                return hits, info
            part = picked[lo: lo + chunk]
            scores[part] = np.asarray(reranker.score(req.query, texts[lo: lo + chunk]), dtype=np.float64).reshape(-1)
            info.scored += len(part)
        ranks = np.arange(1, len(head) + 1)
        final = residual_scores(ranks, scores, float(getattr(reranker, "prior_weight", 0.0)))
        sent = set(picked)
        out = []
        for rank, i in enumerate(residual_order(ranks, final), start=1):
            h = head[i]
            out.append(fusion.FusedHit(
                row=h.row, score=float(final[i]),
                ranks={**h.ranks, "fused": i + 1, "rerank": rank},
                scores={**h.scores, "fused": h.score, "rerank": float(scores[i]) if i in sent else None},
            ))
        info.applied = True
        info.reason = f"{info.scored} of {len(head)} candidates scored by the model"
        if scope is RerankScope.same_language:
            info.reason += f" (those in the query's language {qlang!r}; the others kept their first-stage prior)"
        return out + tail, info

    async def embed(self, req: EmbedRequest) -> EmbedResponse:
        if len(req.texts) > self.limits.embed_max_texts:
            raise BadQuery(f"{len(req.texts)} texts; the limit per request is {self.limits.embed_max_texts}")
        for i, text in enumerate(req.texts):
            check_text(f"texts[{i}]", text, self.limits.max_query_chars)
        texts: Sequence[str] = req.texts
        if req.kind is EmbedKind.query:
            vecs = await asyncio.to_thread(self.encoder.encode_queries, texts)
        else:
            vecs = await asyncio.to_thread(self.encoder.encode_passages, texts)
        if not req.centered:
            return EmbedResponse(model=self.encoder.name, dim=self.encoder.dim,
                                 embeddings=np.asarray(vecs, dtype=np.float32).tolist())
        index = self.index
        mode = centering_mode(index, req)
        if mode == "off":
            raise BadQuery("centered=true needs centering 'offset' or 'full' (this index was built with 'off')")
        out, langs = [], []
        # a centred embedding is one language's: an uncertain detection bets on its best candidate (reported in
        # `langs`) rather than taking the language-agnostic shift, which /embed refuses
        policy = replace(self.lang_policy, low="argmax")
        for text, vec in zip(texts, vecs, strict=True):
            guess, source = self.query_guess(text, req.lang, index, vec)
            centred, info = center_query(index, self.table, vec, mode, guess, source, policy)
            if not info.applied:
                raise BadQuery(f"cannot centre {text[:40]!r}: {info.note}")
            out.append(centred)
            langs.append(guess.lang)
        return EmbedResponse(model=self.encoder.name, dim=self.encoder.dim, embeddings=np.stack(out).tolist(),
                             langs=langs, centering=Centering(mode))


class DocumentService:
    """Document upserts and deletes on a live index (``indexer.live``): validation, embedding, the durable write,
    and a background compaction once the delta reaches ``compact_threshold`` (0 = never)."""

    def __init__(self, store: LiveStore, encoder: Encoder, *, max_docs: int = 256, compact_threshold: int = 0,
                 detector: LanguageDetector | None = None) -> None:
        self.store = store
        self.encoder = encoder
        self.max_docs = max_docs
        self.compact_threshold = compact_threshold
        self.detector = detector or LanguageDetector()
        self.compaction: asyncio.Task[None] | None = None
        self.compaction_error: str | None = None

    async def upsert(self, req: UpsertRequest) -> UpsertResponse:
        if len(req.documents) > self.max_docs:
            raise PayloadTooLarge(f"{len(req.documents)} documents; the limit per request is {self.max_docs} "
                                  "(XLIR_MAX_UPSERT_DOCS)")
        docs = prepare_documents([d.model_dump() for d in req.documents], self.detector.detect)
        texts = [passage_text(d["title"], d["text"]) for d in docs]
        vecs = await asyncio.to_thread(self.encoder.encode_passages, texts)
        res = await asyncio.to_thread(self.store.upsert, docs, vecs)
        self.maybe_compact()
        return UpsertResponse(upserted=res.count, replaced=sum(res.existed), generation=res.generation,
                              delta_docs=res.delta_docs)

    async def delete(self, doc_id: str) -> DeleteResponse:
        res = await asyncio.to_thread(self.store.delete, doc_id)
        self.maybe_compact()
        return DeleteResponse(deleted=True, generation=res.generation, delta_docs=res.delta_docs)

    async def get(self, doc_id: str) -> DocumentOut:
        found = await asyncio.to_thread(self._lookup, doc_id)
        if found is None:
            raise DocumentNotFound(f"no document with id {doc_id!r}")
        return found

    def _lookup(self, doc_id: str) -> DocumentOut | None:
        """The document as the served snapshot holds it: the newest delta row with the id (none if that row is
        dead: deleted), else the generation's row unless it is tombstoned."""
        store = self.store
        snap = store.snapshot
        v = snap.view
        gen = generation_label(snap.generation)
        for r in range(v.n - 1, -1, -1):  # the delta is bounded by the compaction threshold
            d = v.docs[r]
            if d["id"] == doc_id:
                return None if v.dead[r] else DocumentOut(**d, generation=gen)
        delta = store.delta
        ids = delta.main_ids if store.main is snap.main else main_id_map(snap.main)  # read once per generation
        row = ids.get(doc_id)
        if row is None or v.main_tomb[row]:
            return None
        d = snap.main.doc(row)
        return DocumentOut(id=d["id"], text=d["text"], title=d["title"], lang=d["lang"],
                           metadata=d.get("metadata") or {}, generation=gen)

    async def reload(self) -> ReloadResponse:
        changed = await asyncio.to_thread(self.store.refresh, True)
        stats = self.store.stats()
        return ReloadResponse(reloaded=changed, generation=stats["generation"], delta_docs=stats["delta_docs"],
                              tombstones=stats["tombstones"])

    def maybe_compact(self) -> None:
        """Start a background compaction when the delta is over the threshold and none is running."""
        if not self.compact_threshold or (self.compaction is not None and not self.compaction.done()):
            return
        view = self.store.snapshot.view
        if view.live_delta + view.tomb_count < self.compact_threshold:
            return
        self.compaction = asyncio.ensure_future(self._compact())

    async def _compact(self) -> None:
        from indexer.compact import compact

        try:
            await asyncio.to_thread(compact, self.store.root)
            await asyncio.to_thread(self.store.refresh)
            self.compaction_error = None
        except Exception as exc:  # the server keeps serving the last generation; /ready reports it
            self.compaction_error = f"{type(exc).__name__}: {exc}"
            log.error("background compaction failed: %s", self.compaction_error)

    async def close(self) -> None:
        if self.compaction is not None and not self.compaction.done():
            await asyncio.shield(self.compaction)  # a compaction publishes atomically; let it finish
