"""POST /mine: the same results as the library call, limits, one job at a time, errors in the one JSON body."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from indexer.mining_job import mine_texts
from tests.conftest import FakeEncoder, write_jsonl

E = np.eye(8, dtype=np.float32)
TABLE = {  # meaning i -> direction e_i (+ a little of e_7 so nothing is exactly orthogonal)
    "Guten Morgen": E[0] + 0.1 * E[7], "good morning": E[0] + 0.12 * E[7],
    "Danke": E[1] + 0.1 * E[7], "thank you": E[1] + 0.12 * E[7],
    "Hallo Welt": E[2] + 0.1 * E[7], "hello world": E[2] + 0.12 * E[7],
    "Nur hier": E[3] + 0.1 * E[7], "only in English": E[4] + 0.1 * E[7],
}  # fmt: skip
SRC = ["Danke", "Nur hier", "Guten Morgen", "Hallo Welt", "Danke"]
TGT = ["hello world", "only in English", "thank you", "good morning"]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("mine-api")
    corpus = write_jsonl(tmp / "c.jsonl", [{"id": "a", "text": "Danke", "lang": "de"},
                                           {"id": "b", "text": "thank you", "lang": "en"}])
    build_index([corpus], tmp / "idx", FakeEncoder(dim=8, table=TABLE), BuildOptions(progress=False))
    return tmp / "idx"


@pytest.fixture
def client(index_dir: Path) -> Iterator[TestClient]:
    settings = Settings(index=index_dir, mine_max_sentences=6, max_query_chars=40, warmup=False)
    with TestClient(create_app(settings, encoder=FakeEncoder(dim=8, table=TABLE))) as c:
        yield c


def test_mine_returns_the_library_result(client: TestClient) -> None:
    body = {"src": SRC, "tgt": TGT, "k": 2, "centering": "off", "threshold": 0.9, "margin": "absolute"}
    r = client.post("/mine", json=body)
    assert r.status_code == 200, r.text
    got = r.json()
    want = mine_texts(FakeEncoder(dim=8, table=TABLE), SRC, TGT, k=2, centering="off", threshold=0.9,
                      margin="absolute")
    assert [(p["src"], p["tgt"]) for p in got["pairs"]] == [(p.src, p.tgt) for p in want]
    assert [p["score"] for p in got["pairs"]] == pytest.approx([p.score for p in want])
    assert {(p["src_text"], p["tgt_text"]) for p in got["pairs"]} == {
        ("Danke", "thank you"), ("Guten Morgen", "good morning"), ("Hallo Welt", "hello world")}
    assert got["src_count"] == 5 and got["tgt_count"] == 4
    assert got["search"] == "src->tgt: exact (flat) over 4 rows; tgt->src: exact (flat) over 5 rows"
    ratio = client.post("/mine", json={**body, "margin": "ratio", "threshold": 1.0}).json()
    assert all(p["score"] > 1.0 for p in ratio["pairs"]) and len(ratio["pairs"]) == 3
    quiet = client.post("/mine", json={**body, "texts": False, "dedup": True}).json()
    assert all(p["src_text"] is None for p in quiet["pairs"])
    assert {p["src"] for p in quiet["pairs"]} == {0, 2, 3}


def test_mine_options_change_the_result(client: TestClient) -> None:
    fwd = client.post("/mine", json={"src": SRC, "tgt": TGT, "retrieval": "fwd", "centering": "off",
                                     "margin": "ratio", "threshold": None}).json()
    assert len(fwd["pairs"]) == 5  # every source gets its best target
    one = client.post("/mine", json={"src": SRC, "tgt": TGT, "retrieval": "fwd", "one_to_one": True,
                                     "centering": "off", "margin": "ratio", "threshold": None}).json()
    assert len(one["pairs"]) == 4 and len({p["tgt"] for p in one["pairs"]}) == 4
    cos = client.post("/mine", json={"src": SRC, "tgt": TGT, "margin": "absolute", "retrieval": "intersect",
                                     "centering": "off"}).json()
    assert all(p["score"] <= 1.0 + 1e-6 for p in cos["pairs"])


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"src": SRC * 2, "tgt": TGT}, 413, "at most 6 per side"),
    ({"src": ["x" * 41], "tgt": TGT}, 422, "src[0] has 41 characters"),
    ({"src": ["  "], "tgt": TGT}, 422, "src[0] is empty"),
    ({"src": [], "tgt": TGT}, 422, "src"),
    ({"src": SRC, "tgt": TGT, "margin": "cosine"}, 422, "margin"),
    ({"src": SRC, "tgt": TGT, "k": 0}, 422, "k"),
    ({"src": SRC, "tgt": TGT, "centering": "half"}, 422, "centering"),
    ({"src": SRC, "tgt": TGT, "bogus": 1}, 422, "bogus"),
])
def test_mine_rejects_bad_requests(client: TestClient, body: dict[str, object], status: int, fragment: str) -> None:
    r = client.post("/mine", json=body)
    assert r.status_code == status
    err = r.json()
    assert set(err) == {"error", "detail"} and fragment in str(err["detail"])


class SlowEncoder(FakeEncoder):
    def __init__(self) -> None:
        super().__init__(dim=8, table=TABLE)
        self.release = threading.Event()
        self.started = threading.Event()

    def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32, progress: object = None) -> np.ndarray:
        self.started.set()
        self.release.wait(10)
        return super().encode_passages(texts)


def test_a_second_job_while_one_runs_gets_429(index_dir: Path) -> None:
    enc = SlowEncoder()
    with TestClient(create_app(Settings(index=index_dir, warmup=False), encoder=enc)) as c:
        results: list[int] = []
        t = threading.Thread(target=lambda: results.append(c.post("/mine", json={"src": SRC, "tgt": TGT}).status_code))
        t.start()
        assert enc.started.wait(10)
        r = c.post("/mine", json={"src": SRC, "tgt": TGT})
        assert r.status_code == 429 and r.json()["error"] == "overloaded"
        assert r.headers.get("retry-after") == "1"
        enc.release.set()
        t.join(10)
        assert results == [200]
        time.sleep(0.05)
        assert c.post("/mine", json={"src": SRC, "tgt": TGT}).status_code == 200  # the slot is free again


def test_a_cancelled_request_keeps_its_slot_until_the_mining_thread_ends() -> None:
    """Issue 17.9: the client goes away (its coroutine is cancelled) while the job's thread still mines; the slot
    stays taken, so a second job is refused until that thread has really finished."""
    import asyncio

    from app.mining import MiningService
    from app.schemas import MineRequest
    from xlir.errors import Overloaded

    enc = SlowEncoder()
    svc = MiningService(enc, max_jobs=1)
    req = MineRequest(src=SRC, tgt=TGT)
    finished = threading.Event()
    real_mine = svc._mine

    def mine_and_note(r: MineRequest) -> object:
        try:
            return real_mine(r)
        finally:
            finished.set()

    svc._mine = mine_and_note  # type: ignore[method-assign]

    async def scenario() -> None:
        first = asyncio.ensure_future(svc.mine(req))
        assert await asyncio.to_thread(enc.started.wait, 10)
        first.cancel()  # what the server does to a request whose client disconnected
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not finished.is_set()  # the thread is still in the encoder
        with pytest.raises(Overloaded):
            await svc.mine(req)
        enc.release.set()
        assert await asyncio.to_thread(finished.wait, 10)
        for _ in range(100):  # the slot is released in the thread's own `finally`, right after `finished`
            try:
                res = await svc.mine(req)
                break
            except Overloaded:
                await asyncio.sleep(0.01)
        else:
            pytest.fail("the slot was never released after the job ended")
        assert res.src_count == len(SRC)

    asyncio.run(scenario())


def test_a_failing_job_releases_its_slot() -> None:
    import asyncio

    from app.mining import MiningService
    from app.schemas import MineRequest

    class Broken(FakeEncoder):
        def encode_passages(self, texts: Sequence[str], *, batch_size: int = 32,
                            progress: object = None) -> np.ndarray:
            raise RuntimeError("encoder exploded")

    svc = MiningService(Broken(dim=8), max_jobs=1)

    async def twice() -> None:
        for _ in range(2):  # the second call would be 429 if the first had kept the slot
            with pytest.raises(RuntimeError, match="encoder exploded"):
                await svc.mine(MineRequest(src=SRC, tgt=TGT))

    asyncio.run(twice())
