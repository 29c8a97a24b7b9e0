"""The write stage: documents, their languages and their vectors (from any source) -> an index directory.

:func:`write_index` streams batches of ``(documents, languages, vectors)`` into shards (raw vectors, docstore,
language rows, centroid statistics), adds each document's tokens to the BM25 builder, then computes the
collection's language centroids, builds each shard's FAISS index over its raw vectors (mmap), saves BM25 and
writes the manifest (last, with every file's sha256). ``xlir index`` (:func:`indexer.build.build_index`: read ->
language -> embed -> here), compaction (stored vectors), ``--append`` (the same batches, into the write-ahead log
instead) and the synthetic benchmark index all write through it; only one batch is in memory at a time.
"""

from __future__ import annotations

import functools
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
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
            self.docs.add(doc.id, doc.title, doc.text, lang, doc.metadata)
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


def write_index(out: Path, batches: Iterable[Batch], options: WriteOptions, encoder: EncoderInfo, *,
                sources: Sequence[Path] = (), build_info: Mapping[str, Any] | None = None,
                timer: Timer | None = None, bar: tqdm | None = None) -> Manifest:
    """Write the documents of ``batches``, in order, into the (new, empty or missing) directory ``out``; returns
    the manifest written there last. ``build_info`` is added to the manifest's ``build`` record once every batch
    is consumed (counts its producer kept); ``timer`` collects the seconds of each stage (the producer's too).
    ``bar``: the documents' progress bar, advanced by the producer (default: a bar of its own, advanced per batch
    written); it is closed once every batch is written."""
    opts, timer, dim = options, timer or Timer(), encoder.dim
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    lang_index: dict[str, int] = {}  # language code -> its row in the manifest's lang_codes (first seen first)
    lang_counts: Counter[str] = Counter()
    shards: list[ShardInfo] = []
    shard_stats: list[CentroidStats] = []
    writer: _ShardWriter | None = None
    bm25 = bm25_mod.BM25Builder()
    total = 0
    own_bar = bar is None
    docs_bar = doc_bar(None, opts.progress) if bar is None else bar
    for docs, langs, vecs in batches:
        t0 = time.perf_counter()
        if vecs.shape != (len(docs), dim):
            raise XlirError(f"{len(docs)} documents came with vectors of shape {vecs.shape}, not ({len(docs)}, {dim})")
        for doc in docs:
            bm25.add(tokenize(passage_text(doc.title, doc.text)))
        t0 = timer.add("bm25_tokenize", t0)
        lang_ids = [lang_index.setdefault(lang, len(lang_index)) for lang in langs]  # rows of lang_codes
        lang_counts.update(langs)
        pos = 0
        while pos < len(docs):
            if writer is None:
                writer = _ShardWriter(out, len(shards), total, dim)
            take = min(len(docs) - pos, opts.shard_size - len(writer))
            sl = slice(pos, pos + take)
            writer.add(docs[sl], langs[sl], lang_ids[sl], vecs[sl])
            pos += take
            total += take
            if len(writer) == opts.shard_size:
                shards.append(writer.finish())
                shard_stats.append(writer.stats)
                writer = None
        timer.add("write", t0)
        if own_bar:
            docs_bar.update(len(docs))
    t0 = time.perf_counter()
    if writer is not None:
        shards.append(writer.finish())
        shard_stats.append(writer.stats)
        t0 = timer.add("write", t0)
    finish(docs_bar)
    if total == 0:
        raise CorpusError(f"no documents found in {', '.join(map(str, sources))}")
    centroids = functools.reduce(CentroidStats.merge, shard_stats).centroids()
    centroids.save(out / CENTROIDS_FILE, encoder.checksum)
    mode = resolve_auto(lang_counts) if opts.centering == AUTO else opts.centering
    plan = _plan(opts, total, dim)
    lang_codes = list(lang_index)
    for info in tqdm(shards, desc="faiss", unit="shard", disable=not opts.progress or len(shards) < 2):
        index_shard(out, info, dim, plan["kind"], mode, centroids, lang_codes,
                    options={**plan["options"], "min_docs": opts.ivf_min_docs},
                    tune=TuneOptions(target_recall=opts.target_recall))
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
