"""Issue 22.3: ``POST /search/batch`` and ``xlir search --topics`` (TREC run, qrels metrics), ``--api-key``, and
clean errors (exit 2, a message naming the file and line, never a traceback) for every bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app.main import create_app
from app.settings import Settings
from cli.main import app as cli
from tests.conftest import FakeEncoder, fake_index, serve_app

DOCS = [
    {"id": f"d{i}", "title": f"title {i}", "text": text, "lang": lang}
    for i, (text, lang) in enumerate([
        ("apples and pears grow on trees", "en"),
        ("Äpfel und Birnen wachsen an Bäumen", "de"),
        ("the stock market fell today", "en"),
        ("la bourse a chuté aujourd'hui", "fr"),
        ("heavy rain is expected over the weekend", "en"),
        ("der Zug fährt um zwölf Uhr ab", "de"),
    ])
]
QUERIES = ["apples and pears", "stock market today", "rain weekend", "Zug zwölf", "la bourse", "trees grow"]
TOPICS = "# my topics\n\n" + "".join(f"q{i}\t{q}\n" for i, q in enumerate(QUERIES)) + "q6\tBäume\tde\n"
KEY = "s3cret"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_index(tmp_path_factory.mktemp("topics"), DOCS)


@pytest.fixture
def encoder() -> FakeEncoder:
    return FakeEncoder()


@pytest.fixture
def client(index_dir: Path, encoder: FakeEncoder) -> Iterator[TestClient]:
    app = create_app(Settings(index=index_dir, warmup=False, max_batch_searches=8), encoder=encoder)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def server(index_dir: Path) -> Iterator[str]:
    """A live server over the index (uvicorn in a thread) that wants a read key."""
    app = create_app(Settings(index=index_dir, warmup=False, api_keys=f"{KEY}:read"), encoder=FakeEncoder())
    with serve_app(app, timeout=120) as url:  # generous: the machine may be busy
        yield url


@pytest.fixture(autouse=True)
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """``xlir search --index`` loads the index's encoder by name: the fake one here."""
    monkeypatch.setattr("app.state.load_encoder", lambda *a, **kw: FakeEncoder())


