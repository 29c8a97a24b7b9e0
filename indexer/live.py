"""Live index: document upserts and deletes on top of a built index, durable before they are acknowledged.

:class:`LiveStore` serves a root (its layout: ``indexer/layout.py``): the generation ``CURRENT`` names, with its
write-ahead log (``indexer/wal.py``) replayed into a delta (``indexer/delta.py``), and the write path: each
write is appended to the log and fsync'd, then published as a new immutable snapshot (:class:`LiveIndex`) for
the search service. It follows generations published by compactions (``indexer/compact.py``) and records
appended by other processes (``xlir index --append``, :func:`append_files`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer import wal
from indexer.bm25 import Postings
from indexer.build import BuildOptions, embedded_batches
from indexer.delta import Delta, LiveIndex, main_postings_from_docs
from indexer.langid import LanguageDetector, normalize_lang
from indexer.layout import ROOT_GENERATION, current_name, generation_dir, generation_label, wal_path
from indexer.readers import METADATA_RULE, metadata_problem, read_corpus
from indexer.store import Index, open_index, verify_index
from indexer.write import passage_text
from xlir.errors import BadQuery, DocumentNotFound, IndexInvalid, IndexNotReady

log = logging.getLogger(__name__)


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


class ShardHost(Protocol):
    """Where a served generation's dense shards are searched, when not in this process (``indexer/ray_shards.py:
    RayShardHost``): ``attach`` before the generation is served, ``retire`` once it no longer is."""

    def attach(self, index: Index) -> None: ...

    def retire(self, index: Index, grace: float | None = None) -> None: ...

    def describe(self, index: Index) -> dict[str, Any]: ...


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
                 shard_host: ShardHost | None = None) -> None:
        self.root = Path(root)
        self.shard_host = shard_host  # each generation opened gets its shards there (xlir serve --ray)
        self.encoder_checksum = encoder_checksum
        self.verify = verify
        self.on_publish: Callable[[LiveIndex], None] | None = None  # the server's: called with each new snapshot
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
        self.main: Index
        self.delta: Delta
        self.snapshot: LiveIndex
        name = current_name(self.root)
        self._load(self._open_main(name), name)

    # -- loading
    def _open_main(self, name: str) -> Index:
        gdir = generation_dir(self.root, name)
        verify_index(gdir, self.encoder_checksum, level=self.verify)
        main = open_index(gdir, verify="off")
        if self.shard_host is not None:
            self.shard_host.attach(main)
        return main

    def _verified(self, name: str) -> Index:
        """Generation ``name``, opened after :meth:`_open_main` verified it (under ``verify=full`` the sha256 of
        every file: seconds on a large index). Called without the write locks: a published generation's files
        never change, so the check needs no lock, and writers of this and other processes go on meanwhile. One
        thread verifies at a time and keeps the result until it is swapped in, so a write that needs the
        generation a refresh is verifying waits for that check instead of making another."""
        with self._verify_lock:
            if self.generation == name:  # the thread whose check we waited for has swapped it in meanwhile
                return self.main
            if self._verified_main is not None and self._verified_main[0] == name:
                return self._verified_main[1]
            main = self._open_main(name)
            self._verified_main = (name, main)  # one verified but never served: its shard actors go with it
            return main

    def _load(self, main: Index, name: str) -> None:
        """Replay ``name``'s log over ``main`` and make it the store's state (caller holds the locks if any).
        A damaged log raises :class:`~indexer.wal.WalCorrupt` before anything changes (the log is only read)."""
        path = wal_path(self.root, name)
        res = wal.read(path) if path.exists() else wal.ReadResult([], 0, False)
        delta = Delta(main, res.records)
        if self._writer is not None:
            self._writer.close()
        self._writer = None
        self._read_end, self._read_ino = res.end, res.ino
        old = getattr(self, "main", None)
        self.main, self.delta, self.generation = main, delta, name
        self._postings_cache = None
        self._publish()
        if old is not None and old is not main and self.shard_host is not None:
            self.shard_host.retire(old)  # its actors outlive the queries still running on it

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
    def upsert(self, docs: Sequence[dict[str, Any]], vectors: np.ndarray) -> WriteResult:
        """Upsert documents (``id, title, text, lang`` already normalised) with their raw embeddings."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(docs), self.delta.dim):
            raise ValueError(f"expected {len(docs)} vectors of dim {self.delta.dim}, got shape {vectors.shape}")
        return self._submit(_Ticket("upsert", (list(docs), vectors)))

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
            if t.op == "upsert":
                docs, vecs = t.payload
                new = [wal.Record.upsert(lsn + i, d, v) for i, (d, v) in enumerate(zip(docs, vecs, strict=True), 1)]
            elif not self.delta.exists(t.payload):
                t.error = DocumentNotFound(f"no document with id {t.payload!r}")
                continue
            else:
                new = [wal.Record.delete(lsn + 1, t.payload)]
            lsn += len(new)
            records += new
            t.result = [self.delta.apply(rec) for rec in new]  # whether each replaced or deleted a document
        return records

    def close(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            if self.shard_host is not None:
                self.shard_host.retire(self.main, grace=0)

    # -- introspection
    def stats(self) -> dict[str, Any]:
        v = self.snapshot.view
        return {"generation": generation_label(self.generation), "delta_docs": v.live_delta,
                "tombstones": v.tomb_count + int(v.dead.sum()), "wal_lsn": v.lsn, "reload_error": self.reload_error}


# ---------------------------------------------------------------------------------------------------- helpers


def prepare_documents(raw: Sequence[dict[str, Any]], detect: Callable[[str], str]) -> list[dict[str, Any]]:
    """Validate and normalise documents for an upsert (``id``, ``text``, optional ``title``, ``lang``,
    ``metadata``: kept only when not empty, as the docstore keeps it)."""
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
        doc: dict[str, Any] = {"id": doc_id, "title": title, "text": text, "lang": code}
        metadata = d.get("metadata")
        if metadata:
            problem = metadata_problem(metadata)
            if problem is not None:
                raise BadQuery(f"documents[{i}] ({doc_id!r}): {problem} ({METADATA_RULE})")
            doc["metadata"] = dict(metadata)
        out.append(doc)
    return out


@dataclass
class AppendReport:
    count: int
    replaced: int
    skipped_empty: int
    generation: str
    delta_docs: int


def append_files(root: Path, paths: Sequence[Path], encoder: Any, *, default_lang: str | None = None,
                 batch_size: int = 32) -> AppendReport:
    """``xlir index --append``: upsert the documents of corpus files into the live index at ``root``.

    Documents are read, given their language and embedded as a build does (:func:`indexer.build.embedded_batches`:
    empty ones skipped, a repeated id replaces the earlier one) and written to the log in chunks of 512 documents,
    each fsync'd (a running server picks them up at its next refresh). Killed midway, the finished chunks stay;
    running it again is harmless, as an upsert of the same document is idempotent.
    """
    store = LiveStore(root, encoder_checksum=encoder.checksum, verify="size")
    opts = BuildOptions(batch_size=batch_size, chunk_docs=512, default_lang=default_lang)
    counts: dict[str, int] = {}
    count = replaced = 0
    try:
        for docs, langs, vecs in embedded_batches(read_corpus(paths, default_lang), encoder, opts,
                                                  LanguageDetector(), counts=counts, unique=False):
            res = store.upsert([{"id": d.id, "title": d.title, "text": d.text, "lang": lang,
                                 **({"metadata": d.metadata} if d.metadata else {})}
                                for d, lang in zip(docs, langs, strict=True)], vecs)
            count += res.count
            replaced += sum(res.existed)
    finally:
        store.close()
    return AppendReport(count=count, replaced=replaced, skipped_empty=counts.get("skipped_empty", 0),
                        generation=generation_label(store.generation), delta_docs=store.snapshot.view.live_delta)
