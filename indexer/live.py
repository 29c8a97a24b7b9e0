"""Live index: document upserts and deletes on top of a built index, durable before they are acknowledged.

Layout of an index root (a plain ``xlir index`` directory is one, with no ``CURRENT`` yet):

- ``manifest.json, shards/, bm25/, ...``: generation 0, the index as ``xlir index`` built it;
- ``CURRENT``: names the live generation (``generations/g000003``); replaced atomically (write a temp file,
  fsync, rename, fsync the directory), so a reader sees the old or the new generation, never a mix;
- ``generations/gNNNNNN/``: complete indexes written by compactions (and by rebuilds of a live root);
- ``wal/gNNNNNN.log``: the write-ahead log of updates on top of that generation (``indexer/wal.py``);
- ``LOCK``: an advisory lock every writer holds while appending to the log or publishing a generation.

In memory (:class:`LiveStore`), the log is replayed into a :class:`Delta`: an exact vector set of the upserted
documents (raw vectors; centred at query time with the generation's *frozen* centroids), their texts and BM25
term frequencies, and tombstones over the generation's rows for documents deleted or replaced. Each write
publishes an immutable :class:`LiveIndex` snapshot (the ``Index`` interface the search service uses): a query
runs entirely on the snapshot it started with, so writes and generation swaps never disturb it.

Rows: the generation's documents keep their rows ``0 .. n-1``, delta documents follow in the order they were
written. A replaced document is a tombstone plus a new row at the end, so the live rows, in order, are exactly
the documents a fresh build over the final collection would hold, in the same order (ties break the same way).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from indexer import wal
from indexer.bm25 import Postings, Segment, lucene_scores
from indexer.build import VECTOR_SET, passage_text
from indexer.centering import center, resolve_auto
from indexer.store import CURRENT, Hits, Index, open_index, verify_index
from indexer.topk import top_k
from xlir.errors import BadQuery, DocumentNotFound, IndexInvalid, IndexNotReady

log = logging.getLogger(__name__)

GENERATIONS = "generations"
WAL_DIR = "wal"
ROOT_GENERATION = "."
_GEN_RE = re.compile(r"^generations/g(\d{6})$")


# ---------------------------------------------------------------------------------------------------- layout


def current_name(root: Path) -> str:
    """The live generation of ``root``: ``"."`` (the root itself) or ``generations/gNNNNNN``."""
    path = Path(root) / CURRENT
    try:
        name = path.read_text().strip()
    except FileNotFoundError:
        return ROOT_GENERATION
    if name != ROOT_GENERATION and not _GEN_RE.match(name):
        raise IndexInvalid(f"{path} names {name!r}, which is not a generation of this index")
    return name


def generation_dir(root: Path) -> Path:
    """The directory of the live generation (the root itself for a plain index)."""
    name = current_name(root)
    return Path(root) if name == ROOT_GENERATION else Path(root) / name


def generation_number(name: str) -> int:
    m = _GEN_RE.match(name)
    return int(m.group(1)) if m else 0


def generation_label(name: str) -> str:
    return f"g{generation_number(name):06d}"


def wal_path(root: Path, name: str) -> Path:
    return Path(root) / WAL_DIR / f"{generation_label(name)}.log"


def is_live_root(root: Path) -> bool:
    """The root has been published to or written to: rebuilds must go through a new generation."""
    return (Path(root) / CURRENT).exists() or (Path(root) / WAL_DIR).exists()


def set_current(root: Path, name: str) -> None:
    """Point ``root/CURRENT`` at ``name`` atomically and durably."""
    root = Path(root)
    tmp = root / (CURRENT + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(name + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(root / CURRENT)
    wal.fsync_dir(root)


# ---------------------------------------------------------------------------------------------------- the delta


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

    def __init__(self, main: Index, main_ids: Callable[[], dict[str, int]] | None = None) -> None:
        self.main_n = main.size
        self.dim = main.vector_set.dim
        self._main_ids = main_ids or (lambda: main_id_map(main))
        self._ids_cache: dict[str, int] | None = None
        self.main_langs = Counter(main.manifest.languages)
        self.main_tomb = np.zeros(self.main_n, dtype=bool)
        self.tomb_count = 0
        self.docs: list[dict[str, str]] = []
        self.vecs = np.zeros((0, self.dim), dtype=np.float32)
        self.dead = np.zeros(0, dtype=bool)
        self.ids: dict[str, int] = {}  # live delta id -> delta row
        self.langs: list[str] = []
        self.live_langs: Counter[str] = Counter()
        self.postings = DeltaPostings()
        self.lsn = 0

    def __len__(self) -> int:
        return len(self.docs)

    @property
    def main_ids(self) -> dict[str, int]:
        """Document id -> row of the generation, read from its docstores at the first write or replay."""
        if self._ids_cache is None:
            self._ids_cache = self._main_ids()
        return self._ids_cache

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
        from indexer.text import tokenize

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
    docs: list[dict[str, str]]
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


# ---------------------------------------------------------------------------------------------------- snapshot


class LiveIndex(Index):
    """A generation plus a delta snapshot, behind the ``Index`` interface the search service uses.

    It does not load anything itself (``Index.__init__`` is not called): the generation's ``Index`` does the
    work for its rows; the delta rows are scored exactly (flat) and merged by score, ties by row.
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

    @property
    def multilingual(self) -> bool:
        return resolve_auto(self.languages) == "full"

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

    # -- dense
    def _delta_matrix(self, mode: str) -> np.ndarray:
        """The delta's document vectors as the generation would index them under ``mode`` (n x d)."""
        v = self.view
        key = f"dense:{mode}"
        with v._lock:
            if key not in v._cache:
                off = mode == "off"  # else the rule of indexer.centering, with the generation's frozen centroids
                v._cache[key] = center(v.vecs, np.zeros(1, np.float32) if off else
                                       self.require_centroids(mode).lookup(mode, v.lang_codes())[0])
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

    def close(self) -> None:
        self.main.close()


