"""BM25 over the whole collection with bm25s (numba backend when numba is installed, else numpy), fed by xlir's
script-aware analyzer.

The builder maps tokens to integer ids as documents stream in, so only the id lists are kept in
memory, never the texts. Search returns documents with a positive score only (a document sharing no
term with the query is not a BM25 hit), optionally restricted by a boolean row mask.

bm25s stores scores with the collection statistics (N, avgdl, df) baked in. For an index that changes (live
updates: deleted documents, a delta segment) the builder also saves the raw term frequencies (``tf.*.npy``, a
term x document CSC matrix, and ``doc_len.npy``), and :func:`lucene_scores` scores any set of segments at query
time with statistics over the documents alive in all of them, so scores equal those of a fresh build.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.topk import top_k

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs every index build at DEBUG through its own handler

K1 = 1.2
B = 0.75
METHOD = "lucene"


class BM25Builder:
    def __init__(self, k1: float = K1, b: float = B, method: str = METHOD) -> None:
        self.k1, self.b, self.method = k1, b, method
        self.vocab: dict[str, int] = {}
        self.doc_ids: list[list[int]] = []

    def add(self, tokens: Sequence[str]) -> None:
        vocab = self.vocab
        setdefault = vocab.setdefault
        # len(vocab) is read before setdefault inserts: a new token gets the next id
        self.doc_ids.append([setdefault(tok, len(vocab)) for tok in tokens])

    def __len__(self) -> int:
        return len(self.doc_ids)

    def part(self) -> BM25Part:
        """This builder's documents as a part (its own vocabulary, first seen first) for :meth:`extend`."""
        lengths = np.fromiter((len(d) for d in self.doc_ids), dtype=np.int64, count=len(self.doc_ids))
        ids = np.fromiter((t for d in self.doc_ids for t in d), dtype=np.int32, count=int(lengths.sum()))
        return BM25Part(list(self.vocab), ids, lengths)

    def extend(self, part: BM25Part) -> None:
        """Add the documents of ``part`` after those already added, as :meth:`add` would have added them one by
        one: a token new to this builder gets the next id, in the order the part first saw its tokens (which is
        the order :meth:`add` would meet them), so parts extended in order give the vocabulary ids and the id
        lists of one builder fed every document in order."""
        if not len(part.lengths):
            return
        vocab = self.vocab
        setdefault = vocab.setdefault
        lookup = np.fromiter((setdefault(tok, len(vocab)) for tok in part.tokens), dtype=np.int64,
                             count=len(part.tokens))
        self.doc_ids.extend(a.tolist() for a in np.split(lookup[part.ids], np.cumsum(part.lengths)[:-1]))

    def save(self, directory: Path) -> None:
        """Write the bm25s index (per-posting scores, vocabulary, parameters) and the term frequencies.

        The scores are computed here from the term-frequency matrix in a few vectorised numpy passes, exactly as
        bm25s's ``index`` computes them (it loops over documents in Python, 2-3x slower), and saved with bm25s's
        own ``save``, so :class:`BM25Searcher` loads them with bm25s."""
        import bm25s

        vocab = dict(self.vocab)
        # bm25s needs one token for documents without any (an empty text): give them a reserved one
        empty = vocab.setdefault("", len(vocab))
        ids = [d if d else [empty] for d in self.doc_ids]
        tf = term_frequencies(ids, len(vocab))
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method, backend=bm25s_backend())
        retriever.scores = score_matrix(tf, self.k1, self.b, self.method, dtype=retriever.dtype)
        retriever.vocab_dict = vocab
        retriever.nonoccurrence_array = None
        retriever.save(str(directory), show_progress=False)
        write_postings(directory, tf)


