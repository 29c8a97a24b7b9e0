"""Write-ahead log: framing, torn tails, corruption, idempotent replay."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer import wal
from indexer.build import BuildOptions, build_index
from indexer.live import LiveStore, wal_path
from tests.conftest import FakeEncoder, write_jsonl


def _records(n: int, start: int = 1) -> list[wal.Record]:
    out = []
    for i in range(n):
        lsn = start + i
        if i % 3 == 2:
            out.append(wal.Record.delete(lsn, f"doc-{i - 1}"))
        else:
            doc = {"id": f"doc-{i}", "title": "τίτλος", "text": f"text {i} 苹果", "lang": "el"}
            out.append(wal.Record.upsert(lsn, doc, np.full(4, i, dtype=np.float32)))
    return out


def _same(a: wal.Record, b: wal.Record) -> bool:
    vec_eq = (a.vector is None and b.vector is None) or (
        a.vector is not None and b.vector is not None and np.array_equal(a.vector, b.vector))
    return (a.lsn, a.op, a.doc_id, a.doc) == (b.lsn, b.op, b.doc_id, b.doc) and vec_eq


def test_records_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    recs = _records(7)
    w.append(recs[:3])
    w.append(recs[3:])
    w.sync()
    got = wal.read(path)
    assert not got.torn and got.end == path.stat().st_size
    assert len(got.records) == 7 and all(_same(a, b) for a, b in zip(got.records, recs, strict=True))
    assert w.last_lsn == 7
    w.close()


@pytest.mark.parametrize("cut", [1, 5, 8, 20, -1])
def test_a_torn_tail_is_dropped_and_truncated_before_the_next_append(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_records(3))
    good = w.end
    w.append(_records(1, start=4))
    w.close()
    full = path.read_bytes()
    path.write_bytes(full[: good + cut] if cut > 0 else full[:-1])  # the last record is cut short
    got = wal.read(path)
    assert got.torn and got.end == good and [r.lsn for r in got.records] == [1, 2, 3]
    w = wal.WalWriter(path)  # opening for writing truncates the tail, new records follow the last good one
    assert path.stat().st_size == good and w.last_lsn == 3
    w.append(_records(1, start=4))
    w.close()
    assert [r.lsn for r in wal.read(path).records] == [1, 2, 3, 4] and not wal.read(path).torn


def test_a_bad_checksum_on_the_last_record_is_corruption_not_a_torn_tail(tmp_path: Path) -> None:
    """The file is complete, so the last record was written whole (and may have been acknowledged)."""
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_records(3))
    w.close()
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt, match=r"payload fails its checksum\); no intact record follows it"):
        wal.read(path)
    with pytest.raises(wal.WalCorrupt):
        wal.WalWriter(path)
    assert path.read_bytes() == bytes(data)


def test_a_bad_checksum_in_the_middle_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_records(1))
    middle = w.end - 3
    w.append(_records(2, start=2))
    w.close()
    data = bytearray(path.read_bytes())
    data[middle] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt, match=r"damaged at byte 8 \(.*payload fails its checksum\); 2 intact records "
                                             r"\(LSN 2\.\.3\) follow it") as exc:
        wal.read(path)
    assert exc.value.offset == 8 and exc.value.following == 2
    with pytest.raises(wal.WalCorrupt):
        wal.WalWriter(path)
    assert path.read_bytes() == bytes(data)
    path.write_bytes(b"NOTAWAL!" + bytes(data[8:]))
    with pytest.raises(wal.WalCorrupt, match="not a known log format"):
        wal.read(path)


def test_an_interrupted_creation_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    path.write_bytes(wal.MAGIC[:3])
    assert wal.read(path).records == []
    w = wal.WalWriter(path)
    w.append(_records(1))
    w.close()
    assert [r.lsn for r in wal.read(path).records] == [1]


def test_replay_is_idempotent(tmp_path: Path) -> None:
    """Opening the same root twice, or replaying the log again over the same generation, gives the same state."""
    enc = FakeEncoder()
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"apple {i}", "lang": "en"} for i in range(4)])
    build_index([corpus], tmp_path / "idx", enc, BuildOptions(progress=False))
    store = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
    docs = [{"id": "d1", "title": "", "text": "pear", "lang": "en"},
            {"id": "n", "title": "", "text": "plum", "lang": "en"}]
    store.upsert(docs, enc.encode_passages(["pear", "plum"]))
    store.delete("d2")
    store.upsert(docs[1:], enc.encode_passages(["plum"]))
    state = [(store.snapshot.doc(r)["id"], bool(r < 4 and store.snapshot.view.main_tomb[r])) for r in range(6)]
    store.close()
    for _ in range(2):
        again = LiveStore(tmp_path / "idx", encoder_checksum=enc.checksum)
        snap = again.snapshot
        assert snap.size == 4 and snap.view.lsn == 4
        assert [(snap.doc(r)["id"], bool(r < 4 and snap.view.main_tomb[r])) for r in range(6)] == state
        assert not again.refresh()  # nothing new: replaying again changes nothing
        again.close()
    assert len(wal.read(wal_path(tmp_path / "idx", ".")).records) == 4


def test_root_lock_is_exclusive(tmp_path: Path) -> None:
    with wal.root_lock(tmp_path) as got:
        assert got
        with wal.root_lock(tmp_path, blocking=False) as again:
            assert not again
    with wal.root_lock(tmp_path, blocking=False) as free:
        assert free
