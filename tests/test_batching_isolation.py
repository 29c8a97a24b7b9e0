"""One text that fails inside an encoder batch fails only its own request (issue 17, point 2).

The encoders here fail a whole call when one of its texts is bad, as a real tokenizer does (a lone surrogate makes
the fast tokenizer raise for the batch). Requests run concurrently, through the batcher and through the HTTP app.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import batching
from app.batching import QueryBatcher
from app.main import create_app
from app.settings import Settings
from tests.conftest import FakeEncoder, fake_index
from xlir.errors import TextNotEncodable

POISON = "poison query"
GOOD = [f"question number {i} about apples" for i in range(10)]


class PoisonEncoder(FakeEncoder):
    """FakeEncoder whose calls fail when any text of the call contains ``POISON`` (the whole call, not the row)."""

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        if any(POISON in t for t in texts):
            self.query_calls.append(list(texts))
            raise RuntimeError("the model cannot digest this batch")
        return super().encode_queries(texts)

    def token_lengths(self, texts: Sequence[str]) -> list[int]:
        if any(POISON in t for t in texts):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return [len(t.split()) + 2 for t in texts]


async def _encode_all(encoder: FakeEncoder, texts: Sequence[str], **kwargs: object) -> list[object]:
    b = QueryBatcher(encoder.encode_queries, max_batch=64, max_wait_ms=300, **kwargs)  # type: ignore[arg-type]
    await b.start()
    try:
        return await asyncio.wait_for(asyncio.gather(*(b.encode(t) for t in texts), return_exceptions=True), 30)
    finally:
        await b.close()


@pytest.mark.parametrize("token_budget", [False, True])
def test_a_failing_text_fails_alone_and_the_others_get_their_own_vectors(token_budget: bool) -> None:
    enc = PoisonEncoder()
    texts = [*GOOD[:4], POISON, *GOOD[4:]]
    kwargs = {"max_tokens": 10_000, "token_lengths": enc.token_lengths} if token_budget else {}
    res = asyncio.run(_encode_all(enc, texts, **kwargs))

    assert isinstance(res[4], TextNotEncodable)  # valid text, but the others encoded: it is the text's fault
    assert "RuntimeError" in res[4].detail
    for text, vec in zip(texts, res, strict=True):
        if text != POISON:
            assert isinstance(vec, np.ndarray)
            np.testing.assert_array_equal(vec, enc.vec(text))  # its own vector, not a neighbour's
    calls = enc.query_calls
    assert calls[0] == texts  # one batch, as gathered: the failure came from sharing it with the bad text
    assert any(len(c) > 1 and POISON not in c for c in calls)  # the good ones stay batched (halves, not singles)
    assert len(calls) <= 1 + 2 * math.ceil(math.log2(len(texts)))  # bisection: ~2 log2(n) calls, not n


def test_a_lone_surrogate_gets_a_422_type_error_naming_the_character_alone_or_batched() -> None:
    enc = FakeEncoder()  # hashes the UTF-8 bytes of each word: a lone surrogate raises UnicodeEncodeError
    bad = "abc \ud800"
    batched = asyncio.run(_encode_all(enc, ["apples", bad, "pears"]))
    alone = asyncio.run(_encode_all(enc, [bad]))
    for err in (batched[1], alone[0]):
        assert isinstance(err, TextNotEncodable) and "U+D800 at character 4" in err.detail
    np.testing.assert_array_equal(batched[0], enc.vec("apples"))
    np.testing.assert_array_equal(batched[2], enc.vec("pears"))


def test_item_error_blames_the_text_only_when_it_is_to_blame() -> None:
    item_error = batching.item_error
    boom = RuntimeError("boom")
    assert item_error("fine text", boom, encoder_works=False) is boom  # alone, valid: a server fault
    assert isinstance(item_error("fine text", boom, encoder_works=True), TextNotEncodable)
    assert isinstance(item_error("fine text", UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), False),
                      TextNotEncodable)
    err = item_error("x\udfffy", TypeError("TextEncodeInput must be ..."), encoder_works=False)
    assert isinstance(err, TextNotEncodable) and "U+DFFF at character 1" in err.detail


# ------------------------------------------------------------------------------------------------
# Through the HTTP app: concurrent POST /search, one of them poisoned
# ------------------------------------------------------------------------------------------------

DOCS = [{"id": f"d{i}", "title": "", "text": f"apples and pears number {i}", "lang": "en"} for i in range(6)]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("isolation"), DOCS)


@pytest.fixture
def encoder() -> PoisonEncoder:
    return PoisonEncoder()


@pytest.fixture
def client(index_dir: Path, encoder: PoisonEncoder) -> Iterator[TestClient]:
    # a long batching window: the eleven concurrent queries share the poisoned call
    settings = Settings(index=index_dir, batch_max_wait_ms=500, warmup=False)
    with TestClient(create_app(settings, encoder=encoder)) as c:
        yield c


def test_concurrent_searches_with_one_poisoned_query_fail_only_that_one(client: TestClient,
                                                                       encoder: PoisonEncoder) -> None:
    expected = {q: client.post("/search", json={"query": q, "mode": "dense", "k": 3}).json()["results"]
                for q in GOOD}  # each alone first
    encoder.query_calls.clear()
    queries = [*GOOD[:5], POISON, *GOOD[5:]]
    with ThreadPoolExecutor(len(queries)) as pool:
        answers = list(pool.map(lambda q: client.post("/search", json={"query": q, "mode": "dense", "k": 3}),
                                queries))

    assert any(POISON in c and len(c) > 1 for c in encoder.query_calls)  # it really was batched with others
    for q, r in zip(queries, answers, strict=True):
        if q == POISON:
            assert r.status_code == 422, r.text
            assert r.json()["error"] == "text_not_encodable"
        else:
            assert r.status_code == 200, r.text
            assert r.json()["results"] == expected[q]
    assert client.get("/ready").status_code == 200
