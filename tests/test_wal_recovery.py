"""Write-ahead log recovery as the server does it (``LiveStore`` on a tiny index): a flipped bit anywhere is
refused with the log left byte-identical, never replayed short; torn tails are dropped; version-1 logs still load
and are rewritten in version 2 by the first writer; reload, catch-up and compaction never cut a damaged log."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from indexer import wal
from indexer.build import BuildOptions, build_index
from indexer.compact import compact
from indexer.live import LiveStore, current_name, wal_path
from tests.conftest import FakeEncoder, write_jsonl
from xlir.errors import IndexInvalid

ENC = FakeEncoder(dim=8)
BASE = [{"id": f"d{i}", "text": f"apple tree {i}", "lang": "en"} for i in range(3)]


def _doc(i: int) -> dict[str, str]:
    return {"id": f"n{i}", "title": "", "text": f"pear {i}", "lang": "en"}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    corpus = write_jsonl(tmp_path / "c.jsonl", BASE)
    build_index([corpus], tmp_path / "idx", ENC, BuildOptions(progress=False))
    return tmp_path / "idx"


def _store(root: Path) -> LiveStore:
    return LiveStore(root, encoder_checksum=ENC.checksum)


def _write(root: Path, ids: range) -> None:
    """One acknowledged write per document, as separate POST /documents would do."""
    store = _store(root)
    try:
        for i in ids:
            store.upsert([_doc(i)], ENC.encode_passages([_doc(i)["text"]]))
    finally:
        store.close()


def _delta(store: LiveStore) -> dict[str, str]:
    """Live delta documents: id -> text."""
    v = store.snapshot.view
    return {d["id"]: d["text"] for j, d in enumerate(v.docs[: v.n]) if not v.dead[j]}


def _offsets(path: Path) -> list[int]:
    """Start of every record of a version-2 log."""
    data = path.read_bytes()
    out, pos = [], len(wal.MAGIC)
    while pos < len(data):
        out.append(pos)
        pos += wal.HEADER_SIZE[2] + struct.unpack_from("<I", data, pos)[0]
    return out


def _flip(path: Path, offset: int, mask: int) -> bytes:
    """XOR one byte of ``path`` in place (cheaper than rewriting the file, which is thousands of times here)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, bytes([os.pread(fd, 1, offset)[0] ^ mask]), offset)
    finally:
        os.close(fd)
    return path.read_bytes()


def _v1(path: Path, records: list[wal.Record]) -> bytes:
    data = wal.MAGIC_V1 + b"".join(wal.encode(r, version=1) for r in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _recs(ids: range) -> list[wal.Record]:
    return [wal.Record.upsert(i + 1, _doc(i), ENC.encode_passages([_doc(i)["text"]])[0]) for i in ids]


def test_every_flipped_bit_is_refused_and_the_log_left_identical(root: Path) -> None:
    """For every byte of a 5-record log, flip one bit and restart as the server does: either every acknowledged
    record comes back, or the start is refused and the file is byte-identical. Never a start with fewer."""
    _write(root, range(5))
    path = wal_path(root, ".")
    orig = path.read_bytes()
    expected = {d["id"]: d["text"] for d in map(_doc, range(5))}
    refused = 0
    for i in range(len(orig)):
        damaged = _flip(path, i, 1 << (i % 8))
        try:
            store = _store(root)
        except wal.WalCorrupt as exc:
            assert str(path) in exc.detail and f"damaged at byte {exc.offset}" in exc.detail
            assert path.read_bytes() == damaged
            with pytest.raises(wal.WalCorrupt):  # the write path refuses too, without touching the file
                wal.WalWriter(path)
            assert path.read_bytes() == damaged
            refused += 1
            _flip(path, i, 1 << (i % 8))
            continue
        assert _delta(store) == expected and store.snapshot.view.lsn == 5, f"bit flipped at byte {i}"
        store.close()
        path.write_bytes(orig)
    assert path.read_bytes() == orig
    assert refused == len(orig)  # CRC32 catches every single-bit error: each flip is found, none replayed short


def test_every_bit_of_every_byte_through_the_log_reader(tmp_path: Path) -> None:
    """All 8 bits of every byte, at the level of the log (read and open for writing)."""
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_recs(range(5)))
    w.sync()
    w.close()
    orig = path.read_bytes()
    for i in range(len(orig)):
        for bit in range(8):
            damaged = _flip(path, i, 1 << bit)
            with pytest.raises(wal.WalCorrupt):
                wal.read(path)
            with pytest.raises(wal.WalCorrupt):
                wal.WalWriter(path)
            assert path.read_bytes() == damaged
            assert _flip(path, i, 1 << bit) == orig


