"""Operations (issue 22, point 7): JSON logs with a request id, per-stage latency histograms in /metrics, progress
bars with the time left on ``xlir index`` and ``xlir mine``."""

from __future__ import annotations

import functools
import json
import logging
import logging.config
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm
from typer.testing import CliRunner

import indexer.mining_job
import models.encoders
from app.logs import log_config
from app.main import create_app
from app.settings import Settings
from cli.main import app as cli
from tests.conftest import FakeEncoder, fake_index, write_jsonl

DOCS = [
    {"id": "a1", "title": "apples", "text": "apples and pears grow on trees", "lang": "en"},
    {"id": "a2", "title": "markets", "text": "the stock market fell today", "lang": "en"},
    {"id": "a3", "title": "rivers", "text": "the rhine is a long river", "lang": "en"},
]
ETA = re.compile(r"\[\d\d:\d\d<\d\d:\d\d, ")  # tqdm's [elapsed<remaining, rate]: shown only with a total


@pytest.fixture
def index_dir(tmp_path: Path) -> Path:
    return fake_index(tmp_path, DOCS)


# --- request ids and JSON logs ------------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for n, (handlers, level, propagate) in saved.items():
        lg = logging.getLogger(n)
        for h in lg.handlers[:]:
            if h not in handlers:
                lg.removeHandler(h)
                h.close()
        lg.setLevel(level)
        lg.propagate = propagate


def serve_logged(app: Any, config: dict[str, Any]) -> Iterator[str]:
    import uvicorn

    from benchmarks.demo_bench import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=config))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    try:
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


def test_json_log_lines_carry_the_request_id_of_the_response_header(index_dir: Path, tmp_path: Path,
                                                                    restore_logging: None) -> None:
    log_file = tmp_path / "server.log"
    config = log_config("json", "info")
    for handler in config["handlers"].values():  # the same formatter and filters, into a file
        handler.pop("stream")
        handler.update({"class": "logging.FileHandler", "filename": str(log_file)})
    app = create_app(Settings(index=index_dir, warmup=False, reload_interval=0), encoder=FakeEncoder())

    @app.get("/test-log")
    def test_log() -> dict[str, str]:  # a sync route: it runs in a worker thread, the id must follow it there
        logging.getLogger("app.test").warning("inside the request")
        return {}

    for url in serve_logged(app, config):
        with httpx.Client(base_url=url) as http:
            given = http.post("/search", json={"query": "apples", "mode": "bm25"}, headers={"X-Request-ID": "req-42"})
            made = http.get("/test-log")
            bad = http.get("/health", headers={"X-Request-ID": "not a token"})
    assert given.status_code == 200 and given.headers["x-request-id"] == "req-42"  # the caller's id is kept
    made_id = made.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made_id)  # none given: the server makes one
    bad_id = bad.headers["x-request-id"]
    assert bad_id != "not a token" and re.fullmatch(r"[0-9a-f]{32}", bad_id)

    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.strip()]  # every line is JSON
    assert all({"time", "level", "logger", "message", "request_id"} <= set(rec) for rec in lines)
    access = {rec["path"]: rec for rec in lines if rec["logger"] == "uvicorn.access"}
    assert access["/search"]["request_id"] == "req-42" and access["/search"]["method"] == "POST"
    assert access["/search"]["status"] == 200
    assert access["/test-log"]["request_id"] == made_id and access["/health"]["request_id"] == bad_id
    inside = [rec for rec in lines if rec["logger"] == "app.test"]
    assert [(rec["message"], rec["request_id"]) for rec in inside] == [("inside the request", made_id)]
    started = [rec for rec in lines if rec["logger"] == "uvicorn.error" and "startup complete" in rec["message"]]
    assert started and started[0]["request_id"] == "-"  # outside a request


def test_text_log_format_names_the_request_id(restore_logging: None) -> None:
    config = log_config("text", "warning")
    assert "%(correlation_id)s" in config["formatters"]["main"]["format"]
    assert config["loggers"]["uvicorn.access"]["level"] == "WARNING"


