"""xlir's reranker (models/train_reranker.py, models/rerankers.py) on the tiny BERT of conftest: the training data
file format and its errors, a few training steps that give a loadable ONNX model, the untrained model keeping the
first-stage order exactly, resume, and the groups written from a first-stage run (benchmarks/qa_groups.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.qa_groups import group_record, paragraph_of
from models.rerankers import XlirReranker, load_reranker, read_meta, residual_order, residual_scores
from models.students import TrainOptions
from models.train_reranker import Group, Groups, Sampler, build_folder, load_groups, mrr_at_10, settings, train
from xlir.errors import CorpusError, ModelInvalid, ModelNotFound

DOCS = {"d0": "the cat sits", "d1": "the dog runs", "d2": "the house", "d3": "le chat", "d4": "le chien",
        "d5": "die katze sitzt", "d6": "das haus", "d7": "la maison"}


def write_data(folder: Path, groups: list[dict[str, object]] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in DOCS.items()))
    if groups is None:
        groups = []
        for n, (q, pos) in enumerate([("the cat", "d0"), ("the dog", "d1"), ("the house", "d2"),
                                      ("le chat", "d3"), ("le chien", "d4"), ("das haus", "d6")]):
            ranked = [d for d in DOCS if d != pos][:4]
            ranked.insert(n % 3, pos)
            groups.append({"qid": f"q{n}", "lang": "en" if n < 3 else "fr", "split": "dev" if n == 5 else "train",
                           "query": q, "candidates": [[d, i + 1, int(d == pos)] for i, d in enumerate(ranked)]})
    (folder / "groups.jsonl").write_text("".join(json.dumps(g) + "\n" for g in groups))
    return folder


def opts(tmp_path: Path, name: str = "run", **kw: object) -> TrainOptions:
    params = {"batch_questions": "2", "group_size": "3", "warmup": "1", "lr": "1e-3", "max_length": "16"}
    params.update({k: str(v) for k, v in kw.pop("params", {}).items()})  # type: ignore[attr-defined]
    return TrainOptions(kind="reranker", name=name, max_minutes=5, run_dir=tmp_path / name,
                        out=tmp_path / f"{name}.safetensors", params=params, **kw)  # type: ignore[arg-type]


def test_groups_are_read_with_their_split(tmp_path: Path) -> None:
    got = load_groups(write_data(tmp_path / "data"))
    assert [g.qid for g in got.train] == ["q0", "q1", "q2", "q3", "q4"] and [g.qid for g in got.val] == ["q5"]
    assert got.train[1].docs[1] == "d1" and got.train[1].labels == (0, 1, 0, 0, 0)
    assert got.train[1].ranks == (1, 2, 3, 4, 5) and got.texts["d5"] == "die katze sitzt"


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "not JSON"),
    ('{"qid": "x", "lang": "en", "split": "train", "query": "q"}', "'candidates' missing"),
    ('{"qid": "x", "lang": "en", "split": "test", "query": "q", "candidates": [["d0", 1, 1]]}', "split 'test'"),
    ('{"qid": "x", "lang": "en", "split": "train", "query": "q", "candidates": [["d0", 0, 1]]}', "candidates[0]"),
    ('{"qid": "x", "lang": "en", "split": "train", "query": "q", "candidates": [["zz", 1, 1]]}', "'zz' is not in"),
    ('{"qid": "x", "lang": "en", "split": "train", "query": "q", "candidates": [["d0", 1, 0]]}', "no candidate is"),
])
def test_a_malformed_record_names_file_and_line(tmp_path: Path, line: str, why: str) -> None:
    folder = write_data(tmp_path / "data")
    good = (folder / "groups.jsonl").read_text().splitlines()
    (folder / "groups.jsonl").write_text("\n".join([good[0], good[1], line, good[2]]) + "\n")
    with pytest.raises(CorpusError) as err:
        load_groups(folder)
    assert f"{folder / 'groups.jsonl'}:3: " in err.value.detail and why in err.value.detail


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="docs.jsonl: no such file"):
        load_groups(tmp_path)


def test_sampler_puts_the_positive_first_and_is_seeded(tmp_path: Path) -> None:
    groups = load_groups(write_data(tmp_path / "data"))
    s = settings(opts(tmp_path))
    a, b = Sampler(groups.train, s, 7), Sampler(groups.train, s, 7)
    for _ in range(5):
        ba, bb = a.next(), b.next()
        assert [(g.qid, pos) for g, pos in ba] == [(g.qid, pos) for g, pos in bb]
        for g, pos in ba:
            assert g.labels[pos[0]] == 1 and all(g.labels[i] == 0 for i in pos[1:]) and len(pos) == 3
    c = Sampler(groups.train, s, 7)
    c.restore(a.state())
    assert [(g.qid, p) for g, p in c.next()] == [(g.qid, p) for g, p in a.next()]


def test_residual_scores_keep_the_first_stage_order_when_the_correction_is_zero() -> None:
    ranks = [1, 2, 3, 4, 5]
    for w in (0.0, 0.3, 1.0):
        assert residual_order(ranks, residual_scores(ranks, np.zeros(5), w)) == [0, 1, 2, 3, 4]
    # a correction big enough moves a candidate up: -log(4) + 2 > -log(1)
    assert residual_order(ranks, residual_scores(ranks, [0, 0, 0, 2.0, 0], 1.0)) == [3, 0, 1, 2, 4]
    assert residual_order(ranks, residual_scores(ranks, [0, 0, 0, 0.5, 0], 1.0)) == [0, 1, 3, 2, 4]
    with pytest.raises(ValueError):
        residual_scores([0, 1], [0, 0], 1.0)


def test_mrr_at_10() -> None:
    assert mrr_at_10([2, 0, 1], [0, 0, 1]) == 1.0 and mrr_at_10([0, 1, 2], [0, 0, 1]) == pytest.approx(1 / 3, abs=1e-4)
    assert mrr_at_10(list(range(11)), [0] * 10 + [1]) == 0.0


@pytest.mark.slow
def test_untrained_model_scores_zero_and_keeps_the_first_stage(tmp_path: Path, tiny_bert: Path) -> None:
    groups = load_groups(write_data(tmp_path / "data"))
    summary = train(opts(tmp_path, max_steps=0), groups=groups, base_dir=tiny_bert)
    assert summary["step"] == 0 and summary["val_mrr10"] == summary["val_mrr10_first"] and summary["weight"] == 0.0
    out = tmp_path / "built"
    build_folder(tmp_path / "run.safetensors", tiny_bert, out)
    meta = read_meta(out)
    assert meta["weight"] == 0.0  # validation found nothing to gain: the served model would not even run
    (out / "xlir-model.json").write_text(json.dumps({**meta, "weight": 1.0}))  # run it: the head is zero
    rr = XlirReranker(out)
    scores = rr.score("the cat", list(DOCS.values()))
    assert scores.shape == (8,) and np.all(scores == 0.0)
    ranks = list(range(1, 9))
    assert residual_order(ranks, residual_scores(ranks, scores, rr.prior_weight)) == list(range(8))


@pytest.mark.slow
def test_a_few_steps_give_a_loadable_model_and_resume_continues(tmp_path: Path, tiny_bert: Path) -> None:
    data = write_data(tmp_path / "data")
    summary = train(opts(tmp_path, max_steps=3, params={"data": str(data)}), base_dir=tiny_bert)
    assert summary["step"] == 3 and np.isfinite(summary["loss"])
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log][0] == "start" and any(r["event"] == "validation" for r in log)
    out = tmp_path / "built"
    build_folder(tmp_path / "run.safetensors", tiny_bert, out)
    meta = read_meta(out)
    assert meta["kind"] == "reranker" and meta["prior_weight"] > 0 and (out / "onnx" / "model.onnx").is_file()
    meta["weight"] = 1.0  # validation on one question chose 0 (nothing to gain): look at the raw correction
    (out / "xlir-model.json").write_text(json.dumps(meta))
    rr = load_reranker(out)
    passages = ["the cat sits", "das haus", "le chien"]
    scores = rr.score("the cat", passages)
    import torch

    from models.rerankers import encode_pairs, load_pair_tokenizer
    from models.train_reranker import PREFIXES, load_folder

    tok, pad = load_pair_tokenizer(out, 16)
    ids, mask = encode_pairs(tok, "the cat", passages, pad, *PREFIXES)
    with torch.no_grad():
        expected = load_folder(out)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    assert scores.shape == (3,) and np.any(scores != 0)
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)  # fp32: the torch model's numbers
    resumed = train(opts(tmp_path, max_steps=5, resume=True, params={"data": str(data)}), base_dir=tiny_bert)
    assert resumed["step"] == 5
    with pytest.raises(ModelInvalid, match="--resume"):
        train(opts(tmp_path, max_steps=6, params={"data": str(data)}), base_dir=tiny_bert)


def test_a_wrong_folder_is_an_error_naming_the_path(tmp_path: Path, tiny_bert: Path) -> None:
    with pytest.raises(ModelNotFound, match=str(tmp_path / "nowhere")):
        load_reranker(tmp_path / "nowhere")
    other = tmp_path / "other"
    other.mkdir()
    (other / "xlir-model.json").write_text(json.dumps({"kind": "static"}))
    with pytest.raises(ModelInvalid, match=f"{other} holds a model of kind 'static'"):
        load_reranker(other)
    (other / "xlir-model.json").write_text(json.dumps({"kind": "reranker"}))
    with pytest.raises(ModelNotFound, match="has no onnx/model.onnx"):
        load_reranker(other)


def test_group_records_add_the_paragraph_and_a_missed_answer_for_training() -> None:
    ranked = ["en/0/1/0", "en/0/0/2", "en/0/0/0"]
    rec = group_record("en/q", "en", "train", "q?", ranked, {"en/0/0/1": 1}, ["en/0/0/0", "en/0/0/1", "en/0/0/2",
                                                                              "en/0/0/3"])
    assert rec["candidates"] == [["en/0/1/0", 1, 0], ["en/0/0/2", 2, 0], ["en/0/0/0", 3, 0], ["en/0/0/1", 4, 1],
                                 ["en/0/0/3", 4, 0]]
    val = group_record("en/q", "en", "dev", "q?", ranked, {"en/0/0/0": 1}, ["en/0/0/0"])
    assert val["candidates"] == [["en/0/1/0", 1, 0], ["en/0/0/2", 2, 0], ["en/0/0/0", 3, 1]]
    assert paragraph_of("ja/3/4/5") == "ja/3/4"


def test_groups_dataclass_defaults() -> None:
    g = Groups({"a": "x"})
    g.train.append(Group("q", "en", "x", ("a",), (1,), (1,)))
    assert g.val == [] and len(g.train) == 1


@pytest.mark.slow
def test_cli_trains_from_a_data_folder(tmp_path: Path, tiny_bert: Path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    data = write_data(tmp_path / "data")
    out = tmp_path / "w.safetensors"
    res = CliRunner().invoke(app, ["train", "reranker", "--data", str(data), "--param", f"base={tiny_bert}",
                                   "--param", "batch_questions=2", "--param", "max_length=16", "--max-steps", "2",
                                   "--run-dir", str(tmp_path / "run"), "--out", str(out), "--no-build"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["step"] == 2 and out.is_file()
    res = CliRunner().invoke(app, ["train", "reranker", "--data", str(data), "--max-minutes", "91",
                                   "--run-dir", str(tmp_path / "run2"), "--no-build"])
    assert isinstance(res.exception, ModelInvalid) and "--max-minutes must be in (0, 90]" in res.exception.detail


@pytest.mark.slow
def test_the_built_reranker_scores_without_torch(tmp_path: Path, tiny_bert: Path) -> None:
    import subprocess
    import sys

    from tests.test_torch_free import REPO, blocked_attempts, only_probes, torchless_env

    train(opts(tmp_path, max_steps=2, params={"data": str(write_data(tmp_path / "data"))}), base_dir=tiny_bert)
    out = tmp_path / "built"
    build_folder(tmp_path / "run.safetensors", tiny_bert, out)
    (out / "xlir-model.json").write_text(json.dumps({**read_meta(out), "weight": 1.0}))
    here = XlirReranker(out).score("the cat", ["the cat sits", "das haus"])
    code = ("import sys, json; from pathlib import Path; from models.rerankers import load_reranker; "
            f"print(json.dumps(load_reranker(Path({str(out)!r})).score('the cat', ['the cat sits', 'das haus'])"
            ".tolist()))")
    log = tmp_path / "blocked.log"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=torchless_env(log), cwd=REPO)
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(json.loads(res.stdout), here, rtol=1e-5, atol=1e-6)
    assert only_probes(blocked_attempts(log))  # nothing but availability probes asked for torch


class OracleReranker:
    """Scores +10 for the texts in ``good``: a perfect correction."""

    name = "oracle"
    prior_weight = 1.0
    scope = "all"

    def __init__(self, good: set[str]) -> None:
        self.good = good

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        return np.array([10.0 if p in self.good else 0.0 for p in passages])


def test_benchmark_qa_validation_mrr_with_exact_expectations(tmp_path: Path) -> None:
    from benchmarks.reranker import qa_validation

    folder = write_data(tmp_path / "data")  # the one dev question q5: its answer d6 at first-stage rank 3
    none = qa_validation(OracleReranker(set()), folder, depths=(2, 5))
    assert none["first stage"] == pytest.approx(1 / 3, abs=1e-4) and none["rerank 5"] == pytest.approx(1 / 3, abs=1e-4)
    oracle = qa_validation(OracleReranker({DOCS["d6"]}), folder, depths=(2, 5))
    assert oracle["rerank 5"] == 1.0  # moved to the top
    assert oracle["rerank 2"] == pytest.approx(1 / 3, abs=1e-4)  # not among the top 2 reranked: stays at rank 3