def test_the_count_of_intact_records_after_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_recs(range(7)))
    w.close()
    offs = _offsets(path)
    data = bytearray(path.read_bytes())
    data[offs[2] + 1] ^= 0x08  # the length field of the third record: it now runs past the end of the file
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt, match=rf"damaged at byte {offs[2]} \(the record's header fails its "
                                             r"checksum\); 4 intact records \(LSN 4\.\.7\) follow it") as exc:
        wal.read(path)
    assert exc.value.following == 4


def test_a_torn_tail_at_every_offset_of_the_last_record_recovers_all_previous(root: Path) -> None:
    _write(root, range(5))
    path = wal_path(root, ".")
    full = path.read_bytes()
    last = _offsets(path)[-1]
    four = {d["id"]: d["text"] for d in map(_doc, range(4))}
    for cut in range(last, len(full)):
        path.write_bytes(full[:cut])
        store = _store(root)
        assert _delta(store) == four, cut
        if cut in (last + 1, last + 11, last + 12, len(full) - 1):  # inside the header, at its end, in the payload
            store.upsert([_doc(9)], ENC.encode_passages([_doc(9)["text"]]))  # the tail is cut, the write follows
            store.close()
            again = _store(root)
            assert _delta(again) == {**four, "n9": "pear 9"} and not wal.read(path).torn
            again.close()
        store.close()


def test_zero_bytes_at_the_end_are_a_torn_tail_but_not_in_the_middle(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_recs(range(2)))
    w.close()
    good = path.read_bytes()
    path.write_bytes(good + bytes(40))  # the file grew, its data never reached the disk
    res = wal.read(path)
    assert res.torn and len(res.records) == 2 and res.end == len(good)
    path.write_bytes(good + bytes(40) + wal.encode(_recs(range(3))[2]))
    with pytest.raises(wal.WalCorrupt, match="1 intact record "):
        wal.read(path)


# ---------------------------------------------------------------------------------------------------- version 1


def test_a_version_1_log_loads_and_the_first_writer_rewrites_it_in_version_2(root: Path) -> None:
    path = wal_path(root, ".")
    v1 = _v1(path, _recs(range(3)))
    store = _store(root)
    assert _delta(store) == {d["id"]: d["text"] for d in map(_doc, range(3))}
    assert path.read_bytes() == v1  # reading changes nothing
    store.upsert([_doc(3)], ENC.encode_passages([_doc(3)["text"]]))
    store.close()
    assert path.read_bytes()[:8] == wal.MAGIC
    res = wal.read(path)
    assert res.version == 2 and [r.lsn for r in res.records] == [1, 2, 3, 4]
    assert [r.doc for r in res.records[:3]] == [r.doc for r in _recs(range(3))]
    assert all(np.array_equal(a.vector, b.vector) for a, b in zip(res.records, _recs(range(3)), strict=False))
    assert not path.with_name(path.name + ".tmp").exists()


