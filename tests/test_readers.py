import gzip
import json
from pathlib import Path

import pytest

from indexer.readers import read_corpus
from xlir.errors import CorpusError


def test_jsonl_with_optional_fields_and_blank_lines(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text('{"id": "a", "text": "hello", "title": "T", "lang": "en"}\n\n{"_id": 7, "text": "hallo"}\n')
    docs = list(read_corpus([p]))
    assert [(d.id, d.text, d.title, d.lang) for d in docs] == [("a", "hello", "T", "en"), ("7", "hallo", "", None)]


def test_gzipped_jsonl_and_default_lang(tmp_path: Path) -> None:
    p = tmp_path / "c.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({"docid": "x", "contents": "你好"}, ensure_ascii=False) + "\n")
    assert [(d.id, d.text, d.lang) for d in read_corpus([p], default_lang="zh")] == [("x", "你好", "zh")]


def test_tsv_without_and_with_header(tmp_path: Path) -> None:
    plain = tmp_path / "a.tsv"
    plain.write_text("d1\tsome text\tTitle one\nd2\tother text\n")
    header = tmp_path / "b.tsv"
    header.write_text("title\ttext\tid\tlang\nT\tbody\td3\tde\n")
    docs = list(read_corpus([plain, header]))
    assert [(d.id, d.text, d.title, d.lang) for d in docs] == [
        ("d1", "some text", "Title one", None), ("d2", "other text", "", None), ("d3", "body", "T", "de")]


def test_beir_and_miracl_directories(tmp_path: Path) -> None:
    beir = tmp_path / "beir"
    beir.mkdir()
    (beir / "corpus.jsonl").write_text('{"_id": "b1", "title": "", "text": "beir doc"}\n')
    miracl = tmp_path / "miracl"
    miracl.mkdir()
    for i in range(2):
        with gzip.open(miracl / f"docs-{i}.jsonl.gz", "wt") as fh:
            fh.write(json.dumps({"docid": f"m{i}#0", "title": "t", "text": f"miracl {i}"}) + "\n")
    assert [d.id for d in read_corpus([beir, miracl])] == ["b1", "m0#0", "m1#0"]


@pytest.mark.parametrize("content,message", [
    ('{"id": "a", "text": "ok"}\n{"id": "b", "text": \n', "c.jsonl:2: invalid JSON"),
    ('{"text": "no id"}\n', "c.jsonl:1: missing document id"),
    ('{"id": "a"}\n', "c.jsonl:1: missing or non-string text"),
    ('["not", "an", "object"]\n', "c.jsonl:1: expected a JSON object"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text(content)
    with pytest.raises(CorpusError, match=message):
        list(read_corpus([p]))


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        list(read_corpus([tmp_path / "missing.jsonl"]))
    (tmp_path / "x.parquet").write_text("")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        list(read_corpus([tmp_path / "x.parquet"]))
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"id": "a", "text": "\xff\xfe"}\n')
    with pytest.raises(CorpusError, match="not valid UTF-8"):
        list(read_corpus([bad]))
    tsv = tmp_path / "one.tsv"
    tsv.write_text("only-one-column\n")
    with pytest.raises(CorpusError, match="one.tsv:1: expected at least 2"):
        list(read_corpus([tsv]))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CorpusError, match="not a BEIR"):
        list(read_corpus([tmp_path / "emptydir"]))
