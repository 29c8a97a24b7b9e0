"""Durability and atomic publishing with real processes: kill -9 of a server with acknowledged writes, kill -9 of
compactions and builds at several points, and hot reload of a new generation under query load.

The server runs ``xlir serve`` with the small local ``minilm-en`` encoder; processes killed at exact points run
the real compaction code in a child Python with one step replaced by ``SIGKILL`` of itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from benchmarks.demo_bench import wait_ready
from indexer import wal
from indexer.compact import compact
from indexer.live import LiveStore, current_name, wal_path
from tests.conftest import SAMPLE, FakeEncoder

XLIR = Path(sys.executable).with_name("xlir")
DIM = 384  # minilm-en; writes made in-process here use fake vectors of that size (durability, not relevance)


@pytest.fixture(scope="module")
def base_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("reload")
    corpus = tmp / "c.jsonl"
    corpus.write_text("".join((SAMPLE / "corpus.jsonl").read_text().splitlines(keepends=True)[:60]))
    res = subprocess.run([str(XLIR), "index", str(corpus), "--out", str(tmp / "idx"), "--model", "minilm-en",
                          "--quiet", "--shard-size", "25"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return tmp / "idx"


@pytest.fixture
def root(base_index: Path, tmp_path: Path) -> Path:
    shutil.copytree(base_index, tmp_path / "idx")
    return tmp_path / "idx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, root: Path, **env: str) -> None:
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "XLIR_WARMUP": "false", "XLIR_RELOAD_INTERVAL": "0.2", **env}
        self.proc = subprocess.Popen(
            [str(XLIR), "serve", "--index", str(root), "--port", str(self.port), "--verify", "size",
             "--log-level", "warning"], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.ready = wait_ready(self.base, self.proc, timeout=240)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def _bm25_ids(base: str, query: str) -> list[str]:
    r = httpx.post(f"{base}/search", json={"query": query, "mode": "bm25", "k": 5}, timeout=30)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"]]


def test_acknowledged_upserts_survive_kill_9_of_the_server(root: Path, servers: list[Server]) -> None:
    srv = Server(root)
    servers.append(srv)
    base_docs = int(srv.ready["docs"])  # type: ignore[call-overload]
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(200):
                if stop.is_set():
                    return
                ids = [f"w{w}-{i}-{j}" for j in range(3)]
                docs = [{"id": d, "text": f"token{d.replace('-', 'x')} survives", "lang": "en"} for d in ids]
                try:
                    r = client.post(f"{srv.base}/documents", json={"documents": docs})
                except httpx.TransportError:
                    return  # the server died with this request in flight: not acknowledged
                if r.status_code == 200:
                    with lock:
                        acked.extend(ids)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 60 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.kill()  # while writers are still sending
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert len(acked) >= 60
    srv2 = Server(root)
    servers.append(srv2)
    assert int(srv2.ready["docs"]) >= base_docs + len(acked)  # type: ignore[call-overload]
    for doc_id in acked[:: max(1, len(acked) // 25)] + acked[-3:]:
        assert _bm25_ids(srv2.base, f"token{doc_id.replace('-', 'x')}")[0] == doc_id


KILL_SCRIPT = r"""
import os, signal, sys
from pathlib import Path
import indexer.build as B
import indexer.compact as C
import indexer.layout as L
import indexer.write as W

point, root = sys.argv[1], Path(sys.argv[2])
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
before = None
if point == "build":            # the new generation's first shard is written, the build goes on
    W.index_shard = die
elif point == "before-publish": # the new generation is complete and renamed into generations/
    before = lambda new: die()
elif point == "publish":        # its log is written, CURRENT not swapped yet
    L.set_current = die
elif point == "gc":             # CURRENT swapped, older generations not removed yet
    L.remove_old_generations = die
if point == "rebuild":          # `xlir index --overwrite` of a live root, killed while building
    from models.encoders import load_encoder
    W.index_shard = die
    C.rebuild([Path(sys.argv[3])], root, load_encoder("minilm-en"), B.BuildOptions(progress=False))
else:
    C.compact(root, before_publish=before)