# ---------------------------------------------------------------------------------------------------- the store


def main_id_map(index: Index) -> dict[str, int]:
    """Document id -> row of a generation (read from its docstores once)."""
    ids: dict[str, int] = {}
    for info, store in zip(index.manifest.shards, index.docstores, strict=True):
        for i in range(len(store)):
            ids[store.get(i)["id"]] = info.offset + i
    return ids


def main_postings_from_docs(index: Index) -> Postings:
    """BM25 term frequencies of an index built before they were saved, recomputed from its documents."""
    from indexer.text import tokenize

    docs = []
    for store in index.docstores:
        for i in range(len(store)):
            d = store.get(i)
            docs.append(tokenize(passage_text(d["title"], d["text"])))
    return Postings.from_tokens(docs)  # terms are looked up by string, so its own vocabulary serves


@dataclass
class _Ticket:
    op: str
    payload: Any
    done: bool = False
    result: Any = None
    error: BaseException | None = None


def _write_error(root: Path, exc: BaseException) -> BaseException:
    """What a failed write answers: an OS error as "not ready" with its reason, anything else as it is."""
    if isinstance(exc, OSError):
        return IndexNotReady(f"cannot write the update log of {root}: {exc.strerror or exc}")
    return exc


@dataclass
class WriteResult:
    count: int
    generation: str
    delta_docs: int
    existed: list[bool]