@dataclass
class BM25Part:
    """The tokenized documents of one range (a shard of a build) with the range's own vocabulary: ``tokens`` in
    id order (first seen first), every document's token ids concatenated (``ids``) and each one's count
    (``lengths``). A worker saves it beside its shard; the driver merges the parts in order
    (:meth:`BM25Builder.extend`)."""

    tokens: list[str]
    ids: np.ndarray  # int32
    lengths: np.ndarray  # int64, one per document

    FILES = ("tokens.json", "ids.npy", "lengths.npy")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / self.FILES[0]).write_text(json.dumps(self.tokens, ensure_ascii=False), encoding="utf-8")
        np.save(directory / self.FILES[1], np.asarray(self.ids, dtype=np.int32))
        np.save(directory / self.FILES[2], np.asarray(self.lengths, dtype=np.int64))

    @classmethod
    def load(cls, directory: Path) -> BM25Part:
        tokens = json.loads((directory / cls.FILES[0]).read_text(encoding="utf-8"))
        ids, lengths = np.load(directory / cls.FILES[1]), np.load(directory / cls.FILES[2])
        if int(lengths.sum()) != len(ids) or (len(ids) and int(ids.max()) >= len(tokens)):
            raise ValueError(f"{directory}: the BM25 part's ids do not match its lengths or vocabulary")
        return cls(tokens, ids, lengths)


TF_FILES = ("tf.indptr.npy", "tf.indices.npy", "tf.data.npy", "doc_len.npy")


@dataclass
class TermFrequencies:
    """Term x document counts in CSC form (per term, the documents holding it, ascending, and how often) and
    each document's length in tokens, duplicates included."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    doc_len: np.ndarray


def term_frequencies(doc_ids: Sequence[Sequence[int]], vocab_size: int, chunk: int = 65_536) -> TermFrequencies:
    """Count token ids per document exactly as bm25s counts them (an empty document must already hold the
    reserved token)."""
    import scipy.sparse as sp

    blocks, lengths = [], []
    for start in range(0, len(doc_ids), chunk):
        part = doc_ids[start : start + chunk]
        lens = np.fromiter((len(d) for d in part), dtype=np.int64, count=len(part))
        cols = np.fromiter((t for d in part for t in d), dtype=np.int64, count=int(lens.sum()))
        rows = np.repeat(np.arange(len(part), dtype=np.int64), lens)
        blocks.append(sp.csr_matrix((np.ones(len(cols), dtype=np.int32), (rows, cols)),
                                    shape=(len(part), vocab_size)))
        lengths.append(lens)
    mat = (sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, vocab_size), dtype=np.int32)).tocsc()
    mat.sum_duplicates()
    mat.sort_indices()
    doc_len = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    return TermFrequencies(mat.indptr.astype(np.int64, copy=False), mat.indices.astype(np.int32, copy=False),
                           mat.data.astype(np.int32, copy=False), doc_len.astype(np.int32))


def lucene_idf(n_docs: int, df: Any) -> Any:
    """Lucene's idf ``ln(1 + (N - df + 0.5) / (df + 0.5))`` (a number or an array of document frequencies): the
    live scoring here and the highlights' sentence scores (``app/highlight.py``)."""
    return np.log(1.0 + (n_docs - df + 0.5) / (df + 0.5))


def score_matrix(tf: TermFrequencies, k1: float = K1, b: float = B, method: str = METHOD,
                 dtype: str = "float32") -> dict[str, Any]:
    """bm25s's score matrix (``data/indices/indptr/num_docs``, CSC over terms) from term frequencies: each
    posting holds ``idf(t) * tf / (tf + k1 (1 - b + b dl / avgdl))`` with the Lucene idf ``ln(1 + (N - df + 0.5)
    / (df + 0.5))``, N, avgdl and df over these documents."""
    if method != "lucene":
        raise ValueError(f"BM25 method {method!r}: only 'lucene' is built here")
    n_docs = len(tf.doc_len)
    df = np.diff(tf.indptr).astype(np.float64)
    idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(dtype).astype(np.float64)  # bm25s keeps idf in dtype
    avgdl = float(np.mean(tf.doc_len, dtype=np.float64)) if n_docs else 1.0
    norm = k1 * ((1 - b) + b * tf.doc_len.astype(np.float64) / avgdl)
    tff = tf.data.astype(np.float64)
    terms = np.repeat(np.arange(len(df), dtype=np.int64), np.diff(tf.indptr))
    data = (idf[terms] * tff / (norm[tf.indices] + tff)).astype(dtype)
    return {"data": data, "indices": tf.indices, "indptr": tf.indptr, "num_docs": n_docs}  # shared: only saved


