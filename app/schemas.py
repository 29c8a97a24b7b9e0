"""Request and response models of the REST API (they are also the OpenAPI documentation).

Every request field is typed with one of the reusable annotated types below, so each rule lives once:
:data:`Text` (any text field: refuses lone surrogates, which JSON's ``\\ud800`` escapes can carry and UTF-8 cannot
encode), :data:`DocId` (the document id rule shared with the corpus readers) and strict numbers and booleans
(:data:`Int`, :data:`Float`, :data:`Bool`: ``true`` is not 1, ``"5"`` is not 5; floats take integers).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, Strict, field_validator

from indexer.langid import known_lang, normalize_lang
from indexer.mining_threshold import THRESHOLD_RULES
from indexer.readers import ID_RULE, MAX_ID_CHARS, METADATA_RULE, doc_id_problem, first_unencodable, metadata_problem


def utf8_text(value: object) -> object:
    """Refuse a string that cannot be encoded as UTF-8 (a lone surrogate); other inputs go on to the type check."""
    if isinstance(value, str) and (pos := first_unencodable(value)) is not None:
        raise ValueError(f"not valid Unicode text: the character at position {pos} is a lone surrogate "
                         f"(U+{ord(value[pos]):04X}), which cannot be encoded as UTF-8")
    return value


def valid_doc_id(value: str) -> str:
    problem = doc_id_problem(value)
    if problem is not None:
        raise ValueError(f"{problem} ({ID_RULE})")
    return value


def valid_metadata(value: dict[str, Any]) -> dict[str, Any]:
    problem = metadata_problem(value)
    if problem is not None:
        raise ValueError(f"{problem} ({METADATA_RULE})")
    return value


Text = Annotated[str, BeforeValidator(utf8_text)]
"""Any text of a request: a string that can be encoded as UTF-8."""
DocId = Annotated[str, BeforeValidator(utf8_text), AfterValidator(valid_doc_id)]
"""A document id (``indexer.readers.doc_id_problem``: the same rule as ids in corpora)."""
QueryLang = Annotated[str, BeforeValidator(utf8_text), AfterValidator(known_lang)]
"""The language of a query or a text to embed: an ISO 639-1 code (or one normalised to it, ``indexer.langid``)."""
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Float = Annotated[float, Strict(), AllowInfNan(False)]
"""A finite number: integers are taken, booleans and strings are not."""


class Mode(StrEnum):
    auto = "auto"
    dense = "dense"
    bm25 = "bm25"
    hybrid = "hybrid"


class Fusion(StrEnum):
    rrf = "rrf"
    weighted = "weighted"


class Centering(StrEnum):
    off = "off"
    offset = "offset"
    full = "full"


class Feedback(StrEnum):
    off = "off"
    dense = "dense"
    auto = "auto"


class FeedbackGate(StrEnum):
    coherence = "coherence"
    languages = "languages"
    agree = "agree"
    translations = "translations"


class FeedbackMerge(StrEnum):
    second = "second"
    rrf = "rrf"


class RerankScope(StrEnum):
    auto = "auto"
    all = "all"
    same_language = "same_language"


class SearchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [
            {"query": "Which animal sleeps most of the day?", "k": 5},
            {"query": "熊猫吃什么", "k": 10, "mode": "dense", "langs": ["en", "de"]},
            {"query": "climate change", "mode": "hybrid", "fusion": "weighted", "alpha": 0.7, "langs": ["en"]},
        ]},
    )

    query: Text = Field(description="free text in any language")
    k: Int = Field(10, ge=1, le=1000, description="number of results")
    mode: Mode = Field(
        Mode.auto,
        description="dense, bm25, hybrid (both, fused) or auto: dense on a multilingual index (BM25 only matches "
        "the query's own language, and fusing it in measured below dense alone), hybrid on a single-language "
        "index (+1.6 nDCG@10 over dense); see benchmarks/RESULTS.md",
    )
    fusion: Fusion = Field(Fusion.weighted, description="hybrid only: weighted (default) or rrf")
    rrf_k: Float = Field(60.0, ge=0, le=10_000, description="RRF constant: score = sum 1/(rrf_k + rank)")
    alpha: Float = Field(0.7, ge=0, le=1, description="weighted fusion: alpha*dense + (1-alpha)*bm25 (min-max); "
                         "0.7 was best on the XQuAD-R dev split of single-language indexes")
    langs: list[Text] | None = Field(
        None, description="only return documents in these languages (ISO 639-1; each must be one of the index's)")
    filter: dict[str, Any] | None = Field(
        None, description="only return documents whose metadata matches, fields ANDed: a scalar is equality "
        "({\"source\": \"wiki\"}), {\"in\": [...]} any of the values, gt/gte/lt/lte ranges on number or ISO date "
        "fields ({\"year\": {\"gte\": 2019, \"lt\": 2022}}, {\"published\": {\"gte\": \"2020-01-01\"}}); a field "
        "holding a list matches when one of its values does; lang is the document language ({\"lang\": {\"in\": "
        "[\"de\", \"fr\"]}}, ANDed with langs). An unknown field or a condition of the wrong type: 422. Exactly k "
        "results come back when that many documents match (BM25: that many with a query term)",
        json_schema_extra={"examples": [{"source": "wiki", "year": {"gte": 2019}, "lang": {"in": ["de", "fr"]}}]})
    offset: Int = Field(0, ge=0, le=10_000, description="pagination: skip this many results of the ranking (results "
                        "offset+1 .. offset+k); offset + k is at most the server's limit on k (1000)")
    rerank: Bool = Field(
        False, description="rescore the top rerank_depth first-stage candidates with the server's reranker (xlir's "
        "own xlir-rerank when built, else XLIR_RERANKER): final score = prior_weight * -log(first-stage rank) + the "
        "model's score, so a correction of 0 keeps the first-stage order; see the response's rerank")
    rerank_depth: Int = Field(20, ge=1, le=1000, description="candidates reranked (the rest follow in first-stage "
                              "order); checked even without rerank; default 20 or XLIR_MAX_RERANK_DEPTH if lower")
    rerank_scope: RerankScope = Field(
        RerankScope.auto, description="which candidates the model scores: all, same_language (only those whose "
        "lang is the query's language: lang, else the detected one; the others are not sent to the model and keep "
        "their first-stage prior, a correction of 0) or auto (default: the model's own scope, measured when it was "
        "trained)")
    rerank_budget_ms: Float | None = Field(
        None, ge=0, le=600_000, description="time budget of the rerank stage in ms: pairs are scored in chunks and "
        "once the budget has passed between two chunks the first-stage order is kept (the response's rerank says "
        "so); 0 = no budget; default XLIR_RERANK_BUDGET_MS (500)")
    lang: QueryLang | None = Field(None, description="language of the query (ISO 639-1); detected when omitted")
    centering: Centering | None = Field(
        None, description="language centring of dense scores: off, offset (mu_lang - mu_all) or full (mu_lang); "
        "default: the mode the index was built with")
    feedback: Feedback = Field(
        Feedback.auto, description="dense pseudo-relevance feedback (app/feedback.py): off, dense (always: "
        "the centred query plus feedback_weight times the mean of the top feedback_docs centred document vectors, "
        "then a second dense search) or auto (default: only when feedback_gate finds translations among the top "
        "hits, i.e. hits in two languages or more that agree; never on one language). auto with the default rrf "
        "merge: +0.055 AP@20 on the parallel XQuAD-R pool, -0.001 on a non-parallel one, 0 on one language; see "
        "benchmarks/RESULTS.md 7.1")
    feedback_docs: Int = Field(3, ge=1, le=20, description="feedback: how many top hits are averaged (m)")
    feedback_weight: Float = Field(1.0, ge=0, le=4, description="feedback: weight of the documents' mean (beta)")
    feedback_gate: FeedbackGate = Field(
        FeedbackGate.translations, description="auto only: coherence (mean pairwise cosine of the top hits), "
        "languages (two languages or more and cross-language agreement), agree (from the hits that agree with each "
        "other) or translations (from hits in distinct languages that agree)")
    feedback_threshold: Float | None = Field(
        None, ge=-1, le=1, description="auto only: the gate's cosine threshold; default the gate's own "
        "(app/feedback.py DEFAULT_THRESHOLDS)")
    feedback_merge: FeedbackMerge = Field(
        FeedbackMerge.rrf, description="how the feedback search is used: rrf (default: reciprocal rank fusion of "
        "both dense lists, so a hit of the first search cannot fall far when the top hits are translations of a "
        "wrong passage) or second (its list replaces the first dense list: more gain on parallel pools, less safe)")
    highlight: Bool = Field(
        False, description="give each hit a highlight: its best sentence with the query terms' character spans: "
        "the sentence with the most BM25 weight of the query terms for a hit BM25 found, else the sentence nearest "
        "to the query (its sentences encoded with the server's encoder); see SearchHit.highlight")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query is empty")
        return v

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("langs must not be empty (omit it to search all languages)")
        return sorted({normalize_lang(code) for code in v})


class Highlight(BaseModel):
    text: str = Field(description="the hit's best sentence (or a window of at most 300 characters of its text)")
    spans: list[tuple[int, int]] = Field(
        description="[start, end) offsets in text, in Unicode code points, of the query terms in it (as the BM25 "
        "analyzer matches them: case, width, accents of Arabic and digits folded; CJK and Thai by bigrams), "
        "sorted, not overlapping; often empty for a dense hit in another language")
    source: Literal["bm25", "dense"] = Field(
        description="the rule that picked the sentence: bm25 (most query-term weight) or dense (nearest to the "
        "query vector)")


class SearchHit(BaseModel):
    id: str
    score: float = Field(description="fused score (or the single retriever's; reranked: the final score, "
                         "prior_weight * -log(first-stage rank) + the reranker's score)")
    lang: str
    title: str
    snippet: str
    ranks: dict[str, int | None] = Field(description="1-based rank in each retriever (null = not retrieved)")
    scores: dict[str, float | None] = Field(description="raw score in each retriever")
    metadata: dict[str, Any] = Field(default_factory=dict, description="the document's metadata ({} when none)")
    highlight: Highlight | None = Field(None, description="the best sentence with the query terms marked "
                                        "(only when the request asked for highlight)")


class CenteringInfo(BaseModel):
    mode: Centering = Field(description="centring applied to the dense scores of documents")
    query_lang: str | None = Field(description="the query's language: given, or detected")
    lang_source: str | None = Field(description="request or detected")
    applied: bool = Field(description="whether the query was centred on a centroid of its language (else it took "
                                      "the fallback shift of its language's documents: see note)")
    source: str | None = Field(description="where the query's centroid came from: index or table")
    note: str | None = None
    lang_confidence: float | None = Field(
        None, description="how sure the detection is: the posterior of query_lang among the index's languages "
        "(text and embedding evidence) times the text's posterior mass on those languages; 1 when the request gave "
        "lang")
    lang_candidates: dict[str, float] | None = Field(
        None, description="detected: the posterior of each of the index's languages at or above 0.01, best first")
    shift: str | None = Field(
        None, description="what was subtracted: language (query_lang's shift), mixture (low confidence: the "
        "posterior-weighted mixture of the candidates' shifts), fallback (the language-agnostic shift: the global "
        "mean under full, none under offset); None with centring off")


class FeedbackInfo(BaseModel):
    mode: Feedback = Field(description="the feedback asked for (off is not reported)")
    gate: str = Field(description="the gate that decided (always for feedback=dense)")
    applied: bool = Field(description="whether the second dense search with the feedback query was run and used")
    reason: str = Field(description="why it ran or not")
    docs: int = Field(0, description="how many top hits fed the feedback query")
    evidence: dict[str, float] = Field(default_factory=dict, description="the numbers the gate looked at")


class RerankInfo(BaseModel):
    applied: bool = Field(description="whether the reranked order was returned (else the first-stage order: see "
                          "reason)")
    model: str = Field(description="the reranker's name")
    depth: int = Field(description="rerank_depth as run: the top candidates considered")
    scope: RerankScope = Field(description="the scope as run (auto resolved): all or same_language")
    query_lang: str | None = Field(None, description="same_language: the query's language (given or detected)")
    scored: int = Field(description="(query, passage) pairs sent to the model")
    reason: str = Field(description="what was done, or why the first-stage order was kept")
    ms: float = Field(description="time of the rerank stage")


class SearchResponse(BaseModel):
    query: str
    mode: Mode = Field(description="the mode used (auto resolved)")
    fusion: Fusion | None
    reranked: bool = Field(description="whether the results are in the reranked order (= rerank.applied)")
    took_ms: float
    centering: CenteringInfo | None = Field(description="present when dense scores were used")
    feedback: FeedbackInfo | None = Field(None, description="present when feedback was asked for")
    rerank: RerankInfo | None = Field(None, description="present when rerank was asked for")
    timings_ms: dict[str, float] = Field(
        default_factory=dict, description="wall time of each stage of the retrieval path: encode (the query "
        "encoding; 0 without a dense run), retrieve (dense search and BM25 after the encoding), fuse, feedback "
        "(when asked for), rerank (when asked for) and total")
    results: list[SearchHit]


class BatchSearchRequest(BaseModel):
    """``POST /search/batch``: several searches in one call, answered in the same order (their queries are encoded
    together by the query batcher)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"searches": [
            {"query": "Which animal sleeps most of the day?", "k": 5},
            {"query": "Wie hoch ist der Mount Everest?", "k": 5, "lang": "de"},
        ]}]},
    )
    searches: list[SearchRequest] = Field(
        min_length=1, description="the searches, each a /search body; at most XLIR_MAX_BATCH_SEARCHES (100; more: "
        "413); a bad one answers 422 naming it (searches[i])")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse] = Field(description="one /search answer per search, in the request's order")


