"""The on-disk layout of an index root, and how a new generation of it is published.

- ``manifest.json, shards/, bm25/, centroids.npz``: generation 0, the index as ``xlir index`` wrote it (each shard:
  ``shards/NNNNN/`` with raw vectors ``main.f32``, the FAISS index ``main.faiss``, ``langs.npy``, centroid
  statistics and the docstore; the manifest is written last and lists every file with its sha256);
- ``CURRENT``: names the live generation (``generations/g000003``); replaced atomically (write a temp file,
  fsync, rename, fsync the directory), so a reader sees the old or the new generation, never a mix;
- ``generations/gNNNNNN/``: complete indexes written by compactions (and by rebuilds of a live root);
- ``wal/gNNNNNN.log``: the write-ahead log of updates on top of that generation (``indexer/wal.py``);
- ``LOCK``: an advisory lock every writer holds while appending to the log or publishing a generation;
  ``COMPACT.lock``: held by the one compaction or rebuild at a time.

Publishing (:func:`publish`): a new generation is written into a temporary directory and renamed into
``generations/``; then, under the root's lock, the log records written *after* the writer's snapshot of the log
are copied into the new generation's log (fsync'd), and ``CURRENT`` is swapped atomically. A write acknowledged
at any moment is thus either in the new generation or in its log. Killed at any point, ``CURRENT`` stays on the
last good generation; the leftovers (a temporary directory, or a renamed generation ``CURRENT`` never named) are
removed by the next compaction (:func:`cleanup`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from indexer import wal
from indexer.manifest import MANIFEST, Manifest
from xlir.errors import Conflict, IndexInvalid, XlirError

VECTOR_SET = "main"
LANGS_FILE = "langs.npy"
CENTROIDS_FILE = "centroids.npz"
SHARD_STATS_FILE = "centroid_stats.npz"
CURRENT = "CURRENT"
GENERATIONS = "generations"
WAL_DIR = "wal"
ROOT_GENERATION = "."
COMPACT_LOCK = "COMPACT.lock"
KEEP_PREVIOUS = 1  # generations kept besides the current one (a server may still be finishing queries on it)
_GEN_RE = re.compile(r"^generations/g(\d{6})$")
T = TypeVar("T")


def current_name(root: Path) -> str:
    """The live generation of ``root``: ``"."`` (the root itself) or ``generations/gNNNNNN``."""
    path = Path(root) / CURRENT
    try:
        name = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return ROOT_GENERATION
    if name != ROOT_GENERATION and not _GEN_RE.match(name):
        raise IndexInvalid(f"{path} names {name!r}, which is not a generation of this index")
    return name


def generation_dir(root: Path, name: str | None = None) -> Path:
    """The directory of generation ``name`` (default: the live one; the root itself for a plain index)."""
    name = current_name(root) if name is None else name
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
    wal.write_durably(Path(root) / CURRENT, f"{name}\n".encode())


def fsync_tree(directory: Path) -> None:
    """Every file and directory under ``directory``, the directory and its parent, on disk."""
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in sorted({p.parent for p in directory.rglob("*")} | {directory, directory.parent}):
        wal.fsync_dir(d)


def _generations(root: Path) -> list[tuple[Path, int | None]]:
    """The directories under ``root/generations``, each with its generation number (None: a temporary one)."""
    gens = Path(root) / GENERATIONS
    return [(p, None if p.name.startswith(".") else generation_number(f"{GENERATIONS}/{p.name}"))
            for p in (sorted(gens.iterdir()) if gens.is_dir() else [])]


def _remove_generation(root: Path, directory: Path, number: int | None) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    if number is not None:  # a temporary directory has no log
        wal_path(root, f"{GENERATIONS}/{directory.name}").unlink(missing_ok=True)


def cleanup(root: Path) -> None:
    """Remove what killed builds or compactions left: temporary directories under ``generations/`` and
    generations (with their logs) that ``CURRENT`` does not name and that are newer than it."""
    current = generation_number(current_name(root))
    for p, n in _generations(root):
        if n is None or n > current:
            _remove_generation(root, p, n)


def remove_old_generations(root: Path) -> None:
    """Delete generations (and their logs) older than the current one and the ``KEEP_PREVIOUS`` before it."""
    current = generation_number(current_name(root))
    for p, n in _generations(root):
        if n is not None and n < current - KEEP_PREVIOUS:
            _remove_generation(root, p, n)
    if current - KEEP_PREVIOUS > 0 and (root / MANIFEST).exists():  # generation 0: the root's own index files
        _remove_root_generation(root)
        wal_path(root, ROOT_GENERATION).unlink(missing_ok=True)


def _remove_root_generation(root: Path) -> None:
    try:
        manifest = Manifest.read(root)
    except XlirError:
        return
    (root / MANIFEST).unlink(missing_ok=True)  # first: without it the rest is no index
    for top in {Path(rel).parts[0] for rel in manifest.files} - {GENERATIONS, WAL_DIR}:
        p = root / top
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def next_generation(root: Path) -> str:
    numbers = [generation_number(current_name(root))] + [n for _, n in _generations(root) if n is not None]
    (Path(root) / GENERATIONS).mkdir(exist_ok=True)
    return f"{GENERATIONS}/g{max(numbers) + 1:06d}"


def publish(root: Path, new: str, expected_current: str, after_lsn: int | None) -> int:
    """Make generation ``new`` (already complete under ``root``) the current one.

    Under the root's lock: the records of ``expected_current``'s log with an LSN above ``after_lsn`` (None: none,
    a rebuild replaces everything) are copied into ``new``'s log, then ``CURRENT`` is swapped; generations older
    than the previous one are removed after (:func:`remove_old_generations`). Returns how many records were
    carried. Raises :class:`Conflict` if another generation was published meanwhile, and
    :class:`~indexer.wal.WalCorrupt` (nothing published, the log untouched) if the log is damaged.
    """
    root = Path(root)
    fsync_tree(root / new)  # the generation is on disk before anything names it (power loss, not only kill -9)
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
    remove_old_generations(root)
    return len(tail)


@contextmanager
def compacting(root: Path) -> Iterator[None]:
    """Hold ``root``'s ``COMPACT.lock`` (one compaction or rebuild at a time; :class:`Conflict` if another runs),
    after removing what killed ones left (:func:`cleanup`)."""
    with wal.root_lock(root, blocking=False, name=COMPACT_LOCK) as got:
        if not got:
            raise Conflict(f"a compaction of {root} is already running")
        cleanup(root)
        yield


def replace_generation(root: Path, write: Callable[[Path], T]) -> tuple[T, str]:
    """Write ``root``'s next generation with ``write(directory)`` and publish it with an empty log (the new
    generation replaces the whole collection, updates written since the last one included); returns what
    ``write`` returned and the generation's name."""
    root = Path(root)
    with compacting(root):
        old, new = current_name(root), next_generation(root)
        result = write(root / new)
        publish(root, new, old, None)
    return result, new


def adopt_generation(root: Path, built: Path) -> str:
    """Publish the complete index directory ``built`` (on the file system of ``root``) as ``root``'s next
    generation, with an empty log. For ``xlir index --overwrite`` of a plain index that took its first update
    while the new one was being built: replacing the directory would leave the server writing to the old
    directory's log; a new generation is followed by every reader and writer."""
    return replace_generation(root, Path(built).rename)[1]