def test_version_1_rules_and_a_damaged_length_with_records_after_it(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    v1 = _v1(path, _recs(range(4)))
    path.write_bytes(v1[:-5])  # torn
    assert [r.lsn for r in wal.read(path).records] == [1, 2, 3] and wal.read(path).torn
    bad_last = bytearray(v1)
    bad_last[-3] ^= 0x10
    path.write_bytes(bytes(bad_last))  # version 1: a bad checksum on the last record is a torn tail
    assert [r.lsn for r in wal.read(path).records] == [1, 2, 3]
    second = 8 + 8 + struct.unpack_from("<I", v1, 8)[0]
    bad_len = bytearray(v1)
    bad_len[second + 2] ^= 0x01  # its length now runs past the end of the file: once taken for a torn tail
    path.write_bytes(bytes(bad_len))
    with pytest.raises(wal.WalCorrupt, match=rf"byte {second} .*yet intact records follow it.*2 intact records"):
        wal.read(path)
    with pytest.raises(wal.WalCorrupt):
        wal.WalWriter(path)
    assert path.read_bytes() == bytes(bad_len)


def test_a_reader_follows_a_log_another_process_rewrote_in_version_2(root: Path) -> None:
    path = wal_path(root, ".")
    _v1(path, _recs(range(3)))
    server = _store(root)
    _write(root, range(3, 5))  # another process: rewrites the log in version 2, then appends
    assert server.refresh()
    assert _delta(server) == {d["id"]: d["text"] for d in map(_doc, range(5))} and server.snapshot.view.lsn == 5
    assert not server.refresh()
    server.close()


def test_compaction_carries_by_lsn_across_a_rewrite_in_version_2(root: Path) -> None:
    path = wal_path(root, ".")
    _v1(path, _recs(range(3)))
    rep = compact(root, before_publish=lambda _: _write(root, range(3, 5)))  # rewritten while compacting
    assert rep.carried_records == 2
    new_log = wal_path(root, current_name(root))
    assert [r.doc_id for r in wal.read(new_log).records] == ["n3", "n4"]
    store = _store(root)
    assert store.snapshot.size == 3 + 5
    store.close()


# ---------------------------------------------------------------------------------------------------- no cutting


def test_damage_in_records_another_process_wrote_keeps_the_server_serving(root: Path) -> None:
    _write(root, range(2))
    server = _store(root)
    _write(root, range(2, 5))  # another process
    path = wal_path(root, ".")
    data = bytearray(path.read_bytes())
    data[_offsets(path)[3] + 20] ^= 0x04  # in the payload of a record the server has not read yet
    path.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt):
        server.refresh()
    assert set(_delta(server)) == {"n0", "n1"}  # still serving what it had
    err = server.stats()["reload_error"]
    assert err is not None and "damaged at byte" in err
    with pytest.raises(wal.WalCorrupt):  # and refuses writes rather than writing after damage
        server.upsert([_doc(7)], ENC.encode_passages([_doc(7)["text"]]))
    with pytest.raises(wal.WalCorrupt):
        compact(root)
    assert path.read_bytes() == data and current_name(root) == "."
    server.close()


def test_a_new_generation_with_a_damaged_log_is_not_loaded(root: Path) -> None:
    _write(root, range(2))
    server = _store(root)
    compact(root, before_publish=lambda _: _write(root, range(2, 4)))  # two records carried into the new log
    new_log = wal_path(root, current_name(root))
    data = bytearray(new_log.read_bytes())
    data[-1] ^= 0x01
    new_log.write_bytes(bytes(data))
    with pytest.raises(wal.WalCorrupt):
        server.refresh()
    assert server.generation == "." and set(_delta(server)) == {"n0", "n1"}
    err = server.stats()["reload_error"]
    assert err is not None and "cannot load generation g000001" in err and "damaged at byte" in err
    with pytest.raises(IndexInvalid, match="cannot load generation g000001: .*damaged at byte"):
        # a write can go neither to the old log (no longer current) nor to the damaged one
        server.upsert([_doc(7)], ENC.encode_passages([_doc(7)["text"]]))
    assert new_log.read_bytes() == data
    server.close()


def test_salvage_copies_every_intact_record_and_never_edits_the_source(tmp_path: Path) -> None:
    path = tmp_path / "w.log"
    w = wal.WalWriter(path)
    w.append(_recs(range(6)))
    w.close()
    offs = _offsets(path)
    data = bytearray(path.read_bytes())
    data[offs[1] + 3] ^= 0x80
    data[offs[4] + 30] ^= 0x02
    data += b"\x07\x00"  # and a torn tail
    path.write_bytes(bytes(data))
    rep = wal.salvage(path, tmp_path / "new.log")
    assert path.read_bytes() == data
    assert rep.kept == 4 and [r.lsn for r in wal.read(tmp_path / "new.log").records] == [1, 3, 4, 6]
    assert [(a, b) for a, b, _ in rep.skipped] == [(offs[1], offs[2]), (offs[4], offs[5]), (len(data) - 2, len(data))]
    assert rep.lsn_gaps == [(2, 2), (5, 5)]
    with pytest.raises(FileExistsError):
        wal.salvage(path, tmp_path / "new.log")
