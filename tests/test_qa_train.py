"""qa-train as sentence pools (benchmarks/datasets.py: load_qa_train), the reranker's training data source."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from benchmarks.datasets import DatasetError, load_qa_train, qa_held_out

EN = "en-tydiqa-goldp-train.json.gz"


def write(folder: Path, data: object, name: str = EN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(gzip.compress(json.dumps(data).encode()))
    return folder


def squad() -> dict[str, object]:
    c1 = "Paris is in France. It has the Eiffel Tower. The tower is 330 m tall."
    c2 = "Berlin is in Germany. It is the capital."
    return {"data": [
        {"title": "Paris", "paragraphs": [{"context": c1, "qas": [
            {"id": "a", "question": "How tall is the tower?", "answers": [{"text": "330 m", "answer_start": 58}]},
            {"id": "b", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
            {"id": "c", "question": "Bad offset?", "answers": [{"text": "France", "answer_start": 0}]},
        ]}]},
        {"title": "Berlin", "paragraphs": [{"context": c2, "qas": [
            {"id": "d", "question": "What is Berlin?", "answers": [{"text": "the capital", "answer_start": 28}]},
        ]}]},
    ]}


def test_sentences_questions_and_answer_sentences(tmp_path: Path) -> None:
    ds = load_qa_train(write(tmp_path / "qa-train", squad()), langs=["en"], max_questions=None)
    assert [d.id for d in ds.docs] == ["en/0/0/0", "en/0/0/1", "en/0/0/2", "en/1/0/0", "en/1/0/1"]
    assert ds.docs[2].text == "The tower is 330 m tall." and ds.docs[2].title == "Paris" and ds.docs[2].lang == "en"
    assert [q.qid for q in ds.queries] == ["en/a", "en/b", "en/d"]  # c: its only answer is not at its offset
    assert ds.qrels == {"en/a": {"en/0/0/2": 1}, "en/b": {"en/0/0/0": 1}, "en/d": {"en/1/0/1": 1}}
    assert ds.notes["skipped_answers:en"] == 1 and ds.notes["skipped_questions:en"] == 1
    assert {q.split for q in ds.queries} <= {"train", "dev"}


def test_a_large_language_keeps_whole_paragraphs_up_to_the_cap(tmp_path: Path) -> None:
    ds = load_qa_train(write(tmp_path / "qa-train", squad()), langs=["en"], max_questions=1)
    paragraphs = {d.id.rsplit("/", 1)[0] for d in ds.docs}
    assert len(paragraphs) == 1  # the first drawn paragraph already reaches the cap
    assert all(next(iter(ds.qrels[q.qid])).rsplit("/", 1)[0] in paragraphs for q in ds.queries)


def test_errors_name_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "qa-train"
    folder.mkdir()
    (folder / EN).write_bytes(gzip.compress(b'{"data": [\n  {"title": }'))
    with pytest.raises(DatasetError, match=f"{folder / EN}:2:"):
        load_qa_train(folder, langs=["en"])
    with pytest.raises(DatasetError, match="no qa-train file for xx"):
        load_qa_train(folder, langs=["xx"])
    write(folder, {"data": [{"paragraphs": [{"qas": []}]}]})
    with pytest.raises(DatasetError, match=r"data\[0\]\.paragraphs\[0\]"):
        load_qa_train(folder, langs=["en"])


def test_held_out_share_is_about_five_percent_and_stable() -> None:
    ids = [f"ja/{i}" for i in range(20000)]
    share = sum(map(qa_held_out, ids)) / len(ids)
    assert 0.045 < share < 0.055
    assert [qa_held_out(i) for i in ids[:50]] == [qa_held_out(i) for i in ids[:50]]
