"""Write-ahead log of document updates: checksummed records, fsync'd before a write is acknowledged.

Format, version 2 (magic ``XLIRWAL2``): an 8-byte magic, then records, each a 12-byte header followed by its
payload::

    <u32 length><u32 crc32(payload)><u32 crc32(header bytes 0..7)> <payload: length bytes>

A payload is ``<u64 lsn><u8 op><u32 json length><json>[<float32 vector, little endian>]``; ``op`` is ``U``
(upsert: the JSON holds the document ``id, title, text, lang``, followed by its raw embedding, so a replay never
re-embeds) or ``D`` (delete: the JSON holds ``id``). LSNs increase by one per record. All integers little endian.

Recovery rules (version 2), for the record starting at byte ``p``:

- **torn** (the writer died mid-write; its fsync never returned, so nothing in it was acknowledged): the file
  ends inside the 12-byte header; or the header's checksum holds and the file ends before ``p + 12 + length``;
  or every byte from ``p`` to the end of the file is zero (the file grew but its data never reached the disk).
- **corrupt** (acknowledged data was damaged): a complete header whose checksum fails; a length no writer writes
  (under 13 bytes or over 1 GiB) under a valid header checksum; a complete record whose payload checksum fails,
  *even the last record of the file*; a record that passes both checksums but cannot be decoded.
- and a tail is torn only if no intact record (header and payload checksums holding, decodable) starts after
  ``p``; if one does, the damage is corruption.

CRC32 detects every single-bit error, so one flipped bit anywhere in a log (magic, a header, a payload) is
always found, never mistaken for a torn tail. A torn tail is dropped (and truncated when a writer opens the file);
corruption raises :class:`WalCorrupt` naming the file, the byte offset and how many intact records follow it
(found by scanning forward, byte by byte, for positions where a header and its payload checksum hold). Neither
a reader nor a writer ever modifies a corrupt log: :func:`salvage` (``xlir wal salvage``) copies every intact
record, including those after the damage, into a *new* log; :func:`check` (``xlir wal check``) reports.

Version 1 (magic ``XLIRWAL1``, written by xlir before version 2): records ``<u32 length><u32 crc32(payload)>
<payload>``, read with its own rules (cut short, or a bad checksum on the last record: torn; a bad checksum with
more data after it: corruption), plus the forward-scan check above (a length field damaged into running past
the end of the file would otherwise look torn). A writer that opens a version-1 log first rewrites it in
version 2 (the same records, via a temporary file, rename and directory fsync). The rewrite gives the file a new
inode and new offsets: a reader that remembers an offset into a log must start again from the beginning when
the inode changed (:attr:`ReadResult.ino`; ``LiveStore`` does).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from xlir.errors import IndexInvalid

MAGIC = b"XLIRWAL2"
MAGIC_V1 = b"XLIRWAL1"
VERSION = 2
VERSIONS = {MAGIC: 2, MAGIC_V1: 1}
_LEN_CRC = struct.Struct("<II")  # version 1: the whole header; version 2: the part the header checksum covers
_U32 = struct.Struct("<I")
_HEAD = struct.Struct("<QBI")
HEADER_SIZE = {1: _LEN_CRC.size, 2: _LEN_CRC.size + _U32.size}
UPSERT = "U"
DELETE = "D"
LOCK_FILE = "LOCK"
MAX_RECORD = 1 << 30
_SCAN_CHUNK = 1 << 20


class WalCorrupt(IndexInvalid):
    """Damage in a write-ahead log that is not a torn tail: acknowledged writes would be lost by cutting it."""

    code = "wal_corrupt"

    def __init__(self, detail: str, *, offset: int | None = None, following: int = 0) -> None:
        super().__init__(detail)
        self.offset = offset
        self.following = following


@dataclass(frozen=True)
class Record:
    lsn: int
    op: str
    doc_id: str
    doc: dict[str, Any] | None = None  # upsert: id, title, text, lang (+ metadata when it has any)
    vector: np.ndarray | None = None  # upsert: the raw (uncentred) passage embedding, float32

    @staticmethod
    def upsert(lsn: int, doc: dict[str, Any], vector: np.ndarray) -> Record:
        return Record(lsn, UPSERT, doc["id"], dict(doc), np.asarray(vector, dtype=np.float32))

    @staticmethod
    def delete(lsn: int, doc_id: str) -> Record:
        return Record(lsn, DELETE, doc_id)


def _payload(rec: Record) -> bytes:
    if rec.op == UPSERT:
        assert rec.doc is not None and rec.vector is not None
        body = json.dumps(rec.doc, ensure_ascii=False).encode()
        vec = np.ascontiguousarray(rec.vector, dtype="<f4").tobytes()
    elif rec.op == DELETE:
        body, vec = json.dumps({"id": rec.doc_id}, ensure_ascii=False).encode(), b""
    else:
        raise ValueError(f"unknown WAL op {rec.op!r}")
    return _HEAD.pack(rec.lsn, ord(rec.op), len(body)) + body + vec


def encode(rec: Record, version: int = VERSION) -> bytes:
    """``rec`` as a record of format ``version``: its header, then its payload."""
    payload = _payload(rec)
    head = _LEN_CRC.pack(len(payload), zlib.crc32(payload))
    return head + (_U32.pack(zlib.crc32(head)) if version == 2 else b"") + payload


def decode(payload: bytes) -> Record:
    """A payload back into a record; ``ValueError`` if it is not one a writer could have written."""
    if len(payload) < _HEAD.size:
        raise ValueError(f"a payload of {len(payload)} bytes is shorter than its fixed part")
    lsn, op, n = _HEAD.unpack_from(payload)
    if _HEAD.size + n > len(payload):
        raise ValueError(f"its JSON length {n} runs past the payload")
    body = json.loads(payload[_HEAD.size : _HEAD.size + n])
    if not isinstance(body, dict) or not isinstance(body.get("id"), str):
        raise ValueError("its JSON is not an object with a string id")
    rest = payload[_HEAD.size + n :]
    if chr(op) == UPSERT:
        if len(rest) % 4 or not all(isinstance(body.get(k), str) for k in ("text", "lang")):
            raise ValueError("an upsert without a text, a language or a whole float32 vector")
        return Record(lsn, UPSERT, body["id"], body, np.frombuffer(rest, dtype="<f4").astype(np.float32))
    if chr(op) == DELETE and not rest:
        return Record(lsn, DELETE, body["id"])
    raise ValueError(f"unknown op byte {op}")


_DECODE_ERRORS = (ValueError, KeyError, TypeError, UnicodeDecodeError, struct.error)


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class ReadResult:
    records: list[Record]
    end: int  # offset just after the last good record
    torn: bool  # a torn tail was found (and ignored) after ``end``
    version: int = VERSION
    ino: int = 0  # inode of the file read (a rewrite in the current format replaces it)


@dataclass(frozen=True)
class _Step:
    kind: str  # "ok", "torn" or "bad"
    end: int
    record: Record | None = None
    why: str = ""


def _step(data: bytes, pos: int, version: int) -> _Step:
    """Judge the record starting at ``data[pos]`` by the rules of ``version`` (module docstring)."""
    hs = HEADER_SIZE[version]
    if len(data) - pos < hs:
        return _Step("torn", pos, why="the file ends inside the record's header")
    length, crc = _LEN_CRC.unpack_from(data, pos)
    if version == 2:
        if zlib.crc32(data[pos : pos + _LEN_CRC.size]) != _U32.unpack_from(data, pos + _LEN_CRC.size)[0]:
            return _Step("bad", pos, why="the record's header fails its checksum")
        if not _HEAD.size <= length <= MAX_RECORD:
            return _Step("bad", pos, why=f"the record's header gives a length ({length}) no writer writes")
    elif length > MAX_RECORD:
        return _Step("torn", pos, why=f"the record's length field ({length}) runs past the end of the file")
    end = pos + hs + length
    if end > len(data):
        return _Step("torn", pos, why=f"the record's length field ({length}) runs past the end of the file")
    payload = data[pos + hs : end]
    if zlib.crc32(payload) != crc:
        if version == 1 and end == len(data):
            return _Step("torn", pos, why="the last record fails its checksum")
        return _Step("bad", pos, why="the record's payload fails its checksum")
    try:
        rec = decode(payload)
    except _DECODE_ERRORS as exc:
        return _Step("bad", pos, why=f"the record passes its checksums but cannot be decoded ({exc})")
    return _Step("ok", end, rec)


def _candidates(data: bytes, start: int, version: int) -> Iterator[int]:
    """Offsets from ``start`` on whose length field is plausible (the record would fit in ``data``), in order."""
    hs = HEADER_SIZE[version]
    n = len(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    for lo in range(start, n - hs + 1, _SCAN_CHUNK):
        hi = min(lo + _SCAN_CHUNK, n - hs + 1)
        seg = arr[lo : hi + 3].astype(np.int64)
        length = seg[:-3] | (seg[1:-2] << 8) | (seg[2:-1] << 16) | (seg[3:] << 24)
        pos = np.arange(lo, hi, dtype=np.int64)
        ok = (length >= _HEAD.size) & (length <= MAX_RECORD) & (pos + hs + length <= n)
        yield from (int(p) for p in pos[ok])


def intact_after(data: bytes, start: int, version: int, limit: int | None = None) -> list[tuple[int, Record]]:
    """Intact records (checksums hold, decodable) found by scanning ``data`` byte by byte from ``start``, each
    as (offset, record); after a hit the scan resumes at the end of that record. At most ``limit`` of them."""
    found: list[tuple[int, Record]] = []
    resume = start
    for pos in _candidates(data, start, version):
        if pos < resume:
            continue
        step = _step(data, pos, version)
        if step.kind == "ok":
            assert step.record is not None
            found.append((pos, step.record))
            if limit is not None and len(found) >= limit:
                break
            resume = step.end
    return found


def _zero_tail(data: bytes, pos: int) -> bool:
    return pos < len(data) and not data[pos:].strip(b"\0")


def _corrupt(path: Path, offset: int, why: str, following: list[tuple[int, Record]]) -> WalCorrupt:
    if following:
        lsns = [r.lsn for _, r in following]
        after = (f"{len(following)} intact record{'s' if len(following) > 1 else ''} (LSN {min(lsns)}..{max(lsns)}) "
                 f"follow it, which cutting the log there would lose")
    else:
        after = "no intact record follows it"
    return WalCorrupt(f"{path}: the write-ahead log is damaged at byte {offset} ({why}); {after}. "
                      f"The log was left untouched: `xlir wal check {path}` reports the damage, "
                      f"`xlir wal salvage {path} --out NEW` copies every intact record into a new log",
                      offset=offset, following=len(following))


def _parse(path: Path, data: bytes, base: int, version: int) -> ReadResult:
    """Records of ``data`` (the file from byte ``base``), by the recovery rules of the module docstring."""
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        step = _step(data, pos, version)
        if step.kind == "ok":
            assert step.record is not None
            records.append(step.record)
            pos = step.end
            continue
        if _zero_tail(data, pos):
            return ReadResult(records, base + pos, torn=True, version=version)
        following = intact_after(data, pos + 1, version)
        if step.kind == "torn" and not following:
            return ReadResult(records, base + pos, torn=True, version=version)
        why = step.why + (", yet intact records follow it" if step.kind == "torn" else "")
        raise _corrupt(path, base + pos, why, following)
    return ReadResult(records, base + pos, torn=False, version=version)


def _guess_version(data: bytes) -> int:
    """The format of a log whose magic is damaged: the one under which more intact records are found."""
    counts = {v: len(intact_after(data, len(MAGIC), v)) for v in (2, 1)}
    return max(counts, key=lambda v: counts[v])


def read(path: Path, start: int = 0) -> ReadResult:
    """All complete, valid records from byte ``start`` (0 = from the beginning; else a record boundary of this
    very file, see :attr:`ReadResult.ino`). Raises :class:`WalCorrupt` on damage that is not a torn tail."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        head = fh.read(len(MAGIC))
        version = VERSIONS.get(head)
        if version is None:
            if len(head) < len(MAGIC) and any(m.startswith(head) for m in VERSIONS):
                return ReadResult([], len(head), torn=bool(head), ino=st.st_ino)  # creation cut
            data = head + fh.read()
            following = intact_after(data, len(MAGIC), _guess_version(data))
            raise _corrupt(path, 0, f"not a known log format: magic {head!r}", following)
        base = max(start, len(MAGIC))
        fh.seek(base)
        data = fh.read()
    res = _parse(path, data, base, version)
    res.ino = st.st_ino
    return res


