"""Compaction and publishing of generations.

:func:`compact` merges the live documents of the current generation (tombstoned rows left out, raw vectors
reused, never re-embedded) and of its write-ahead log into a new generation built exactly like a fresh
``xlir index`` over the same documents in the same order: language centroids are recomputed from all the raw
vectors (the delta used the old, frozen ones), BM25 is rebuilt, the FAISS shards are built from scratch.

Publishing (:func:`publish`): the new generation is written by ``build_index`` into a temporary directory and
renamed into ``generations/``; then, under the root's lock, the log records written *after* the compaction's
snapshot of the log are copied into the new generation's log (fsync'd), and ``CURRENT`` is swapped atomically.
A write acknowledged at any moment is thus either in the new generation or in its log. A compaction killed at
any point leaves ``CURRENT`` on the last good generation; its leftovers (a temporary directory, or a renamed
generation that ``CURRENT`` never named) are removed by the next compaction, which starts again from the log.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer import wal
from indexer.build import BuildOptions, build_index, passage_text
from indexer.live import (
    GENERATIONS,
    ROOT_GENERATION,
    WAL_DIR,
    Delta,
    LiveIndex,
    current_name,
    generation_label,
    generation_number,
    iter_live_documents,
    set_current,
    wal_path,
)
from indexer.manifest import MANIFEST, Manifest
from indexer.readers import Document
from indexer.store import open_index
from models.base import Encoder, ProgressFn
from xlir.errors import Conflict, CorpusError, XlirError

log = logging.getLogger(__name__)

COMPACT_LOCK = "COMPACT.lock"
KEEP_PREVIOUS = 1  # generations kept besides the current one (a server may still be finishing queries on it)


@dataclass
class CompactReport:
    old: str
    new: str
    docs: int
    from_delta: int
    tombstones: int
    carried_records: int
    seconds: float


class StoredVectors:
    """An ``Encoder`` stand-in that hands ``build_index`` the stored raw vectors of the documents it reads.

    ``build_index`` embeds each chunk of documents in order; the documents come from :meth:`documents`, which
    queues each one's vector, and :meth:`encode_passages` returns the queued vectors (checking the texts match).
    """

    def __init__(self, name: str, checksum: str, dim: int) -> None:
        self._name, self._checksum, self._dim = name, checksum, dim
        self._queue: list[tuple[str, np.ndarray]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def checksum(self) -> str:
        return self._checksum

    @property
    def dim(self) -> int:
        return self._dim

    def documents(self, items: Iterator[tuple[dict[str, str], np.ndarray]]) -> Iterator[Document]:
        for doc, vec in items:
            self._queue.append((passage_text(doc.get("title", ""), doc["text"]), vec))
            yield Document(id=doc["id"], text=doc["text"], title=doc.get("title", ""), lang=doc["lang"])

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        raise XlirError("a compaction never encodes queries")

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                        progress: ProgressFn | None = None) -> np.ndarray:
        if len(texts) > len(self._queue):
            raise XlirError("compaction: more texts to embed than documents read")
        taken, self._queue = self._queue[: len(texts)], self._queue[len(texts) :]
        for text, (queued, _) in zip(texts, taken, strict=True):
            if text != queued:
                raise XlirError("compaction: the stored vectors are out of step with the documents")
        if progress:
            progress(len(texts))
        return np.stack([v for _, v in taken]).astype(np.float32) if taken else np.zeros((0, self._dim), np.float32)


def cleanup(root: Path) -> list[str]:
    """Remove what killed builds or compactions left: temporary directories under ``generations/`` and
    generations (with their logs) that ``CURRENT`` does not name and that are newer than it. Returns what went."""
    root = Path(root)
    gens = root / GENERATIONS
    removed: list[str] = []
    if not gens.is_dir():
        return removed
    current = generation_number(current_name(root))
    for p in sorted(gens.iterdir()):
        name = f"{GENERATIONS}/{p.name}"
        if p.name.startswith(".") or generation_number(name) > current:
            shutil.rmtree(p, ignore_errors=True)
            if not p.name.startswith("."):
                wal_path(root, name).unlink(missing_ok=True)
            removed.append(p.name)
    return removed


def _gc(root: Path, keep: int = KEEP_PREVIOUS) -> None:
    """Delete generations (and their logs) older than the current one and the ``keep`` before it."""
    current = generation_number(current_name(root))
    gens = root / GENERATIONS
    for p in sorted(gens.iterdir()) if gens.is_dir() else []:
        name = f"{GENERATIONS}/{p.name}"
        n = generation_number(name)
        if not p.name.startswith(".") and n < current - keep:
            shutil.rmtree(p, ignore_errors=True)
            wal_path(root, name).unlink(missing_ok=True)
    if current - keep > 0 and (root / MANIFEST).exists():  # generation 0: the root's own index files
        _remove_root_generation(root)
        wal_path(root, ROOT_GENERATION).unlink(missing_ok=True)


def _remove_root_generation(root: Path) -> None:
    try:
        manifest = Manifest.read(root)
    except XlirError:
        return
    (root / MANIFEST).unlink(missing_ok=True)  # first: without it the rest is no index
    tops = {Path(rel).parts[0] for rel in manifest.files}
    for top in tops:
        if top in (GENERATIONS, WAL_DIR):
            continue
        p = root / top
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def next_generation(root: Path) -> str:
    gens = Path(root) / GENERATIONS
    numbers = [generation_number(current_name(root))]
    if gens.is_dir():
        numbers += [generation_number(f"{GENERATIONS}/{p.name}") for p in gens.iterdir() if not p.name.startswith(".")]
    return f"{GENERATIONS}/g{max(numbers) + 1:06d}"


def _fsync_tree(directory: Path) -> None:
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in sorted({p.parent for p in directory.rglob("*")} | {directory, directory.parent}):
        wal.fsync_dir(d)


def publish(root: Path, new: str, expected_current: str, after_lsn: int | None) -> int:
    """Make generation ``new`` (already complete under ``root``) the current one.

    Under the root's lock: the records of ``expected_current``'s log with an LSN above ``after_lsn`` (None: none,
    a rebuild replaces everything) are copied into ``new``'s log, then ``CURRENT`` is swapped. Returns how many
    records were carried. Raises :class:`Conflict` if another generation was published meanwhile, and
    :class:`~indexer.wal.WalCorrupt` (nothing published, the log untouched) if the log is damaged.
    """
    root = Path(root)
    _fsync_tree(root / new)  # the generation is on disk before anything names it (power loss, not only kill -9)
    with wal.root_lock(root):
        now = current_name(root)
        if now != expected_current:
            raise Conflict(f"generation {generation_label(now)} was published while this one was being built")
        old_log = wal_path(root, expected_current)
        tail: list[wal.Record] = []
        if after_lsn is not None and old_log.exists():
            tail = wal.records_after(old_log, after_lsn)
        new_log = wal_path(root, new)
        new_log.parent.mkdir(parents=True, exist_ok=True)
        wal.create(new_log, tail)
        set_current(root, new)
    return len(tail)


def compact(root: Path, *, progress: bool = False, keep: int = KEEP_PREVIOUS,
            before_publish: Callable[[str], None] | None = None) -> CompactReport:
    """Merge the current generation and its log into a new generation and publish it (see the module doc).

    ``before_publish(new_dir)`` is called once the new generation is complete, just before publishing (tests).
    """
    root = Path(root)
    t0 = time.perf_counter()
    with wal.root_lock(root, blocking=False, name=COMPACT_LOCK) as got:
        if not got:
            raise Conflict(f"a compaction of {root} is already running")
        cleanup(root)
        with wal.root_lock(root):
            old = current_name(root)
            log_path = wal_path(root, old)
            res = wal.read(log_path) if log_path.exists() else wal.ReadResult([], 0, False)
        main = open_index(root if old == ROOT_GENERATION else root / old, verify="size")
        try:
            delta = Delta(main)
            for rec in res.records:
                delta.apply(rec)
            snap = LiveIndex(main, delta.view(), old)
            if snap.size == 0:
                raise CorpusError("nothing to compact into: every document of the index was deleted")
            vs = main.vector_set
            m = main.manifest
            enc = StoredVectors(vs.encoder, vs.encoder_checksum, vs.dim)
            new = next_generation(root)
            (root / GENERATIONS).mkdir(exist_ok=True)
            plan = vs.index_plan or {}  # what the build was asked for (auto, a memory budget, ...), not its result
            opts = BuildOptions(shard_size=m.shard_size, index_type=plan.get("requested", vs.index_type),
                                centering=vs.centering_requested, progress=progress,
                                **{k: plan[k] for k in ("memory_budget", "flat_max", "target_recall")
                                   if plan.get(k) is not None})
            build_index([], root / new, enc, opts, documents=enc.documents(iter_live_documents(snap)))
        finally:
            main.close()
        if before_publish is not None:
            before_publish(str(root / new))
        last_lsn = res.records[-1].lsn if res.records else 0
        carried = publish(root, new, old, last_lsn if log_path.exists() else None)
        _gc(root, keep)
    report = CompactReport(old=generation_label(old), new=generation_label(new), docs=snap.size,
                           from_delta=snap.view.live_delta, tombstones=snap.view.tomb_count,
                           carried_records=carried, seconds=round(time.perf_counter() - t0, 3))
    log.info("compacted %s -> %s: %d docs (%d from the log), %d records carried over", report.old, report.new,
             report.docs, report.from_delta, carried)
    return report


def adopt_generation(root: Path, built: Path) -> str:
    """Publish the complete index directory ``built`` (on the file system of ``root``) as ``root``'s next
    generation, with an empty log, as :func:`rebuild` does. For ``xlir index --overwrite`` of a plain index that
    took its first update while the new one was being built: replacing the directory would leave the server
    writing to the old directory's log; a new generation is followed by every reader and writer."""
    root = Path(root)
    with wal.root_lock(root, blocking=False, name=COMPACT_LOCK) as got:
        if not got:
            raise Conflict(f"a compaction of {root} is running")
        cleanup(root)
        old = current_name(root)
        new = next_generation(root)
        (root / GENERATIONS).mkdir(exist_ok=True)
        Path(built).rename(root / new)
        publish(root, new, old, None)
        _gc(root)
    return new


def rebuild(paths: Sequence[Path], root: Path, encoder: Encoder, options: BuildOptions) -> tuple[Manifest, str]:
    """``xlir index --overwrite`` on a live root: build a new generation from ``paths`` and publish it with an
    empty log (a rebuild replaces the whole collection, including updates written since the last one)."""
    root = Path(root)
    with wal.root_lock(root, blocking=False, name=COMPACT_LOCK) as got:
        if not got:
            raise Conflict(f"a compaction of {root} is running")
        cleanup(root)
        old = current_name(root)
        new = next_generation(root)
        (root / GENERATIONS).mkdir(exist_ok=True)
        manifest = build_index(paths, root / new, encoder, options)
        publish(root, new, old, None)
        _gc(root)
    return manifest, new