class LiveStore:
    """The serving side of a live root: the current generation, its replayed log, and the write path.

    Writes (:meth:`upsert`, :meth:`delete`) from concurrent threads are committed in groups: the thread that
    gets the lock writes every pending write with one fsync (group commit), under the root's ``LOCK`` so writes
    of other processes interleave only at record boundaries. A write returns after its fsync; only then is the
    new snapshot published to readers.
    """

    def __init__(self, root: Path, *, encoder_checksum: str | None = None, verify: str = "size",
                 on_publish: Callable[[LiveIndex], None] | None = None) -> None:
        self.root = Path(root)
        self.encoder_checksum = encoder_checksum
        self.verify = verify
        self.on_publish = on_publish
        self._lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Ticket] = []
        self._writer: wal.WalWriter | None = None
        self._postings_cache: Postings | None = None
        self._read_end = 0  # how far this process has read the log (an offset into the inode below)
        self._read_ino = 0
        self._failed: str | None = None
        self._log_failed = False  # reload_error is about the log, not a generation
        self._verify_lock = threading.Lock()
        self._verified_main: tuple[str, Index] | None = None
        self.generation = ROOT_GENERATION
        self.reload_error: str | None = None
        self.reloads = 0
        self.main: Index
        self.delta: Delta
        self.snapshot: LiveIndex
        self._load(self._open_main(current_name(self.root)), current_name(self.root))

    # -- loading
    def _open_main(self, name: str) -> Index:
        gdir = self.root if name == ROOT_GENERATION else self.root / name
        verify_index(gdir, self.encoder_checksum, level=self.verify)
        return open_index(gdir, verify="off")

    def _verified(self, name: str) -> Index:
        """Generation ``name``, opened after :meth:`_open_main` verified it (under ``verify=full`` the sha256 of
        every file: seconds on a large index). Called without the write locks: a published generation's files
        never change, so the check needs no lock, and writers of this and other processes go on meanwhile. One
        thread verifies at a time and keeps the result until it is swapped in, so a write that needs the
        generation a refresh is verifying waits for that check instead of making another."""
        with self._verify_lock:
            if self._verified_main is not None and self._verified_main[0] == name:
                return self._verified_main[1]
            main = self._open_main(name)
            self._verified_main = (name, main)
            return main

    def _load(self, main: Index, name: str) -> None:
        """Replay ``name``'s log over ``main`` and make it the store's state (caller holds the locks if any).
        A damaged log raises :class:`~indexer.wal.WalCorrupt` before anything changes (the log is only read)."""
        delta = Delta(main)
        path = wal_path(self.root, name)
        end = ino = 0
        if path.exists():
            res = wal.read(path)
            for rec in res.records:
                delta.apply(rec)
            end, ino = res.end, res.ino
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._read_end, self._read_ino = end, ino
        self.main, self.delta, self.generation = main, delta, name
        self._postings_cache = None
        self._publish()

    def _publish(self) -> None:
        self.snapshot = LiveIndex(self.main, self.delta.view(), self.generation, self._fallback_postings)
        if self.on_publish is not None:
            self.on_publish(self.snapshot)

    def _fallback_postings(self) -> Postings:
        if self._postings_cache is None:
            self._postings_cache = main_postings_from_docs(self.main)
        return self._postings_cache

    def _wal(self) -> wal.WalWriter:
        if self._writer is None:
            path = wal_path(self.root, self.generation)
            if not path.parent.is_dir():
                path.parent.mkdir(parents=True, exist_ok=True)
                wal.fsync_dir(self.root)
            self._writer = wal.WalWriter(path)  # may rewrite a version-1 log: _catch_up sees the new inode
            self._catch_up()
        return self._writer

    def _catch_up(self) -> bool:
        """Apply records other processes appended since we last read (caller holds both locks). A log replaced
        since (rewritten in the current format by a writer) is read again from the start; records already applied
        are recognised by their LSN."""
        path = wal_path(self.root, self.generation)
        if not path.exists():
            return False
        res = wal.read(path, self._read_end if path.stat().st_ino == self._read_ino else 0)
        new = [r for r in res.records if r.lsn > self.delta.lsn]
        for rec in new:
            self.delta.apply(rec)
        self._read_end, self._read_ino = res.end, res.ino
        if self._writer is not None:
            self._writer.end = res.end
            if res.records:
                self._writer.last_lsn = max(self._writer.last_lsn, res.records[-1].lsn)
        return bool(new)

    def _reload_failed(self, name: str, exc: BaseException) -> None:
        detail = exc.detail if isinstance(exc, IndexInvalid) else f"{type(exc).__name__}: {exc}"
        self.reload_error = f"cannot load generation {generation_label(name)}: {detail}"
        self._failed, self._log_failed = name, False
        log.error("reload failed, still serving %s: %s", self.generation, self.reload_error)

    def _follow(self, name: str) -> bool:
        """Serve generation ``name``: verified outside the locks, swapped in (its log replayed) under them.
        False if the root moved on meanwhile or the generation is already served."""
        try:
            main = self._verified(name)
        except Exception as exc:
            self._reload_failed(name, exc)
            raise
        with self._lock, wal.root_lock(self.root):
            if current_name(self.root) != name or self.generation == name:
                return False  # yet another generation (the next refresh takes it), or a write already did
            try:
                self._load(main, name)
            except Exception as exc:  # e.g. its log is damaged: keep serving the current state
                self._reload_failed(name, exc)
                raise
            if self._verified_main is not None and self._verified_main[0] == name:
                self._verified_main = None  # served now; no lock: _verified may hold it for seconds
            self.reload_error, self._log_failed = None, False
            self.reloads += 1
            log.info("serving generation %s (%d docs)", name, self.snapshot.size)
        return True

    def refresh(self, force: bool = False) -> bool:
        """Follow the root: load a newly published generation, or apply records appended by other processes.
        Returns whether anything changed. A failure to load a new generation keeps the current one serving (and
        raises); that generation is not tried again until ``force`` (``POST /reload``) or another is published.
        A damaged log keeps the state read so far serving and is reported in ``reload_error``."""
        name = current_name(self.root)
        if name != self.generation and (force or name != self._failed):
            return self._follow(name)
        path = wal_path(self.root, self.generation)
        if not path.exists():
            return False
        st = path.stat()
        if st.st_size == self._read_end and st.st_ino == self._read_ino:
            return False
        with self._lock, wal.root_lock(self.root):
            try:
                changed = self._catch_up()
            except wal.WalCorrupt as exc:
                self.reload_error, self._log_failed = f"cannot apply new updates: {exc.detail}", True
                log.error("still serving the updates read before: %s", self.reload_error)
                raise
            if self._log_failed:
                self.reload_error, self._log_failed = None, False
            if changed:
                self._publish()
            return changed

    # -- writes
    def upsert(self, docs: Sequence[dict[str, str]], vectors: np.ndarray) -> WriteResult:
        """Upsert documents (``id, title, text, lang`` already normalised) with their raw embeddings."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(docs), self.delta.dim):
            raise ValueError(f"expected {len(docs)} vectors of dim {self.delta.dim}, got shape {vectors.shape}")
        return self._submit(_Ticket("upsert", (list(docs), np.asarray(vectors, dtype=np.float32))))

    def delete(self, doc_id: str) -> WriteResult:
        """Delete a document; raises :class:`DocumentNotFound` for an unknown id (nothing is logged)."""
        return self._submit(_Ticket("delete", doc_id))

    def _follow_current(self) -> None:
        """Before a write: if ``CURRENT`` names another generation (a compaction published), verify it without
        holding the write locks and swap it in; a generation that already failed to load fails the write."""
        name = current_name(self.root)
        if name == self.generation:
            return
        if name == self._failed:
            raise IndexInvalid(self.reload_error or f"generation {generation_label(name)} cannot be loaded")
        self._follow(name)

    def _submit(self, ticket: _Ticket) -> WriteResult:
        """Queue ``ticket`` and return once it is committed. Invariant: while nobody holds ``_lock``, a ticket
        not done is in ``_pending`` (a batch that could not be written is put back before the lock is released)."""
        with self._pending_lock:
            self._pending.append(ticket)
        while not ticket.done:
            try:
                self._follow_current()
            except BaseException as exc:
                with self._lock:
                    if not ticket.done:  # nobody committed it meanwhile: it fails alone
                        with self._pending_lock:
                            self._pending.remove(ticket)
                        ticket.error, ticket.done = _write_error(self.root, exc), True
                break
            with self._lock:
                if ticket.done:
                    break
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                if not self._commit(batch):
                    with self._pending_lock:
                        self._pending[:0] = batch
        if ticket.error is not None:
            raise ticket.error
        result: WriteResult = ticket.result
        return result

    def _commit(self, batch: list[_Ticket]) -> bool:
        """Write ``batch`` with one fsync and publish it (caller holds ``_lock``). Returns False, having written
        nothing and left the tickets as they were, if ``CURRENT`` names another generation than the one served:
        the caller follows it (verifying outside the locks) and tries again."""
        try:
            with wal.root_lock(self.root):
                if current_name(self.root) != self.generation:
                    return False
                writer = self._wal()
                self._catch_up()
                start = writer.end
                try:
                    records = self._apply_batch(batch, max(writer.last_lsn, self.delta.lsn))
                    writer.append(records)
                    writer.sync()
                except BaseException:
                    # nothing of this batch was acknowledged: cut the log back, rebuild the delta from it
                    try:
                        writer.truncate(start)
                    finally:
                        self._load(self.main, self.generation)
                    raise
                self._read_end = writer.end
        except BaseException as exc:
            log.error("write failed: %s: %s", type(exc).__name__, exc)
            err = _write_error(self.root, exc)
            for t in batch:
                if t.error is None:
                    t.error = err
                t.done = True
            return True
        self._publish()
        for t in batch:
            if t.error is None:
                t.result = WriteResult(count=len(t.result), generation=generation_label(self.generation),
                                       delta_docs=self.delta.live_delta, existed=t.result)
            t.done = True
        return True

    def _apply_batch(self, batch: list[_Ticket], lsn: int) -> list[wal.Record]:
        records: list[wal.Record] = []
        for t in batch:
            existed: list[bool] = []
            if t.op == "upsert":
                docs, vecs = t.payload
                for doc, vec in zip(docs, vecs, strict=True):
                    lsn += 1
                    rec = wal.Record.upsert(lsn, doc, vec)
                    records.append(rec)
                    existed.append(self.delta.apply(rec))
            elif not self.delta.exists(t.payload):
                t.error = DocumentNotFound(f"no document with id {t.payload!r}")
                continue
            else:
                lsn += 1
                rec = wal.Record.delete(lsn, t.payload)
                records.append(rec)
                existed.append(self.delta.apply(rec))
            t.result = existed
        return records

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- introspection
    def stats(self) -> dict[str, Any]:
        v = self.snapshot.view
        return {"generation": generation_label(self.generation), "delta_docs": v.live_delta,
                "tombstones": v.tomb_count + int(v.dead.sum()), "wal_lsn": v.lsn, "reload_error": self.reload_error}


# ---------------------------------------------------------------------------------------------------- helpers


def prepare_documents(raw: Sequence[dict[str, Any]], detect: Callable[[str], str]) -> list[dict[str, str]]:
    """Validate and normalise documents for an upsert (``id``, ``text``, optional ``title``, ``lang``)."""
    from indexer.langid import normalize_lang

    out = []
    for i, d in enumerate(raw):
        doc_id = str(d.get("id") or "").strip()
        if not doc_id:
            raise BadQuery(f"documents[{i}]: id is empty")
        title, text = str(d.get("title") or ""), str(d.get("text") or "")
        if not text.strip() and not title.strip():
            raise BadQuery(f"documents[{i}] ({doc_id!r}): text and title are both empty")
        lang = d.get("lang")
        if lang:
            try:
                code = normalize_lang(str(lang))
            except ValueError as exc:
                raise BadQuery(f"documents[{i}] ({doc_id!r}): {exc}") from exc
        else:
            code = detect(passage_text(title, text))
        out.append({"id": doc_id, "title": title, "text": text, "lang": code})
    return out


def iter_live_documents(index: LiveIndex) -> Iterator[tuple[dict[str, str], np.ndarray]]:
    """Every live document of a snapshot with its raw vector, in row order (what a compaction rebuilds)."""
    v = index.view
    main = index.main
    dim = main.vector_set.dim
    for info in main.manifest.shards:
        if not info.count:
            continue
        raw = np.memmap(main.dir / info.name / f"{VECTOR_SET}.f32", dtype="<f4", mode="r", shape=(info.count, dim))
        for i in range(info.count):
            row = info.offset + i
            if v.tomb_count and v.main_tomb[row]:
                continue
            yield main.doc(row), np.asarray(raw[i], dtype=np.float32)
        del raw
    for j in range(v.n):
        if not v.dead[j]:
            yield dict(v.docs[j]), v.vecs[j]


@dataclass
class AppendReport:
    count: int
    replaced: int
    skipped_empty: int
    generation: str
    delta_docs: int


def append_files(root: Path, paths: Sequence[Path], encoder: Any, *, default_lang: str | None = None,
                 batch_size: int = 32, chunk_docs: int = 512,
                 progress: Callable[[int], None] | None = None) -> AppendReport:
    """``xlir index --append``: upsert the documents of corpus files into the live index at ``root``.

    Documents are embedded here and written to the log in chunks of ``chunk_docs``, each fsync'd (a running
    server picks them up at its next refresh). Killed midway, the finished chunks stay; running it again is
    harmless, as an upsert of the same document is idempotent. Empty documents are skipped, as the build does.
    """
    from indexer.langid import LanguageDetector
    from indexer.readers import read_corpus

    store = LiveStore(root, encoder_checksum=encoder.checksum, verify="size")
    detector = LanguageDetector()
    count = replaced = skipped = 0
    res: WriteResult | None = None
    try:
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal count, replaced, res
            if not batch:
                return
            docs = prepare_documents(batch, detector.detect)
            vecs = encoder.encode_passages([passage_text(d["title"], d["text"]) for d in docs], batch_size=batch_size)
            res = store.upsert(docs, vecs)
            count += res.count
            replaced += sum(res.existed)
            if progress is not None:
                progress(len(docs))
            batch.clear()

        for doc in read_corpus(paths, default_lang):
            if not doc.text.strip() and not doc.title.strip():
                skipped += 1
                continue
            batch.append({"id": doc.id, "title": doc.title, "text": doc.text, "lang": doc.lang})
            if len(batch) >= chunk_docs:
                flush()
        flush()
    finally:
        store.close()
    return AppendReport(count=count, replaced=replaced, skipped_empty=skipped,
                        generation=generation_label(store.generation), delta_docs=store.snapshot.view.live_delta)
