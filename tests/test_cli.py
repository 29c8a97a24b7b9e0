"""The ``xlir`` command as a user runs it: real processes, exit codes, messages, no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_jsonl

XLIR = Path(sys.executable).with_name("xlir")


def xlir(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = None
    if home is not None:
        import os

        env = {**os.environ, "XLIR_HOME": str(home)}
    return subprocess.run([str(XLIR), *args], capture_output=True, text=True, timeout=300, env=env)


def assert_clean_error(res: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert res.returncode != 0
    assert fragment in res.stderr, res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    return write_jsonl(tmp / "c.jsonl", [
        {"id": "cat", "title": "Cats", "text": "The cat sleeps on the warm mat all afternoon.", "lang": "en"},
        {"id": "bank", "title": "Banks", "text": "The central bank raised interest rates again.", "lang": "en"},
        {"id": "rain", "title": "Weather", "text": "Heavy rain is expected over the weekend.", "lang": "en"},
    ])


@pytest.fixture(scope="module")
def index(corpus: Path) -> Path:
    out = corpus.parent / "idx"
    res = xlir("index", str(corpus), "--out", str(out), "--model", "minilm-en", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "indexed 3 documents in 1 shard(s)" in res.stdout
    return out


def test_index_then_search_in_process(index: Path) -> None:
    res = xlir("search", "Where does the kitten nap?", "--index", str(index), "--json", "-k", "2")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["mode"] == "hybrid"  # auto on a single-language index
    assert [h["id"] for h in body["results"]][0] == "cat"
    res = xlir("search", "interest rates", "--index", str(index), "--mode", "bm25")
    assert res.returncode == 0 and "bank" in res.stdout.splitlines()[1]
    res = xlir("search", "Where does the kitten nap?", "--index", str(index), "--json", "--mode", "dense",
               "--feedback", "dense", "--feedback-merge", "second")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["feedback"]["mode"] == "dense"
    assert_clean_error(xlir("search", "x", "--index", str(index), "--feedback", "maybe"), "feedback")


def test_mine_two_files(tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    tgt = tmp_path / "b.txt"
    src.write_text("The weather is nice today.\n\nI like green apples.\nThe train leaves at noon.\n")
    tgt.write_text("The train departs at twelve.\nGreen apples are what I like.\nToday the weather is lovely.\n")
    out = tmp_path / "pairs.tsv"
    res = xlir("mine", str(src), str(tgt), "--out", str(out), "--model", "minilm-en")
    assert res.returncode == 0, res.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()[1:]]
    assert {(r[3], r[4]) for r in rows} == {("1", "3"), ("3", "2"), ("4", "1")}
    assert "skipped source lines: 1 blank" in res.stderr
    assert "search src->tgt: exact (flat) over 3 rows" in res.stderr
    assert "3 pairs from 3 x 3 sentences" in res.stdout
    res = xlir("mine", str(src), str(tgt), "--out", str(out), "--margin", "cosine")
    assert_clean_error(res, "unknown margin 'cosine'")
    assert_clean_error(xlir("mine", str(src), str(tgt), "--out", str(out), "--search", "lsh"), "unknown search 'lsh'")
    assert_clean_error(xlir("mine", str(src), str(tgt), "--out", str(out), "--memory-budget", "lots"),
                       "cannot read a size from 'lots'")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"\n\xff\xfe\n")
    assert_clean_error(xlir("mine", str(src), str(empty), "--out", str(tmp_path / "x.tsv"), "--model", "minilm-en"),
                       "empty.txt: no sentences to mine (1 blank, 1 invalid_utf8)")
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "x.tsv.work").exists()


@pytest.mark.slow  # 15 s: a dozen real `xlir` processes
def test_bad_inputs_get_clear_errors(tmp_path: Path, corpus: Path, index: Path) -> None:
    assert_clean_error(xlir("index", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")), "no such file")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{broken\n')
    assert_clean_error(xlir("index", str(bad), "--out", str(tmp_path / "o"), "--model", "minilm-en"),
                       "bad.jsonl:2: invalid JSON")
    assert not (tmp_path / "o").exists()
    assert_clean_error(xlir("index", str(corpus), "--out", str(tmp_path / "o"), "--model", "no-such-model"),
                       "unknown model 'no-such-model'")
    assert_clean_error(xlir("index", str(corpus), "--out", str(index), "--model", "minilm-en"), "already exists")
    assert_clean_error(xlir("serve", "--index", str(tmp_path / "missing")), "does not exist")
    assert_clean_error(xlir("search", "x", "--index", str(tmp_path / "missing")), "does not exist")
    assert_clean_error(xlir("search", "x", "--index", str(index), "--mode", "sparse"), "mode")
    assert_clean_error(xlir("search", " ", "--index", str(index)), "query is empty")
    assert_clean_error(xlir("models", "fetch", "bert-huge"), "unknown registry model 'bert-huge'")


def test_model_not_built_yet_says_how_to_build_it(tmp_path: Path, corpus: Path) -> None:
    res = xlir("index", str(corpus), "--out", str(tmp_path / "o"), home=tmp_path / "empty-home")
    assert_clean_error(res, "run `xlir models fetch e5-small`")


@pytest.mark.model
def test_index_built_with_another_encoder_is_refused_by_serve(index: Path, tmp_path: Path) -> None:
    res = xlir("serve", "--index", str(index), "--model", "e5-small")
    assert_clean_error(res, "was built with encoder 'minilm-en'")


def test_models_centroids_builds_a_table_for_the_encoder(tmp_path: Path, corpus: Path) -> None:
    out = tmp_path / "table.npz"
    res = xlir("models", "centroids", str(corpus), "--model", "minilm-en", "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert "centroids of 1 languages (en:3)" in res.stdout and out.is_file()
    assert_clean_error(xlir("models", "centroids", str(tmp_path / "none.txt")), "no such file")