class EmbedKind(StrEnum):
    query = "query"
    passage = "passage"


class EmbedRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"texts": ["Wie spät ist es?", "What time is it?"], "kind": "query"}]},
    )
    texts: list[Text] = Field(min_length=1, description="texts to embed")
    kind: EmbedKind = Field(EmbedKind.query, description="query or passage (the encoder's prefixes differ)")
    centered: Bool = Field(False, description="remove each text's language centroid (the index's)")
    lang: QueryLang | None = Field(
        None, description="language of all texts when centered; detected per text if omitted")
    centering: Centering | None = Field(None, description="offset or full; default: the index's mode")


class EmbedResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]]
    langs: list[str | None] | None = Field(None, description="per text, the language whose centroid was removed")
    centering: Centering | None = None


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    detail: str | None = None
    docs: int | None = None
    languages: dict[str, int] | None = None
    encoder: str | None = None
    reranker: str | None = None
    centering: str | None = Field(None, description="the index's language centring mode")
    centroid_table_langs: list[str] | None = Field(None, description="languages of the encoder's centroid table")
    generation: str | None = Field(None, description="the index generation served (g000000: as built)")
    delta_docs: int | None = Field(None, description="documents upserted since that generation was published")
    tombstones: int | None = Field(None, description="documents deleted or replaced since then")
    reload_error: str | None = Field(None, description="why the last newly published generation was not loaded")
    ray: RayServing | None = Field(None, description="with XLIR_RAY: where the shards and the encoder are served")
    collections: list[CollectionInfo] | None = Field(
        None, description="unnamed /ready: every collection the server serves (the default first)")


