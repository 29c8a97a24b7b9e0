"""benchmarks/load.py (``xlir bench load``): its parsing and accounting, and a short real run through its CLI against a
server on loopback (uvicorn in a thread, the fake encoder)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.main import create_app
from app.settings import Settings
from benchmarks import load
from benchmarks.load import Sample, parse_levels, parse_mix, read_queries, status_class, summarize
from tests.conftest import FakeEncoder, serve_app
from tests.test_load import QUERIES, build_fake_index


def test_parse_mix_and_levels() -> None:
    assert parse_mix("search=0.9,upsert=0.1") == pytest.approx({"search": 0.9, "upsert": 0.1})
    assert parse_mix("search=3, upsert=1") == pytest.approx({"search": 0.75, "upsert": 0.25})
    assert parse_mix("search=1,upsert=0") == {"search": 1.0}
    for bad in ("delete=1", "search=x", "search=-1", "search=0", ""):
        with pytest.raises(ValueError):
            parse_mix(bad)
    assert parse_levels("1,8,32") == [1, 8, 32]
    with pytest.raises(ValueError):
        parse_levels("0,4")


def test_read_queries(tmp_path: Path) -> None:
    f = tmp_path / "q.jsonl"
    f.write_text('{"query": "a b"}\n\n{"text": "c"}\n{"question": "d", "lang": "en"}\n', encoding="utf-8")
    assert read_queries(f) == ["a b", "c", "d"]
    f.write_text("first query\nzweite Frage\n", encoding="utf-8")
    assert read_queries(f) == ["first query", "zweite Frage"]
    f.write_text('{"id": 1}\n', encoding="utf-8")
    with pytest.raises(ValueError):
        read_queries(f)


def test_status_classes_and_summary() -> None:
    assert [status_class(c) for c in (200, 204, 404, 422, 429, 500, 503)] == \
        ["2xx", "2xx", "4xx", "4xx", "429", "5xx", "5xx"]
    samples = [Sample("search", "2xx", float(ms), 200) for ms in range(1, 101)]
    samples += [Sample("search", "429", 0.5, 429), Sample("upsert", "2xx", 10.0, 200),
                Sample("upsert", "5xx", 3.0, 500), Sample("search", "error", 30_000.0, None)]
    s = summarize(samples, seconds=2.0)
    assert s["requests"] == 104 and s["qps"] == 52.0 and s["ok_qps"] == 50.5
    assert s["status"] == {"2xx": 101, "4xx": 0, "429": 1, "5xx": 1, "error": 1}
    assert s["codes"] == {"200": 101, "429": 1, "500": 1, "None": 1}
    assert s["search"]["ok"] == 100 and s["search"]["qps"] == 50.0
    assert s["search"]["latency_ms"]["p50"] == pytest.approx(50.5)  # successes only
    assert s["search"]["latency_all_ms"]["max"] == 30_000.0
    assert s["upsert"] == {**s["upsert"], "requests": 2, "ok": 1}
    assert s["429_latency_ms"]["p99"] == 0.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    index = build_fake_index(tmp_path_factory.mktemp("bench-load"), n=100)
    app = create_app(Settings(index=index, warmup=False, reload_interval=0), encoder=FakeEncoder())
    with serve_app(app) as base:
        for mode in ("dense", "hybrid"):  # load language ID and compile BM25 before anything is timed
            assert httpx.post(f"{base}/search", json={"query": "river city", "mode": mode},
                              timeout=60).status_code == 200
        yield base


def test_cli_run_against_a_server(server: str, tmp_path: Path) -> None:
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join(QUERIES) + "\n", encoding="utf-8")
    out = tmp_path / "load.json"
    argv = ["--target", server, "--pid", str(os.getpid()), "--concurrency", "1,4", "--duration", "1.5",
            "--warmup", "0.3", "--mode", "hybrid", "--mix", "search=0.7,upsert=0.3", "--queries", str(queries),
            "--out", str(out)]
    assert load.main(argv) == 0
    res = json.loads(out.read_text())
    run = res["run"]
    assert [lv["concurrency"] for lv in run["levels"]] == [1, 4]
    for lv in run["levels"]:
        assert lv["requests"] > 5 and lv["status"]["2xx"] == lv["requests"]  # nothing but successes here
        assert lv["search"]["latency_ms"]["p50"] > 0 and lv["qps"] > 0
        assert lv["upsert"]["ok"] == lv["upsert"]["requests"] > 0
        assert lv["server_cpu_ms_per_request"] > 0 and lv["cpu_bound_qps"] > 0
    acked = sum(lv["upsert"]["ok"] for lv in run["levels"])
    assert run["writes"]["acknowledged"] >= acked  # warm-up writes are verified too
    assert run["writes"]["found"] == run["writes"]["acknowledged"] and run["writes"]["lost"] == 0
    assert set(run["rss_bytes"]) == {"ready", "after_warmup", "end"} and run["rss_bytes"]["end"] > 0
    assert res["index_info"]["docs"] >= 100 and res["commit"]
    md = out.with_suffix(".md").read_text()
    assert "| 4 |" in md and "lost" in md


def test_compare_batching_needs_an_index(capsys: pytest.CaptureFixture[str]) -> None:
    assert load.main(["--target", "http://127.0.0.1:9", "--compare-batching"]) == 2
    assert "--index" in capsys.readouterr().err


@pytest.mark.slow  # two real `xlir serve` processes with a real (small) model: about a minute
def test_compare_batching_starts_both_servers_and_leaves_the_index_as_it_was(tmp_path: Path) -> None:
    from indexer.build import BuildOptions, build_index
    from models.encoders import load_encoder
    from tests.conftest import write_jsonl

    docs = [{"id": f"d{i}", "lang": "en", "text": f"{w} river city number {i}"}
            for i, w in enumerate(["apple", "pear", "plum", "fig", "kiwi", "lime"] * 5)]
    index = tmp_path / "index"
    build_index([write_jsonl(tmp_path / "c.jsonl", docs)], index, load_encoder("minilm-en", device="cpu"),
                BuildOptions(progress=False))
    before = sorted(p.relative_to(index) for p in index.rglob("*"))
    out = tmp_path / "cmp.json"
    argv = ["--index", str(index), "--concurrency", "1,4", "--duration", "2", "--warmup", "2",
            "--mix", "search=0.7,upsert=0.3", "--compare-batching", "--env", "XLIR_WARMUP=false", "--out", str(out)]
    assert load.main(argv) == 0
    res = json.loads(out.read_text())
    common = {"XLIR_VERIFY": "size", "XLIR_WARMUP": "false"}
    assert res["batched"]["env"] == common and res["unbatched"]["env"] == {**common, "XLIR_BATCHING": "false"}
    for name in ("batched", "unbatched"):
        run = res[name]
        assert all(lv["status"]["5xx"] == 0 and lv["status"]["error"] == 0 for lv in run["levels"])
        assert run["writes"]["acknowledged"] > 0 and run["writes"]["lost"] == 0
        assert run["rss_bytes"]["end"] and run["levels"][0]["server_cpu_ms_per_request"] > 0
    assert max(lv.get("mean_batch_size", 1) for lv in res["unbatched"]["levels"]) == 1.0
    assert "| 4 |" in out.with_suffix(".md").read_text()
    assert sorted(p.relative_to(index) for p in index.rglob("*")) == before  # the writes went to copies


def test_a_bad_synthetic_centering_is_refused_before_anything_is_built(capsys: pytest.CaptureFixture[str],
                                                                       tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLIR_HOME", str(tmp_path))
    with pytest.raises(SystemExit) as exc:
        load.main(["--synthetic", "1000", "--synthetic-centering", "fulll"])
    assert exc.value.code == 2 and "invalid choice: 'fulll'" in capsys.readouterr().err
    from benchmarks import big_index

    with pytest.raises(SystemExit) as exc:
        big_index.main(["--n", "1000", "--centering", "fulll"])
    assert exc.value.code == 2 and "invalid choice: 'fulll'" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def test_synthetic_index_records_only_a_384_dim_transformer(tmp_path: Path) -> None:
    """The stand-in vectors are e5-like and 384-dim: a student of that width may be recorded (its real query
    encoder then serves the index), a narrower model or a static/linear one is refused before any build."""
    from benchmarks import big_index
    from xlir.errors import ModelInvalid

    def folder(name: str, width: int, kind: str | None = None) -> Path:
        out = tmp_path / name
        out.mkdir()
        (out / "config.json").write_text(json.dumps({"hidden_size": width}))
        if kind:
            (out / "xlir-model.json").write_text(json.dumps({"kind": kind, "sha256": "0" * 64}))
        return out

    name, checksum = big_index.model_identity(str(folder("wide", 384, "transformer")))
    assert name.endswith("wide") and len(checksum) == 64
    for bad in (folder("narrow", 32), folder("static", 384, "static")):
        with pytest.raises(ModelInvalid, match="384-dim transformer"):
            big_index.model_identity(str(bad))
