"""The reported failure end to end: 12 acknowledged ``POST /documents``, a flipped bit in the length field of a
record in the middle of the log, a restart. The server must refuse (naming the file and the offset) and leave the
log as it is; ``xlir wal check`` says so; ``xlir wal salvage`` recovers the 11 other records."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer import wal
from indexer.build import BuildOptions, build_index
from indexer.live import wal_path
from tests.conftest import FakeEncoder, write_jsonl

XLIR = Path(sys.executable).with_name("xlir")
BASE = [{"id": f"d{i}", "text": f"apple tree {i}", "lang": "en"} for i in range(4)]


def xlir(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(XLIR), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    corpus = write_jsonl(tmp_path / "c.jsonl", BASE)
    build_index([corpus], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    return tmp_path / "idx"


def _client(index_dir: Path) -> TestClient:
    settings = Settings(index=index_dir, reload_interval=0, warmup=False)  # type: ignore[call-arg]
    return TestClient(create_app(settings, encoder=FakeEncoder()))


def _record_offsets(path: Path) -> list[int]:
    data = path.read_bytes()
    header = 8 if data[:8] == b"XLIRWAL1" else 12  # <u32 length><u32 crc>[<u32 header crc>]
    out, pos = [], 8
    while pos < len(data):
        out.append(pos)
        pos += header + struct.unpack_from("<I", data, pos)[0]
    return out


def test_a_damaged_length_field_is_refused_at_start_and_salvaged(index_dir: Path, tmp_path: Path) -> None:
    with _client(index_dir) as c:
        for i in range(12):
            r = c.post("/documents", json={"documents": [{"id": f"n{i}", "text": f"zebra number {i}", "lang": "en"}]})
            assert r.status_code == 200, r.text
    log = wal_path(index_dir, ".")
    offsets = _record_offsets(log)
    assert len(offsets) == 12
    middle = offsets[5]
    data = bytearray(log.read_bytes())
    data[middle + 1] ^= 0x08  # the length grows by 2048: it now runs past the end of the file
    log.write_bytes(bytes(data))

    with _client(index_dir) as c:
        ready = c.get("/ready")
        assert ready.status_code == 503
        detail = ready.json()["detail"]
        assert str(log) in detail and f"damaged at byte {middle}" in detail and "6 intact records" in detail
        r = c.post("/search", json={"query": "zebra", "mode": "bm25"})
        assert r.status_code == 503
        r = c.post("/documents", json={"documents": [{"id": "late", "text": "late write", "lang": "en"}]})
        assert r.status_code == 503
    assert log.read_bytes() == data  # left exactly as it was

    check = xlir("wal", "check", str(index_dir))
    assert check.returncode == 1 and f"damaged at byte {middle}" in check.stderr and "Traceback" not in check.stderr

    out = tmp_path / "salvaged.log"
    res = xlir("wal", "salvage", str(index_dir), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "kept 11 records" in res.stdout and "lost: LSN 6" in res.stdout
    assert f"skipped bytes {middle}..{offsets[6]}" in res.stdout
    assert log.read_bytes() == data
    recs = wal.read(out).records
    assert [r.doc_id for r in recs] == [f"n{i}" for i in range(12) if i != 5]
    again = xlir("wal", "salvage", str(log), "--out", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr

    os.replace(out, log)  # what the operator does, server stopped
    assert xlir("wal", "check", str(log)).stdout.startswith(f"{log}: intact: 11 records")
    with _client(index_dir) as c:
        ready = c.get("/ready").json()
        assert ready["docs"] == 4 + 11


def test_wal_check_says_intact_or_torn(index_dir: Path, tmp_path: Path) -> None:
    with _client(index_dir) as c:
        for i in range(2):
            assert c.post("/documents", json={"documents": [{"id": f"n{i}", "text": "zebra", "lang": "en"}]}
                          ).status_code == 200
    log = wal_path(index_dir, ".")
    res = xlir("wal", "check", str(log))
    assert res.returncode == 0 and "intact: 2 records" in res.stdout
    full = log.read_bytes()
    log.write_bytes(full[:-7])
    res = xlir("wal", "check", str(index_dir))
    assert res.returncode == 0 and "torn tail: 1 intact records" in res.stdout
    assert log.read_bytes() == full[:-7]
    missing = xlir("wal", "check", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
