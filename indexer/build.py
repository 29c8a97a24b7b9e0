"""The offline indexing pipeline: stream documents -> docstore + embeddings + BM25 tokens -> shards.

Documents are read in chunks; each chunk is embedded (length-sorted batches), appended to the current
shard's raw vectors and docstore, and its tokens are added to the BM25 builder. When a shard is full its
FAISS index is built from the raw vectors (mmap). Everything is written into a temporary sibling of the
output directory, which is renamed into place only after the manifest is written: an interrupted build
never leaves a half-built index at ``out``.

``overwrite`` replaces only what :func:`overwrite_target` recognises as an xlir index (or an empty directory);
anything else is refused before anything is touched. A plain index is replaced by swapping the finished
temporary directory with ``out`` (:func:`replace_dir`), so readers see the old index or the new one, never a
missing or half-written one; an index updated live gets a new generation instead (``indexer.compact.rebuild``).
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from indexer import bm25 as bm25_mod
from indexer import wal
from indexer.centering import AUTO, MODES, Centroids, CentroidStats, center_by_lang, resolve_auto
from indexer.dense import INDEX_TYPES, build_faiss_index
from indexer.docstore import DocStoreWriter
from indexer.langid import LanguageDetector, normalize_lang
from indexer.manifest import (
    MANIFEST,
    BM25Info,
    FileInfo,
    Manifest,
    ShardInfo,
    VectorSetInfo,
    library_versions,
)
from indexer.planning import FLAT_MAX_VECTORS, IVF_MIN_VECTORS, TARGET_RECALL, TuneOptions, plan_index
from indexer.readers import Document, read_corpus
from models.base import Encoder
from models.registry import file_sha256
from xlir.errors import CorpusError, OverwriteRefused, XlirError

log = logging.getLogger(__name__)

VECTOR_SET = "main"
LANGS_FILE = "langs.npy"
CENTROIDS_FILE = "centroids.npz"
SHARD_STATS_FILE = "centroid_stats.npz"


@dataclass
class BuildOptions:
    shard_size: int = 1_000_000
    index_type: str = "auto"  # auto: indexer.planning.plan_index (flat below flat_max vectors)
    batch_size: int = 32
    chunk_docs: int = 1024
    default_lang: str | None = None
    overwrite: bool = False
    progress: bool = True
    centering: str = AUTO
    memory_budget: int | None = None  # bytes for the loaded FAISS indexes (auto plan); None: no limit
    flat_max: int = FLAT_MAX_VECTORS  # auto: flat below this many vectors
    ivf_min_docs: int = IVF_MIN_VECTORS  # an IVF shard smaller than this falls back to flat
    target_recall: float = TARGET_RECALL  # approximate indexes: nprobe / efSearch tuned to this recall@10
    resume: bool = True  # keep each chunk's embeddings until the build succeeds, so a rerun skips them

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise XlirError("shard size must be >= 1")
        if self.index_type not in (AUTO, *INDEX_TYPES):
            raise XlirError(f"unknown index type {self.index_type!r}; choose from {', '.join((AUTO, *INDEX_TYPES))}")
        if self.memory_budget is not None and self.memory_budget <= 0:
            raise XlirError("the memory budget must be positive")
        if not 0 < self.target_recall <= 1:
            raise XlirError("the target recall must be in (0, 1]")
        if self.centering not in (*MODES, AUTO):
            raise XlirError(f"unknown centering {self.centering!r}; choose from {', '.join((*MODES, AUTO))}")


class _ChunkCache:
    """Embeddings of finished chunks, kept beside the build (``.<out>.resume/``) until it succeeds.

    A killed build run again over the same corpus reads the same chunks in the same order: each one whose texts
    (and encoder) match a saved entry is loaded instead of embedded, so the expensive stage resumes where it
    stopped; reading, BM25 and FAISS are redone (they are a small share of the time).
    """

    def __init__(self, folder: Path | None, encoder: Encoder) -> None:
        self.folder = folder
        self.tag = f"{encoder.checksum}/{getattr(encoder, 'backend', 'torch')}/{encoder.dim}"
        self.reused = 0

    def embed(self, encoder: Encoder, texts: Sequence[str], batch_size: int) -> np.ndarray:
        if self.folder is None:
            return encoder.encode_passages(texts, batch_size=batch_size)
        h = hashlib.sha256(self.tag.encode())
        for t in texts:
            data = t.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        path = self.folder / f"{h.hexdigest()[:32]}.npy"
        if path.is_file():
            try:
                vecs = np.load(path)
                if vecs.shape == (len(texts), encoder.dim):
                    self.reused += len(texts)
                    return vecs
            except (OSError, ValueError):
                pass
        vecs = encoder.encode_passages(texts, batch_size=batch_size)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npy")
        np.save(tmp, np.ascontiguousarray(vecs, dtype=np.float32))
        os.replace(tmp, path)
        return vecs


@dataclass
class _Timer:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


def _chunks(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    it = iter(docs)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def passage_text(title: str, text: str) -> str:
    """What is embedded, BM25-indexed and reranked for a document: its title (if any) and its text."""
    return f"{title}\n{text}" if title else text


class _ShardWriter:
    def __init__(self, root: Path, number: int, offset: int, dim: int) -> None:
        self.name = f"shards/{number:05d}"
        self.dir = root / self.name
        self.dir.mkdir(parents=True)
        self.offset = offset
        self.dim = dim
        self.docs = DocStoreWriter(self.dir)
        self._vec_fh = (self.dir / f"{VECTOR_SET}.f32").open("wb")
        self.langs: list[int] = []
        self.stats = CentroidStats(dim)

    def __len__(self) -> int:
        return len(self.docs)

    def add(self, docs: Sequence[Document], langs: Sequence[str], lang_ids: Sequence[int], vecs: np.ndarray) -> None:
        for doc, lang in zip(docs, langs, strict=True):
            self.docs.add(doc.id, doc.title, doc.text, lang)
        self.langs.extend(lang_ids)
        self.stats.add(langs, vecs)
        self._vec_fh.write(np.ascontiguousarray(vecs, dtype="<f4").tobytes())

    def finish(self) -> ShardInfo:
        """Close the shard's files; its FAISS index is built once the collection's centroids are known."""
        self.docs.close()
        self._vec_fh.close()
        np.save(self.dir / LANGS_FILE, np.asarray(self.langs, dtype=np.uint16))
        self.stats.save(self.dir / SHARD_STATS_FILE)
        return ShardInfo(name=self.name, offset=self.offset, count=len(self.docs), index={})


def index_shard(root: Path, info: ShardInfo, dim: int, index_type: str, mode: str, centroids: Centroids,
                lang_codes: Sequence[str], *, options: Mapping[str, Any] | None = None,
                tune: TuneOptions | None = None) -> None:
    """Build a shard's FAISS index over its raw vectors, centred with ``mode`` (no re-embedding); an approximate
    index gets its nprobe / efSearch tuned with ``tune`` (recorded with the measured recall)."""
    sdir = root / info.name
    raw = np.memmap(sdir / f"{VECTOR_SET}.f32", dtype="<f4", mode="r", shape=(info.count, dim)) if info.count \
        else np.zeros((0, dim), dtype=np.float32)
    shifts = centroids.lookup(mode, lang_codes)[0]  # rows of ``lang_codes``, as ``langs.npy`` holds them
    rows = np.load(sdir / LANGS_FILE) if info.count else np.zeros(0, dtype=np.int64)

    def transform(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return block if mode == "off" else center_by_lang(block, rows[idx], shifts)

    index, params = build_faiss_index(index_type, raw, transform=transform, options=options, tune=tune)
    faiss.write_index(index, str(sdir / f"{VECTOR_SET}.faiss"))
    info.index[VECTOR_SET] = {**params, "centering": mode}
    del raw


def _plan(opts: BuildOptions, n_vectors: int, dim: int) -> dict[str, Any]:
    """The FAISS kind for the whole vector set: ``--index auto`` asks :func:`plan_index`, a kind is taken as given."""
    if opts.index_type != AUTO:
        return {"requested": opts.index_type, "kind": opts.index_type, "reason": "requested", "options": {},
                "target_recall": opts.target_recall}
    try:
        plan = plan_index(n_vectors, dim, opts.memory_budget, flat_max=opts.flat_max)
    except ValueError as exc:
        raise XlirError(str(exc)) from exc
    return {"requested": AUTO, **plan.to_dict(), "target_recall": opts.target_recall}


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
        from indexer.live import current_name, generation_dir  # indexer.live imports this module

        try:
            current_name(out)
            gen_ok = _manifest_tops(generation_dir(out)) is not None
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


def _fsync_tree(directory: Path) -> None:
    for p in sorted(directory.rglob("*")):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    for d in sorted({p.parent for p in directory.rglob("*")} | {directory}):
        wal.fsync_dir(d)


def replace_dir(new: Path, out: Path) -> None:
    """Make the complete directory ``new`` (a sibling of ``out``) the directory ``out``, then delete the old one.

    ``new`` is fsync'd first. On Linux the two are exchanged by one ``renameat2(RENAME_EXCHANGE)``: at every
    instant ``out`` is the old index or the new one. Elsewhere (or on a file system without it) ``out`` is
    renamed aside, then ``new`` into place: between those two renames (microseconds) ``out`` does not exist; a
    process killed there leaves the old index as ``.<out>.replaced-<pid>``, which the next build of ``out`` puts
    back. Either way a reader that already opened the old files keeps using them (mmaps survive the deletion).
    """
    trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
    _fsync_tree(new)
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
    if target == TARGET_ABSENT:
        tmp.rename(out)
        return
    if target == TARGET_EMPTY:
        out.rmdir()  # empty: nothing lost; raises if something appeared meanwhile
        tmp.rename(out)
        return
    # A plain index, maybe served. Writers append to its log under its LOCK: holding it, the index either is
    # still plain (swap it) or took its first update during the build (publish a generation, as a rebuild of a
    # live root does; swapping would strand a writer on the old directory's log).
    with wal.root_lock(out):
        from indexer.live import is_live_root

        live = is_live_root(out)
        if not live:
            replace_dir(tmp, out)
    if live:
        from indexer.compact import adopt_generation  # indexer.compact imports this module

        adopt_generation(out, tmp)


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
    manifest. Temporary directories left by killed builds of the same ``out`` are removed first; the embeddings
    of the chunks a killed build finished are kept in ``.<out>.resume/`` and reused by the next run over the same
    corpus (``options.resume``), which skips the expensive stage for them."""
    from indexer.text import ANALYZER_NAME, tokenize

    opts = options or BuildOptions()
    out = Path(out)
    if out.parent.is_dir():
        _clean_leftovers(out)
    if opts.overwrite:
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
    resume_dir = out.parent / f".{out.name}.resume"
    chunk_cache = _ChunkCache(resume_dir if opts.resume and documents is None else None, encoder)
    detector = detector or LanguageDetector()
    timer = _Timer()
    t_start = time.perf_counter()
    try:
        seen: set[str] = set()
        lang_codes: list[str] = []
        lang_index: dict[str, int] = {}
        lang_counts: Counter[str] = Counter()
        detected = skipped_empty = 0
        shards: list[ShardInfo] = []
        shard_stats: list[CentroidStats] = []
        writer: _ShardWriter | None = None
        bm25 = bm25_mod.BM25Builder()
        total = 0
        bar = tqdm(desc="indexing", unit="doc", disable=not opts.progress, dynamic_ncols=True)
        t0 = time.perf_counter()
        source = read_corpus(paths, opts.default_lang) if documents is None else documents
        for chunk in _chunks(source, opts.chunk_docs):
            docs: list[Document] = []
            for doc in chunk:
                if doc.id in seen:
                    raise CorpusError(f"duplicate document id {doc.id!r} (ids must be unique across all inputs)")
                seen.add(doc.id)
                if not doc.text.strip() and not doc.title.strip():
                    skipped_empty += 1
                    continue
                docs.append(doc)
            t0 = timer.add("read", t0)
            if not docs:
                continue
            texts = [passage_text(d.title, d.text) for d in docs]
            langs = []
            for doc, text in zip(docs, texts, strict=True):
                if doc.lang:
                    try:
                        langs.append(normalize_lang(doc.lang))
                    except ValueError as exc:
                        raise CorpusError(f"document {doc.id!r}: {exc}") from exc
                else:
                    langs.append(detector.detect(text))
                    detected += 1
            t0 = timer.add("langid", t0)
            vecs = chunk_cache.embed(encoder, texts, opts.batch_size)
            t0 = timer.add("embed", t0)
            for text in texts:
                bm25.add(tokenize(text))
            t0 = timer.add("bm25_tokenize", t0)
            lang_ids = []
            for lang in langs:
                if lang not in lang_index:
                    lang_index[lang] = len(lang_codes)
                    lang_codes.append(lang)
                lang_ids.append(lang_index[lang])
                lang_counts[lang] += 1
            pos = 0
            while pos < len(docs):
                if writer is None:
                    writer = _ShardWriter(tmp, len(shards), total, encoder.dim)
                take = min(len(docs) - pos, opts.shard_size - len(writer))
                sl = slice(pos, pos + take)
                writer.add(docs[sl], langs[sl], lang_ids[sl], vecs[sl])
                pos += take
                total += take
                if len(writer) == opts.shard_size:
                    shards.append(writer.finish())
                    shard_stats.append(writer.stats)
                    writer = None
            t0 = timer.add("write", t0)
            bar.update(len(docs))
        if writer is not None:
            shards.append(writer.finish())
            shard_stats.append(writer.stats)
            t0 = timer.add("write", t0)
        bar.close()
        if total == 0:
            raise CorpusError(f"no documents found in {', '.join(map(str, paths))}")
        merged = shard_stats[0]
        for stats in shard_stats[1:]:
            merged = merged.merge(stats)
        centroids = merged.centroids()
        centroids.save(tmp / CENTROIDS_FILE, encoder.checksum)
        mode = resolve_auto(lang_counts) if opts.centering == AUTO else opts.centering
        plan = _plan(opts, total, encoder.dim)
        for info in tqdm(shards, desc="faiss", unit="shard", disable=not opts.progress or len(shards) < 2):
            index_shard(tmp, info, encoder.dim, plan["kind"], mode, centroids, lang_codes,
                        options={**plan["options"], "min_docs": opts.ivf_min_docs},
                        tune=TuneOptions(target_recall=opts.target_recall))
        t0 = timer.add("faiss_build", t0)
        bm25.save(tmp / "bm25")
        timer.add("bm25_build", t0)
        t_files = time.perf_counter()
        files = {
            str(p.relative_to(tmp)): FileInfo(size=p.stat().st_size, sha256=file_sha256(p))
            for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        timer.add("checksums", t_files)
        elapsed = time.perf_counter() - t_start
        manifest = Manifest(
            doc_count=total,
            shard_size=opts.shard_size,
            languages=dict(sorted(lang_counts.items())),
            lang_codes=lang_codes,
            shards=shards,
            vector_sets={VECTOR_SET: VectorSetInfo(
                encoder=encoder.name, encoder_checksum=encoder.checksum, dim=encoder.dim,
                index_type=plan["kind"], centering=mode, centering_requested=opts.centering,
                centroids=CENTROIDS_FILE, index_plan=plan)},
            bm25=BM25Info(analyzer=ANALYZER_NAME, k1=bm25.k1, b=bm25.b, method=bm25.method,
                          vocab_size=len(bm25.vocab)),
            sources=[str(Path(p).resolve()) for p in paths],
            versions=library_versions(),
            files=files,
            build={
                "seconds": round(elapsed, 3),
                "docs_per_second": round(total / elapsed, 2) if elapsed > 0 else None,
                "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
                "languages_detected": detected,
                "skipped_empty": skipped_empty,
                "resumed_docs": chunk_cache.reused,
            },
        )
        manifest.write(tmp)
        _publish(tmp, out, target)
        shutil.rmtree(resume_dir, ignore_errors=True)
        return manifest
    except XlirError:  # bad input or options: rerunning as is cannot succeed, nothing worth keeping
        shutil.rmtree(resume_dir, ignore_errors=True)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
