"""benchmarks/students.py: the parts on a tiny fixture with the fake encoder (no model), and the report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks import students
from tests.conftest import FakeEncoder

DIM = 256  # word vectors nearly orthogonal: a shared word dominates a dot product


def _sentence(words: str, lang: str) -> str:
    return f"{words} {'deutsch' if lang == 'de' else 'english'}."


def _squad(lang: str) -> dict[str, Any]:
    """Two articles (0: dev, 1: test) of two paragraphs of two sentences; one question per paragraph, asking with
    two words of its answer sentence. The German copy is the English one plus a marker word, so each question's
    two relevant sentences (its answer in both languages) share its words. In the test article's second paragraph
    the question asks with the words of the *other* sentence: its answers are not at the top."""
    data = []
    for a in range(2):
        paragraphs = []
        for p in range(2):
            s0, s1 = f"A{a}p{p}x one{a}{p} two{a}{p} three{a}{p}", f"A{a}p{p}y four{a}{p} five{a}{p} six{a}{p}"
            context = _sentence(s0, lang) + " " + _sentence(s1, lang)
            answer = f"four{a}{p}"
            asked = f"one{a}{p} two{a}{p}" if (a, p) == (1, 1) else f"four{a}{p} five{a}{p}"
            paragraphs.append({"context": context, "qas": [{
                "id": f"q{a}{p}", "question": f"{asked} {'was' if lang == 'de' else 'what'}",
                "answers": [{"text": answer, "answer_start": context.index(answer)}]}]})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    return {"data": data}


EN = [f"alpha{i} beta{i} gamma{i}" for i in range(6)]
DE = [f"{s} deutsch" for s in EN] + ["alpha0 beta0 gamma0 deutsch zwei"]  # line 6 looks like line 0


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XLIR_HOME", str(tmp_path / "home"))
    root = tmp_path / "data"
    (root / "xquad-r").mkdir(parents=True)
    for lang in ("en", "de"):
        (root / "xquad-r" / f"{lang}.json").write_text(json.dumps(_squad(lang)), encoding="utf-8")
    (root / "tatoeba").mkdir()
    for code in ("deu", "jpn"):  # the pairs of --quick
        (root / "tatoeba" / f"tatoeba.{code}-eng.{code}").write_text("\n".join(DE) + "\n", encoding="utf-8")
        (root / "tatoeba" / f"tatoeba.{code}-eng.eng").write_text("\n".join([*EN, "omega psi chi"]) + "\n",
                                                                  encoding="utf-8")
    return root


def test_retrieval_part_through_the_one_retrieval_path(data: Path) -> None:
    pools = students.retrieval_pools(data, langs=["en", "de"])
    res = students.retrieval(FakeEncoder(dim=DIM), pools)
    assert res["docs"] == {"full": 16, "nonparallel": 8}
    full, nonpar, mono = res["full"], res["nonparallel"], res["mono"]
    # dev: every answer is found first, in both languages (full) or in its kept copy (non-parallel)
    assert full["dev"]["off"]["all"] == {"map@20": 1.0, "ndcg@10": 1.0, "recall@100": 1.0}
    assert nonpar["dev"]["off"]["all"]["map@20"] == 1.0
    assert mono["dev"]["off"]["all"]["ndcg@10"] == 1.0
    assert full["dev"]["off"]["per_lang"] == {"de": 1.0, "en": 1.0}
    # test: the misleading question ranks the other sentence's copies first (AP <= (1/3 + 2/4) / 2 for it)
    assert full["test"]["off"]["all"]["map@20"] <= (1.0 + (1 / 3 + 2 / 4) / 2) / 2
    assert full["test"]["off"]["all"]["recall@100"] == 1.0  # the pool is smaller than 100
    assert full["test"]["off"]["queries"] == 4
    for pool in students.POOLS:
        assert set(res[pool]["test"]) == {"off", "default"}


def test_quick_caps_the_queries_it_runs(data: Path) -> None:
    pools = students.retrieval_pools(data, langs=["en", "de"])
    enc = FakeEncoder(dim=DIM)
    res = students.retrieval(enc, pools, max_per_lang=1)
    assert res["full"]["dev"]["off"]["queries"] == 2  # one per language
    embedded = {t for call in enc.query_calls for t in call}
    assert len(embedded) == 4  # the dev and test queries that run, nothing else


def test_tatoeba_part_both_directions(data: Path) -> None:
    enc = FakeEncoder(dim=DIM)
    res = students.tatoeba(enc, data, ["deu"])
    off = res["pairs"]["deu"]["off"]
    assert off["xx->en"] == pytest.approx(6 / 7)  # line 6 finds line 0's English
    x = np.stack([enc.vec(t) for t in DE])
    e = np.stack([enc.vec(t) for t in [*EN, "omega psi chi"]])
    assert off["en->xx"] == pytest.approx(float(np.mean(np.argmax(e @ x.T, axis=1) == np.arange(7))))
    assert res["mean"]["off"] == {"xx->en": round(off["xx->en"], 4), "en->xx": round(off["en->xx"], 4)}
    assert set(res["mean"]) == {"off", "full"}


def test_language_groups_and_summary(data: Path) -> None:
    labels = students.shared_labels(data)
    assert labels == {"en", "de", "ja"}  # xquad-r files, tatoeba pairs
    groups = students.language_groups(["deu", "fra", "bem"], labels)
    assert groups == {"in ../shared's other data": ["deu"], "only in NTREX": ["fra", "bem"],
                      "not in XLM-R": ["bem"]}
    s = students.summarise({"deu": 0.9, "fra": 0.8, "bem": 0.2}, groups, worst=2)
    assert s["mean"] == pytest.approx(0.6333, abs=1e-4)
    assert s["worst"] == [["bem", 0.2], ["fra", 0.8]]
    assert s["groups"]["only in NTREX"] == {"n": 2, "mean": 0.5}
    assert s["groups"]["in ../shared's other data"] == {"n": 1, "mean": 0.9}


def test_speed_part_times_the_calls() -> None:
    enc = FakeEncoder(dim=8)
    res = students.speed(enc, enc, [f"q {i}" for i in range(5)], [f"p {i}" for i in range(10)], rounds=2)
    assert res["queries"] == 5 and res["passages"] == 10 and len(res["passages_per_s_rounds"]) == 2
    assert res["query_ms_p50"] >= 0 and res["passages_per_s"] > 0
    assert enc.query_calls[-5:] == [[f"q {i}"] for i in range(5)]  # one query per call


def test_training_time_from_metadata_then_run_log(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    weights = tmp_path / "w.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(weights), metadata={"info": json.dumps({"seconds": 123.4})})
    assert students.training_time("m", weights, None, None) == {"seconds": 123.4, "source": "weights metadata"}
    bare = tmp_path / "bare.safetensors"
    save_file({"x": np.zeros(2, np.float32)}, str(bare))
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"event": "end", "minutes": 2.0}) + "\n"
                   + json.dumps({"event": "end", "run_seconds": 30.0}) + "\n", encoding="utf-8")
    assert students.training_time("m", bare, None, log) == {"seconds": 30.0, "source": "run log (last run)"}
    assert students.training_time("m", bare, None, None) == {"seconds": None, "source": None}


def test_measure_model_and_report(data: Path) -> None:
    saved: list[str] = []
    res = students.measure_model("fake", ["tatoeba", "size"], data, quick=True,
                                 loader=lambda m, w: FakeEncoder(dim=DIM), done=lambda part, r: saved.append(part))
    assert saved == ["tatoeba", "size"]
    assert sorted(res["tatoeba"]["pairs"]) == ["deu", "jpn"] and res["tatoeba"]["lines"] == students.QUICK["lines"]
    assert res["size"]["bytes"] is None  # not a registry model: no artifact
    retrieval = students.retrieval(FakeEncoder(dim=DIM), students.retrieval_pools(data, langs=["en", "de"]))
    report = {"machine": "test machine", "commit": None, "models": {
        "fake": {**res, "retrieval": retrieval,
                 "speed": {"query_ms_p50": 1.25, "backend_queries": "onnx", "passages_per_s": 812.0,
                           "backend_passages": "torch"},
                 "rss": {"rss_bytes": 300 * 2**20}},
        "other": {"retrieval": {"error": "ModelNotFound: not built"}}}}
    md = students.render(report)
    assert "commit: (lead fills in)" in md
    assert "| model | full AP@20 | full nDCG@10 | full R@100 | nonparallel AP@20 |" in md
    assert "| fake | 1.000 / " in md  # dev table: centring off / default
    assert "| other | - / - | - / - |" in md
    assert "| fake | 1.2 (onnx) | 812 (torch) | 300 |" in md
    assert f"| fake | {res['tatoeba']['mean']['off']['xx->en']:.3f} / " in md
    assert "- other / retrieval: ModelNotFound: not built" in md
    assert md.index("test split") < md.index("dev split")


def test_a_failing_part_is_recorded_and_the_others_run(data: Path) -> None:
    from xlir.errors import ModelNotFound

    def loader(model: str, workload: str) -> Any:
        raise ModelNotFound(f"model {model!r} is not built yet")

    res = students.measure_model("fake", ["tatoeba", "size"], data, quick=True, loader=loader)
    assert res["tatoeba"]["error"] == "ModelNotFound: model 'fake' is not built yet"
    assert res["size"]["bytes"] is None and "error" not in res["size"]