"""


def _killed_at(point: str, root: Path, *extra: str) -> None:
    res = subprocess.run([sys.executable, "-c", KILL_SCRIPT, point, str(root), *extra], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == -signal.SIGKILL, res.stderr


def _write(store: LiveStore, enc: FakeEncoder, ids: list[str]) -> None:
    docs = [{"id": d, "title": "", "text": f"marker{d} text", "lang": "en"} for d in ids]
    store.upsert(docs, enc.encode_passages([d["text"] for d in docs]))


def _live_ids(root: Path) -> set[str]:
    store = LiveStore(root)
    snap = store.snapshot
    ids = {snap.doc(r)["id"] for r in range(snap.view.main_n + snap.view.n)
           if not (r < snap.view.main_n and snap.view.main_tomb[r])
           and not (r >= snap.view.main_n and snap.view.dead[r - snap.view.main_n])}
    assert len(ids) == snap.size
    store.close()
    return ids


@pytest.mark.parametrize("point", ["build", "before-publish", "publish", "gc"])
def test_compaction_killed_at_any_point_loses_nothing_and_the_next_one_completes(root: Path, point: str) -> None:
    enc = FakeEncoder(dim=DIM)
    store = LiveStore(root)
    _write(store, enc, ["a1", "a2", "a3"])
    store.delete("p01-en")
    store.close()
    expected = _live_ids(root)
    assert "a1" in expected and "p01-en" not in expected
    _killed_at(point, root)
    published = point == "gc"
    assert current_name(root) == ("generations/g000001" if published else ".")
    assert _live_ids(root) == expected  # whatever CURRENT names, with its log, holds every acknowledged write
    store = LiveStore(root)
    _write(store, enc, ["b1"])  # writes go on after the crash
    store.close()
    expected |= {"b1"}
    report = compact(root)
    assert report.new == ("g000002" if published else "g000001")
    assert current_name(root) == f"generations/{report.new}"
    assert _live_ids(root) == expected
    leftovers = [p.name for p in (root / "generations").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not wal.read(wal_path(root, current_name(root))).records  # everything was folded in


@pytest.mark.slow  # 15 s: a real server and a rebuild killed
def test_a_killed_rebuild_keeps_the_last_generation_serving(root: Path, base_index: Path, tmp_path: Path) -> None:
    enc = FakeEncoder(dim=DIM)
    store = LiveStore(root)
    _write(store, enc, ["r1"])
    store.close()
    expected = _live_ids(root)
    corpus = base_index.parent / "c.jsonl"
    _killed_at("rebuild", root, str(corpus))
    assert current_name(root) == "." and _live_ids(root) == expected
    assert any(p.name.startswith(".") for p in (root / "generations").iterdir())  # the half-built one
    res = subprocess.run([str(XLIR), "index", str(corpus), "--out", str(root), "--model", "minilm-en", "--quiet",
                          "--overwrite"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert current_name(root) == "generations/g000001"
    assert _live_ids(root) == expected - {"r1"}  # a rebuild replaces the collection by the files given
    assert [p.name for p in (root / "generations").iterdir()] == ["g000001"]


def test_a_killed_plain_build_is_cleaned_up_by_the_next_one(tmp_path: Path) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text((SAMPLE / "corpus.jsonl").read_text().splitlines(keepends=True)[0])
    script = ("import os, signal, sys\nfrom pathlib import Path\nimport indexer.build as B\n"
              "import indexer.write as W\nfrom tests.conftest import FakeEncoder\n"
              "W.index_shard = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "B.build_index([Path(sys.argv[1])], Path(sys.argv[2]), FakeEncoder(), B.BuildOptions(progress=False))\n")
    res = subprocess.run([sys.executable, "-c", script, str(corpus), str(tmp_path / "idx")], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert not (tmp_path / "idx").exists() and list(tmp_path.glob(".idx.building-*"))
    from indexer.build import BuildOptions, build_index

    build_index([corpus], tmp_path / "idx", FakeEncoder(), BuildOptions(progress=False))
    assert (tmp_path / "idx" / "manifest.json").is_file() and not list(tmp_path.glob(".idx.building-*"))


def test_hot_reload_under_query_load(root: Path, servers: list[Server]) -> None:
    srv = Server(root)
    servers.append(srv)
    statuses: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        with httpx.Client(timeout=60) as client:
            while not stop.is_set():
                for mode in ("dense", "bm25", "hybrid"):
                    r = client.post(f"{srv.base}/search", json={"query": "river flood water", "mode": mode, "k": 20})
                    statuses.append(r.status_code)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    def wait_for_queries(n: int) -> None:
        deadline = time.monotonic() + 60
        start = len(statuses)
        while len(statuses) < start + n and time.monotonic() < deadline:
            time.sleep(0.05)

    try:
        wait_for_queries(3)
        store = LiveStore(root)  # another process writes and compacts while the server answers queries
        _write(store, FakeEncoder(dim=DIM), ["hot1", "hot2"])
        store.close()
        deadline = time.monotonic() + 30
        while "hot1" not in _bm25_ids(srv.base, "markerhot1") and time.monotonic() < deadline:
            time.sleep(0.1)  # picked up by the server's polling
        assert _bm25_ids(srv.base, "markerhot1")[0] == "hot1"
        compact(root)
        store = LiveStore(root)
        _write(store, FakeEncoder(dim=DIM), ["hot3"])
        store.close()
        before = len(statuses)
        compact(root)
        r = httpx.post(f"{srv.base}/reload", timeout=60)
        assert r.status_code == 200, r.text
        ready = httpx.get(f"{srv.base}/ready", timeout=30).json()
        assert ready["generation"] == "g000002" and ready["delta_docs"] == 0
        assert _bm25_ids(srv.base, "markerhot3")[0] == "hot3"
        wait_for_queries(3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    # queries ran before, across and after two generation swaps (the pollers' and the explicit reload)
    assert before >= 3 and len(statuses) >= before + 3 and set(statuses) == {200}


def test_cli_append_then_compact(root: Path, tmp_path: Path) -> None:
    from tests.conftest import write_jsonl

    before = _live_ids(root)
    replaced = sorted(before)[0]
    more = write_jsonl(tmp_path / "more.jsonl", [
        {"id": "cli-1", "text": "A brand new passage about glaciers.", "lang": "en"},
        {"id": replaced, "text": "This passage replaces an old one.", "lang": "en"},
        {"id": "cli-2", "text": "", "title": ""},
    ])
    res = subprocess.run([str(XLIR), "index", str(more), "--out", str(root), "--append", "--model", "minilm-en"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "appended 2 documents (1 replaced, 1 empty skipped)" in res.stdout and "g000000" in res.stdout
    assert _live_ids(root) == before | {"cli-1"}
    res = subprocess.run([str(XLIR), "compact", str(root), "--quiet"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "g000000 -> g000001" in res.stdout and "(2 from the log, 1 deleted or replaced)" in res.stdout
    assert current_name(root) == "generations/g000001" and _live_ids(root) == before | {"cli-1"}
