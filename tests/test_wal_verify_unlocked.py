"""A newly published generation is verified (sha256 of every file under ``verify=full``) without holding the write
locks: a generation never changes once published, so only the swap needs them. Verification is made to block
until the test lets it go, and real threads check what proceeds meanwhile."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from indexer import live
from indexer.build import BuildOptions, build_index
from indexer.compact import compact
from indexer.live import LiveStore
from tests.conftest import FakeEncoder, write_jsonl

ENC = FakeEncoder(dim=8)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"apple {i}", "lang": "en"} for i in range(3)])
    build_index([corpus], tmp_path / "idx", ENC, BuildOptions(progress=False))
    return tmp_path / "idx"


def _doc(name: str) -> dict[str, str]:
    return {"id": name, "title": "", "text": f"pear {name}", "lang": "en"}


def _upsert(store: LiveStore, name: str) -> None:
    store.upsert([_doc(name)], ENC.encode_passages([_doc(name)["text"]]))


class SlowVerify:
    """Stands in for ``verify_index``: signals that verification started, then waits to be released."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, *args: Any, **kw: Any) -> Any:
        self.calls += 1
        self.started.set()
        assert self.release.wait(30)
        return self.real(*args, **kw)


def _thread(fn: Any, *args: Any) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def test_a_write_of_another_process_completes_while_a_new_generation_is_verified(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = LiveStore(root, encoder_checksum=ENC.checksum, verify="full")
    compact(root)  # e.g. `xlir compact`: the server is now behind
    other = LiveStore(root, encoder_checksum=ENC.checksum, verify="full")  # e.g. `xlir index --append`
    slow = SlowVerify(live.verify_index)
    monkeypatch.setattr(live, "verify_index", slow)
    writer, errors = _thread(_upsert, server, "from-server")  # must verify g000001 first
    try:
        assert slow.started.wait(10)
        other_writer, other_errors = _thread(_upsert, other, "from-other")
        other_writer.join(10)
        assert not other_writer.is_alive(), "the other writer waited for the server's verification"
        assert not other_errors and writer.is_alive()  # the server's own write still waits for its verification
    finally:
        slow.release.set()
        writer.join(30)
    assert not errors and slow.calls == 1
    assert server.generation == "generations/g000001"
    ids = {d["id"] for d in server.snapshot.view.docs}
    assert ids == {"from-server", "from-other"}
    server.close()
    other.close()


def test_a_write_waiting_for_a_refresh_uses_its_verification(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = LiveStore(root, encoder_checksum=ENC.checksum, verify="full")
    compact(root)
    slow = SlowVerify(live.verify_index)
    monkeypatch.setattr(live, "verify_index", slow)
    refresher, errors = _thread(server.refresh)
    try:
        assert slow.started.wait(10)
        writer, write_errors = _thread(_upsert, server, "n")  # needs g000001: waits for the refresh's check
        writer.join(0.5)
    finally:
        slow.release.set()
    refresher.join(30)
    writer.join(30)
    assert not errors and not write_errors
    assert slow.calls == 1  # one check of the generation, outside the locks, shared
    assert server.generation == "generations/g000001" and server.snapshot.size == 4
    server.close()
