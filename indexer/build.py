"""The offline indexing pipeline: read -> language -> embed (:func:`embedded_batches`) -> write
(:func:`indexer.write.write_index`), into a temporary sibling of the output directory (:func:`staged`) that is put
in place only after the manifest is written: an interrupted build never leaves a half-built index at ``out``.

Documents are read in chunks; each chunk is embedded (length-sorted batches, or taken from the resume cache of a
killed build) and handed to the write stage, so only one chunk of vectors is in memory at a time.

``overwrite`` replaces only what :func:`overwrite_target` recognises as an xlir index (or an empty directory);
anything else is refused before anything is touched. A plain index is replaced by swapping the finished
temporary directory with ``out`` (:func:`replace_dir`), so readers see the old index or the new one, never a
missing or half-written one; an index updated live gets a new generation instead (``indexer.compact.rebuild``).
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from indexer import wal
from indexer.langid import LanguageDetector, normalize_lang
from indexer.layout import adopt_generation, fsync_tree, generation_dir, is_live_root
from indexer.manifest import MANIFEST, Manifest
from indexer.progress import count_records, doc_bar
from indexer.readers import Document, read_corpus
from indexer.write import Batch, EncoderInfo, Timer, WriteOptions, passage_text, write_index
from models.base import Encoder, ProgressFn
from models.cache import cache_kind, load_or_compute
from xlir.errors import CorpusError, OverwriteRefused, XlirError

log = logging.getLogger(__name__)


@dataclass
class BuildOptions(WriteOptions):
    """The write stage's options and those of reading and embedding."""

    batch_size: int = 32
    chunk_docs: int = 1024
    default_lang: str | None = None
    overwrite: bool = False
    resume: bool = True  # keep each chunk's embeddings until the build succeeds, so a rerun skips them


def chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _pid_alive(text: str) -> bool:
    try:
        os.kill(int(text), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# What an index root may hold besides the files its manifest lists: the lock files a server or a compaction
# creates, and the live layout (indexer/live.py: CURRENT, generations/, wal/) with its temporary files.
_ROOT_EXTRAS = frozenset({wal.LOCK_FILE, "COMPACT.lock", MANIFEST + ".tmp"})
_LIVE_ENTRIES = _ROOT_EXTRAS | {"CURRENT", "CURRENT.tmp", "generations", "wal"}
TARGET_ABSENT, TARGET_EMPTY, TARGET_INDEX, TARGET_LIVE = "absent", "empty", "index", "live"


def _manifest_tops(directory: Path) -> set[str] | None:
    """The top-level names of the files listed by ``directory``'s xlir manifest (and the manifest itself), or
    None when it has no manifest that reads as an xlir one (any format version)."""
    try:
        data = json.loads((directory / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and isinstance(data.get("format_version"), int)
            and isinstance(data.get("vector_sets"), dict) and isinstance(data.get("files"), dict)
            and isinstance(data.get("shards"), list)):
        return None
    return {MANIFEST} | {Path(str(rel)).parts[0] for rel in data["files"] if Path(str(rel)).parts}


def _refuse(out: Path, why: str) -> OverwriteRefused:
    return OverwriteRefused(f"--overwrite refused: {out} {why}; nothing was changed")


def overwrite_target(out: Path) -> str:
    """What ``--overwrite`` would replace at ``out``, checked before anything is written or deleted.

    Returns ``"absent"`` (nothing there), ``"empty"`` (an empty directory), ``"index"`` (a plain index: an xlir
    ``manifest.json`` and only the files it lists) or ``"live"`` (a root updated live: ``CURRENT`` or ``wal/``
    beside an index, and only the live layout's entries). Raises :class:`OverwriteRefused` for anything else: a
    file, a symbolic link, ``/``, the home or current directory or one of their parents, a directory that is
    not an index, or an index that also holds files of its own (they would be deleted with it).
    """
    out = Path(out)
    if not os.path.lexists(out):
        return TARGET_ABSENT
    if out.is_symlink():
        raise _refuse(out, "is a symbolic link: give the index directory itself")
    resolved = out.resolve()
    for name, protected in (("the home directory", Path.home()), ("the current directory", Path.cwd())):
        protected = protected.resolve()
        if resolved == protected or resolved in protected.parents:
            raise _refuse(out, f"is {name} or contains it")
    if resolved == Path(resolved.anchor):
        raise _refuse(out, "is the root of the file system")
    if not out.is_dir():
        raise _refuse(out, "is a file, not an index directory")
    try:
        entries = {p.name for p in out.iterdir()}
    except OSError as exc:
        raise _refuse(out, f"cannot be listed ({exc.strerror or exc})") from None
    if not entries:
        return TARGET_EMPTY
    known = _manifest_tops(out)
    live = "CURRENT" in entries or (known is not None and "wal" in entries)
    if live:
        try:
            gen_ok = _manifest_tops(generation_dir(out)) is not None  # generation_dir reads and checks CURRENT
        except (XlirError, OSError):
            gen_ok = False
        if not gen_ok:
            raise _refuse(out, "has a CURRENT file that names no xlir index generation")
        known = (known or set()) | _LIVE_ENTRIES
    if known is None:
        raise _refuse(out, "is not empty and is not an xlir index (no xlir manifest.json or CURRENT): "
                           "--overwrite replaces only an xlir index or an empty directory")
    foreign = sorted(entries - known - _ROOT_EXTRAS)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise _refuse(out, f"is an xlir index but also holds {shown}, which the index does not list "
                           "(--overwrite would delete them): move them away or choose another --out")
    return TARGET_LIVE if live else TARGET_INDEX


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2  # linux/fs.h


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap the directory entries ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).
    Returns False where the C library or the file system does not offer it."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(new: Path, out: Path) -> None:
    """Make the complete directory ``new`` (a sibling of ``out``) the directory ``out``, then delete the old one.

    ``new`` is fsync'd first. On Linux the two are exchanged by one ``renameat2(RENAME_EXCHANGE)``: at every
    instant ``out`` is the old index or the new one. Elsewhere (or on a file system without it) ``out`` is
    renamed aside, then ``new`` into place: between those two renames (microseconds) ``out`` does not exist; a
    process killed there leaves the old index as ``.<out>.replaced-<pid>``, which the next build of ``out`` puts
    back. Either way a reader that already opened the old files keeps using them (mmaps survive the deletion).
    """
    trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
    fsync_tree(new)
    if _rename_exchange(new, out):
        new.rename(trash)
    else:
        out.rename(trash)
        new.rename(out)
    wal.fsync_dir(out.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(out: Path) -> None:
    """Remove what killed builds of ``out`` left beside it; an old index a swap left aside with ``out`` missing is
    put back (see :func:`replace_dir`)."""
    for stale in sorted(out.parent.glob(f".{out.name}.replaced-*")):
        if _pid_alive(stale.name.rsplit("-", 1)[-1]):
            continue
        if not os.path.lexists(out) and _manifest_tops(stale) is not None:
            stale.rename(out)
            log.warning("%s: put back the index a killed overwrite had moved aside", out)
        else:
            shutil.rmtree(stale, ignore_errors=True)


def _publish(tmp: Path, out: Path, target: str) -> None:
    """Put the finished build ``tmp`` at ``out`` (``target``: what :func:`overwrite_target` found there)."""
    if target in (TARGET_ABSENT, TARGET_EMPTY):
        if target == TARGET_EMPTY:
            out.rmdir()  # empty: nothing lost; raises if something appeared meanwhile
        tmp.rename(out)
        return
    # A plain index, maybe served. Writers append to its log under its LOCK: holding it, the index either is
    # still plain (swap it) or took its first update during the build (publish a generation, as a rebuild of a
    # live root does; swapping would strand a writer on the old directory's log).
    with wal.root_lock(out):
        live = is_live_root(out)
        if not live:
            replace_dir(tmp, out)
    if live:
        adopt_generation(out, tmp)


@contextmanager
def staged(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """A new temporary sibling of ``out`` to write an index into; when the block ends without an error it is put
    at ``out`` (:func:`_publish`), else removed. What is at ``out`` is checked first: with ``overwrite`` only what
    :func:`overwrite_target` accepts (not a live root), without it nothing or an empty directory. Temporary
    directories left by killed builds of the same ``out`` are removed."""
    out = Path(out)
    if out.parent.is_dir():
        _clean_leftovers(out)
    if overwrite:
        target = overwrite_target(out)
        if target == TARGET_LIVE:
            raise OverwriteRefused(f"{out} is an index updated live: replace it with indexer.compact.rebuild "
                                   "(what `xlir index --overwrite` does), which publishes a new generation")
    elif os.path.lexists(out) and not (out.is_dir() and not any(out.iterdir())):
        raise XlirError(f"{out} already exists and is not empty: choose another --out or pass --overwrite")
    else:
        target = TARGET_EMPTY if out.is_dir() else TARGET_ABSENT
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    for stale in out.parent.glob(f".{out.name}.building-*"):
        if stale == tmp or not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, out, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def document_chunks(source: Iterable[Document], size: int, counts: MutableMapping[str, int], *,
                    unique: bool = True) -> Iterator[list[Document]]:
    """The documents of ``source`` read in chunks of ``size``, each chunk less its empty documents (counted in
    ``counts["skipped_empty"]``); chunks left empty are not yielded. A repeated id is a :class:`CorpusError` when
    ``unique``. The local build and the Ray build's driver both read through it."""
    counts.setdefault("skipped_empty", 0)
    seen: set[str] = set()
    for chunk in chunks(source, size):
        docs: list[Document] = []
        for doc in chunk:
            if unique and doc.id in seen:
                raise CorpusError(f"duplicate document id {doc.id!r} (ids must be unique across all inputs)")
            seen.add(doc.id)
            if not doc.text.strip() and not doc.title.strip():
                counts["skipped_empty"] += 1
                continue
            docs.append(doc)
        if docs:
            yield docs


def document_langs(docs: Sequence[Document], texts: Sequence[str], detector: LanguageDetector,
                   counts: MutableMapping[str, int]) -> list[str]:
    """Each document's normalised language: its own (a :class:`CorpusError` if it is not a language code), else
    detected from its text (counted in ``counts["languages_detected"]``)."""
    counts.setdefault("languages_detected", 0)
    langs = []
    for doc, text in zip(docs, texts, strict=True):
        if doc.lang:
            try:
                langs.append(normalize_lang(doc.lang))
            except ValueError as exc:
                raise CorpusError(f"document {doc.id!r}: {exc}") from exc
        else:
            langs.append(detector.detect(text))
            counts["languages_detected"] += 1
    return langs


def embedded_batches(source: Iterable[Document], encoder: Encoder, opts: BuildOptions, detector: LanguageDetector,
                     *, resume: Path | None = None, timer: Timer | None = None,
                     counts: MutableMapping[str, int] | None = None, unique: bool = True,
                     progress: ProgressFn | None = None) -> Iterator[Batch]:
    """Read -> language -> embed: the documents of ``source`` in chunks of ``opts.chunk_docs``, each with its
    normalised language (given, or detected) and its vector. Empty documents are skipped; a repeated id is a
    :class:`CorpusError` when ``unique``. ``counts`` gets ``languages_detected``, ``skipped_empty`` and
    ``resumed_docs``; ``timer`` the seconds of reading, language ID and embedding; ``progress`` the number of
    documents embedded, per encoder batch (or per chunk loaded from ``resume``).

    ``resume`` is a folder of the embedding cache (:func:`models.cache.load_or_compute`) that keeps each chunk's
    vectors. A killed build run again over the same corpus reads the same chunks in the same order: each one whose
    texts (and encoder) match a saved entry is loaded instead of embedded, so the expensive stage resumes where it
    stopped; reading, BM25 and FAISS are redone (they are a small share of the time)."""
    timer = timer or Timer()
    counts = {} if counts is None else counts
    for key in ("languages_detected", "skipped_empty", "resumed_docs"):
        counts.setdefault(key, 0)
    t0 = time.perf_counter()
    for docs in document_chunks(source, opts.chunk_docs, counts, unique=unique):
        t0 = timer.add("read", t0)
        texts = [passage_text(d.title, d.text) for d in docs]
        langs = document_langs(docs, texts, detector, counts)
        t0 = timer.add("langid", t0)
        vecs, cached = load_or_compute(resume, encoder, cache_kind(encoder, "passage"), texts,
                                       partial(encoder.encode_passages, texts, batch_size=opts.batch_size,
                                               progress=progress))
        counts["resumed_docs"] += len(texts) if cached else 0
        if progress is not None and cached:
            progress(len(texts))
        timer.add("embed", t0)
        yield docs, langs, vecs
        t0 = time.perf_counter()


def build_index(
    paths: Sequence[Path],
    out: Path,
    encoder: Encoder,
    options: BuildOptions | None = None,
    *,
    detector: LanguageDetector | None = None,
    documents: Iterable[Document] | None = None,
) -> Manifest:
    """Index the corpus files at ``paths`` (or the ``documents`` given instead) into ``out``; returns the written
    manifest. The embeddings of the chunks a killed build finished are kept in ``.<out>.resume/`` and reused by
    the next run over the same corpus (``options.resume``), which skips the expensive stage for them."""
    opts = options or BuildOptions()
    out = Path(out)
    resume_dir = out.parent / f".{out.name}.resume"
    with staged(out, opts.overwrite) as tmp:
        try:
            timer = Timer()
            counts: dict[str, int] = {}
            source = read_corpus(paths, opts.default_lang) if documents is None else documents
            total = count_records(paths) if opts.progress and documents is None else None
            bar = doc_bar(total, opts.progress)  # advanced per encoder batch: rate and time left on stderr
            batches = embedded_batches(source, encoder, opts, detector or LanguageDetector(), timer=timer,
                                       counts=counts, resume=resume_dir if opts.resume and documents is None else None,
                                       progress=bar.update if opts.progress else None)
            manifest = write_index(tmp, batches, opts, EncoderInfo(encoder.name, encoder.checksum, encoder.dim),
                                   sources=paths, build_info=counts, timer=timer, bar=bar)
        except XlirError:  # bad input or options: rerunning as is cannot succeed, nothing worth keeping
            shutil.rmtree(resume_dir, ignore_errors=True)
            raise
    shutil.rmtree(resume_dir, ignore_errors=True)
    return manifest
