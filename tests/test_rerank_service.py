"""The rerank stage of the one retrieval path (issue 21, serving side): residual scoring over the first-stage ranks,
the untrained-equals-first-stage property, the scope of the candidates the model sees, the per-request time budget,
the stage timings, and which reranker the server loads (the default xlir-rerank, none, or a configured folder)."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from app.state import configured_reranker, load_state
from models.registry import MODEL_META
from models.rerankers import DEFAULT_RERANKER
from tests.conftest import FakeEncoder, fake_index
from xlir.errors import ModelInvalid, ModelNotFound

WORDS = ["apple", "pear", "tree", "garden", "river", "stone", "bread", "music"]
# 24 documents, even ids English, odd ids German; every one shares a word or two with the queries
DOCS = [
    {"id": f"d{i}", "title": f"t{i}", "lang": "en" if i % 2 == 0 else "de",
     "text": f"{WORDS[i % 8]} {WORDS[(i * 3 + 1) % 8]} {WORDS[(i * 5 + 2) % 8]} number{i}"}
    for i in range(24)
]
QUERY = {"query": "apple pear tree", "mode": "dense", "feedback": "off", "lang": "en"}


class TableReranker:
    """A fake reranker: a passage's score is ``table[its title]`` (the title is the passage's first line), default
    0; sleeps ``delay`` seconds per call and records the passages of each call."""

    def __init__(self, table: dict[str, float] | None = None, prior_weight: float = 0.0, scope: str = "all",
                 delay: float = 0.0, name: str = "table") -> None:
        self.table = table or {}
        self.prior_weight = prior_weight
        self.scope = scope
        self.delay = delay
        self.name = name
        self.calls: list[list[str]] = []

    def score(self, query: str, passages: Sequence[str]) -> np.ndarray:
        self.calls.append(list(passages))
        if self.delay:
            time.sleep(self.delay)
        return np.asarray([self.table.get(p.split("\n", 1)[0], 0.0) for p in passages], dtype=np.float32)

    def titles(self) -> list[str]:
        return [p.split("\n", 1)[0] for call in self.calls for p in call]


def title(doc_id: str) -> str:
    return "t" + doc_id[1:]


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("rerank"), DOCS)


@contextmanager
def client_for(index_dir: Path, reranker: Any = None, **settings: Any) -> Iterator[TestClient]:
    app = create_app(Settings(index=index_dir, warmup=False, reload_interval=0, **settings), encoder=FakeEncoder(),
                     reranker=reranker)
    with TestClient(app) as c:
        yield c


def search(c: TestClient, **fields: Any) -> dict[str, Any]:
    r = c.post("/search", json={**QUERY, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def ids(body: dict[str, Any]) -> list[str]:
    return [h["id"] for h in body["results"]]


def test_residual_scores_reorder_exactly(index_dir: Path) -> None:
    rr = TableReranker(prior_weight=1.0)
    with client_for(index_dir, rr) as c:
        first = ids(search(c, k=6))
        rr.table = {title(first[3]): 2.0, title(first[2]): 0.5}
        body = search(c, k=6, rerank=True, rerank_depth=6)
    # final = -log(rank) + correction: ranks 1..6 -> 0, -.693, -1.099+.5, -1.386+2, -1.609, -1.792
    final = [0.0, -math.log(2), -math.log(3) + 0.5, -math.log(4) + 2.0, -math.log(5), -math.log(6)]
    order = [3, 0, 2, 1, 4, 5]
    assert ids(body) == [first[i] for i in order]
    assert [h["ranks"]["rerank"] for h in body["results"]] == [1, 2, 3, 4, 5, 6]
    assert [h["ranks"]["fused"] for h in body["results"]] == [i + 1 for i in order]
    assert [h["score"] for h in body["results"]] == pytest.approx([final[i] for i in order])
    assert [h["scores"]["rerank"] for h in body["results"]] == [2.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    assert body["reranked"] is True
    info = body["rerank"]
    assert info["applied"] is True and info["model"] == "table" and info["depth"] == 6 and info["scope"] == "all"
    assert info["scored"] == 6 and info["reason"] == "6 of 6 candidates scored by the model"


@pytest.mark.parametrize("prior_weight", [0.0, 1.0, 3.0])
def test_an_untrained_reranker_returns_the_first_stage_order(index_dir: Path, prior_weight: float) -> None:
    rr = TableReranker(prior_weight=prior_weight)  # every correction 0, as a head initialised at zero gives
    with client_for(index_dir, rr) as c:
        first = search(c, k=20)
        body = search(c, k=20, rerank=True, rerank_depth=20)
    assert ids(body) == ids(first) and len(ids(body)) == 20
    assert [h["ranks"]["rerank"] for h in body["results"]] == list(range(1, 21))
    assert [h["ranks"]["fused"] for h in body["results"]] == list(range(1, 21))
    assert [h["scores"]["fused"] for h in body["results"]] == [h["score"] for h in first["results"]]
    assert body["rerank"]["applied"] is True and body["rerank"]["scored"] == 20 and len(rr.titles()) == 20


def test_a_plain_cross_encoder_orders_by_its_scores_alone(index_dir: Path) -> None:
    rr = TableReranker(prior_weight=0.0)
    with client_for(index_dir, rr) as c:
        first = ids(search(c, k=5))
        rr.table = {title(d): s for d, s in zip(first, [0.1, 0.9, -2.0, 0.5, 0.3], strict=True)}
        body = search(c, k=5, rerank=True, rerank_depth=5)
    assert ids(body) == [first[i] for i in (1, 3, 4, 0, 2)]
    assert [h["score"] for h in body["results"]] == pytest.approx([0.9, 0.5, 0.3, 0.1, -2.0])


def test_candidates_below_the_depth_follow_in_first_stage_order(index_dir: Path) -> None:
    rr = TableReranker()
    with client_for(index_dir, rr) as c:
        first = search(c, k=6)
        rr.table = {title(d): float(i) for i, d in enumerate(ids(first))}  # reverses any prefix
        body = search(c, k=6, rerank=True, rerank_depth=3)
    assert ids(body) == [ids(first)[i] for i in (2, 1, 0, 3, 4, 5)]
    assert len(rr.titles()) == 3
    tail = body["results"][3:]
    assert all("rerank" not in h["ranks"] for h in tail)
    assert [h["score"] for h in tail] == [h["score"] for h in first["results"][3:]]


def test_same_language_scope_sends_only_the_query_language(index_dir: Path) -> None:
    rr = TableReranker(prior_weight=1.0)
    langs = {d["id"]: d["lang"] for d in DOCS}
    with client_for(index_dir, rr) as c:
        first = ids(search(c, k=10))
        en = [d for d in first if langs[d] == "en"]
        de = [d for d in first if langs[d] == "de"]
        assert en and de
        rr.table = {title(en[-1]): 5.0}  # the last English candidate to the top
        body = search(c, k=10, rerank=True, rerank_depth=10, rerank_scope="same_language")
    assert sorted(rr.titles()) == sorted(title(d) for d in en)  # the German ones were not sent
    assert ids(body)[0] == en[-1]
    assert [d for d in ids(body) if d in de] == de  # they kept their prior: same relative order
    for h in body["results"]:
        assert (h["scores"]["rerank"] is None) == (langs[h["id"]] == "de")
    info = body["rerank"]
    assert info["scope"] == "same_language" and info["query_lang"] == "en" and info["scored"] == len(en)
    assert info["reason"] == (f"{len(en)} of 10 candidates scored by the model (those in the query's language "
                              "'en'; the others kept their first-stage prior)")


def test_auto_scope_is_the_models_and_the_request_overrides_it(index_dir: Path) -> None:
    rr = TableReranker(scope="same-language")
    with client_for(index_dir, rr) as c:
        auto = search(c, k=10, rerank=True, rerank_depth=10)
        assert auto["rerank"]["scope"] == "same_language" and auto["rerank"]["scored"] < 10
        every = search(c, k=10, rerank=True, rerank_depth=10, rerank_scope="all")
        assert every["rerank"]["scope"] == "all" and every["rerank"]["scored"] == 10
        rr.scope = "all"
        assert search(c, k=10, rerank=True, rerank_depth=10)["rerank"]["scope"] == "all"


def test_same_language_takes_the_detected_language_and_may_find_no_candidate(index_dir: Path) -> None:
    rr = TableReranker(scope="same-language")
    with client_for(index_dir, rr) as c:
        body = search(c, query="the apple and the pear tree in the garden", lang=None, k=10, rerank=True,
                      rerank_depth=10)
        assert body["centering"]["lang_source"] == "detected"
        assert body["rerank"]["query_lang"] == body["centering"]["query_lang"] == "en"
        first = search(c, lang="fr", k=10)
        none = search(c, lang="fr", k=10, rerank=True, rerank_depth=10)
    assert none["rerank"]["applied"] is False and none["reranked"] is False and none["rerank"]["scored"] == 0
    assert none["rerank"]["reason"] == "no candidate in the query's language 'fr': first-stage order kept"
    assert ids(none) == ids(first)


def test_a_passed_budget_keeps_the_first_stage_order_and_says_so(index_dir: Path) -> None:
    rr = TableReranker({f"t{i}": float(i) for i in range(24)}, delay=0.04)
    with client_for(index_dir, rr) as c:
        first = search(c, k=20)
        body = search(c, k=20, rerank=True, rerank_depth=20, rerank_budget_ms=1)
        assert len(rr.calls) == 1 and len(rr.calls[0]) == 8  # chunks of 8; the budget is checked between them
        assert ids(body) == ids(first) and body["reranked"] is False
        assert [h["score"] for h in body["results"]] == [h["score"] for h in first["results"]]
        assert all("rerank" not in h["ranks"] for h in body["results"])
        info = body["rerank"]
        assert info["applied"] is False and info["scored"] == 8
        assert info["reason"] == "budget 1 ms passed after 8 of 20 candidates: first-stage order kept"
        rr.calls.clear()
        body = search(c, k=20, rerank=True, rerank_depth=20, rerank_budget_ms=0)  # no budget: one call
        assert [len(call) for call in rr.calls] == [20] and body["reranked"] is True
        assert ids(body) == sorted(ids(first), key=lambda d: -int(d[1:]))
        rr.calls.clear()
        body = search(c, k=20, rerank=True, rerank_depth=20, rerank_budget_ms=60_000)
        assert [len(call) for call in rr.calls] == [8, 8, 4] and body["reranked"] is True


def test_the_budget_defaults_to_the_setting(index_dir: Path) -> None:
    rr = TableReranker(delay=0.04)
    with client_for(index_dir, rr, rerank_budget_ms=1) as c:
        body = search(c, k=20, rerank=True, rerank_depth=20)
    assert body["rerank"]["reason"].startswith("budget 1 ms passed after 8 of 20 candidates")


def test_stage_timings(index_dir: Path) -> None:
    quick, slow = TableReranker(), TableReranker(delay=0.2)
    with client_for(index_dir, quick) as c:
        plain = search(c, k=5)
        assert set(plain["timings_ms"]) == {"encode", "retrieve", "fuse", "total"} and plain["rerank"] is None
        assert plain["reranked"] is False
        bm25 = search(c, k=5, mode="bm25")
        assert bm25["timings_ms"]["encode"] == 0.0 and set(bm25["timings_ms"]) == {"encode", "retrieve", "fuse",
                                                                                 "total"}
        body = search(c, k=5, rerank=True, feedback="dense", rerank_budget_ms=0)
        fast = body["timings_ms"]
        assert set(fast) == {"encode", "retrieve", "fuse", "feedback", "rerank", "total"}
        assert all(v >= 0 for v in fast.values()) and fast["total"] >= fast["rerank"]
        assert body["rerank"]["ms"] == fast["rerank"]
    with client_for(index_dir, slow) as c:
        t = search(c, k=5, rerank=True, rerank_budget_ms=0)["timings_ms"]
    assert t["rerank"] >= 200 > fast["rerank"] and t["total"] >= t["rerank"]


def test_the_default_rerank_depth_is_20(index_dir: Path) -> None:
    rr = TableReranker()
    with client_for(index_dir, rr) as c:
        body = search(c, k=5, rerank=True, rerank_budget_ms=0)
    assert body["rerank"]["depth"] == 20 and len(rr.titles()) == 20


@pytest.mark.parametrize(("field", "value"), [("rerank_scope", "other"), ("rerank_budget_ms", -1),
                                              ("rerank_budget_ms", "5"), ("rerank_budget_ms", True)])
def test_bad_rerank_fields_are_422(index_dir: Path, field: str, value: object) -> None:
    with client_for(index_dir, TableReranker()) as c:
        r = c.post("/search", json={**QUERY, "rerank": True, field: value})
    assert r.status_code == 422 and r.json()["error"] == "validation_error" and field in r.json()["detail"]


# ---- which reranker the server loads ----

def default_folder(home: Path, kind: str = "reranker") -> Path:
    folder = home / "models" / DEFAULT_RERANKER
    folder.mkdir(parents=True)
    (folder / MODEL_META).write_text(json.dumps({"kind": kind}), encoding="utf-8")
    return folder


def test_the_built_default_reranker_is_served_without_configuration(
        index_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("XLIR_RERANKER")
    loaded: list[Path] = []

    def fake_load(path: Path, device: str = "auto", eager: bool = True) -> TableReranker:
        assert eager is False  # the default reranker's session is made at the first rerank
        loaded.append(path)
        return TableReranker(name="xlir-rerank")

    monkeypatch.setattr("app.state.load_reranker", fake_load)
    assert configured_reranker(Settings(index=index_dir, home=tmp_path)) is None  # not built: none
    folder = default_folder(tmp_path)
    with client_for(index_dir, home=tmp_path) as c:
        assert c.get("/ready").json()["reranker"] == "xlir-rerank"
        assert search(c, k=3, rerank=True)["rerank"]["applied"] is True
    assert loaded == [folder]
    for off in ("none", "", "None"):
        monkeypatch.setenv("XLIR_RERANKER", off)
        assert configured_reranker(Settings(index=index_dir, home=tmp_path)) is None
    assert loaded == [folder]


def test_without_a_reranker_rerank_says_how_to_get_one(index_dir: Path) -> None:
    with client_for(index_dir) as c:
        r = c.post("/search", json={**QUERY, "rerank": True})
    assert r.status_code == 400 and r.json()["error"] == "reranker_not_configured"
    assert "`make setup`" in r.json()["detail"] and "--reranker PATH" in r.json()["detail"]


def test_a_configured_folder_that_is_missing_or_wrong_stops_the_start_up(index_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-reranker"
    with pytest.raises(ModelNotFound, match=re.escape(str(missing))):
        load_state(Settings(index=index_dir, reranker=str(missing)), encoder=FakeEncoder())
    app = create_app(Settings(index=index_dir, reranker=str(missing)), encoder=FakeEncoder())
    with pytest.raises(ModelNotFound, match=re.escape(str(missing))), TestClient(app):
        pass
    encoder_folder = default_folder(tmp_path / "home", kind="transformer")
    with pytest.raises(ModelInvalid, match=re.escape(f"{encoder_folder} holds a model of kind 'transformer', not a")):
        load_state(Settings(index=index_dir, reranker=str(encoder_folder)), encoder=FakeEncoder())


def test_cli_search_passes_the_rerank_options(index_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    missing = tmp_path / "nope"
    res = CliRunner().invoke(app, ["search", "x", "--index", str(index_dir), "--rerank", "--reranker", str(missing)])
    # the command turns the domain error into a one-line message and exit 2, before any encoder is loaded
    assert res.exit_code == 2 and str(missing) in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["search", "x", "--index", str(index_dir), "--rerank", "--rerank-scope", "some"])
    assert res.exit_code != 0 and "rerank_scope" in res.output
