"""Compaction: the current generation and its write-ahead log merged into a new generation.

:func:`compact` hands the write stage (:func:`indexer.write.write_index`) the live documents of the current
generation (tombstoned rows left out, stored raw vectors passed as they are, never re-embedded) and of its log, so
the new generation is written exactly like a fresh ``xlir index`` over the same documents in the same order:
language centroids recomputed from all the raw vectors (the delta used the old, frozen ones), BM25 rebuilt, the
FAISS shards built from scratch. It is then published as :mod:`indexer.layout` describes, carrying the log
records written since the compaction's snapshot of the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer import layout, wal
from indexer.build import BuildOptions, build_index, staged
from indexer.delta import Delta, LiveIndex, live_batches
from indexer.manifest import Manifest
from indexer.store import open_index
from indexer.write import EncoderInfo, WriteOptions, write_index
from models.base import Encoder
from xlir.errors import CorpusError

log = logging.getLogger(__name__)


@dataclass
class CompactReport:
    old: str
    new: str
    docs: int
    from_delta: int
    tombstones: int
    carried_records: int
    seconds: float


def compact(root: Path, *, progress: bool = False, before_publish: Callable[[str], None] | None = None
            ) -> CompactReport:
    """Merge the current generation and its log into a new generation and publish it (see the module doc).

    ``before_publish(new_dir)`` is called once the new generation is complete, just before publishing (tests).
    """
    root = Path(root)
    t0 = time.perf_counter()
    with layout.compacting(root):
        with wal.root_lock(root):
            old = layout.current_name(root)
            log_path = layout.wal_path(root, old)
            res = wal.read(log_path) if log_path.exists() else wal.ReadResult([], 0, False)
        main = open_index(layout.generation_dir(root, old), verify="size")
        try:
            snap = LiveIndex(main, Delta(main, res.records).view(), old)
            if snap.size == 0:
                raise CorpusError("nothing to compact into: every document of the index was deleted")
            vs = main.vector_set
            new = layout.next_generation(root)
            plan = vs.index_plan or {}  # what the build was asked for (auto, a memory budget, ...), not its result
            opts = WriteOptions(shard_size=main.manifest.shard_size, index_type=plan.get("requested", vs.index_type),
                                centering=vs.centering_requested, progress=progress,
                                **{k: plan[k] for k in ("memory_budget", "flat_max", "target_recall")
                                   if plan.get(k) is not None})
            with staged(root / new) as tmp:
                write_index(tmp, live_batches(snap), opts, EncoderInfo(vs.encoder, vs.encoder_checksum, vs.dim))
        finally:
            main.close()
        if before_publish is not None:
            before_publish(str(root / new))
        last_lsn = res.records[-1].lsn if res.records else 0
        carried = layout.publish(root, new, old, last_lsn if log_path.exists() else None)
    report = CompactReport(old=layout.generation_label(old), new=layout.generation_label(new), docs=snap.size,
                           from_delta=snap.view.live_delta, tombstones=snap.view.tomb_count,
                           carried_records=carried, seconds=round(time.perf_counter() - t0, 3))
    log.info("compacted %s -> %s: %d docs (%d from the log), %d records carried over", report.old, report.new,
             report.docs, report.from_delta, carried)
    return report


def rebuild(paths: Sequence[Path], root: Path, encoder: Encoder, options: BuildOptions) -> tuple[Manifest, str]:
    """``xlir index --overwrite`` on a live root: build a new generation from ``paths`` and publish it with an
    empty log (a rebuild replaces the whole collection, including updates written since the last one)."""
    return layout.replace_generation(root, lambda directory: build_index(paths, directory, encoder, options))
