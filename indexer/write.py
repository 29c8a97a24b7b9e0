"""The write stage: documents, their languages and their vectors (from any source) -> an index directory.

Two steps, the only code that writes an index's files:

- per shard (:class:`ShardWriter`): a shard's documents -> its docstore, raw vectors and centroid statistics,
  plus its :class:`ShardPart` (its languages first seen first, each document's row of them, its tokenized
  documents with its own BM25 vocabulary);
- the driver's :func:`finish_index`: the parts in order -> each shard's language rows in the collection's
  ``lang_codes``, one BM25 builder (the parts' vocabularies merged in order: the ids one builder fed every
  document gives), the merged centroid statistics (exact), the planned FAISS kind and every shard's FAISS index
  over its raw vectors (mmap; :class:`IndexJob`, run here or as Ray tasks), BM25 saved, and the manifest last,
  with every file's sha256.

:func:`write_index` streams batches of ``(documents, languages, vectors)`` through both (:func:`write_shards` ->
:func:`finish_index`): ``xlir index`` (:func:`indexer.build.build_index`: read -> language -> embed -> here),
compaction (stored vectors), ``--append`` (the same batches, into the write-ahead log instead) and the synthetic
benchmark index write through it; only one batch is in memory at a time. ``xlir index --ray``
(``indexer/ray_build.py``) runs the per-shard step in Ray tasks, one range of documents each, and
:func:`finish_index` on the driver: the same files, byte for byte.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from indexer import bm25 as bm25_mod
from indexer.centering import AUTO, MODES, Centroids, CentroidStats, center_by_lang, resolve_auto
from indexer.dense import INDEX_TYPES, build_faiss_index
from indexer.docstore import DocStoreWriter
from indexer.layout import CENTROIDS_FILE, LANGS_FILE, SHARD_STATS_FILE, VECTOR_SET
from indexer.manifest import BM25Info, FileInfo, Manifest, ShardInfo, VectorSetInfo, library_versions
from indexer.planning import FLAT_MAX_VECTORS, IVF_MIN_VECTORS, TARGET_RECALL, TuneOptions, plan_index
from indexer.progress import doc_bar, finish
from indexer.readers import Document
from indexer.text import ANALYZER_NAME, tokenize
from models.registry import file_sha256
from xlir.errors import CorpusError, XlirError

Batch = tuple[Sequence[Document], Sequence[str], np.ndarray]  # documents, normalised language codes, raw vectors


@dataclass
class WriteOptions:
    shard_size: int = 1_000_000
    index_type: str = "auto"  # auto: indexer.planning.plan_index (flat below flat_max vectors)
    progress: bool = True
    centering: str = AUTO
    memory_budget: int | None = None  # bytes for the loaded FAISS indexes (auto plan); None: no limit
    flat_max: int = FLAT_MAX_VECTORS  # auto: flat below this many vectors
    ivf_min_docs: int = IVF_MIN_VECTORS  # an IVF shard smaller than this falls back to flat
    target_recall: float = TARGET_RECALL  # approximate indexes: nprobe / efSearch tuned to this recall@10

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


@dataclass(frozen=True)
class EncoderInfo:
    """Whose vectors are written: recorded in the manifest, checked by whoever serves the index."""

    name: str
    checksum: str
    dim: int


@dataclass
class Timer:
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    def add(self, stage: str, t0: float) -> float:
        now = time.perf_counter()
        self.seconds[stage] += now - t0
        return now


def passage_text(title: str, text: str) -> str:
    """What is embedded, BM25-indexed and reranked for a document: its title (if any) and its text."""
    return f"{title}\n{text}" if title else text


def shard_name(number: int) -> str:
    """The folder of shard ``number`` inside an index."""
    return f"shards/{number:05d}"


PART_LANG_FILE = "lang_rows.npy"
PART_META_FILE = "part.json"
PART_BM25_DIR = "bm25"


@dataclass
class ShardPart:
    """One shard as its writer left it, and what :func:`finish_index` needs of it: where its files are
    (docstore, raw vectors, centroid statistics), its languages (codes first seen first, and each document's row
    of them: the collection's rows are only known once every shard before it is), its centroid statistics and
    its tokenized documents (a :class:`~indexer.bm25.BM25Part`). A Ray worker saves it to its part folder
    (:meth:`save`), the driver loads it back (:meth:`load`)."""

    directory: Path
    count: int
    lang_codes: list[str]
    lang_rows: np.ndarray
    stats: CentroidStats
    bm25: bm25_mod.BM25Part

    def save(self, work: Path) -> None:
        """What is not a shard file, into the folder ``work``."""
        work.mkdir(parents=True, exist_ok=True)
        np.save(work / PART_LANG_FILE, np.asarray(self.lang_rows, dtype=np.int32))
        self.bm25.save(work / PART_BM25_DIR)
        (work / PART_META_FILE).write_text(json.dumps({"count": self.count, "lang_codes": self.lang_codes}))

    @classmethod
    def load(cls, directory: Path, work: Path) -> ShardPart:
        meta = json.loads((work / PART_META_FILE).read_text())
        part = cls(directory, int(meta["count"]), list(meta["lang_codes"]), np.load(work / PART_LANG_FILE),
                   CentroidStats.load(directory / SHARD_STATS_FILE), bm25_mod.BM25Part.load(work / PART_BM25_DIR))
        if len(part.lang_rows) != part.count or len(part.bm25.lengths) != part.count:
            raise XlirError(f"{work}: the part of {part.count} documents holds {len(part.lang_rows)} language rows "
                            f"and {len(part.bm25.lengths)} tokenized documents")
        return part


def check_vectors(n_docs: int, vecs: np.ndarray, dim: int) -> None:
    """An :class:`XlirError` unless ``vecs`` holds one vector of ``dim`` for each of ``n_docs`` documents."""
    if vecs.shape != (n_docs, dim):
        raise XlirError(f"{n_docs} documents came with vectors of shape {vecs.shape}, not ({n_docs}, {dim})")


class ShardWriter:
    """Writes the documents given to it, in order, as one shard in ``directory`` (docstore, raw vectors, centroid
    statistics); :meth:`finish` closes it and returns its :class:`ShardPart`. Used by the local build (one
    writer after the other while batches stream) and by each Ray task (one range)."""

    def __init__(self, directory: Path, dim: int) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True)
        self.dim = dim
        self.docs = DocStoreWriter(self.dir)
        self._vec_fh = (self.dir / f"{VECTOR_SET}.f32").open("wb")
        self.codes: dict[str, int] = {}  # this shard's language codes, first seen first
        self.rows: list[int] = []
        self.stats = CentroidStats(dim)
        self.bm25 = bm25_mod.BM25Builder()

    def __len__(self) -> int:
        return len(self.docs)

    def add(self, docs: Sequence[Document], langs: Sequence[str], vecs: np.ndarray, *,
            timer: Timer | None = None) -> None:
        check_vectors(len(docs), vecs, self.dim)
        t0 = time.perf_counter()
        for doc in docs:
            self.bm25.add(tokenize(passage_text(doc.title, doc.text)))
        if timer is not None:
            t0 = timer.add("bm25_tokenize", t0)
        for doc, lang in zip(docs, langs, strict=True):
            self.docs.add(doc.id, doc.title, doc.text, lang, doc.metadata)
        self.rows.extend(self.codes.setdefault(lang, len(self.codes)) for lang in langs)
        self.stats.add(langs, vecs)
        self._vec_fh.write(np.ascontiguousarray(vecs, dtype="<f4").tobytes())
        if timer is not None:
            timer.add("write", t0)

    def finish(self) -> ShardPart:
        """Close the shard's files; its language rows and FAISS index are written by :func:`finish_index`."""
        self.docs.close()
        self._vec_fh.close()
        self.stats.save(self.dir / SHARD_STATS_FILE)
        return ShardPart(self.dir, len(self.docs), list(self.codes), np.asarray(self.rows, dtype=np.int32),
                         self.stats, self.bm25.part())


def write_shards(out: Path, batches: Iterable[Batch], options: WriteOptions, dim: int, *,
                 timer: Timer | None = None, bar: tqdm | None = None) -> Iterator[ShardPart]:
    """The per-shard step of a local build: the documents of ``batches``, in order, cut into shards of
    ``options.shard_size`` written at ``out/shards/NNNNN``; yields each shard's part as soon as it is full.
    ``bar``: advanced by the producer (default: a bar of its own, advanced per batch); closed at the end."""
    own_bar = bar is None
    docs_bar = doc_bar(None, options.progress) if bar is None else bar
    writer: ShardWriter | None = None
    number = 0
    for docs, langs, vecs in batches:
        check_vectors(len(docs), vecs, dim)  # the whole batch: its slices could hide a longer vector array
        pos = 0
        while pos < len(docs):
            if writer is None:
                writer = ShardWriter(out / shard_name(number), dim)
                number += 1
            take = min(len(docs) - pos, options.shard_size - len(writer))
            sl = slice(pos, pos + take)
            writer.add(docs[sl], langs[sl], vecs[sl], timer=timer)
            pos += take
            if len(writer) == options.shard_size:
                yield writer.finish()
                writer = None
        if own_bar:
            docs_bar.update(len(docs))
    if writer is not None:
        yield writer.finish()
    finish(docs_bar)


def place_shard(source: Path, target: Path) -> None:
    """Put the shard files of ``source`` at ``target`` (a new folder): hard links (same file system: no copy, and
    ``source`` keeps its files), else copies. Files written later into ``target`` are new files."""
    target.mkdir(parents=True)
    for f in sorted(source.iterdir()):
        try:
            os.link(f, target / f.name)
        except OSError:
            shutil.copy2(f, target / f.name)


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

    basis = centroids.basis(mode)

    def transform(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return block if mode == "off" else center_by_lang(block, rows[idx], shifts, basis)

    index, params = build_faiss_index(index_type, raw, transform=transform, options=options, tune=tune)
    faiss.write_index(index, str(sdir / f"{VECTOR_SET}.faiss"))
    info.index[VECTOR_SET] = {**params, "centering": mode}


def _plan(opts: WriteOptions, n_vectors: int, dim: int) -> dict[str, Any]:
    """The FAISS kind for the whole vector set: ``--index auto`` asks :func:`plan_index`, a kind is taken as given."""
    if opts.index_type != AUTO:
        return {"requested": opts.index_type, "kind": opts.index_type, "reason": "requested", "options": {},
                "target_recall": opts.target_recall}
    try:
        plan = plan_index(n_vectors, dim, opts.memory_budget, flat_max=opts.flat_max)
    except ValueError as exc:
        raise XlirError(str(exc)) from exc
    return {"requested": AUTO, **asdict(plan), "target_recall": opts.target_recall}


@dataclass(frozen=True)
class IndexJob:
    """Building one shard's FAISS index (:func:`index_shard`): a picklable call, run here or by a Ray task; returns
    the shard's FAISS parameters for the manifest."""

    root: Path
    info: ShardInfo
    dim: int
    kind: str
    mode: str
    centroids: Centroids
    lang_codes: list[str]
    options: dict[str, Any]
    tune: TuneOptions

    def __call__(self) -> dict[str, Any]:
        info = self.info.model_copy(deep=True)
        index_shard(self.root, info, self.dim, self.kind, self.mode, self.centroids, self.lang_codes,
                    options=self.options, tune=self.tune)
        return info.index[VECTOR_SET]


MapJobs = Callable[[Sequence[IndexJob]], Sequence[dict[str, Any]]]


def run_jobs_here(progress: bool) -> MapJobs:
    """Run the FAISS jobs one after the other in this process (a bar when there are several)."""
    def run(jobs: Sequence[IndexJob]) -> list[dict[str, Any]]:
        return [job() for job in tqdm(jobs, desc="faiss", unit="shard", disable=not progress or len(jobs) < 2)]
    return run


def finish_index(out: Path, parts: Iterable[ShardPart], options: WriteOptions, encoder: EncoderInfo, *,
                 sources: Sequence[Path] = (), build_info: Mapping[str, Any] | None = None,
                 timer: Timer | None = None, map_jobs: MapJobs | None = None,
                 started: float | None = None) -> Manifest:
    """The driver step: the shards of ``parts`` (in order; each placed at ``out/shards/NNNNN`` if it is not there
    yet) become the index at ``out``. Each shard's language rows are mapped to the collection's ``lang_codes``
    (first seen across the parts, as one pass over the corpus sees them) and its tokenized documents appended to
    the BM25 builder (:meth:`~indexer.bm25.BM25Builder.extend`: the vocabulary ids of one builder fed in order);
    then the centroid statistics are merged (exact), the FAISS kind is planned, every shard's FAISS index is built
    (``map_jobs``, default: here, one after the other), BM25 is saved and the manifest is written last with every
    file's sha256. ``parts`` is consumed once, so only one part's tokens are in memory at a time. ``started``:
    the ``time.perf_counter()`` the build's seconds count from (default: now)."""
    opts, timer, dim = options, timer or Timer(), encoder.dim
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter() if started is None else started
    lang_index: dict[str, int] = {}  # language code -> its row in the manifest's lang_codes (first seen first)
    lang_counts: Counter[str] = Counter()
    shards: list[ShardInfo] = []
    shard_stats: list[CentroidStats] = []
    bm25 = bm25_mod.BM25Builder()
    total = 0
    for number, part in enumerate(parts):
        t0 = time.perf_counter()
        name = shard_name(number)
        if part.directory.resolve() != (out / name).resolve():
            place_shard(part.directory, out / name)
        rows = np.asarray([lang_index.setdefault(code, len(lang_index)) for code in part.lang_codes], dtype=np.uint16)
        part_rows = np.asarray(part.lang_rows, dtype=np.int64)
        np.save(out / name / LANGS_FILE, rows[part_rows])
        per_code = np.bincount(part_rows, minlength=len(part.lang_codes))
        lang_counts.update({code: int(n) for code, n in zip(part.lang_codes, per_code, strict=True)})
        shard_stats.append(part.stats)
        shards.append(ShardInfo(name=name, offset=total, count=part.count, index={}))
        total += part.count
        t0 = timer.add("write", t0)
        bm25.extend(part.bm25)
        timer.add("bm25_merge", t0)
    t0 = time.perf_counter()
    if total == 0:
        raise CorpusError(f"no documents found in {', '.join(map(str, sources))}")
    centroids = functools.reduce(CentroidStats.merge, shard_stats).centroids()
    centroids.save(out / CENTROIDS_FILE, encoder.checksum)
    mode = resolve_auto(lang_counts) if opts.centering == AUTO else opts.centering
    plan = _plan(opts, total, dim)
    lang_codes = list(lang_index)
    jobs = [IndexJob(out, info, dim, plan["kind"], mode, centroids, lang_codes,
                     {**plan["options"], "min_docs": opts.ivf_min_docs}, TuneOptions(target_recall=opts.target_recall))
            for info in shards]
    for info, params in zip(shards, (map_jobs or run_jobs_here(opts.progress))(jobs), strict=True):
        info.index[VECTOR_SET] = params
    t0 = timer.add("faiss_build", t0)
    bm25.save(out / "bm25")
    t0 = timer.add("bm25_build", t0)
    files = {str(p.relative_to(out)): FileInfo(size=p.stat().st_size, sha256=file_sha256(p))
             for p in sorted(out.rglob("*")) if p.is_file()}
    timer.add("checksums", t0)
    elapsed = time.perf_counter() - t_start
    manifest = Manifest(
        doc_count=total,
        shard_size=opts.shard_size,
        languages=dict(sorted(lang_counts.items())),
        lang_codes=lang_codes,
        shards=shards,
        vector_sets={VECTOR_SET: VectorSetInfo(
            encoder=encoder.name, encoder_checksum=encoder.checksum, dim=dim,
            index_type=plan["kind"], centering=mode, centering_requested=opts.centering,
            centroids=CENTROIDS_FILE, index_plan=plan)},
        bm25=BM25Info(analyzer=ANALYZER_NAME, k1=bm25.k1, b=bm25.b, method=bm25.method, vocab_size=len(bm25.vocab)),
        sources=[str(Path(p).resolve()) for p in sources],
        versions=library_versions(),
        files=files,
        build={
            "seconds": round(elapsed, 3),
            "docs_per_second": round(total / elapsed, 2) if elapsed > 0 else None,
            "stage_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            **(build_info or {}),
        },
    )
    manifest.write(out)
    return manifest


def write_index(out: Path, batches: Iterable[Batch], options: WriteOptions, encoder: EncoderInfo, *,
                sources: Sequence[Path] = (), build_info: Mapping[str, Any] | None = None,
                timer: Timer | None = None, bar: tqdm | None = None) -> Manifest:
    """Write the documents of ``batches``, in order, into the (new, empty or missing) directory ``out``; returns
    the manifest written there last: :func:`write_shards` (the per-shard step) -> :func:`finish_index` (the
    driver step), the two steps a Ray build (``indexer/ray_build.py``) runs too. ``build_info`` is added to the
    manifest's ``build`` record once every batch is consumed (counts its producer kept); ``timer`` collects the
    seconds of each stage (the producer's too). ``bar``: the documents' progress bar, advanced by the producer
    (default: a bar of its own, advanced per batch written); it is closed once every batch is written."""
    timer = timer or Timer()
    return finish_index(out, write_shards(Path(out), batches, options, encoder.dim, timer=timer, bar=bar), options,
                        encoder, sources=sources, build_info=build_info, timer=timer)
