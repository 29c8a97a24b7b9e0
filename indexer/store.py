"""Opening a built index for search: manifest checks, mmap-loaded shards, docstores and BM25."""

from __future__ import annotations

import bisect
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.bm25 import BM25Searcher
from indexer.centering import Centroids, center, centered_norms, centered_scores, check_mode, resolve_auto
from indexer.dense import ShardSearcher, load_shard_index, search_shards
from indexer.docstore import DocStore
from indexer.filters import LANG_FIELD, MetadataColumns, condition_rows, merge_schemas, parse_filter
from indexer.langid import normalize_lang
from indexer.layout import LANGS_FILE, VECTOR_SET, generation_dir
from indexer.manifest import MANIFEST, Manifest
from indexer.topk import top_k
from models.registry import file_sha256
from xlir.errors import CenteringUnavailable, IndexInvalid


@dataclass
class Hits:
    """One retriever's ranked list: global rows and their scores, best first."""

    rows: np.ndarray
    scores: np.ndarray


class SearchIndex(ABC):
    """What the search path uses of an index: a built generation (:class:`Index`), or one with live updates on
    top (``indexer.delta.LiveIndex``, which has the generation's ``Index``)."""

    dir: Path
    manifest: Manifest
    centering: str  # the mode the FAISS indexes were built with
    centroids: Centroids | None

    @property
    def vector_set(self) -> Any:
        return self.manifest.vector_sets[VECTOR_SET]

    @property
    def multilingual(self) -> bool:
        """At least two languages each hold a real share of the documents (the rule of centring's ``auto``)."""
        return resolve_auto(self.languages) == "full"

    def require_centroids(self, mode: str) -> Centroids:
        check_mode(mode)
        if self.centroids is None:
            raise CenteringUnavailable(
                f"index {self.dir} has no language centroids, so centering={mode!r} cannot be applied: rebuild it "
                f"with this xlir (`xlir index CORPUS --out {self.dir} --overwrite`) or ask for centering 'off'")
        return self.centroids

    @property
    @abstractmethod
    def size(self) -> int: ...

    @property
    @abstractmethod
    def languages(self) -> dict[str, int]:
        """Documents per language code."""

    @abstractmethod
    def lang_mask(self, langs: Collection[str] | None) -> np.ndarray | None:
        """Boolean mask over all rows for a language filter (None = no filter)."""

    @abstractmethod
    def metadata_segments(self) -> list[MetadataColumns]:
        """Columns of the documents' metadata (:mod:`indexer.filters`), one per segment of rows in row order: built
        at the first call, kept while the generation (and the live delta's snapshot) is served."""

    @property
    def metadata_fields(self) -> dict[str, str]:
        """Each metadata field of the documents and its type (``indexer.filters``)."""
        return merge_schemas(seg.schema for seg in self.metadata_segments())

    def filter_mask(self, raw: Mapping[str, Any] | None) -> np.ndarray | None:
        """Boolean mask over all rows for a search filter (None = no filter; ``indexer.filters`` for the syntax);
        :class:`~xlir.errors.BadQuery` for a field the documents do not have or a condition of the wrong type."""
        if not raw:
            return None
        segments = self.metadata_segments() if any(name != LANG_FIELD for name in raw) else []
        flt = parse_filter(raw, merge_schemas(seg.schema for seg in segments), normalize_lang)
        mask = None
        if flt.conditions:
            mask = np.concatenate([condition_rows(seg, flt.conditions) for seg in segments])
        if flt.langs is not None:
            langs = self.lang_mask(flt.langs)
            assert langs is not None  # langs is never empty
            mask = langs if mask is None else mask & langs
        return mask

    @abstractmethod
    def dense(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
              mode: str | None = None) -> list[Hits]: ...

    @abstractmethod
    def bm25_search(self, tokens: list[str], k: int, mask: np.ndarray | None = None) -> Hits: ...

    @abstractmethod
    def doc(self, row: int) -> dict[str, Any]: ...

    @abstractmethod
    def vectors(self, rows: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """The stored raw vectors of ``rows`` (len(rows) x dim) and their languages."""

    def centred_vectors(self, rows: Sequence[int], mode: str) -> tuple[np.ndarray, list[str]]:
        """The documents of ``rows`` as the dense search scores them under ``mode``: their stored raw vectors centred
        by the rule of :mod:`indexer.centering` (what the FAISS index, the delta and exact re-scoring hold)."""
        raw, langs = self.vectors(rows)
        if mode == "off":
            return center(raw, np.zeros(1, dtype=np.float32)), langs
        cents = self.require_centroids(mode)
        return center(raw, cents.lookup(mode, langs)[0], cents.basis(mode)), langs


class Index(SearchIndex):
    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.dir = directory
        self.manifest = manifest
        try:
            self.shards: list[ShardSearcher] = []  # local DenseShards, or remote ones (serve_shards)
            self.docstores: list[DocStore] = []
            langs = []
            for info in manifest.shards:
                sdir = directory / info.name
                shard = load_shard_index(sdir / f"{VECTOR_SET}.faiss", info.offset,
                                         search_params=info.index.get(VECTOR_SET))  # tuned nprobe / efSearch
                if shard.size != info.count:
                    raise IndexInvalid(f"{sdir}: FAISS index holds {shard.size} vectors, manifest says {info.count}")
                self.shards.append(shard)
                self.docstores.append(DocStore(sdir))
                langs.append(np.load(sdir / LANGS_FILE))
            self.langs = np.concatenate(langs) if langs else np.zeros(0, dtype=np.uint16)
            self.bm25 = BM25Searcher(directory / "bm25")
        except IndexInvalid:
            raise
        except Exception as exc:
            raise IndexInvalid(f"cannot load index {directory}: {type(exc).__name__}: {exc}") from exc
        if self.bm25.num_docs != manifest.doc_count:
            raise IndexInvalid(f"{directory}: BM25 holds {self.bm25.num_docs} docs, manifest says {manifest.doc_count}")
        self._offsets = [s.offset for s in manifest.shards]
        self._lang_id = {code: i for i, code in enumerate(manifest.lang_codes)}
        vs = manifest.vector_sets[VECTOR_SET]
        self.centering = vs.centering
        self.centroids = None if vs.centroids is None else Centroids.load(directory / vs.centroids)
        self._raw: list[np.ndarray] | None = None
        self._norms: dict[str, list[np.ndarray]] = {}
        self._metadata: MetadataColumns | None = None
        self._metadata_lock = threading.Lock()
        try:  # mapped now (no read): a directory swapped later (xlir index --overwrite) cannot mix into this one
            self.raw_vectors()
        except (OSError, ValueError):
            self._raw = None

    @property
    def size(self) -> int:
        return self.manifest.doc_count

    def serve_shards(self, shards: Sequence[ShardSearcher]) -> None:
        """Search through ``shards`` instead of the FAISS indexes loaded here (e.g. Ray actors over the same files,
        ``indexer/ray_shards.py``): each at the same offset with the same size; the local indexes are released."""
        if [(s.offset, s.size) for s in shards] != [(s.offset, s.size) for s in self.shards]:
            raise IndexInvalid(f"{self.dir}: the shards to serve do not match the index's offsets and sizes")
        self.shards = list(shards)

    @property
    def languages(self) -> dict[str, int]:
        return dict(self.manifest.languages)

    def lang_mask(self, langs: Collection[str] | None) -> np.ndarray | None:
        if not langs:
            return None
        ids = [self._lang_id[code] for code in langs if code in self._lang_id]
        return np.isin(self.langs, np.asarray(ids, dtype=np.uint16))

    def metadata_segments(self) -> list[MetadataColumns]:
        with self._metadata_lock:  # one build, whatever the number of concurrent filtered queries
            if self._metadata is None:
                rows = [md for ds in self.docstores for md in ds.metadata()]
                self._metadata = MetadataColumns.build(rows)
        return [self._metadata]

    def dense(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
              mode: str | None = None) -> list[Hits]:
        """Top ``k`` documents for already centred ``queries``.

        Documents are centred with ``mode`` (default: the mode the FAISS indexes were built with, searched with
        FAISS). Another mode is computed exactly from the stored raw vectors and the centroids: a brute-force
        scan, as costly as a flat index, but no re-embedding.
        """
        masks = None
        if mask is not None:
            masks = [mask[s.offset : s.offset + s.size] for s in self.shards]
        if mode is None or mode == self.centering:
            return [Hits(rows, scores) for scores, rows in search_shards(self.shards, queries, k, masks)]
        return self._dense_exact(queries, k, mode, masks)

    def raw_vectors(self) -> list[np.ndarray]:
        """Each shard's stored raw vectors, memory-mapped (exact search in another mode, compaction)."""
        if self._raw is None:
            dim = self.vector_set.dim
            self._raw = [
                np.memmap(self.dir / info.name / f"{VECTOR_SET}.f32", dtype="<f4", mode="r", shape=(info.count, dim))
                if info.count else np.zeros((0, dim), dtype=np.float32)
                for info in self.manifest.shards
            ]
        return self._raw

    def _dense_exact(self, queries: np.ndarray, k: int, mode: str,
                     masks: list[np.ndarray] | None) -> list[Hits]:
        raws = self.raw_vectors()
        codes = self.manifest.lang_codes  # ``self.langs`` holds rows of it
        cents = None if mode == "off" else self.require_centroids(mode)
        shifts = np.zeros((len(codes), self.vector_set.dim), dtype=np.float32) if cents is None else \
            cents.lookup(mode, codes)[0]
        basis = None if cents is None else cents.basis(mode)
        rows_of = [self.langs[s.offset : s.offset + s.size] for s in self.shards]
        if mode not in self._norms:
            self._norms[mode] = [centered_norms(np.asarray(r), rows, shifts, basis)
                                 for r, rows in zip(raws, rows_of, strict=True)]
        out = []
        for q in np.asarray(queries, dtype=np.float32):
            all_s, all_r = [], []
            for i, (raw, rows, shard) in enumerate(zip(raws, rows_of, self.shards, strict=True)):
                if not len(raw):
                    continue
                scores = centered_scores(np.asarray(raw), rows, q, shifts, self._norms[mode][i], basis)
                s, top = top_k(scores, k, mask=None if masks is None else masks[i])
                all_s.append(s.astype(np.float32))
                all_r.append(top + shard.offset)
            if not all_s:
                out.append(Hits(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)))
                continue
            s, r = top_k(np.concatenate(all_s), k, labels=np.concatenate(all_r))
            out.append(Hits(r, s))
        return out

    def bm25_search(self, tokens: list[str], k: int, mask: np.ndarray | None = None) -> Hits:
        scores, rows = self.bm25.search(tokens, k, mask)
        return Hits(rows, scores)

    def doc(self, row: int) -> dict[str, Any]:
        shard = bisect.bisect_right(self._offsets, row) - 1
        return self.docstores[shard].get(row - self._offsets[shard])

    def vectors(self, rows: Sequence[int]) -> tuple[np.ndarray, list[str]]:
        """From each shard's ``main.f32`` (the vectors exact re-scoring and compaction use)."""
        raws = self.raw_vectors()
        codes = self.manifest.lang_codes
        vecs = np.zeros((len(rows), self.vector_set.dim), dtype=np.float32)
        for i, r in enumerate(rows):
            shard = bisect.bisect_right(self._offsets, r) - 1
            vecs[i] = raws[shard][r - self._offsets[shard]]
        return vecs, [codes[int(self.langs[r])] for r in rows]

    def close(self) -> None:
        for ds in self.docstores:
            ds.close()