def write_postings(directory: Path, tf: TermFrequencies) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, arr in zip(TF_FILES, (tf.indptr, tf.indices, tf.data, tf.doc_len), strict=True):
        np.save(directory / name, arr)


@dataclass
class Postings:
    """One segment's term frequencies: ``vocab`` term -> column, CSC ``indptr/indices/data``, ``doc_len``."""

    vocab: dict[str, int]
    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    doc_len: np.ndarray

    @property
    def num_docs(self) -> int:
        return len(self.doc_len)

    def term(self, token: str) -> tuple[np.ndarray, np.ndarray] | None:
        tid = self.vocab.get(token)
        if tid is None or tid + 1 >= len(self.indptr):
            return None
        start, end = int(self.indptr[tid]), int(self.indptr[tid + 1])
        return self.indices[start:end], self.data[start:end]

    @classmethod
    def load(cls, directory: Path, vocab: dict[str, int], mmap: bool = True) -> Postings | None:
        """The saved frequencies of a BM25 directory (None if it predates them)."""
        if not all((directory / name).is_file() for name in TF_FILES):
            return None
        indptr, indices, data, doc_len = (np.load(directory / name, mmap_mode="r" if mmap else None)
                                          for name in TF_FILES)
        return cls(vocab, indptr, indices, data, doc_len)

    @classmethod
    def from_tokens(cls, docs: Sequence[Sequence[str]]) -> Postings:
        """Frequencies of a small in-memory segment (the live delta), counted as the builder does."""
        vocab: dict[str, int] = {}
        ids = [[vocab.setdefault(t, len(vocab)) for t in d] for d in docs]
        empty = vocab.setdefault("", len(vocab))
        ids = [d if d else [empty] for d in ids]
        cols: list[int] = []
        rows: list[int] = []
        vals: list[int] = []
        for row, d in enumerate(ids):
            for tid, n in Counter(d).items():
                cols.append(tid)
                rows.append(row)
                vals.append(n)
        order = np.lexsort((np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)))
        col_arr = np.asarray(cols, dtype=np.int64)[order]
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.add.at(indptr, col_arr + 1, 1)
        return cls(vocab, np.cumsum(indptr), np.asarray(rows, dtype=np.int32)[order],
                   np.asarray(vals, dtype=np.int32)[order], np.asarray([len(d) for d in ids], dtype=np.int32))


@dataclass
class Segment:
    """Postings whose rows start at global row ``offset``; ``live`` (None = all) masks deleted documents."""

    postings: Postings
    offset: int
    live: np.ndarray | None = None