@dataclass
class CheckReport:
    path: Path
    status: str  # "intact", "torn" (only a torn tail, safe to drop) or "corrupt"
    version: int | None
    records: int  # records a reader would replay (0 when corrupt)
    size: int
    torn_bytes: int = 0
    detail: str = ""


def check(path: Path) -> CheckReport:
    """What a reader of ``path`` would find, without changing it."""
    path = Path(path)
    size = path.stat().st_size
    try:
        res = read(path)
    except WalCorrupt as exc:
        return CheckReport(path, "corrupt", VERSIONS.get(path.read_bytes()[: len(MAGIC)]), 0, size, detail=exc.detail)
    return CheckReport(path, "torn" if res.torn else "intact", res.version, len(res.records), size,
                       torn_bytes=size - res.end if res.torn else 0)


@dataclass
class SalvageReport:
    source: Path
    out: Path
    version: int
    kept: int
    skipped: list[tuple[int, int, str]] = field(default_factory=list)  # [start, end) byte ranges and why
    lsn_gaps: list[tuple[int, int]] = field(default_factory=list)  # LSNs missing between kept records (first, last)


def salvage(source: Path, out: Path) -> SalvageReport:
    """Copy every intact record of ``source`` (those after damage too) into a new log ``out`` in the current
    format. ``source`` is only read; ``out`` must not exist."""
    source, out = Path(source), Path(out)
    if out.exists() or out.is_symlink():
        raise FileExistsError(f"{out} already exists: salvage writes a new log and never replaces a file")
    data = source.read_bytes()
    skipped: list[tuple[int, int, str]] = []
    version = VERSIONS.get(data[: len(MAGIC)])
    if version is None:
        version = _guess_version(data)
        skipped.append((0, min(len(MAGIC), len(data)), "damaged magic"))
    records: list[Record] = []
    pos = len(MAGIC)
    while pos < len(data):
        step = _step(data, pos, version)
        if step.kind == "ok":
            assert step.record is not None
            records.append(step.record)
            pos = step.end
            continue
        nxt = intact_after(data, pos + 1, version, limit=1)
        if not nxt:
            why = "torn tail" if step.kind == "torn" or _zero_tail(data, pos) else f"damaged record ({step.why})"
            skipped.append((pos, len(data), why))
            break
        skipped.append((pos, nxt[0][0], f"damaged record ({step.why})"))
        pos = nxt[0][0]
    gaps = [(a.lsn + 1, b.lsn - 1) for a, b in zip(records, records[1:], strict=False) if b.lsn > a.lsn + 1]
    out.parent.mkdir(parents=True, exist_ok=True)
    create(out, records)
    return SalvageReport(source, out, version, len(records), skipped, gaps)