VERIFY_LEVELS = ("full", "size", "off")


def encoder_mismatch(directory: Path, manifest: Manifest, checksum: str, name: str | None = None) -> str | None:
    """Why ``manifest``'s vectors cannot be used with an encoder of weights ``checksum`` (None if they can)."""
    vs = manifest.vector_sets[VECTOR_SET]
    if vs.encoder_checksum == checksum:
        return None
    theirs = f"{name!r} " if name else ""
    return (f"{Path(directory) / MANIFEST}: the index was built with encoder {vs.encoder!r} (weights sha256 "
            f"{vs.encoder_checksum}), but the encoder {theirs}given to serve it has weights sha256 {checksum}: "
            "rebuild the index with this encoder or serve it with its own")


def verify_index(path: Path, expected_encoder_checksum: str | None = None, level: str = "full") -> Manifest:
    """Check an index before serving it, without loading it; returns its manifest or raises ``IndexInvalid``
    naming the file and what differs.

    ``level``: ``full`` = every file the manifest lists exists with its size and sha256 (reads every byte),
    ``size`` = exists with its size (a stat per file), ``off`` = only the manifest itself. With
    ``expected_encoder_checksum`` the index must have been built with an encoder of these weights.
    """
    if level not in VERIFY_LEVELS:
        raise ValueError(f"verify level must be one of {', '.join(VERIFY_LEVELS)}, not {level!r}")
    directory = generation_dir(Path(path))
    manifest = Manifest.read(directory)
    if level != "off":
        manifest.check_files(directory, checksums=level == "full")
    if expected_encoder_checksum is not None:
        why = encoder_mismatch(directory, manifest, expected_encoder_checksum)
        if why:
            raise IndexInvalid(why)
    return manifest