def lucene_scores(segments: Sequence[Segment], tokens: Sequence[str], total_rows: int,
                  k1: float = K1, b: float = B, cache: dict[Any, np.ndarray] | None = None) -> np.ndarray:
    """BM25 (Lucene idf, as bm25s ``method="lucene"``) of every row, with N, avgdl and df counted over the live
    documents of all segments: ``idf = ln(1 + (N - df + 0.5) / (df + 0.5))``, ``tf / (tf + k1 (1 - b + b dl /
    avgdl))``. A query token counts once per occurrence, like bm25s. Deleted rows score 0. ``cache`` (a dict kept
    while the segments do not change) keeps each segment's length normalisation between queries."""
    scores = np.zeros(total_rows, dtype=np.float64)
    stats_key = ("stats", *((id(seg.postings), id(seg.live)) for seg in segments))
    stats = cache.get(stats_key) if cache is not None else None
    if stats is None:
        n, length = 0, 0.0
        for seg in segments:
            if seg.live is None:
                n += seg.postings.num_docs
                length += float(np.sum(seg.postings.doc_len, dtype=np.float64))
            else:
                n += int(np.count_nonzero(seg.live))
                length += float(np.sum(seg.postings.doc_len[seg.live], dtype=np.float64))
        stats = np.asarray([n, length], dtype=np.float64)
        if cache is not None:
            cache[stats_key] = stats
    n_docs, total_len = int(stats[0]), float(stats[1])
    if n_docs == 0:
        return scores.astype(np.float32)
    avgdl = total_len / n_docs
    norms = []
    for i, seg in enumerate(segments):
        key = ("norm", i, id(seg.postings), avgdl)
        norm = cache.get(key) if cache is not None else None
        if norm is None:
            norm = k1 * (1 - b + b * np.asarray(seg.postings.doc_len, dtype=np.float64) / avgdl)
            if cache is not None:
                cache[key] = norm
        norms.append(norm)
    for token, mult in Counter(t for t in tokens if t).items():
        parts = []
        df = 0
        for seg, norm in zip(segments, norms, strict=True):
            hit = seg.postings.term(token)
            if hit is None or not len(hit[0]):
                continue
            docs, tf = hit
            live = len(docs) if seg.live is None else int(np.count_nonzero(seg.live[docs]))
            if live:
                parts.append((seg, norm, docs, tf))
                df += live
        if df == 0:
            continue
        idf = mult * lucene_idf(n_docs, df)
        for seg, norm, docs, tf in parts:
            tff = tf.astype(np.float64)
            scores[seg.offset + docs] += idf * tff / (tff + norm[docs])  # a term lists each document once
    for seg in segments:
        if seg.live is not None:  # deleted rows took part in the sums above: zero them
            view = scores[seg.offset : seg.offset + seg.postings.num_docs]
            view[~seg.live] = 0.0
    return scores.astype(np.float32)


def bm25s_backend() -> str:
    """bm25s's ``numba`` backend when bm25s could import numba, else its ``numpy`` one (what bm25s's own ``auto``
    picks, named). numba is a base dependency (bm25s's batched ``retrieve`` uses it); the serving image leaves it out
    (a 200 MB compiler), and the searcher's per-query scores (``get_scores``) are the same numpy code under either
    backend."""
    import bm25s

    return "numba" if bm25s.NUMBA_AVAILABLE else "numpy"


class BM25Searcher:
    def __init__(self, directory: Path, mmap: bool = True) -> None:
        import bm25s

        # the backend saved with the index (``numba`` when it was built with numba) is overridden: loading an index
        # with bm25s's numba backend where numba is missing fails
        self._r = bm25s.BM25.load(str(directory), mmap=mmap, load_vocab=True, show_progress=False,
                                  backend=bm25s_backend())
        self.vocab: dict[str, int] = self._r.vocab_dict
        self.num_docs = int(self._r.scores["num_docs"])
        self.k1, self.b = float(self._r.k1), float(self._r.b)
        self._dir, self._mmap = directory, mmap
        self._postings: Postings | None = None

    def postings(self) -> Postings | None:
        """The term frequencies saved beside the scores (None for an index built before they were)."""
        if self._postings is None:
            self._postings = Postings.load(self._dir, self.vocab, self._mmap)
        return self._postings

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Dense BM25 score of every document (0 where no query term occurs)."""
        ids = [self.vocab[t] for t in tokens if t and t in self.vocab]
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self._r.get_scores(ids), dtype=np.float32)

    def search(self, tokens: Sequence[str], k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the top ``k`` documents with a positive score, best first, ties by row."""
        return top_k(self.scores(tokens), k, mask=mask, above=0.0)
