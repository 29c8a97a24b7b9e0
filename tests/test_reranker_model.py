"""xlir's trained reranker as `make setup` builds it (`xlir models fetch` from models/weights/xlir-rerank*): it loads
without torch, the server uses it for `rerank: true` without configuration, and its correction prefers the
sentence holding the answer over same-topic sentences, in several languages."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from indexer.build import BuildOptions, build_index
from models.encoders import load_encoder
from models.fetch import verify
from models.registry import model_dir
from models.rerankers import DEFAULT_RERANKER, XlirReranker, read_meta
from tests.conftest import SAMPLE

pytestmark = [pytest.mark.model, pytest.mark.slow]

# (question, the sentence with the answer, same-topic sentences without it)
CASES = [
    ("How tall is the Eiffel Tower?", "The Eiffel Tower is 330 metres tall.",
     ["The Eiffel Tower was designed by the company of Gustave Eiffel.",
      "The tower is in Paris, on the Champ de Mars."]),
    ("Wann fiel die Berliner Mauer?", "Die Berliner Mauer fiel am 9. November 1989.",
     ["Die Berliner Mauer trennte West-Berlin von der DDR.", "Heute stehen nur noch Reste der Mauer."]),
    ("东京的人口是多少？", "东京都的人口约为1400万。", ["东京是日本的首都。", "东京有很多公园和博物馆。"]),
    ("Qui a écrit Les Misérables ?", "Les Misérables est un roman de Victor Hugo publié en 1862.",
     ["Le roman se déroule à Paris au XIXe siècle.", "Il a été adapté en comédie musicale."]),
]


@pytest.fixture(scope="module")
def reranker() -> XlirReranker:
    verify(DEFAULT_RERANKER)  # built by make setup from the committed weights, unchanged since
    return XlirReranker(model_dir(DEFAULT_RERANKER))


def test_the_committed_model_was_trained_and_validated(reranker: XlirReranker) -> None:
    meta = read_meta(model_dir(DEFAULT_RERANKER))
    trained = meta["trained"]
    assert trained["steps"] > 1000 and trained["val_questions"] > 1000
    assert trained["val_mrr10"] > trained["val_mrr10_first"]  # the weight chosen on validation helps there
    assert meta["weight"] > 0 and reranker.prior_weight > 0


def test_the_correction_prefers_the_answer_sentence(reranker: XlirReranker) -> None:
    for question, answer, others in CASES:
        scores = reranker.score(question, [answer, *others])
        assert np.argmax(scores) == 0, (question, scores.tolist())


def test_a_lazy_reranker_makes_its_session_at_the_first_score(reranker: XlirReranker) -> None:
    lazy = XlirReranker(model_dir(DEFAULT_RERANKER), eager=False)
    assert lazy._session is None and lazy.prior_weight == reranker.prior_weight and lazy.scope == reranker.scope
    question, answer, others = CASES[0]
    np.testing.assert_array_equal(lazy.score(question, [answer, *others]), reranker.score(question, [answer, *others]))
    assert lazy._session is not None


def test_a_lazy_reranker_with_a_broken_file_names_it_at_the_first_score(tmp_path: Path) -> None:
    import shutil

    from xlir.errors import ModelInvalid

    folder = tmp_path / "rr"
    shutil.copytree(model_dir(DEFAULT_RERANKER), folder, copy_function=os.symlink)  # links: no 400 MB copy
    onnx_file = folder / str(read_meta(folder).get("onnx", "onnx/model.onnx"))
    onnx_file.unlink()  # the link only: the built model is untouched
    onnx_file.write_bytes(b"not an onnx graph")
    lazy = XlirReranker(folder, eager=False)  # the folder checks pass: the file is there
    with pytest.raises(ModelInvalid, match="onnxruntime cannot load"):
        lazy.score("q", ["p"])
    with pytest.raises(ModelInvalid, match="onnxruntime cannot load"):
        XlirReranker(folder)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    e5 = load_encoder("e5-small", device="cpu")
    out: Path = tmp_path_factory.mktemp("rerank-e2e") / "sample"
    build_index([SAMPLE / "corpus.jsonl"], out, e5, BuildOptions(progress=False))
    mp = pytest.MonkeyPatch()
    mp.delenv("XLIR_RERANKER", raising=False)  # the suite turns the default off; here it is the point
    try:
        with TestClient(create_app(Settings(index=out), encoder=e5)) as c:
            yield c
    finally:
        mp.undo()


def test_rerank_true_uses_the_built_model_without_configuration(client: TestClient) -> None:
    assert client.get("/ready").json()["reranker"] == DEFAULT_RERANKER
    body = client.post("/search", json={"query": "When did the Berlin Wall fall?", "k": 5, "rerank": True,
                                        "rerank_budget_ms": 0}).json()
    rr = body["rerank"]
    assert rr["applied"] and rr["model"] == DEFAULT_RERANKER and rr["depth"] == 20 and rr["scored"] >= 1
    assert body["reranked"] and {"encode", "retrieve", "fuse", "rerank", "total"} <= set(body["timings_ms"])
    assert body["results"][0]["id"] == "u-de-6"  # the German answer stays on top
