"""Per-shard document store: ``docs.jsonl`` plus a uint64 offsets array, read through mmap.

Row ``i`` of a shard is line ``i`` of its ``docs.jsonl``; ``docs.offsets.npy`` holds ``n + 1`` byte
offsets, so fetching a document is one slice of the mapped file, whatever the corpus size. A document with metadata
holds it under ``metadata`` (absent when it has none); ``docs.meta.jsonl`` repeats each row's metadata (``{}`` when
none), one line per row, so the search filters' columns (``indexer/filters.py``) are built without reading the
texts. It is written only for a shard with metadata: without it (no document had any, or a shard of an older xlir)
every row has none, and a shard without metadata is byte for byte what it was before metadata existed.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"
META_FILE = "docs.meta.jsonl"


class DocStoreWriter:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._fh: BinaryIO = (directory / DOCS_FILE).open("wb")
        self._offsets: list[int] = [0]
        self._meta_fh: BinaryIO | None = None  # opened at the first document with metadata

    def add(self, doc_id: str, title: str, text: str, lang: str, metadata: dict[str, Any] | None = None) -> None:
        doc: dict[str, Any] = {"id": doc_id, "title": title, "text": text, "lang": lang}
        if metadata:
            doc["metadata"] = metadata
        data = json.dumps(doc, ensure_ascii=False).encode("utf-8") + b"\n"
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        if metadata and self._meta_fh is None:
            self._meta_fh = (self._dir / META_FILE).open("wb")
            self._meta_fh.write(b"{}\n" * (len(self) - 1))  # the rows before it had none
        if self._meta_fh is not None:
            self._meta_fh.write(json.dumps(metadata or {}, ensure_ascii=False, separators=(",", ":")).encode() + b"\n")

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        self._fh.close()
        if self._meta_fh is not None:
            self._meta_fh.close()
        np.save(self._dir / OFFSETS_FILE, np.asarray(self._offsets, dtype=np.uint64))


class DocStore:
    def __init__(self, directory: Path) -> None:
        self._offsets = np.load(directory / OFFSETS_FILE, mmap_mode="r")
        path = directory / DOCS_FILE
        size = path.stat().st_size
        if size != int(self._offsets[-1]):
            raise ValueError(f"{path} has {size} bytes, its offsets say {int(self._offsets[-1])}")
        self._fh = path.open("rb")
        self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        self._dir = directory

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, row: int) -> dict[str, Any]:
        if not 0 <= row < len(self) or self._mm is None:
            raise IndexError(row)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        doc: dict[str, Any] = json.loads(self._mm[start:end])
        return doc

    def metadata(self) -> list[dict[str, Any]]:
        """Every row's metadata in row order (``{}`` for none; all ``{}`` for a shard without the file)."""
        path = self._dir / META_FILE
        if not path.is_file():
            return [{} for _ in range(len(self))]
        data = path.read_bytes()
        rows: list[dict[str, Any]] = json.loads(b"[" + data.rstrip(b"\n").replace(b"\n", b",") + b"]") if data else []
        if len(rows) != len(self):
            raise ValueError(f"{path} has {len(rows)} rows, the docstore {len(self)}")
        return rows

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        self._fh.close()