class RayServing(BaseModel):
    address: str = Field(description="the Ray cluster (host:port of its head)")
    shard_actors: int = Field(description="Ray actors serving the dense shards of the generation served, one per "
                              "shard (the live delta is searched in the app)")
    encoder_replicas: int | None = Field(None, description="Ray actors serving the query encoder")


class CollectionInfo(BaseModel):
    name: str
    default: bool = Field(description="the collection the unnamed routes (/search, /documents...) serve")
    ready: bool
    detail: str | None = Field(None, description="why it is not ready")
    docs: int | None = None
    languages: dict[str, int] | None = None


class CollectionList(BaseModel):
    default: str = Field(description="the collection the unnamed routes serve")
    collections: list[CollectionInfo]


Ready.model_rebuild()  # its `collections` and `ray` fields name CollectionInfo and RayServing, defined after it


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: DocId = Field(description=f"document id; an existing id is replaced. Rule: {ID_RULE}",
                      json_schema_extra={"minLength": 1, "maxLength": MAX_ID_CHARS})
    text: Text = Field(description="passage text (embedded and BM25-indexed with the title)")
    title: Text = ""
    lang: Text | None = Field(None, description="ISO 639-1 (or a code normalised to it); detected when omitted")
    metadata: Annotated[dict[str, Any], AfterValidator(valid_metadata)] = Field(
        default_factory=dict, description=f"fields to filter searches on (SearchRequest.filter). Rule: {METADATA_RULE}",
        json_schema_extra={"examples": [{"source": "wiki", "year": 2021, "tags": ["rivers", "europe"]}]})


