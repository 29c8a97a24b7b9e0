"""Write-ahead log of document updates: length + CRC32 framed records, fsync'd before a write is acknowledged.

File layout: an 8-byte magic, then records ``<u32 payload length><u32 crc32(payload)><payload>``. A payload is
``<u64 lsn><u8 op><u32 json length><json>[<float32 vector, little endian>]``; ``op`` is ``U`` (upsert: the JSON
holds the document ``id, title, text, lang``, followed by its raw embedding, so a replay never re-embeds) or
``D`` (delete: the JSON holds ``id``). LSNs increase by one per record.

Reading: a record cut short by the end of the file, or a bad checksum on the *last* record, is a torn tail
(the writer died mid-write, so the write was never acknowledged): it is dropped, and truncated when the file is
opened for writing. A bad checksum followed by more data is corruption of acknowledged data: reading raises
:class:`WalCorrupt` naming the file and offset rather than silently losing writes.

Every process that appends does so while holding the index root's lock file (:func:`root_lock`), so records of
several writers (the server, ``xlir index --append``, a compaction carrying the tail over) never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xlir.errors import IndexInvalid

MAGIC = b"XLIRWAL1"
_FRAME = struct.Struct("<II")
_HEAD = struct.Struct("<QBI")
UPSERT = "U"
DELETE = "D"
LOCK_FILE = "LOCK"
MAX_RECORD = 1 << 30


class WalCorrupt(IndexInvalid):
    """A record in the middle of a write-ahead log fails its checksum (not a torn tail)."""

    code = "wal_corrupt"


@dataclass(frozen=True)
class Record:
    lsn: int
    op: str
    doc_id: str
    doc: dict[str, str] | None = None  # upsert: id, title, text, lang
    vector: np.ndarray | None = None  # upsert: the raw (uncentred) passage embedding, float32

    @staticmethod
    def upsert(lsn: int, doc: dict[str, str], vector: np.ndarray) -> Record:
        return Record(lsn, UPSERT, doc["id"], dict(doc), np.asarray(vector, dtype=np.float32))

    @staticmethod
    def delete(lsn: int, doc_id: str) -> Record:
        return Record(lsn, DELETE, doc_id)


def encode(rec: Record) -> bytes:
    if rec.op == UPSERT:
        assert rec.doc is not None and rec.vector is not None
        body = json.dumps(rec.doc, ensure_ascii=False).encode()
        vec = np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
    elif rec.op == DELETE:
        body, vec = json.dumps({"id": rec.doc_id}, ensure_ascii=False).encode(), b""
    else:
        raise ValueError(f"unknown WAL op {rec.op!r}")
    payload = _HEAD.pack(rec.lsn, ord(rec.op), len(body)) + body + vec
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode(payload: bytes) -> Record:
    lsn, op, n = _HEAD.unpack_from(payload)
    body = json.loads(payload[_HEAD.size : _HEAD.size + n])
    if chr(op) == UPSERT:
        vec = np.frombuffer(payload[_HEAD.size + n :], dtype="<f4").astype(np.float32)
        return Record(lsn, UPSERT, body["id"], body, vec)
    return Record(lsn, DELETE, body["id"])


@dataclass
class ReadResult:
    records: list[Record]
    end: int  # offset just after the last good record
    torn: bool  # a torn tail was found (and ignored) after ``end``


def read(path: Path, start: int = 0) -> ReadResult:
    """All complete, valid records from byte ``start`` (0 = from the beginning)."""
    with open(path, "rb") as fh:
        head = fh.read(len(MAGIC))
        if head != MAGIC:
            if len(head) < len(MAGIC) and MAGIC.startswith(head):
                return ReadResult([], len(head), torn=bool(head))  # creation was interrupted
            raise WalCorrupt(f"{path} is not an xlir write-ahead log (bad magic)")
        base = max(start, len(MAGIC))
        fh.seek(base)
        data = fh.read()
    records: list[Record] = []
    res = _parse(path, data, base, records)
    return res


def _parse(path: Path, data: bytes, base: int, records: list[Record]) -> ReadResult:
    pos = 0
    while pos < len(data):
        if pos + _FRAME.size > len(data):
            return ReadResult(records, base + pos, torn=True)
        length, crc = _FRAME.unpack_from(data, pos)
        end = pos + _FRAME.size + length
        if length > MAX_RECORD or end > len(data):
            return ReadResult(records, base + pos, torn=True)
        payload = data[pos + _FRAME.size : end]
        if zlib.crc32(payload) != crc:
            if end == len(data):
                return ReadResult(records, base + pos, torn=True)
            raise WalCorrupt(f"{path}: record at byte {base + pos} fails its checksum and is followed by "
                             f"{len(data) - end} more bytes: the log is damaged (acknowledged writes may be lost)")
        try:
            records.append(decode(payload))
        except (ValueError, KeyError, UnicodeDecodeError, struct.error) as exc:
            raise WalCorrupt(f"{path}: record at byte {base + pos} has a valid checksum but cannot be decoded: {exc}") \
                from exc
        pos = end
    return ReadResult(records, base + pos, torn=False)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalWriter:
    """Appends records to one log file. Not thread-safe: callers serialise (and hold :func:`root_lock`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.exists() or self.path.stat().st_size < len(MAGIC):
            create(self.path)
        res = read(self.path)
        self.last_lsn = res.records[-1].lsn if res.records else 0
        self._fh: BinaryIO = open(self.path, "r+b")  # noqa: SIM115 - kept open for appends
        if res.torn:  # drop the torn tail so new records follow the last good one
            self._fh.truncate(res.end)
            os.fsync(self._fh.fileno())
        self._fh.seek(res.end)
        self.end = res.end

    def append(self, records: list[Record]) -> int:
        """Write ``records`` (flushed, not yet fsync'd); returns the end offset."""
        if not records:
            return self.end
        data = b"".join(encode(r) for r in records)
        self._fh.seek(self.end)
        self._fh.write(data)
        self._fh.flush()
        self.end += len(data)
        if os.fstat(self._fh.fileno()).st_size > self.end:  # a torn tail left by a killed writer was longer
            self._fh.truncate(self.end)
        self.last_lsn = records[-1].lsn
        return self.end

    def truncate(self, end: int) -> None:
        self._fh.truncate(end)
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.end = end

    def sync(self) -> None:
        os.fsync(self._fh.fileno())


    def close(self) -> None:
        self._fh.close()


def create(path: Path, records: list[Record] | None = None, raw_tail: bytes = b"") -> None:
    """Write a new log (magic + ``records`` + ``raw_tail``, already framed bytes) durably via a temp file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(MAGIC + b"".join(encode(r) for r in records or []) + raw_tail)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


@contextmanager
def root_lock(root: Path, *, blocking: bool = True, name: str = LOCK_FILE) -> Iterator[bool]:
    """Exclusive advisory lock on ``root/name`` across processes; yields False if not ``blocking`` and busy."""
    fh = open(Path(root) / name, "a+b")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()


def tail_bytes(path: Path, start: int) -> bytes:
    """The framed records of ``path`` from byte ``start`` to its last good record."""
    res = read(path, start)
    with open(path, "rb") as fh:
        fh.seek(start)
        return fh.read(res.end - start)


def doc_payload(doc: dict[str, Any]) -> dict[str, str]:
    return {"id": str(doc["id"]), "title": str(doc.get("title") or ""), "text": str(doc.get("text") or ""),
            "lang": str(doc["lang"])}
