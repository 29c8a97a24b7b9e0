"""Per-shard document store: ``docs.jsonl`` plus a uint64 offsets array, read through mmap.

Row ``i`` of a shard is line ``i`` of its ``docs.jsonl``; ``docs.offsets.npy`` holds ``n + 1`` byte
offsets, so fetching a document is one slice of the mapped file, whatever the corpus size.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

DOCS_FILE = "docs.jsonl"
OFFSETS_FILE = "docs.offsets.npy"


class DocStoreWriter:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._fh: BinaryIO = (directory / DOCS_FILE).open("wb")
        self._offsets: list[int] = [0]

    def add(self, doc_id: str, title: str, text: str, lang: str) -> None:
        line = json.dumps({"id": doc_id, "title": title, "text": text, "lang": lang}, ensure_ascii=False)
        data = line.encode("utf-8") + b"\n"
        self._fh.write(data)
        self._offsets.append(self._offsets[-1] + len(data))

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> None:
        self._fh.close()
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

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get(self, row: int) -> dict[str, Any]:
        if not 0 <= row < len(self) or self._mm is None:
            raise IndexError(row)
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        doc: dict[str, Any] = json.loads(self._mm[start:end])
        return doc

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
        self._fh.close()