class DocumentOut(BaseModel):
    id: str
    text: str
    title: str
    lang: str
    metadata: dict[str, Any] = Field(default_factory=dict, description="the document's metadata ({} when none)")
    generation: str = Field(description="the index generation it was read from")


class UpsertRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"documents": [
            {"id": "doc-42", "title": "Der Rhein", "text": "Der Rhein ist ein Fluss in Mitteleuropa.",
             "lang": "de"}]}]},
    )
    documents: list[DocumentIn] = Field(min_length=1, description="at most XLIR_MAX_UPSERT_DOCS documents")


class UpsertResponse(BaseModel):
    upserted: int
    replaced: int = Field(description="how many of them replaced a document with the same id")
    generation: str
    delta_docs: int = Field(description="documents in the delta (not yet compacted) after this write")


class DeleteResponse(BaseModel):
    deleted: bool
    generation: str
    delta_docs: int


class ReloadResponse(BaseModel):
    reloaded: bool = Field(description="whether a new generation or new writes of other processes were loaded")
    generation: str
    delta_docs: int
    tombstones: int


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. query_too_long")
    detail: str = Field(description="what went wrong and how to fix it")


def mine_threshold(value: object) -> object:
    """A finite number (integers taken), a threshold rule's name, or null; ``true`` and ``"0.5"`` are refused."""
    if value is None or (isinstance(value, str) and value in THRESHOLD_RULES):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"should be a finite number, {' or '.join(map(repr, THRESHOLD_RULES))}, or null")
    return float(value)


