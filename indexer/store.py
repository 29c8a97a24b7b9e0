"""Opening a built index for search: manifest checks, mmap-loaded shards, docstores and BM25."""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.bm25 import BM25Searcher
from indexer.build import LANGS_FILE, VECTOR_SET
from indexer.dense import DenseShard, load_shard_index, search_shards
from indexer.docstore import DocStore
from indexer.manifest import Manifest
from models.registry import file_sha256
from xlir.errors import IndexInvalid


@dataclass
class Hits:
    """One retriever's ranked list: global rows and their scores, best first."""

    rows: np.ndarray
    scores: np.ndarray


class Index:
    def __init__(self, directory: Path, manifest: Manifest, mmap: bool = True) -> None:
        self.dir = directory
        self.manifest = manifest
        try:
            self.shards: list[DenseShard] = []
            self.docstores: list[DocStore] = []
            langs = []
            for info in manifest.shards:
                sdir = directory / info.name
                shard = load_shard_index(sdir / f"{VECTOR_SET}.faiss", info.offset, mmap=mmap)
                if shard.size != info.count:
                    raise IndexInvalid(f"{sdir}: FAISS index holds {shard.size} vectors, manifest says {info.count}")
                self.shards.append(shard)
                self.docstores.append(DocStore(sdir))
                langs.append(np.load(sdir / LANGS_FILE))
            self.langs = np.concatenate(langs) if langs else np.zeros(0, dtype=np.uint16)
            self.bm25 = BM25Searcher(directory / "bm25", mmap=mmap)
        except IndexInvalid:
            raise
        except Exception as exc:
            raise IndexInvalid(f"cannot load index {directory}: {type(exc).__name__}: {exc}") from exc
        if self.bm25.num_docs != manifest.doc_count:
            raise IndexInvalid(f"{directory}: BM25 holds {self.bm25.num_docs} docs, manifest says {manifest.doc_count}")
        self._offsets = [s.offset for s in manifest.shards]
        self._lang_id = {code: i for i, code in enumerate(manifest.lang_codes)}

    @property
    def vector_set(self) -> Any:
        return self.manifest.vector_sets[VECTOR_SET]

    @property
    def size(self) -> int:
        return self.manifest.doc_count

    def lang_mask(self, langs: Collection[str] | None) -> np.ndarray | None:
        """Boolean mask over all rows for a language filter (None = no filter)."""
        if not langs:
            return None
        ids = [self._lang_id[code] for code in langs if code in self._lang_id]
        return np.isin(self.langs, np.asarray(ids, dtype=np.uint16))

    def dense(self, queries: np.ndarray, k: int, mask: np.ndarray | None = None) -> list[Hits]:
        masks = None
        if mask is not None:
            masks = [mask[s.offset : s.offset + s.size] for s in self.shards]
        return [Hits(rows, scores) for scores, rows in search_shards(self.shards, queries, k, masks)]

    def bm25_search(self, tokens: list[str], k: int, mask: np.ndarray | None = None) -> Hits:
        scores, rows = self.bm25.search(tokens, k, mask)
        return Hits(rows, scores)

    def doc(self, row: int) -> dict[str, Any]:
        shard = bisect.bisect_right(self._offsets, row) - 1
        return self.docstores[shard].get(row - self._offsets[shard])

    def close(self) -> None:
        for ds in self.docstores:
            ds.close()


def open_index(directory: Path, mmap: bool = True) -> Index:
    directory = Path(directory)
    manifest = Manifest.read(directory)
    manifest.check_files(directory)
    return Index(directory, manifest, mmap=mmap)


def verify_checksums(directory: Path) -> list[str]:
    """Recompute every file's sha256; returns the relative paths that differ from the manifest."""
    manifest = Manifest.read(Path(directory))
    manifest.check_files(Path(directory))
    return [rel for rel, info in manifest.files.items() if file_sha256(Path(directory) / rel) != info.sha256]
