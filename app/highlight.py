"""Highlights: the best sentence of each hit, with the query terms marked (``SearchRequest.highlight``).

Pure functions over text (no index, no model), and :func:`highlight_docs`, which takes the encoder as a function:

- :func:`sentence_spans` splits a document's text into sentences, in every script: `sentencex` (Wikimedia's
  rule-based segmenter, ~300 languages, abbreviations included) for the boundaries (``.!?``, CJK ``。！？``,
  Devanagari ``।``, Arabic ``؟``, ...), then any piece longer than ``max_sentence_chars`` (Thai, which marks no
  sentence end, or a run-on sentence) is cut into windows of at most that many characters, at a space when there
  is one in the window's second half.
- :func:`best_sentence_bm25`: the sentence with the most query-term weight, BM25 with the sentences as documents
  (``idf`` from the index's statistics when given, else each term counts 1); ties to the earlier sentence.
- :func:`nearest_sentences`: per document, the sentence whose vector is nearest (cosine) to the query vector.
- :func:`term_spans`: the character spans, in the original sentence, of its tokens that are query tokens. The
  tokenizer (``indexer.text.tokenize``) normalises (NFKC, case folding, Arabic letter forms and harakat, digits) and
  cuts CJK and Thai into overlapping bigrams, so its tokens are mapped back to the characters they came from:
  each whitespace-free chunk is tokenized grapheme by grapheme, which gives the normalised text with the original
  offset of each of its characters, and the chunk's tokens are found in it in order. Overlapping spans (adjacent
  CJK bigrams) merge. Spans are ``[start, end)`` offsets in code points of ``Highlight.text``.

Rules (:func:`highlight_docs`): a hit found by BM25 (mode bm25, or a hybrid hit with a BM25 rank) takes the BM25
sentence (source ``bm25``); a dense hit (mode dense, a hybrid hit BM25 did not find, or a BM25 hit whose text
holds no query term: the match was in the title) takes the sentence nearest to the query (source ``dense``): the
first ``dense_sentences`` sentences of each such document (those with the most query-term weight first, then in
text order; ties go to the earlier candidate) are encoded with the server's passage encoder, all hits in one call,
and compared with the query vector of the retrieval. Without a query vector (mode bm25) such a hit takes its first
sentence. Cost is bounded: only the first ``max_text_chars`` characters of a document are split and scored. BM25
highlights cost well under a millisecond for 10 hits; dense ones cost the encoding of the hits' sentences
(benchmarks/RESULTS.md 10.4).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import regex

from app.fusion import FusedHit
from indexer.bm25 import lucene_idf

Tokenizer = Callable[[str], list[str]]
Span = tuple[int, int]
Source = Literal["bm25", "dense"]

__all__ = ["HighlightLimits", "HitText", "Picked", "best_sentence_bm25", "bm25_sentence_scores", "highlight_docs",
           "highlight_hits", "index_idf", "nearest_sentences", "sentence_spans", "term_spans"]

K1, B = 1.2, 0.75
_CHUNK = regex.compile(r"\S+")
_GRAPHEME = regex.compile(r"\X")
_NOT_A_CHAR = "\x00"  # stands between normalised graphemes that gave no token, so no token is found across them


@dataclass(frozen=True)
class HighlightLimits:
    max_text_chars: int = 10_000  # of a document's text: only these are split and scored (bounded cost)
    max_sentence_chars: int = 300  # a longer piece (Thai, run-on text) is cut into windows of at most this
    dense_sentences: int = 8  # per dense hit, at most this many sentences are encoded
    # rows per encoder batch (length-sorted): 4 encoded 21 hit sentences in 0.6-0.9 s where 32 (one batch) took
    # 1.0-2.0 s, interleaved on the loaded 2-core machine of benchmarks/RESULTS.md 10.4
    encode_batch: int = 4


@dataclass(frozen=True)
class Picked:
    """The highlight of one hit: the sentence ``text``, the query terms' ``spans`` in it, the rule's ``source``."""

    text: str
    spans: list[Span]
    source: Source


def _windows(text: str, start: int, end: int, size: int) -> list[Span]:
    """``text[start:end]`` cut into pieces of at most ``size`` characters: at the last space of a window when it is
    in the window's second half, else before ``size`` (never before a combining mark)."""
    out: list[Span] = []
    while end - start > size:
        cut = start + size
        space = text.rfind(" ", start + size // 2, cut + 1)
        if space > start:
            cut = space
        else:
            while cut > start + 1 and unicodedata.category(text[cut])[0] == "M":
                cut -= 1
        out.append((start, cut))
        start = cut
        while start < end and text[start].isspace():
            start += 1
    if start < end:
        out.append((start, end))
    return out


def sentence_spans(text: str, lang: str | None = None, max_sentence_chars: int = 300,
                   max_text_chars: int | None = None) -> list[Span]:
    """The sentences of ``text`` (in language ``lang``, an ISO code; None or unknown: the segmenter's default
    rules) as ``[start, end)`` character offsets, surrounding whitespace left out, each at most
    ``max_sentence_chars`` long; only the first ``max_text_chars`` characters are looked at (None: all)."""
    from sentencex import segment

    if max_text_chars is not None:
        text = text[:max_text_chars]
    out: list[Span] = []
    pos = 0
    for piece in segment(lang or "en", text):
        at = text.find(piece, pos)
        if at < 0:  # the segmenter changed the text (it does not today): skip the piece
            continue
        pos = at + len(piece)
        start, end = at, pos
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            out.extend(_windows(text, start, end, max_sentence_chars))
    return out


def bm25_sentence_scores(query_tokens: Sequence[str], sentence_tokens: Sequence[Sequence[str]],
                         idf: Mapping[str, float] | None = None, k1: float = K1, b: float = B) -> np.ndarray:
    """BM25 of each sentence for the query, with the sentences as the documents (``avgdl`` their mean length);
    a query token counts once per occurrence, as in the index; ``idf`` None (or a term missing from it): 1."""
    scores = np.zeros(len(sentence_tokens), dtype=np.float64)
    if not sentence_tokens:
        return scores
    lengths = np.asarray([len(t) for t in sentence_tokens], dtype=np.float64)
    avgdl = float(lengths.mean()) or 1.0
    query = Counter(t for t in query_tokens if t)
    for i, tokens in enumerate(sentence_tokens):
        tf = Counter(tokens)
        norm = k1 * (1 - b + b * lengths[i] / avgdl)
        for term, mult in query.items():
            n = tf.get(term, 0)
            if n:
                weight = 1.0 if idf is None else idf.get(term, 1.0)
                scores[i] += mult * weight * n * (k1 + 1) / (n + norm)
    return scores


def best_sentence_bm25(query_tokens: Sequence[str], sentences: Sequence[str], tokenize: Tokenizer,
                       idf: Mapping[str, float] | None = None) -> tuple[int, float]:
    """The index of the sentence with the highest :func:`bm25_sentence_scores` (ties: the earlier one) and its
    score; (-1, 0.0) without sentences. A score of 0 means no sentence holds a query term."""
    if not sentences:
        return -1, 0.0
    scores = bm25_sentence_scores(query_tokens, [tokenize(s) for s in sentences], idf)
    best = int(np.argmax(scores))  # the first of the maxima
    return best, float(scores[best])


def nearest_sentences(query: np.ndarray, vectors: np.ndarray, groups: Sequence[int]) -> list[int]:
    """Per group of consecutive rows of ``vectors`` (``groups`` gives the sizes, each >= 1), the position within
    the group of the row with the highest cosine to ``query`` (ties: the earlier row)."""
    q = np.asarray(query, dtype=np.float64).reshape(-1)
    v = np.asarray(vectors, dtype=np.float64).reshape(len(vectors), -1) if len(vectors) else np.zeros((0, len(q)))
    norms = np.linalg.norm(v, axis=1) * (np.linalg.norm(q) or 1.0)
    cos = (v @ q) / np.where(norms > 0, norms, 1.0)
    out, lo = [], 0
    for size in groups:
        if size < 1:
            raise ValueError("every group needs at least one row")
        out.append(int(np.argmax(cos[lo: lo + size])))
        lo += size
    if lo != len(v):
        raise ValueError(f"groups cover {lo} rows, vectors has {len(v)}")
    return out


def _normalised(chunk: str, tokenize: Tokenizer, cache: dict[str, str]) -> tuple[str, list[Span]]:
    """``chunk`` as the tokenizer sees it, grapheme by grapheme, and for each of its characters the original span
    of the grapheme it came from. A grapheme that gives no token (punctuation, a tatweel) becomes one
    separator; one that gives several is joined with separators."""
    if chunk.isascii():
        return chunk.lower(), [(i, i + 1) for i in range(len(chunk))]
    text: list[str] = []
    where: list[Span] = []
    for m in _GRAPHEME.finditer(chunk):
        g = m.group()
        norm = cache.get(g)
        if norm is None:
            norm = cache[g] = _NOT_A_CHAR.join(tokenize(g)) or _NOT_A_CHAR
        text.append(norm)
        where.extend([m.span()] * len(norm))
    return "".join(text), where


def _merge(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for s, e in sorted(spans):
        if out and s < out[-1][1]:  # overlapping (adjacent CJK bigrams): one span
            out[-1] = (out[-1][0], max(e, out[-1][1]))
        else:
            out.append((s, e))
    return out


def term_spans(sentence: str, query_tokens: Sequence[str] | set[str], tokenize: Tokenizer) -> list[Span]:
    """The ``[start, end)`` character spans in ``sentence`` of its tokens that are among ``query_tokens``,
    sorted, overlapping ones merged (see the module docstring for how tokens are mapped back)."""
    wanted = set(query_tokens)
    wanted.discard("")
    if not wanted:
        return []
    cache: dict[str, str] = {}
    spans: list[Span] = []
    for m in _CHUNK.finditer(sentence):
        chunk, base = m.group(), m.start()
        tokens = tokenize(chunk)
        if not wanted.intersection(tokens):
            continue
        norm, where = _normalised(chunk, tokenize, cache)
        prev_start, prev_end = -1, 0
        for token in tokens:
            # a bigram overlaps the previous one (starts inside it and ends after it); any other token follows it
            at = norm.find(token, prev_start + 1)
            if at < prev_end and not (at >= 0 and at + len(token) > prev_end):
                at = norm.find(token, prev_end)
            if at < 0:  # normalising grapheme by grapheme differed from the whole chunk: mark the chunk
                if token in wanted:
                    spans.append((base, base + len(chunk)))
                continue
            prev_start, prev_end = at, at + len(token)
            if token in wanted:
                spans.append((base + where[at][0], base + where[prev_end - 1][1]))
    return _merge(spans)


def index_idf(index: Any, tokens: Sequence[str]) -> dict[str, float] | None:
    """Lucene idf of ``tokens`` from the BM25 statistics of the index's generation (the term frequencies saved
    beside the BM25 scores; a live index's delta is left out), or None when the index has none."""
    main = getattr(index, "main", index)
    searcher = getattr(main, "bm25", None)
    postings = searcher.postings() if searcher is not None and hasattr(searcher, "postings") else None
    if postings is None:
        return None
    n = postings.num_docs
    out: dict[str, float] = {}
    for token in set(tokens):
        hit = postings.term(token)
        df = len(hit[0]) if hit is not None else 0
        out[token] = float(lucene_idf(n, df))
    return out


@dataclass(frozen=True)
class HitText:
    """What :func:`highlight_docs` needs of one hit: its text and language, and whether BM25 found it."""

    text: str
    lang: str | None
    bm25: bool


def highlight_docs(
    hits: Sequence[HitText], query_tokens: Sequence[str], tokenize: Tokenizer,
    encode_passages: Callable[..., np.ndarray] | None = None, query_vector: np.ndarray | None = None,
    idf: Mapping[str, float] | None = None, limits: HighlightLimits = HighlightLimits(),
) -> list[Picked | None]:
    """The highlight of each hit (None for a text without a sentence), by the rules of the module docstring. The
    dense sentences of all hits are encoded in one ``encode_passages(texts, batch_size=limits.encode_batch)`` call
    (none when no hit needs it or each such hit has a single sentence)."""
    out: list[Picked | None] = [None] * len(hits)
    dense: list[tuple[int, list[str]]] = []  # (hit, candidate sentences)
    wanted = set(query_tokens)
    for i, hit in enumerate(hits):
        spans = sentence_spans(hit.text, hit.lang, limits.max_sentence_chars, limits.max_text_chars)
        if not spans:
            continue
        sentences = [hit.text[s:e] for s, e in spans]
        tokens = [tokenize(s) for s in sentences]
        scores = bm25_sentence_scores(query_tokens, tokens, idf)
        best = int(np.argmax(scores))
        if hit.bm25 and scores[best] > 0:
            out[i] = Picked(sentences[best], term_spans(sentences[best], wanted, tokenize), "bm25")
            continue
        if query_vector is None or encode_passages is None:
            out[i] = Picked(sentences[0], term_spans(sentences[0], wanted, tokenize), "bm25" if hit.bm25 else "dense")
            continue
        # the candidates: the sentences with the most query-term weight first, then the others in text order
        order = sorted(range(len(sentences)), key=lambda j: (-scores[j], j))[: limits.dense_sentences]
        dense.append((i, [sentences[j] for j in order]))
    if dense:
        single = [(i, c[0]) for i, c in dense if len(c) == 1]
        many = [(i, c) for i, c in dense if len(c) > 1]
        for i, text in single:
            out[i] = Picked(text, term_spans(text, wanted, tokenize), "dense")
        if many:
            assert encode_passages is not None and query_vector is not None
            flat = [s for _, c in many for s in c]
            vecs = np.asarray(encode_passages(flat, batch_size=limits.encode_batch))
            picks = nearest_sentences(query_vector, vecs, [len(c) for _, c in many])
            for (i, cands), j in zip(many, picks, strict=True):
                out[i] = Picked(cands[j], term_spans(cands[j], wanted, tokenize), "dense")
    return out


def highlight_hits(index: Any, hits: Sequence[FusedHit], docs: Mapping[int, Mapping[str, Any]], query: str,
                   tokenize: Tokenizer, encode_passages: Callable[..., np.ndarray] | None,
                   query_vector: np.ndarray | None, limits: HighlightLimits = HighlightLimits()) -> list[Picked | None]:
    """:func:`highlight_docs` of the hits of :meth:`app.service.SearchService.retrieve` (their documents in
    ``docs``), with the query's BM25 tokens and the idf of the index's statistics (:func:`index_idf`)."""
    tokens = tokenize(query)
    texts = [HitText(str(docs[h.row]["text"]), docs[h.row].get("lang"), h.ranks.get("bm25") is not None)
             for h in hits]
    idf = index_idf(index, tokens) if any(t.bm25 for t in texts) else None
    return highlight_docs(texts, tokens, tokenize, encode_passages, query_vector, idf, limits)
