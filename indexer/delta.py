"""The delta of a live index: the updates on top of one generation, and the snapshots searched.

The write-ahead log of a generation (``indexer/wal.py``) is replayed into a :class:`Delta`: an exact vector set
of the upserted documents (raw vectors; centred at query time with the generation's *frozen* centroids), their
texts and BM25 term frequencies, and tombstones over the generation's rows for documents deleted or replaced.
:meth:`Delta.view` takes an immutable :class:`DeltaView`; a :class:`LiveIndex` (the generation's ``Index`` and
a view) is what the search service queries: a query runs entirely on the snapshot it started with, so writes and
generation swaps never disturb it.

Rows: the generation's documents keep their rows ``0 .. n-1``, delta documents follow in the order they were
written. A replaced document is a tombstone plus a new row at the end, so the live rows, in order, are exactly
the documents a fresh build over the final collection would hold, in the same order (ties break the same way).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from indexer import wal
from indexer.bm25 import Postings, Segment, lucene_scores
from indexer.centering import center
from indexer.filters import MetadataColumns
from indexer.layout import ROOT_GENERATION
from indexer.readers import Document
from indexer.store import Hits, Index, SearchIndex
from indexer.text import tokenize
from indexer.topk import top_k
from indexer.write import Batch, passage_text
from xlir.errors import IndexInvalid


def _grow(arr: np.ndarray, need: int) -> np.ndarray:
    """``arr`` itself if it holds ``need`` rows, else a copy with room for twice as many (readers keep the old)."""
    if len(arr) >= need:
        return arr
    out = np.zeros((max(need, 2 * len(arr), 16), *arr.shape[1:]), dtype=arr.dtype)
    out[: len(arr)] = arr
    return out


class DeltaPostings:
    """BM25 term frequencies of the delta, appended in row order; read through :meth:`view` (first ``n`` rows)."""

    def __init__(self) -> None:
        self.terms: dict[str, tuple[list[int], list[int]]] = {}
        self.doc_len = np.zeros(0, dtype=np.int32)
        self.n = 0

    def add(self, tokens: Sequence[str]) -> None:
        row = self.n
        counts = Counter(tokens) if tokens else Counter({"": 1})
        for tok, tf in counts.items():
            rows, tfs = self.terms.setdefault(tok, ([], []))
            rows.append(row)
            tfs.append(tf)
        self.doc_len = _grow(self.doc_len, row + 1)
        self.doc_len[row] = max(len(tokens), 1)
        self.n = row + 1

    def view(self, n: int) -> _PostingsView:
        return _PostingsView(self, n, self.doc_len[:n])


@dataclass
class _PostingsView:
    src: DeltaPostings
    n: int
    doc_len: np.ndarray

    @property
    def num_docs(self) -> int:
        return self.n

    def term(self, token: str) -> tuple[np.ndarray, np.ndarray] | None:
        hit = self.src.terms.get(token)
        if hit is None:
            return None
        rows = np.asarray(hit[0], dtype=np.int64)
        tfs = np.asarray(hit[1], dtype=np.int32)
        m = min(len(rows), len(tfs))  # a writer may be appending to the lists right now
        rows, tfs = rows[:m], tfs[:m]
        keep = rows < self.n
        return rows[keep], tfs[keep]


class Delta:
    """The updates on top of one generation. Mutated only by :class:`LiveStore` under its lock; readers use
    :meth:`view` snapshots (arrays that are changed in place are replaced by copies, never edited under them)."""

    def __init__(self, main: Index, records: Iterable[wal.Record] = ()) -> None:
        self.main_n = main.size
        self.dim = main.vector_set.dim
        self._main = main
        self.main_tomb = np.zeros(self.main_n, dtype=bool)
        self.tomb_count = 0
        self.docs: list[dict[str, Any]] = []
        self.vecs = np.zeros((0, self.dim), dtype=np.float32)
        self.dead = np.zeros(0, dtype=bool)
        self.ids: dict[str, int] = {}  # live delta id -> delta row
        self.langs: list[str] = []
        self.live_langs: Counter[str] = Counter()
        self.postings = DeltaPostings()
        self.lsn = 0
        for rec in records:
            self.apply(rec)

    @cached_property
    def main_ids(self) -> dict[str, int]:
        """Document id -> row of the generation, read from its docstores at the first write or replay."""
        return main_id_map(self._main)

    @property
    def live_delta(self) -> int:
        return len(self.ids)

    def exists(self, doc_id: str) -> bool:
        if doc_id in self.ids:
            return True
        row = self.main_ids.get(doc_id)
        return row is not None and not self.main_tomb[row]

    def _remove(self, doc_id: str) -> bool:
        row = self.ids.pop(doc_id, None)
        if row is not None:
            dead = self.dead.copy()
            dead[row] = True
            self.dead = dead
            self.live_langs[self.langs[row]] -= 1
            return True
        mrow = self.main_ids.get(doc_id)
        if mrow is not None and not self.main_tomb[mrow]:
            tomb = self.main_tomb.copy()
            tomb[mrow] = True
            self.main_tomb = tomb
            self.tomb_count += 1
            return True
        return False

    def apply(self, rec: wal.Record) -> bool:
        """Apply one log record; returns whether a document was replaced or deleted."""
        self.lsn = max(self.lsn, rec.lsn)
        existed = self._remove(rec.doc_id)
        if rec.op == wal.DELETE:
            return existed
        assert rec.doc is not None and rec.vector is not None
        if rec.vector.shape != (self.dim,):
            raise IndexInvalid(f"log record {rec.lsn} holds a {rec.vector.shape} vector, the index {self.dim}-dim")
        row = len(self.docs)
        self.vecs = _grow(self.vecs, row + 1)
        self.vecs[row] = rec.vector
        self.dead = _grow(self.dead, row + 1)
        self.docs.append(rec.doc)
        self.langs.append(rec.doc["lang"])
        self.live_langs[rec.doc["lang"]] += 1
        self.postings.add(tokenize(passage_text(rec.doc.get("title", ""), rec.doc["text"])))
        self.ids[rec.doc_id] = row
        return existed

    def view(self) -> DeltaView:
        n = len(self.docs)
        return DeltaView(main_n=self.main_n, n=n, docs=self.docs, vecs=self.vecs[:n], dead=self.dead[:n],
                         langs=self.langs, main_tomb=self.main_tomb, tomb_count=self.tomb_count,
                         postings=self.postings.view(n), live_langs=dict(self.live_langs), lsn=self.lsn,
                         live_delta=self.live_delta)


@dataclass
class DeltaView:
    """An immutable snapshot of a :class:`Delta` (the first ``n`` delta rows)."""

    main_n: int
    n: int
    docs: list[dict[str, Any]]
    vecs: np.ndarray
    dead: np.ndarray
    langs: list[str]
    main_tomb: np.ndarray
    tomb_count: int
    postings: _PostingsView
    live_langs: dict[str, int]
    lsn: int
    live_delta: int
    _cache: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def changed(self) -> bool:
        return self.n > 0 or self.tomb_count > 0

    def lang_codes(self) -> list[str]:
        return self.langs[: self.n]


class LiveIndex(SearchIndex):
    """A generation's ``Index`` (``main``) plus a delta snapshot (``view``), behind the interface the search path
    uses. It loads nothing itself: ``main`` answers for the generation's rows; the delta rows are scored exactly
    (flat) and merged by score, ties by row.
    """

    def __init__(self, main: Index, view: DeltaView, generation: str = ROOT_GENERATION,
                 main_postings: Callable[[], Postings] | None = None) -> None:
        self.main = main
        self.view = view
        self.generation = generation
        self.dir = main.dir
        self.manifest = main.manifest
        self.centering = main.centering
        self.centroids = main.centroids
        self._main_postings = main_postings

    # -- sizes and languages
    @property
    def size(self) -> int:
        return self.view.main_n - self.view.tomb_count + self.view.live_delta

    @property
    def languages(self) -> dict[str, int]:
        v = self.view
        if not v.changed:
            return dict(self.manifest.languages)
        key = "languages"
        if key not in v._cache:
            out: Counter[str] = Counter(self.manifest.languages)
            if v.tomb_count:
                codes = self.manifest.lang_codes
                gone = np.bincount(self.main.langs[v.main_tomb].astype(np.int64), minlength=len(codes))
                for i, n in enumerate(gone):
                    out[codes[i]] -= int(n)
            out.update(v.live_langs)
            v._cache[key] = {k: n for k, n in sorted(out.items()) if n > 0}
        langs: dict[str, int] = v._cache[key]
        return langs

    def lang_mask(self, langs: Collection[str] | None) -> np.ndarray | None:
        if not langs:
            return None
        main = self.main.lang_mask(langs)
        assert main is not None
        if not self.view.n:
            return main
        wanted = set(langs)
        delta = np.fromiter((lang in wanted for lang in self.view.lang_codes()), dtype=bool, count=self.view.n)
        return np.concatenate([main, delta])

    def metadata_segments(self) -> list[MetadataColumns]:
        v = self.view
        main = self.main.metadata_segments()
        if not v.n:
            return main
        with v._lock:
            if "metadata" not in v._cache:
                v._cache["metadata"] = MetadataColumns.build([d.get("metadata") for d in v.docs[: v.n]])
            delta: MetadataColumns = v._cache["metadata"]
        return [*main, delta]

    # -- dense
    def _delta_matrix(self, mode: str) -> np.ndarray:
        """The delta's document vectors as the generation would index them under ``mode`` (n x d)."""
        v = self.view
        key = f"dense:{mode}"
        with v._lock:
            if key not in v._cache:
                if mode == "off":
                    v._cache[key] = center(v.vecs, np.zeros(1, np.float32))
                else:  # the rule of indexer.centering, with the generation's frozen centroids
                    cents = self.require_centroids(mode)
                    v._cache[key] = center(v.vecs, cents.lookup(mode, v.lang_codes())[0], cents.basis(mode))
            mat: np.ndarray = v._cache[key]
        return mat

    def dense(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
              mode: str | None = None) -> list[Hits]:
        v = self.view
        main_mask = None if mask is None else mask[: v.main_n]
        if v.tomb_count:
            main_mask = ~v.main_tomb if main_mask is None else main_mask & ~v.main_tomb
        main_hits = self.main.dense(queries, k, main_mask, mode)
        if v.n == 0:
            return main_hits
        mat = self._delta_matrix(mode or self.centering)
        valid = ~v.dead
        if mask is not None:
            valid = valid & mask[v.main_n : v.main_n + v.n]
        out = []
        q = np.asarray(queries, dtype=np.float32)
        all_scores = mat @ q.T if len(mat) else np.zeros((0, len(q)), dtype=np.float32)
        for i, hits in enumerate(main_hits):
            s, top = top_k(all_scores[:, i], k, mask=valid)
            s, r = top_k(np.concatenate([hits.scores.astype(np.float32), s.astype(np.float32)]), k,
                         labels=np.concatenate([hits.rows.astype(np.int64), top + v.main_n]))
            out.append(Hits(r, s))
        return out

    # -- BM25
    def bm25_search(self, tokens: list[str], k: int, mask: np.ndarray | None = None) -> Hits:
        v = self.view
        if not v.changed:
            return self.main.bm25_search(tokens, k, mask)
        postings = self.main.bm25.postings()
        if postings is None:
            if self._main_postings is None:
                raise IndexInvalid(f"index {self.dir} has no BM25 term frequencies: rebuild it with this xlir")
            postings = self._main_postings()
        with v._lock:  # the same arrays every query of this snapshot, so the scorer's cache keeps its statistics
            if "bm25:live" not in v._cache:
                v._cache["bm25:live"] = (~v.main_tomb if v.tomb_count else None, ~v.dead)
            main_live, delta_live = v._cache["bm25:live"]
        segments = [Segment(postings, 0, main_live), Segment(v.postings, v.main_n, delta_live)]  # type: ignore[arg-type]
        bm = self.manifest.bm25
        scores = lucene_scores(segments, tokens, v.main_n + v.n, bm.k1, bm.b, cache=v._cache)
        s, rows = top_k(scores, k, mask=mask, above=0.0)
        return Hits(rows, s)

    # -- documents
    def doc(self, row: int) -> dict[str, Any]:
        if row < self.view.main_n:
            return self.main.doc(row)
        return dict(self.view.docs[row - self.view.main_n])

    def vectors(self, rows: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """The generation's rows from ``main``, the delta's from the delta."""
        v = self.view
        main_vecs, main_langs = self.main.vectors([r for r in rows if r < v.main_n])
        vecs = np.zeros((len(rows), self.vector_set.dim), dtype=np.float32)
        langs: list[str] = []
        j = 0
        for i, r in enumerate(rows):
            if r < v.main_n:
                vecs[i], lang, j = main_vecs[j], main_langs[j], j + 1
            else:
                vecs[i], lang = v.vecs[r - v.main_n], v.langs[r - v.main_n]
            langs.append(lang)
        return vecs, langs

    def close(self) -> None:
        self.main.close()


def main_id_map(index: Index) -> dict[str, int]:
    """Document id -> row of a generation (read from its docstores once)."""
    return {index.doc(row)["id"]: row for row in range(index.size)}


def main_postings_from_docs(index: Index) -> Postings:
    """BM25 term frequencies of an index built before they were saved, recomputed from its documents."""
    docs = [tokenize(passage_text(d["title"], d["text"])) for d in map(index.doc, range(index.size))]
    return Postings.from_tokens(docs)  # terms are looked up by string, so its own vocabulary serves


def live_batches(index: LiveIndex, size: int = 4096) -> Iterator[Batch]:
    """Every live document of a snapshot with its language and stored raw vector, in row order, in batches of at
    most ``size`` (what a compaction writes)."""
    v, main = index.view, index.main

    def batch(docs: list[dict[str, Any]], vecs: np.ndarray) -> Batch:
        langs = [d["lang"] for d in docs]
        return [Document(d["id"], d["text"], d.get("title", ""), d["lang"], d.get("metadata") or {})
                for d in docs], langs, vecs

    for info, raw in zip(main.manifest.shards, main.raw_vectors(), strict=True):
        for start in range(0, info.count, size):
            rows = np.arange(start, min(start + size, info.count))
            if v.tomb_count:
                rows = rows[~v.main_tomb[info.offset + rows]]
            yield batch([main.doc(info.offset + int(i)) for i in rows], np.asarray(raw[rows], dtype=np.float32))
    live = np.flatnonzero(~v.dead)
    for start in range(0, len(live), size):
        yield batch([v.docs[j] for j in live[start : start + size]], v.vecs[live[start : start + size]])