MineThreshold = Annotated[float | str | None, BeforeValidator(mine_threshold)]


class MineRequest(BaseModel):
    """Bitext mining of two small lists (the batch job is ``xlir mine``)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{
            "src": ["Der Zug fährt um zwölf.", "Ich mag grüne Äpfel.", "Das Wetter ist heute schön."],
            "tgt": ["Green apples are what I like.", "Today the weather is lovely.", "The train leaves at noon."],
            "k": 2, "threshold": 1.0}]},
    )
    src: list[Text] = Field(min_length=1, description="source sentences (at most XLIR_MINE_MAX_SENTENCES)")
    tgt: list[Text] = Field(min_length=1, description="target sentences (at most XLIR_MINE_MAX_SENTENCES)")
    k: Int = Field(4, ge=1, le=64, description="neighbourhood size of the margin")
    margin: Literal["ratio", "distance", "absolute"] = Field(
        "absolute", description="absolute = cosine (with centring and the runner-up threshold it transferred best "
        "to new languages); ratio / distance = Artetxe & Schwenk margins")
    retrieval: Literal["fwd", "bwd", "max", "intersect"] = "max"
    threshold: MineThreshold = Field(
        "runner-up", description="keep pairs scoring at least this number, or at least the value a rule sets from "
        "this run's scores: runner-up (the 0.875 quantile of each sentence's second-best score), otsu; null keeps all")
    one_to_one: Bool = Field(False, description="each sentence in at most one pair (max/intersect always are)")
    dedup: Bool = Field(False, description="mine repeated sentences once, reported at their first index")
    centering: Centering = Field(Centering.full, description="remove each side's mean vector first")
    texts: Bool = Field(True, description="echo the sentences of each pair in the response")


class MinedPairOut(BaseModel):
    score: float
    src: int = Field(description="index in the request's src list")
    tgt: int = Field(description="index in the request's tgt list")
    src_text: str | None = None
    tgt_text: str | None = None


class MineResponse(BaseModel):
    pairs: list[MinedPairOut] = Field(description="by score desc")
    src_count: int
    tgt_count: int
    search: str = Field(description="how the neighbours were found")
    embed_ms: float
    mine_ms: float
