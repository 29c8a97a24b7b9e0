"""BM25 over the whole collection with bm25s (numba backend), fed by xlir's script-aware analyzer.

The builder maps tokens to integer ids as documents stream in, so only the id lists are kept in
memory, never the texts. Search returns documents with a positive score only (a document sharing no
term with the query is not a BM25 hit), optionally restricted by a boolean row mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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
        ids = []
        for tok in tokens:
            tid = vocab.get(tok)
            if tid is None:
                tid = vocab[tok] = len(vocab)
            ids.append(tid)
        self.doc_ids.append(ids)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def save(self, directory: Path) -> None:
        import bm25s
        from bm25s.tokenization import Tokenized

        vocab = dict(self.vocab)
        # bm25s needs one token for documents without any (an empty text): give them a reserved one
        empty = vocab.setdefault("", len(vocab))
        ids = [d if d else [empty] for d in self.doc_ids]
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method, backend="numba")
        retriever.index(Tokenized(ids=ids, vocab=vocab), show_progress=False, create_empty_token=False)
        retriever.save(str(directory), show_progress=False)


class BM25Searcher:
    def __init__(self, directory: Path, mmap: bool = True) -> None:
        import bm25s

        self._r = bm25s.BM25.load(str(directory), mmap=mmap, load_vocab=True, show_progress=False)
        self._r.backend = "numba"
        self.vocab: dict[str, int] = self._r.vocab_dict
        self.num_docs = int(self._r.scores["num_docs"])

    def scores(self, tokens: Sequence[str]) -> np.ndarray:
        """Dense BM25 score of every document (0 where no query term occurs)."""
        ids = [self.vocab[t] for t in tokens if t and t in self.vocab]
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self._r.get_scores(ids), dtype=np.float32)

    def search(self, tokens: Sequence[str], k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the top ``k`` documents with a positive score, best first, ties by row."""
        scores = self.scores(tokens)
        if mask is not None:
            scores = np.where(mask, scores, 0.0).astype(np.float32)
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            part = np.argpartition(-scores[hits], k - 1)[:k]
            cutoff = scores[hits[part]].min()
            hits = hits[scores[hits] >= cutoff]  # keep every tie at the cut-off, order below decides
        order = np.lexsort((hits, -scores[hits]))[:k]
        rows = hits[order].astype(np.int64)
        return scores[rows], rows