def xlir(*args: str | Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(cli, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def run_lines(path: Path) -> list[list[str]]:
    return [line.split(" ") for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------------
# POST /search/batch
# --------------------------------------------------------------------------------------------------


def test_batch_equals_single_searches_in_order_and_encodes_together(client: TestClient,
                                                                    encoder: FakeEncoder) -> None:
    searches = [{"query": q, "k": 3, "mode": mode} for q in QUERIES for mode in ("dense", "hybrid")]
    singles = []
    for s in searches:
        r = client.post("/search", json=s)
        assert r.status_code == 200, r.text
        singles.append(r.json())
    encoder.query_calls.clear()
    r = client.post("/search/batch", json={"searches": searches[:8]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 8
    for got, want, s in zip(results, singles, searches, strict=False):
        assert got["query"] == s["query"] and got["mode"] == s["mode"]
        assert [(h["id"], h["score"], h["ranks"]) for h in got["results"]] == \
            [(h["id"], h["score"], h["ranks"]) for h in want["results"]]
    # 8 searches, 4 distinct queries... every query encoded, in fewer encoder calls than searches (batched)
    assert sorted(t for call in encoder.query_calls for t in call) == sorted(s["query"] for s in searches[:8])
    assert len(encoder.query_calls) < 8, encoder.query_calls


def test_batch_names_the_bad_search(client: TestClient) -> None:
    good = {"query": "apples", "k": 2}
    r = client.post("/search/batch", json={"searches": [good, good, {"query": "apples", "langs": ["ja"]}]})
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "bad_query"
    assert r.json()["detail"].startswith("searches[2]: langs: 'ja' not in this index")
    r = client.post("/search/batch", json={"searches": [good, {"query": "  "}]})
    assert r.status_code == 422 and r.json()["detail"] == "searches.1.query: query is empty"
    r = client.post("/search/batch", json={"searches": []})
    assert r.status_code == 422 and r.json()["detail"].startswith("searches:")


def test_batch_over_the_limit_is_413(client: TestClient) -> None:
    r = client.post("/search/batch", json={"searches": [{"query": "apples"}] * 9})
    assert r.status_code == 413
    assert "9 searches in one batch, over the limit 8 (XLIR_MAX_BATCH_SEARCHES)" in r.json()["detail"]


def test_batch_route_is_documented(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/search/batch"]["post"]
    assert {"200", "413", "422"} <= set(op["responses"])
    assert "BatchSearchRequest" in spec["components"]["schemas"]


# --------------------------------------------------------------------------------------------------
# xlir search --topics
# --------------------------------------------------------------------------------------------------


def test_topics_run_file_has_the_searches_ranks_and_scores(index_dir: Path, client: TestClient,
                                                          tmp_path: Path) -> None:
    topics = write(tmp_path / "topics.tsv", TOPICS)
    out = tmp_path / "runs" / "run.trec"
    code, stdout, stderr = xlir("search", "--topics", topics, "--index", index_dir, "--output", out, "-k", 4,
                                "--run-tag", "mine", "--batch", 3, "--no-progress")
    assert code == 0, stderr
    assert f"wrote 28 lines for 7 topics to {out} (run tag mine)" in stdout
    lines = run_lines(out)
    expected = []
    queries = [*((f"q{i}", q, None) for i, q in enumerate(QUERIES)), ("q6", "Bäume", "de")]
    for qid, q, lang in queries:
        body = client.post("/search", json={"query": q, "k": 4, **({"lang": lang} if lang else {})}).json()
        expected += [[qid, "Q0", h["id"], str(rank), repr(h["score"]), "mine"]
                     for rank, h in enumerate(body["results"], start=1)]
    assert lines == expected
    assert [float(line[4]) for line in lines[:4]] == sorted((float(line[4]) for line in lines[:4]), reverse=True)


def test_inprocess_topics_are_encoded_in_batches_within_the_limit(index_dir: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = FakeEncoder()
    monkeypatch.setattr("app.state.load_encoder", lambda *a, **kw: encoder)
    monkeypatch.setenv("XLIR_MAX_BATCH_SEARCHES", "4")  # --batch 50 is cut to it in-process
    topics = write(tmp_path / "topics.tsv", TOPICS)
    code, _, stderr = xlir("search", "--topics", topics, "--index", index_dir, "--output", tmp_path / "run.trec",
                           "--mode", "dense", "--feedback", "off", "--batch", 50, "--no-progress")
    assert code == 0, stderr
    texts = [t for call in encoder.query_calls for t in call]
    assert sorted(texts) == sorted([*QUERIES, "Bäume"])
    assert len(encoder.query_calls) < 7 and max(len(call) for call in encoder.query_calls) <= 4


def test_topics_qrels_metrics_equal_a_hand_computation(index_dir: Path, tmp_path: Path) -> None:
    topics = write(tmp_path / "topics.tsv", TOPICS)
    out = tmp_path / "run.trec"
    code, _, stderr = xlir("search", "--topics", topics, "--index", index_dir, "--output", out, "--no-progress")
    assert code == 0, stderr
    ranking = {}
    for qid, _, doc, rank, _, _ in run_lines(out):
        ranking.setdefault(qid, []).append(doc)
        assert int(rank) == len(ranking[qid])
    # q0: its 2nd and 4th hits relevant (graded 2 and 1); q1: one relevant document outside the top 100
    # (absent); q2: its top hit; q3: no relevant document (left out); "zz" is not a topic (ignored)
    rel0 = {ranking["q0"][1]: 2, ranking["q0"][3]: 1}
    qrels = [f"q0 0 {d} {v}" for d, v in rel0.items()] + ["q1 0 nowhere 1", f"q2 0 {ranking['q2'][0]} 1",
                                                          f"q3 0 {ranking['q3'][0]} 0", "zz 0 d1 1"]
    qrels_file = write(tmp_path / "qrels.txt", "\n".join(qrels) + "\n")
    code, stdout, stderr = xlir("search", "--topics", topics, "--index", index_dir, "--output", out, "--qrels",
                                qrels_file, "--json", "--no-progress")
    assert code == 0, stderr
    got = json.loads(stdout)
    # ranx's ndcg: gain = the relevance grade (Jarvelin & Kekalainen), discount log2(rank + 1)
    dcg0 = 2 / math.log2(3) + 1 / math.log2(5)
    idcg0 = 2 / math.log2(2) + 1 / math.log2(3)
    want = {"nDCG@10": (dcg0 / idcg0 + 0 + 1) / 3, "R@100": (1 + 0 + 1) / 3, "MRR@10": (1 / 2 + 0 + 1) / 3}
    assert got["judged"] == 3 and got["topics"] == 7 and got["unknown_qids"] == 1
    assert got["metrics"] == pytest.approx(want, abs=1e-6)
    code, stdout, _ = xlir("search", "--topics", topics, "--index", index_dir, "--output", out, "--qrels",
                           qrels_file, "--no-progress")
    assert code == 0 and f"nDCG@10  {want['nDCG@10']:.4f}" in stdout and "over 3 of 7 topics" in stdout


def test_topics_over_http_equal_in_process(index_dir: Path, server: str, tmp_path: Path) -> None:
    topics = write(tmp_path / "topics.tsv", TOPICS)
    local, remote = tmp_path / "local.trec", tmp_path / "remote.trec"
    code, _, stderr = xlir("search", "--topics", topics, "--index", index_dir, "--output", local, "--mode",
                           "hybrid", "-k", 5, "--no-progress")
    assert code == 0, stderr
    code, _, stderr = xlir("search", "--topics", topics, "--target", server, "--api-key", KEY, "--output", remote,
                           "--mode", "hybrid", "-k", 5, "--batch", 2, "--no-progress")
    assert code == 0, stderr
    assert remote.read_text() == local.read_text() and len(run_lines(local)) == 35


def test_single_query_target_takes_the_api_key(server: str) -> None:
    code, stdout, stderr = xlir("search", "apples and pears", "--target", server, "--api-key", KEY, "--json")
    assert code == 0, stderr
    assert json.loads(stdout)["results"][0]["id"] == "d0"
    code, _, stderr = xlir("search", "apples and pears", "--target", server)
    assert code == 2 and "HTTP 401" in stderr and "--api-key" in stderr


# --------------------------------------------------------------------------------------------------
# Bad input: exit 2, a message, no traceback
# --------------------------------------------------------------------------------------------------


def assert_fails(args: list[str | Path], *fragments: str) -> None:
    code, stdout, stderr = xlir(*args)
    assert code == 2, (code, stdout, stderr)
    for fragment in fragments:
        assert fragment in stderr, stderr
    assert "Traceback" not in stdout + stderr


@pytest.mark.parametrize(("text", "fragments"), [
    ("q1\tapples\nq2 no tab here\n", [":2: malformed topics line", "got 1 column"]),
    ("q1\tapples\tde\tx\n", [":1: malformed topics line", "got 4 columns"]),
    ("q1\tapples\nq1\tpears\n", [":2: duplicate topic id 'q1' (first at ", ":1)"]),
    ("q 1\tapples\n", [":1: the topic id 'q 1' is empty or has whitespace"]),
    ("q1\t  \n", [":1: topic q1 has an empty query"]),
    ("q1\tapples\tklingon\n", [":1: third column (the query's language): ", "language code 'klingon'"]),
    ("# only a comment\n\n", ["no topics"]),
    ("q1\tapples\nq2\t" + "x" * 3000 + "\n", [":2: topic q2: query has 3000 characters; the limit is 2048"]),
])
def test_malformed_topics(index_dir: Path, tmp_path: Path, text: str, fragments: list[str]) -> None:
    topics = write(tmp_path / "t.tsv", text)
    assert_fails(["search", "--topics", topics, "--index", index_dir, "--output", tmp_path / "r.trec"],
                 str(topics), *fragments)
    assert not (tmp_path / "r.trec").exists()


def test_bad_files_and_options(index_dir: Path, tmp_path: Path) -> None:
    topics = write(tmp_path / "t.tsv", "q1\tapples\n")
    run = tmp_path / "r.trec"
    base: list[str | Path] = ["search", "--topics", topics, "--index", index_dir, "--output", run]
    assert_fails(["search", "--topics", tmp_path / "missing.tsv", "--index", index_dir, "--output", run],
                 "missing.tsv: no such file")
    assert_fails([*base, "--qrels", tmp_path / "missing.qrels"], "missing.qrels: no such file")
    beir = write(tmp_path / "beir.tsv", "query-id\tcorpus-id\tscore\nq1\td0\t1\n")
    assert_fails([*base, "--qrels", beir], f"{beir}:1: malformed qrels line, expected 4 fields 'qid Q0 docid rel'")
    bad_rel = write(tmp_path / "bad.qrels", "q1 0 d0 yes\n")
    assert_fails([*base, "--qrels", bad_rel], f"{bad_rel}:1: relevance 'yes' is not an integer")
    assert_fails(["search", "--topics", topics, "--index", index_dir], "--topics needs --output")
    assert_fails(["search", "apples", "--index", index_dir, "--output", run], "--output and --qrels go with --topics")
    assert_fails(["search", "apples", "--topics", topics, "--index", index_dir, "--output", run], "not both")
    assert_fails(["search", "--topics", topics, "--output", run], "exactly one of --index DIR or --target URL")
    assert_fails([*base, "--run-tag", "my tag"], "--run-tag 'my tag' is empty or has whitespace")
    assert_fails(["search", "--topics", topics, "--index", index_dir, "--output", tmp_path], "is a directory")
    assert_fails([*base, "--mode", "fuzzy"], "mode:")
    assert_fails([*base, "--lang", "ja"], f"{topics}:1: topic q1: langs: 'ja' not in this index")
    assert_fails(["search", "--topics", topics, "--index", tmp_path / "no-index", "--output", run], "no-index")
    assert not run.exists()


def test_bad_targets(server: str, tmp_path: Path) -> None:
    topics = write(tmp_path / "t.tsv", "q1\tapples\nq2\tpears\n")
    run = tmp_path / "r.trec"
    base: list[str | Path] = ["search", "--topics", topics, "--output", run, "--no-progress"]
    assert_fails([*base, "--target", server], "HTTP 401", "unauthorized", "--api-key")
    assert_fails([*base, "--target", server, "--api-key", "wrong"], "HTTP 401")
    assert_fails([*base, "--target", server, "--api-key", KEY, "--lang", "ja"], "HTTP 422",
                 f"{topics}:1: topic q1: langs: 'ja' not in this index")
    from benchmarks.demo_bench import free_port

    nobody = f"http://127.0.0.1:{free_port()}"
    assert_fails([*base, "--target", nobody], f"cannot reach {nobody}/search/batch", "is `xlir serve` running")
    assert_fails(["search", "apples", "--target", nobody], f"cannot reach {nobody}/search")
    assert_fails([*base, "--target", "127.0.0.1:1"], "not an http:// or https:// URL")
    assert_fails([*base, "--target", server + "/nothing", "--api-key", KEY], "HTTP 404", "base URL")
    assert not run.exists()