def test_the_log_format_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLIR_LOG_FORMAT", "json")
    assert Settings().log_format == "json"
    monkeypatch.setenv("XLIR_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()


def test_serve_refuses_an_unknown_log_format(index_dir: Path) -> None:
    r = CliRunner().invoke(cli, ["serve", "--index", str(index_dir), "--log-format", "xml"])
    assert r.exit_code == 2 and "log_format" in r.output and "Traceback" not in r.output


# --- per-stage latency histograms ---------------------------------------------------------------------------------


def stage_counts(c: TestClient) -> dict[tuple[str, str], float]:
    text = c.get("/metrics").text
    return {(s.labels["stage"], s.labels["collection"]): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "xlir_stage_seconds_count"}


def test_metrics_have_stage_histograms_that_grow_with_searches(index_dir: Path) -> None:
    settings = Settings(collections={"main": index_dir, "other": index_dir}, warmup=False, reload_interval=0)
    with TestClient(create_app(settings, encoder=FakeEncoder())) as c:
        assert stage_counts(c) == {}
        assert c.post("/search", json={"query": "apples", "mode": "hybrid", "feedback": "off"}).status_code == 200
        first = stage_counts(c)
        assert {stage for stage, coll in first if coll == "main"} >= {"encode", "retrieve", "fuse", "total"}
        assert ("feedback", "main") not in first and ("rerank", "main") not in first  # stages it did not run
        assert all(v == 1 for v in first.values())
        assert c.post("/search", json={"query": "river", "mode": "hybrid", "feedback": "dense"}).status_code == 200
        assert c.post("/collections/other/search", json={"query": "market", "mode": "bm25"}).status_code == 200
        second = stage_counts(c)
        assert second[("total", "main")] == 2 and second[("encode", "main")] == 2
        assert second[("feedback", "main")] == 1  # a stage only the second search ran
        assert second[("total", "other")] == 1
        batch = c.post("/search/batch", json={"searches": [{"query": "apples"}, {"query": "pears"}]})
        assert batch.status_code == 200
        assert stage_counts(c)[("total", "main")] == 4  # each search of a batch is observed
        text = c.get("/metrics").text
        assert 'xlir_stage_seconds_bucket{collection="main",le="0.0001",stage="total"}' in text


# --- progress with ETA on xlir index and xlir mine ----------------------------------------------------------------


def stderr_of(result: Any) -> str:
    return str(result.stderr)


def test_index_shows_a_bar_with_the_time_left_and_quiet_hides_it(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.encoders, "load_encoder", lambda *a, **kw: FakeEncoder())
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": f"d{i}", "text": f"document number {i}", "lang": "en"}
                                                for i in range(300)])
    r = CliRunner().invoke(cli, ["index", str(corpus), "--out", str(tmp_path / "idx"), "--batch-size", "16"])
    assert r.exit_code == 0, r.output
    err = stderr_of(r)
    assert "indexing" in err and ETA.search(err), err[-500:]
    assert "300/300" in err  # the total was known from the start
    for flag in ("--quiet", "--no-progress"):
        r = CliRunner().invoke(cli, ["index", str(corpus), "--out", str(tmp_path / f"q{flag}"), flag])
        assert r.exit_code == 0 and "indexing" not in stderr_of(r) and not ETA.search(stderr_of(r))


def test_mine_shows_a_bar_with_the_time_left_and_quiet_hides_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models.encoders, "load_encoder", lambda *a, **kw: FakeEncoder())
    # the fake encoder is done within tqdm's first 0.1 s, before any redraw: draw at every update instead
    monkeypatch.setattr(indexer.mining_job, "tqdm", functools.partial(tqdm, mininterval=0))
    src, tgt = tmp_path / "src.txt", tmp_path / "tgt.txt"
    src.write_text("".join(f"sentence {i} about topic {i % 7}\n" for i in range(200)))
    tgt.write_text("".join(f"satz {i} about topic {i % 7}\n" for i in range(200)))
    r = CliRunner().invoke(cli, ["mine", str(src), str(tgt), "--out", str(tmp_path / "p.tsv"),
                                 "--home", str(tmp_path / "home")])
    assert r.exit_code == 0, r.output
    assert ETA.search(stderr_of(r)), stderr_of(r)[-500:]
    for flag in ("--quiet", "--no-progress"):
        r = CliRunner().invoke(cli, ["mine", str(src), str(tgt), "--out", str(tmp_path / f"p{flag}.tsv"),
                                     "--home", str(tmp_path / "home"), flag])
        assert r.exit_code == 0 and not ETA.search(stderr_of(r)), stderr_of(r)[-500:]