def _dir_identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_OPEN_ATTEMPTS = 5


def open_index(directory: Path, verify: str = "size") -> Index:
    """Open an index for search after ``verify_index`` at ``verify`` (default: sizes only, cheap).

    ``xlir index --overwrite`` replaces a plain index by swapping directories (``indexer.build.replace_dir``):
    when ``directory`` is swapped while it is being opened, the files read may belong to two builds, so the
    open is done again (the raw vectors are mapped at open too, so a loaded index reads nothing by path later).
    """
    path = Path(directory)
    for attempt in range(_OPEN_ATTEMPTS):
        before = _dir_identity(path)
        try:
            gdir = generation_dir(path)
            index = Index(gdir, verify_index(gdir, level=verify))
        except (IndexInvalid, OSError) as exc:
            # a SystemError is CPython 3.11's ast failing under threads ("AST constructor recursion depth
            # mismatch") while numpy parses a .npy header: transient, as a swap is
            transient = isinstance(exc.__cause__, SystemError)
            if attempt + 1 < _OPEN_ATTEMPTS and (transient or _dir_identity(path) != before):
                continue
            raise
        if _dir_identity(path) == before:
            return index
        index.close()
    raise IndexInvalid(f"{path} was replaced {_OPEN_ATTEMPTS} times while it was being opened; open it again")


def verify_checksums(directory: Path) -> list[str]:
    """Recompute every file's sha256; returns the relative paths that differ from the manifest."""
    manifest = Manifest.read(Path(directory))
    manifest.check_files(Path(directory))
    return [rel for rel, info in manifest.files.items() if file_sha256(Path(directory) / rel) != info.sha256]