# ---------------------------------------------------------------------------------------------------- writing


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalWriter:
    """Appends records to one log file. Not thread-safe: callers serialise (and hold :func:`root_lock`).

    Opening a log whose creation was interrupted creates it again; a version-1 log is first rewritten in the
    current format (same records); a torn tail is truncated; a corrupt log raises :class:`WalCorrupt` and is
    left exactly as it was."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        res = read(self.path) if self.path.exists() else None
        if res is None or res.end < len(MAGIC) or res.version != VERSION:  # none, creation cut short, version 1
            create(self.path, res.records if res is not None else [])  # atomic: readers see the old or the new
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


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``: temporary file ``<path>.tmp``, fsync, rename, directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
    fsync_dir(path.parent)


def create(path: Path, records: list[Record] | None = None) -> None:
    """Write a new log (magic + ``records``, current format) durably (:func:`write_durably`)."""
    write_durably(Path(path), MAGIC + b"".join(encode(r) for r in records or []))


@contextmanager
def root_lock(root: Path, *, blocking: bool = True, name: str = LOCK_FILE) -> Iterator[bool]:
    """Exclusive advisory lock on ``root/name`` across processes; yields False if not ``blocking`` and busy."""
    with open(Path(root) / name, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def records_after(path: Path, lsn: int) -> list[Record]:
    """The records of ``path`` with an LSN above ``lsn`` (what a compaction carries into the next generation's
    log; by LSN rather than offset, as a writer may have rewritten a version-1 log meanwhile)."""
    return [r for r in read(path).records if r.lsn > lsn]
